"""Batches of random rows with ``mmarray.take``, cold and warm (issue 12).

``mmarray.take(a, idx, axis=0)`` on a ``MappedFile`` view of the file as
rows of float64 (64 B records: 8 columns; 4 KiB rows: 512), against

* an ``os.pread`` loop over the same rows -- the fastest way to read
  scattered rows of a file that is not in memory without mmarray;
* ``numpy.memmap`` fancy indexing ``m[idx]`` (no hint: its readahead pulls in
  much of the file, numpy#13172);
* warm only: ``np.take`` on a plain ndarray view of the *same* mapping --
  the price of take's residency check (goal: within 1.3x for batches of
  1,000 rows and more).  ``np.take`` on the ``MappedFile`` view itself
  would come back to ``mmarray.take``.

Cold benchmarks read a data file of their own, 4x the size of the others
(1 GiB in a full run, so that readahead's cost shows as it does on big
files), synced and dropped from the page cache before every timed call;
they skip on tmpfs.  Warm benchmarks read the shared data file with every
page already mapped, and draw fresh random indices for every timed call
(each side its own), so no call finds its rows in the CPU cache from the
call before.  All benchmarks skip when this mmarray has no ``take``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np

import mmarray

from .common import (
    FILE_BYTES,
    FULL_FILE_MB,
    SCALE,
    ColdFileBenchmark,
    DataFileBenchmark,
    evict,
    named,
    pread_loop,
    random_index,
    ratio_of,
    record_dtype,
    require,
    require_cold,
    resident_fraction,
    warm,
    write_random_file,
)

RECORDS = [64, 4096]
#: Warm batches: a few microseconds (100 rows of 64 B) to ~15 ms.
BATCHES = [100, 1_000, 10_000]
#: Cold batches, for the scaling with the batch size that the issue asks
#: about: take's per-row cost falls with the batch (the device's queue
#: fills, and the fixed cost of open, planning and the last requests'
#: latency spreads), while an os.pread loop's per-row cost does not.
#: numpy.memmap reads much of the file whatever the batch, so its ratio
#: grows worse for take as the batch grows.
COLD_BATCHES = [1_000, 4_000, 16_000]
#: The cold file is this many times the shared data file (1 GiB in a full run).
COLD_FACTOR = 4
COLD_BYTES = COLD_FACTOR * FILE_BYTES
FULL_COLD_MB = COLD_FACTOR * FULL_FILE_MB
#: Cold rounds (each evicts the file first); a smoke run does one.
COLD_ROUNDS = 3 if SCALE == 1 else 1
#: Warm timed calls per side, each with fresh indices; the medians are compared.
WARM_ROUNDS = 21 if SCALE == 1 else 5
PAGE = 4096

TAKE, PREAD, NP_TAKE, NP_MEMMAP = (
    "mmarray.take", "os.pread loop", "np.take on the same mapping", "numpy.memmap m[idx]")


def _rows(view: np.ndarray, record: int) -> np.ndarray:
    """The file's float64 values as rows of ``record`` bytes."""
    return view.reshape(-1, record // 8)


class TakeColdFile(ColdFileBenchmark):
    """A cold file of its own, 4x the shared data file (asv keys
    ``setup_cache`` by module and line: every subclass shares this one)."""

    timeout = 180

    def setup_cache(self) -> str:
        return write_random_file("mmarray-asv-take-cold.bin", COLD_BYTES)

    setup_cache.timeout = 600

    def _setup(self, path: str, record: int, batch: int) -> None:
        require("take")
        require_cold(path)
        self.path, self.record = path, record
        self.index = random_index(COLD_BYTES // record, batch)
        self.offsets = (self.index * record).tolist()

    def _take(self) -> None:
        with mmarray.MappedFile(self.path) as f:
            rows = _rows(f.array(np.float64), self.record)
            mmarray.take(rows, self.index, axis=0)
            del rows

    def _pread(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            pread_loop(fd, self.record, self.offsets)
        finally:
            os.close(fd)

    def _memmap(self) -> None:
        m = np.memmap(self.path, record_dtype(self.record), "r")
        m[self.index]
        del m

    def _cold_ratio(self, run: Callable[[], object], baseline: Callable[[], object]) -> float:
        return ratio_of(run, baseline, rounds=COLD_ROUNDS, before=lambda: evict(self.path))


class ColdTakeRatios(TakeColdFile):
    """Cold cache: take against an os.pread loop, by batch size."""

    params = (RECORDS, COLD_BATCHES)
    param_names = ["record_bytes", "batch_rows"]

    def setup(self, path, record, batch):
        self._setup(path, record, batch)

    @named(f"Headline: random reads (cold, {FULL_COLD_MB // 1024} GiB file), "
           f"{TAKE} / {PREAD}", unit=f"time({TAKE})/time(os.pread)")
    def track_take_vs_pread(self, path, record, batch):
        """``time(open + take + close) / time(os.pread loop)`` for the same
        rows of a file just dropped from the page cache (lower is better;
        goal <= 0.25, i.e. 4x faster, from 1,000 rows on).  take asks the
        kernel for all the batch's pages at once, so the device serves them
        in parallel; the loop waits for one read at a time.  In a virtual
        machine "cold" reads may still come from the host's cache."""
        return self._cold_ratio(self._take, self._pread)

    @named("Page cache used by a cold mmarray.take, per row requested", unit="pages per row")
    def track_take_pages_per_row(self, path, record, batch):
        """Pages that one cold take added to the page cache, divided by the
        rows asked for (goal: about 1 for 64 B and 4 KiB rows, at most 2)."""
        evict(self.path)
        before = resident_fraction(self.path)
        self._take()
        after = resident_fraction(self.path)
        return max(0.0, after - before) * (COLD_BYTES // PAGE) / len(self.index)


class ColdTakeVsMemmap(TakeColdFile):
    """Cold cache: take against numpy.memmap fancy indexing, by batch size."""

    params = (RECORDS, COLD_BATCHES)
    param_names = ["record_bytes", "batch_rows"]

    def setup(self, path, record, batch):
        self._setup(path, record, batch)

    @named(f"Ratio, random reads (cold, {FULL_COLD_MB // 1024} GiB file): "
           f"{TAKE} / {NP_MEMMAP}", unit=f"time({TAKE})/time(numpy.memmap)")
    def track_take_vs_numpy_memmap(self, path, record, batch):
        """Goal <= 0.05 (20x faster).  Without a hint numpy.memmap's page
        faults read ahead, so its time grows with the file, not the rows:
        the larger the batch, the closer its time per row comes to take's."""
        return self._cold_ratio(self._take, self._memmap)


def median_ratio(run: Callable[[int], object], baseline: Callable[[int], object],
                 rounds: int) -> float:
    """``median time(run(i)) / median time(baseline(i))`` over ``rounds``
    calls of each, taking turns (each call gets its own inputs ``i``)."""
    t_run, t_base = [], []
    for i in range(rounds):
        for fn, times in ((run, t_run), (baseline, t_base)):
            start = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - start)
    return statistics.median(t_run) / statistics.median(t_base)


class WarmTakeRatios(DataFileBenchmark):
    """Warm cache, every page mapped: take against np.take, numpy.memmap and
    os.pread on the same rows, fresh random indices for every call."""

    params = (RECORDS, BATCHES)
    param_names = ["record_bytes", "batch_rows"]

    def setup(self, path, record, batch):
        require("take")
        warm(path)
        stack = self.resources()
        f = stack.enter_context(mmarray.MappedFile(path))
        self.rows = _rows(f.array(np.float64), record)
        self.plain = self.rows.view(np.ndarray)
        self.memmap = _rows(np.memmap(path, np.float64, "r"), record)
        # Map every page now, so that no side pays the others' page faults.
        for a in (self.plain, self.memmap):
            a.sum()
        fd = os.open(path, os.O_RDONLY)
        stack.callback(os.close, fd)
        self.fd, self.record = fd, record
        n = FILE_BYTES // record
        # Two independent streams of fresh indices: for take and for the baseline.
        self.mine = [random_index(n, batch, seed=1_000 + i) for i in range(WARM_ROUNDS)]
        self.theirs = [random_index(n, batch, seed=2_000 + i) for i in range(WARM_ROUNDS)]
        self.offsets = [(idx * record).tolist() for idx in self.theirs]

    def _take(self, i: int) -> None:
        mmarray.take(self.rows, self.mine[i], axis=0)

    @named(f"Headline: random reads (warm, pages mapped), {TAKE} / {NP_TAKE}",
           unit="time(mmarray.take)/time(np.take)")
    def track_take_vs_np_take(self, path, record, batch):
        """Goal <= 1.3 for batches of 1,000 rows and more: take checks a few
        pages with mincore and, finding them resident, copies.  The median
        of 21 calls on a mapping opened in setup: the first 8 (the warm
        streak) check 1-4 pages each (~2.5 us a page here), the later ones
        one page a millisecond at most."""
        return median_ratio(self._take, lambda i: np.take(self.plain, self.theirs[i], axis=0),
                            WARM_ROUNDS)

    @named(f"Ratio, random reads (warm, pages mapped): {TAKE} / {NP_MEMMAP}",
           unit="time(mmarray.take)/time(numpy.memmap)")
    def track_take_vs_numpy_memmap(self, path, record, batch):
        """The same rows through a numpy.memmap of the file (also mapped)."""
        return median_ratio(self._take, lambda i: self.memmap[self.theirs[i]], WARM_ROUNDS)

    @named(f"Ratio, random reads (warm, pages mapped): {TAKE} / {PREAD}",
           unit="time(mmarray.take)/time(os.pread)")
    def track_take_vs_pread(self, path, record, batch):
        """A system call per row against one vectorised copy."""
        return median_ratio(
            self._take, lambda i: pread_loop(self.fd, self.record, self.offsets[i]), WARM_ROUNDS)
