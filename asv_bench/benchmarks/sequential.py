"""Sequential scans: sum the whole data file (float64) every way a numpy user might.

mmarray and numpy.memmap sum over a new mapping made in setup (pages cached
but not yet mapped); ``readinto`` reads 1 MiB chunks into one reused buffer
and sums each; ``numpy.fromfile`` reads everything into a new array; the
in-RAM ndarray is the ceiling.  ``peakmem_`` figures sit next to the times:
a mapped scan's pages count as resident memory (they are the page cache,
shared, and the kernel can drop them), a chunked scan's do not.
"""

from __future__ import annotations

import numpy as np

import mmarray

from .common import (
    COLD_REPEAT,
    FILE_BYTES,
    FULL_FILE_MB,
    IO_REPEAT,
    ColdFileBenchmark,
    DataFileBenchmark,
    evict,
    named,
    ratio_of,
    require_cold,
    resident_fraction,
    sum_readinto,
    warm,
)

MM, MM_SEQ = "mmarray", 'mmarray, advise("sequential")'
READINTO, FROMFILE, NP_MEMMAP, IN_RAM = (
    "readinto 1 MiB chunks", "numpy.fromfile", "numpy.memmap", "ndarray in RAM"
)
FILE_MIB = FILE_BYTES // (1 << 20)


class _Prepare:
    """Builds ``self.run`` for a scan method (mixed into the benchmark classes)."""

    number = 1

    def _prepare(self, path: str, method: str) -> None:
        stack = self.resources()
        if method in (MM, MM_SEQ):
            f = stack.enter_context(mmarray.MappedFile(path))
            if method == MM_SEQ:
                f.advise("sequential")
            self.run = f.array(np.float64).sum
        elif method == READINTO:
            fh = stack.enter_context(open(path, "rb", buffering=0))  # noqa: SIM115
            self.run = lambda: sum_readinto(fh)
        elif method == FROMFILE:
            self.run = lambda: np.fromfile(path, np.float64).sum()
        elif method == NP_MEMMAP:
            self.run = np.memmap(path, np.float64, "r").sum
        elif method == IN_RAM:
            self.run = np.fromfile(path, np.float64).sum
        else:
            raise ValueError(f"unknown method {method!r}")


class ScanWarm(_Prepare, DataFileBenchmark):
    """Sum of the whole file with the file in the page cache."""

    params = [[MM, MM_SEQ, READINTO, FROMFILE, NP_MEMMAP, IN_RAM]]
    param_names = ["method"]
    repeat = IO_REPEAT

    def setup(self, path, method):
        warm(path)
        self._prepare(path, method)

    @named(f"Sequential sum of the whole data file ({FULL_FILE_MB} MiB), warm cache")
    def time_sum(self, path, method):
        """One pass over the whole file; the in-RAM ndarray is the ceiling."""
        self.run()

    @named(f"Peak memory of a sequential sum of the data file ({FULL_FILE_MB} MiB), warm cache")
    def peakmem_sum(self, path, method):
        """Peak resident memory of the process, including mapped file pages
        (which the kernel may reclaim) and the in-RAM copy loaded in setup."""
        self.run()


class ScanCold(_Prepare, ColdFileBenchmark):
    """Sum of the whole file after dropping it from the page cache."""

    params = [[MM, MM_SEQ, READINTO, FROMFILE, NP_MEMMAP]]
    param_names = ["method"]
    repeat = COLD_REPEAT
    warmup_time = 0

    def setup(self, path, method):
        require_cold(path)
        self._prepare(path, method)

    @named(f"Sequential sum of the whole data file ({FULL_FILE_MB} MiB), cold cache")
    def time_sum(self, path, method):
        """Reads come from the device (or, in a VM, possibly the host's cache).
        A mapping relies on fault readahead; ``advise("sequential")`` asks
        for more of it."""
        self.run()


def _mapped_sum(path: str, advice: str = "none") -> float:
    with mmarray.MappedFile(path) as f:
        if advice != "none":
            f.advise(advice)
        return float(f.array(np.float64).sum())


def _readinto_sum(path: str) -> float:
    with open(path, "rb", buffering=0) as fh:
        return sum_readinto(fh)


class ScanRatios(DataFileBenchmark):
    """Headline ratios for sequential scans, warm cache (lower is better)."""

    def setup(self, path):
        warm(path)
        self.path = path

    @named("Headline: sequential sum (warm), mmarray / readinto 1 MiB chunks",
           unit="time(mmarray)/time(readinto)")
    def track_mmarray_vs_readinto(self, path):
        """``time(open + map + sum + close) / time(open + readinto loop + close)``
        over the whole data file (lower is better); goal: <= 1."""
        return ratio_of(lambda: _mapped_sum(path), lambda: _readinto_sum(path), rounds=10)

    @named("Headline: sequential sum (warm), mmarray / ndarray already in RAM",
           unit="time(mmarray)/time(in-RAM)")
    def track_mmarray_vs_in_ram(self, path):
        """The in-RAM array is loaded before timing (lower is better);
        goal: <= 1.11 (>= 0.9x its speed)."""
        data = np.fromfile(path, np.float64)
        return ratio_of(lambda: _mapped_sum(path), data.sum, rounds=10)



class EvictionCheck(ColdFileBenchmark):
    """Sanity check for every cold-cache figure."""

    @named("Page cache left right after evicting the data file (sanity check)",
           unit="fraction of file cached")
    def track_resident_after_evict(self, path):
        """Should be ~0 on a disk file system; if not, the cold figures are not cold.
        (On tmpfs it is 1: there, the cold benchmarks skip.)"""
        evict(path)
        return resident_fraction(path)


class ColdScanRatios(ColdFileBenchmark):
    """Sequential sum from a cold cache, with and without a hint."""

    params = [["none", "sequential"]]
    param_names = ["advice"]

    def setup(self, path, advice):
        require_cold(path)

    @named("Ratio, sequential sum (cold): mmarray / readinto 1 MiB chunks",
           unit="time(mmarray)/time(readinto)")
    def track_cold_mmarray_vs_readinto(self, path, advice):
        """Each run starts from an evicted file; the methods take turns."""
        return ratio_of(lambda: _mapped_sum(path, advice), lambda: _readinto_sum(path),
                          rounds=3, before=lambda: evict(path))


@named("Size of the data file of this run (256 = a full run, 8 = a smoke run)", unit="MiB")
def track_data_file_mib():
    """ASV_MMARRAY_FILE_MB: figures from runs of different sizes do not compare.
    Benchmark names quote the work per call of a full run; smaller runs do
    proportionally less."""
    return FILE_MIB
