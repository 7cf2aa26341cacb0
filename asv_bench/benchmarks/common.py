"""Helpers shared by the mmarray benchmarks.

Sizes
-----
``ASV_MMARRAY_FILE_MB`` (default 256) sizes the data file that the read,
scan and write benchmarks use; ``ASV_MMARRAY_FILE_MB=8`` makes a smoke run
of a few seconds.  Work per call (reads per call, rows appended, ...)
scales down with it, so smoke figures are not comparable with full ones.

Names on the dashboard
----------------------
asv shows each benchmark's ``pretty_name`` (set with :func:`named`), its
parameter names and its ``unit``.  The names quote the work per call of a
*full* run (``FULL_*`` constants), never the scaled one: asv keeps one copy
of the names (``benchmarks.json``), rewritten by every run, smoke runs
included, while the dashboard shows results of many runs.
``sequential.track_data_file_mib`` tells which runs were smaller.  The
headline ratios start with "Headline:" so that they sort together in the
dashboard's benchmark list.

Rules every I/O benchmark here follows
--------------------------------------
* ``number = 1``: asv_runner 0.3 re-runs ``setup`` before every timed call
  (asv#1613), so a call must be big enough (>= ~5 ms at 256 MiB) to time
  on its own.
* Setup opens a fresh handle before every call.  "Warm" means the file is
  in the page cache but not yet mapped: first-touch page faults count.
* "Cold" setups sync the file and drop it from the page cache with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` *before* mapping it (pages that a
  live mapping touched would stay).  On tmpfs there is no cold case: those
  benchmarks skip (setup raises ``NotImplementedError``).
* Readahead hints are stated in each benchmark's parameters.
* ``track_*`` ratios are ``time(mmarray) / time(baseline)`` measured in one
  process with the methods taking turns (lower is better, as asv assumes).

The suite uses only mmarray's public names, so that it can benchmark older
commits; the page-cache helpers duplicate ``mmarray/_bench/cache.py`` on purpose.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

import mmarray
from mmarray._bench.cache import evict, filesystem_type  # one copy, shared with mmarray bench

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: Size of the data file in a full run (the default).
FULL_FILE_MB = 256
FILE_MB = int(os.environ.get("ASV_MMARRAY_FILE_MB", str(FULL_FILE_MB)))
FILE_BYTES = FILE_MB * MiB
#: Fraction of the full-size work that each call does (1 at 256 MiB and above).
SCALE = min(1.0, FILE_MB / FULL_FILE_MB)
#: Chunk size of the buffered ``readinto`` baseline.
CHUNK = MiB
SEED = 5
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "hugetlbfs"})
#: Benchmarks whose calls do disk I/O: one call per sample, few samples.
IO_REPEAT = (2, 5, 10.0)
COLD_REPEAT = (1, 3, 30.0)


def scaled(n: int, minimum: int = 100) -> int:
    """``n`` for a full run, proportionally less (at least ``minimum``) for a smoke run."""
    return max(minimum, int(n * SCALE))


def named(pretty_name: str, unit: str | None = None) -> Callable:
    """Set asv's ``pretty_name`` (and a ``track_`` benchmark's ``unit``)."""

    def mark(func: Callable) -> Callable:
        func.pretty_name = pretty_name
        if unit is not None:
            func.unit = unit
        return func

    return mark


def require(*names: str) -> None:
    """Skip the benchmark (asv treats NotImplementedError in setup as a skip)
    when this mmarray lacks ``names``."""
    missing = [n for n in names if not hasattr(mmarray, n)]
    if missing:
        raise NotImplementedError(f"this mmarray has no {', '.join(missing)}")


def record_dtype(nbytes: int) -> np.dtype:
    """float64 for 8 B records, else opaque ``V<n>`` records (their scalars
    are copies, like ``f.read``; structured scalars would be views)."""
    return np.dtype(np.float64) if nbytes == 8 else np.dtype((np.void, nbytes))


def random_index(n_items: int, count: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_items, count)


# -- files and the page cache -------------------------------------------------------


def write_random_file(path: str, nbytes: int) -> str:
    """Write ``nbytes`` of random float64 values, synced; return the absolute path."""
    path = os.path.abspath(path)
    rng = np.random.default_rng(SEED)
    with open(path, "wb") as f:
        for start in range(0, nbytes, 8 * MiB):
            f.write(rng.random(min(8 * MiB, nbytes - start) // 8))
        f.flush()
        os.fsync(f.fileno())
    return path


def sum_readinto(fh) -> float:
    """Sum float64 values from the current position of a raw file, 1 MiB at a time."""
    buf = bytearray(CHUNK)
    values = np.frombuffer(buf, np.float64)
    total = 0.0
    while n := fh.readinto(buf):
        total += float(values[: n // 8].sum())
    return total


def warm(path: str) -> None:
    """Read the whole file so that it is in the page cache."""
    with open(path, "rb", buffering=0) as fh:
        sum_readinto(fh)


def resident_fraction(path: str) -> float:
    """Fraction of ``path``'s pages in the page cache (``mincore``).

    Maps the file without touching it, so asking does not change the answer.
    """
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("mincore is only asked on Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        view = np.frombuffer(m, np.uint8)
        vec = np.zeros(-(-view.size // mmap.PAGESIZE), np.uint8)
        rc = libc.mincore(view.ctypes.data, view.size, vec.ctypes.data)
        del view
    finally:
        m.close()
    if rc != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return float((vec & 1).mean())


def require_cold(path: str) -> None:
    """Skip unless ``path`` can be dropped from the page cache; then drop it."""
    if not hasattr(os, "posix_fadvise"):
        raise NotImplementedError("no posix_fadvise: a cold cache cannot be staged")
    fstype = filesystem_type(path)
    if fstype in MEMORY_FILESYSTEMS:
        raise NotImplementedError(f"{path} is on {fstype}: there is no cold cache")
    evict(path)
    with contextlib.suppress(NotImplementedError):
        left = resident_fraction(path)
        if left > 0.5:
            raise NotImplementedError(f"{left:.0%} of the file stayed cached after eviction")


# -- timing inside track_ benchmarks ----------------------------------------------------


def best_times(
    runs: Sequence[Callable[[], object]], rounds: int, before: Callable[[], None] | None = None
) -> list[float]:
    """Best time of each run over ``rounds`` rounds in which the runs take
    turns, so that a burst of noise on a shared machine slows all alike."""
    best = [math.inf] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            if before is not None:
                before()
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def ratio_of(
    run: Callable[[], object],
    baseline: Callable[[], object],
    rounds: int = 5,
    before: Callable[[], None] | None = None,
) -> float:
    """``best time(run) / best time(baseline)``."""
    t_run, t_base = best_times([run, baseline], rounds, before)
    return t_run / t_base


# -- loops that the read benchmarks and ratios share -------------------------------------


def index_loop(a, keys: list[int]) -> None:
    for i in keys:
        a[i]


def slice_loop(a, keys: list[int]) -> None:
    for i in keys:
        a[i : i + 8]


def seek_read_loop(fh, record: int, offsets: list[int]) -> None:
    for offset in offsets:
        fh.seek(offset)
        fh.read(record)


def pread_loop(fd: int, record: int, offsets: list[int]) -> None:
    for offset in offsets:
        os.pread(fd, record, offset)


# -- base classes ----------------------------------------------------------------------


class Benchmark:
    """Teardown releases whatever setup registered with :meth:`resources`,
    even when setup stopped halfway (asv calls teardown after a failed or
    skipped setup too)."""

    def resources(self) -> contextlib.ExitStack:
        stack = self.__dict__.get("_stack")
        if stack is None:
            stack = self._stack = contextlib.ExitStack()
        return stack

    def teardown(self, *args) -> None:
        stack = self.__dict__.get("_stack")
        # Drop everything setup made, so arrays do not keep mappings alive.
        self.__dict__.clear()
        if stack is not None:
            stack.close()


class DataFileBenchmark(Benchmark):
    """Benchmarks that read one shared data file of random float64 values
    from a warm page cache.

    asv keys ``setup_cache`` by module and line, so every subclass shares
    this one: the file is written once per run, in asv's working folder.
    """

    def setup_cache(self) -> str:
        return write_random_file("mmarray-asv-data.bin", FILE_BYTES)

    setup_cache.timeout = 300


class ColdFileBenchmark(Benchmark):
    """Benchmarks that evict their data file: they get a file of their own.

    Evicting a file and reading scattered pages back leaves it cached in
    small pieces (folios), and a later *warm* first pass through a new
    mapping then takes many more page faults -- 10-20x slower for random
    8 B gathers on Linux 6.18.  Keeping cold and warm files apart keeps the
    warm figures independent of the order asv runs benchmarks in.
    """

    def setup_cache(self) -> str:
        return write_random_file("mmarray-asv-cold.bin", FILE_BYTES)

    setup_cache.timeout = 300
