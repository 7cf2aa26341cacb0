"""Random reads: a mapping (mmarray, numpy.memmap) against buffered reads and os.pread.

Records of 8 B (one float64), 64 B and 4 KiB (opaque ``V64``/``V4096``
records, whose scalars are copies like the bytes ``f.read`` returns) at
random offsets of the shared data file.  Setup opens a new handle -- a new
mapping for mmarray and numpy.memmap -- before every timed call, so the
pages are cached ("warm") but not yet mapped and first-touch page faults
count.  Warm benchmarks give no readahead hint unless the method says
``advise("random")``; the cold ones compare no hint with
``advise("random")``.
"""

from __future__ import annotations

import os

import numpy as np

import mmarray

from .common import (
    COLD_REPEAT,
    FILE_BYTES,
    IO_REPEAT,
    ColdFileBenchmark,
    DataFileBenchmark,
    evict,
    index_loop,
    named,
    pread_loop,
    random_index,
    ratio_of,
    record_dtype,
    require_cold,
    resident_fraction,
    scaled,
    seek_read_loop,
    warm,
)

RECORDS = [8, 64, 4096]
# Work per call in a full run (the dashboard's names quote these; see common.py).
FULL_LOOP_READS = 100_000
FULL_GATHER_READS = {8: 1_000_000, 64: 250_000, 4096: 10_000}
FULL_COLD_READS = 2_000
#: Reads per call for Python loops (one call per read).
LOOP_READS = scaled(FULL_LOOP_READS)
#: Reads per call for vectorised gathers: enough for >= 5 ms at each size.
GATHER_READS = {r: scaled(n) for r, n in FULL_GATHER_READS.items()}
#: Reads per call from a cold cache (each may wait for the disk).
COLD_READS = scaled(FULL_COLD_READS)

MM_LOOP, NP_LOOP = "mmarray a[i]", "numpy.memmap m[i]"
BUFFERED, PREAD = "f.seek+f.read", "os.pread"
MM_GATHER, MM_GATHER_RANDOM = "mmarray a[idx]", 'mmarray a[idx], advise("random")'
NP_GATHER = "numpy.memmap m[idx]"


class _Prepare:
    """Builds ``self.run`` for a read method (mixed into the benchmark classes)."""

    number = 1

    def _prepare(self, path: str, record: int, method: str, reads: int) -> None:
        dtype = record_dtype(record)
        index = random_index(FILE_BYTES // record, reads)
        keys, offsets = index.tolist(), (index * record).tolist()
        stack = self.resources()
        if method in (MM_LOOP, MM_GATHER, MM_GATHER_RANDOM):
            f = stack.enter_context(mmarray.MappedFile(path))
            if method == MM_GATHER_RANDOM:
                f.advise("random")
            a = f.array(dtype)
        elif method in (NP_LOOP, NP_GATHER):
            a = np.memmap(path, dtype, "r")
        if method in (MM_LOOP, NP_LOOP):
            self.run = lambda: index_loop(a, keys)
        elif method in (MM_GATHER, MM_GATHER_RANDOM, NP_GATHER):
            self.run = lambda: a[index]
        elif method == BUFFERED:
            fh = stack.enter_context(open(path, "rb"))  # noqa: SIM115 -- closed in teardown
            self.run = lambda: seek_read_loop(fh, record, offsets)
        elif method == PREAD:
            fd = os.open(path, os.O_RDONLY)
            stack.callback(os.close, fd)
            self.run = lambda: pread_loop(fd, record, offsets)
        else:
            raise ValueError(f"unknown method {method!r}")


class RandomReadLoops(_Prepare, DataFileBenchmark):
    """Warm cache, one Python call per record read."""

    params = (RECORDS, [MM_LOOP, NP_LOOP, BUFFERED, PREAD])
    param_names = ["record_bytes", "method"]
    repeat = IO_REPEAT

    def setup(self, path, record, method):
        warm(path)
        self._prepare(path, record, method, LOOP_READS)

    @named(f"Random reads (warm): Python loop of {FULL_LOOP_READS:,} single-record reads")
    def time_loop(self, path, record, method):
        """Time for the whole loop of 100,000 reads in a full run (divide by
        the reads per call for a per-read cost).

        ``a[i]`` on a mapping is a memory access; ``f.seek`` + ``f.read``
        and ``os.pread`` are system calls.
        """
        self.run()


class RandomGather(_Prepare, DataFileBenchmark):
    """Warm cache, one vectorised fancy-index call reads every record."""

    params = (RECORDS, [MM_GATHER, MM_GATHER_RANDOM, NP_GATHER])
    param_names = ["record_bytes", "method"]
    repeat = IO_REPEAT

    def setup(self, path, record, method):
        warm(path)
        self._prepare(path, record, method, GATHER_READS[record])

    @named(
        "Random reads (warm): one vectorised gather a[idx] of "
        + ", ".join(f"{n:,} x {r} B" for r, n in FULL_GATHER_READS.items())
        + " records"
    )
    def time_gather(self, path, record, method):
        """Time for ``a[idx]`` over a new mapping (pages cached, not yet mapped).

        ``advise("random")`` turns off readahead *and* fault-around, so a warm
        gather may take more page faults with it than without.
        """
        self.run()


class RandomReadsCold(_Prepare, ColdFileBenchmark):
    """Cold cache: the file is synced and dropped from the page cache before each call."""

    params = ([8, 4096], [MM_GATHER, MM_GATHER_RANDOM, NP_GATHER, BUFFERED, PREAD])
    param_names = ["record_bytes", "method"]
    repeat = COLD_REPEAT
    warmup_time = 0

    def setup(self, path, record, method):
        require_cold(path)
        self._prepare(path, record, method, COLD_READS)

    @named(f"Random reads (cold): {FULL_COLD_READS:,} records from a file not in the page cache")
    def time_cold(self, path, record, method):
        """Without a hint, each page fault on a mapping reads ahead (up to the
        device's read_ahead_kb), which can pull most of the file in;
        ``advise("random")`` reads only the pages touched.  In a virtual
        machine "cold" reads may still come from the host's cache.
        """
        self.run()


class RandomReadRatios(DataFileBenchmark):
    """Headline ratios for random reads, warm cache (lower is better)."""

    params = [RECORDS]
    param_names = ["record_bytes"]

    def setup(self, path, record):
        warm(path)
        self.path, self.record = path, record
        self.dtype = record_dtype(record)
        self.index = random_index(FILE_BYTES // record, LOOP_READS)
        self.keys = self.index.tolist()
        self.offsets = (self.index * record).tolist()

    def _buffered(self):
        with open(self.path, "rb") as fh:
            seek_read_loop(fh, self.record, self.offsets)

    def _gather(self):
        with mmarray.MappedFile(self.path) as f:
            f.array(self.dtype)[self.index]

    def _loop(self):
        with mmarray.MappedFile(self.path) as f:
            index_loop(f.array(self.dtype), self.keys)

    @named("Headline: random reads (warm), mmarray gather a[idx] / f.seek+f.read loop",
           unit="time(mmarray)/time(buffered)")
    def track_gather_vs_buffered(self, path, record):
        """``time(open + a[idx] + close) / time(open + f.seek/f.read loop + close)``
        for the same reads, 100,000 in a full run (lower is better: 0.01 = 100x
        faster); goal at 8 B: <= 0.01."""
        return ratio_of(self._gather, self._buffered)

    @named("Ratio, random reads (warm): gather over pages already mapped / f.seek+f.read loop",
           unit="time(mmarray)/time(buffered)")
    def track_gather_mapped_vs_buffered(self, path, record):
        """As the gather ratio, but the mapping is reused and its pages are
        already mapped (a second pass in the same session)."""
        with mmarray.MappedFile(self.path) as f:
            a = f.array(self.dtype)
            a[self.index]
            return ratio_of(lambda: a[self.index], self._buffered)

    @named("Ratio, random reads (warm): Python loop of a[i] / f.seek+f.read loop",
           unit="time(mmarray)/time(buffered)")
    def track_loop_vs_buffered(self, path, record):
        """One Python-level read per record on both sides."""
        return ratio_of(self._loop, self._buffered)


class ColdRandomReadRatios(ColdFileBenchmark):
    """Ratios for random reads from a cold cache, with and without a hint."""

    params = ([8, 4096], ["none", "random"])
    param_names = ["record_bytes", "advice"]

    def setup(self, path, record, advice):
        require_cold(path)
        self.path, self.record, self.advice = path, record, advice
        self.dtype = record_dtype(record)
        self.index = random_index(FILE_BYTES // record, COLD_READS)
        self.offsets = (self.index * record).tolist()

    def _gather(self):
        with mmarray.MappedFile(self.path) as f:
            if self.advice != "none":
                f.advise(self.advice)
            f.array(self.dtype)[self.index]

    def _buffered(self):
        with open(self.path, "rb") as fh:
            seek_read_loop(fh, self.record, self.offsets)

    @named("Ratio, random reads (cold): mmarray gather a[idx] / f.seek+f.read loop",
           unit="time(mmarray)/time(buffered)")
    def track_cold_gather_vs_buffered(self, path, record, advice):
        """Each run starts from an evicted file; the methods take turns."""
        return ratio_of(self._gather, self._buffered, rounds=3,
                          before=lambda: evict(self.path))

    @named("Page cache used by cold random reads through a mapping",
           unit="fraction of file cached")
    def track_cold_gather_footprint(self, path, record, advice):
        """Fraction of the file in the page cache after one cold gather: how
        much readahead pulled in (1.0 = the whole file) for a few reads."""
        evict(self.path)
        self._gather()
        return resident_fraction(self.path)
