"""Growth: appending rows to a ``MappedArray`` and enlarging mapped files.

Rows are ticks, ``[("t", "<i8"), ("price", "<f8"), ("qty", "<u4")]``
(20 bytes).  The alternatives are what a numpy user would otherwise write:
collect batches in a list and ``np.concatenate`` them, or append raw bytes
to a file with ``f.write``.  Files live in a fresh temporary folder per
call.  Benchmarks of names this mmarray lacks are skipped.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

import mmarray

from .common import FILE_BYTES, Benchmark, KiB, MiB, named, require, scaled

TICK = np.dtype([("t", "<i8"), ("price", "<f8"), ("qty", "<u4")])
# Work per call in a full run (the dashboard's names quote these; see common.py).
FULL_APPENDS = {1: 2_000, 100: 2_000, 10_000: 100}
FULL_GROW_STEPS = 256
#: (appends per call) for each batch size: every call takes >= ~5 ms.
APPENDS = {1: scaled(FULL_APPENDS[1]), 100: scaled(FULL_APPENDS[100]),
           10_000: scaled(FULL_APPENDS[10_000], minimum=5)}
MM, MM_CAPACITY = "MappedArray.append", "MappedArray.append, capacity reserved"
LIST, FILE_WRITE = "list + np.concatenate", "f.write(rows)"
#: Rows for the scaling check (10^7 rows = 200 MB), capped by the data-file size.
SCALING_ROWS = [n for n in (10**4, 10**5, 10**6, 10**7) if n * TICK.itemsize <= FILE_BYTES
                or n <= 10**5]
SCALING_BATCH = 100
#: Enlargement: steps per call and bytes per step.
GROW_STEPS = scaled(FULL_GROW_STEPS, minimum=16)
GROW_STEP = 256 * KiB


def _scratch(bench: Benchmark, name: str) -> str:
    folder = bench.resources().enter_context(tempfile.TemporaryDirectory(prefix="mmarray-asv-"))
    return os.path.join(folder, name)


class Append(Benchmark):
    """Append rows in batches of 1, 100 or 10,000."""

    params = ([1, 100, 10_000], [MM, MM_CAPACITY, LIST, FILE_WRITE])
    param_names = ["batch_rows", "method"]
    number = 1

    def setup(self, batch, method):
        if method in (MM, MM_CAPACITY):
            require("open_array")
        path = _scratch(self, "ticks.npy")
        rows = np.zeros(batch, TICK)
        count = APPENDS[batch]
        stack = self.resources()
        if method in (MM, MM_CAPACITY):
            capacity = batch * count if method == MM_CAPACITY else None
            arr = stack.enter_context(
                mmarray.open_array(path, "w+", dtype=TICK, shape=(0,), capacity=capacity)
            )

            def run():
                for _ in range(count):
                    arr.append(rows)

        elif method == LIST:

            def run():
                parts = []
                for _ in range(count):
                    parts.append(rows)
                return np.concatenate(parts)

        else:
            fh = stack.enter_context(open(path, "wb"))  # noqa: SIM115 -- closed in teardown

            def run():
                for _ in range(count):
                    fh.write(rows)
                fh.flush()

        self.run = run

    @named("Append rows in batches of " + " / ".join(f"{b:,}" for b in FULL_APPENDS)
           + " rows: " + " / ".join(f"{n:,}" for n in FULL_APPENDS.values())
           + " appends per call")
    def time_append(self, batch, method):
        """Whole loop; the list's final ``np.concatenate`` and the file's
        ``f.flush()`` are included, a MappedArray's header update (at
        flush/close) is not."""
        self.run()


def _append_rows(path: str, total: int) -> float:
    """Seconds to append ``total`` rows in batches of SCALING_BATCH to a new array."""
    rows = np.zeros(SCALING_BATCH, TICK)
    with mmarray.open_array(path, "w+", dtype=TICK, shape=(0,)) as arr:
        start = time.perf_counter()
        for _ in range(total // SCALING_BATCH):
            arr.append(rows)
        elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


class AppendScaling(Benchmark):
    """Amortised cost of append: time per row as the array grows."""

    params = [SCALING_ROWS]
    param_names = ["total_rows"]
    timeout = 300

    def setup(self, total):
        require("open_array")
        self.path = _scratch(self, "grow.npy")

    @named(f"Append: time per row, {SCALING_BATCH}-row batches into a new array",
           unit="seconds")
    def track_seconds_per_row(self, total):
        """Best of a few runs; flat across sizes means appends are O(1) amortised."""
        rounds = 5 if total <= 10**5 else 2
        return min(_append_rows(self.path, total) for _ in range(rounds)) / total

    @named("Headline: append, time per row at this size / at 10,000 rows",
           unit="(time per row)/(time per row at 10,000 rows)")
    def track_per_row_vs_10k(self, total):
        """``MappedArray.append`` of 100-row batches into a new array; 1 means
        flat.  Goal: about 1 (or lower) up to 10^7 rows: appends amortised O(1)."""
        small = min(_append_rows(self.path, 10**4) for _ in range(20)) / 10**4
        rounds = 5 if total <= 10**5 else 2
        big = min(_append_rows(self.path, total) for _ in range(rounds)) / total
        return big / small


class Enlarge(Benchmark):
    """Grow a mapped file step by step, writing into the first page of each new part."""

    MF_RESIZE, MF_REOPEN = "MappedFile.resize", "MappedFile(capacity=) reopen"
    NP_REOPEN, MA_RESIZE = "numpy.memmap reopen, larger shape", "MappedArray.resize"
    params = [[MF_RESIZE, MF_REOPEN, NP_REOPEN, MA_RESIZE]]
    param_names = ["method"]
    number = 1

    def setup(self, method):
        if method == self.MA_RESIZE:
            require("open_array")
        path = _scratch(self, "grow.bin")
        # (new size, offset of the new part) for each step
        steps = [(GROW_STEP * (k + 2), GROW_STEP * (k + 1)) for k in range(GROW_STEPS)]
        one = np.uint8(1)
        if method == self.MF_RESIZE:

            def run():
                with mmarray.MappedFile(path, "w+", capacity=GROW_STEP) as f:
                    for size, new in steps:
                        f.resize(size)
                        f.write(new, one)

        elif method == self.MF_REOPEN:

            def run():
                with mmarray.MappedFile(path, "w+", capacity=GROW_STEP):
                    pass
                for size, new in steps:
                    with mmarray.MappedFile(path, "r+", capacity=size) as f:
                        f.write(new, one)

        elif method == self.NP_REOPEN:

            def run():
                np.memmap(path, np.uint8, "w+", shape=(GROW_STEP,))
                for size, new in steps:
                    m = np.memmap(path, np.uint8, "r+", shape=(size,))
                    m[new] = 1
                    del m

        else:

            def run():
                with mmarray.open_array(path, "w+", dtype=np.uint8, shape=(GROW_STEP,)) as a:
                    for size, new in steps:
                        a.resize(size)
                        a[new] = 1

        self.run = run

    @named(f"Enlarge a mapped file {FULL_GROW_STEPS} times by {GROW_STEP // KiB} KiB "
           f"(to {(FULL_GROW_STEPS + 1) * GROW_STEP // MiB} MiB)")
    def time_enlarge(self, method):
        """Each step makes the file longer, maps the new part and writes one
        byte into its first page (a hole in a sparse file: the write faults
        in a new block).  Closing at the end is included, so is the flush
        that a MappedArray does on close."""
        self.run()
