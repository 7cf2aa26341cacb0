"""Access overheads: element and slice indexing, and open/close latency.

A 1 MiB float64 array stored as ``.npy`` is opened every way mmarray and
numpy offer.  ``MappedFile.array`` and ``np.asarray(MappedArray)`` are
ndarrays with no Python code on indexing; ``MappedArray`` and both memmaps
run a Python ``__getitem__``.  Loops use precomputed Python ints, as user
code would.  Benchmarks of names this mmarray lacks are skipped.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

import mmarray

from .common import (
    Benchmark,
    MiB,
    index_loop,
    named,
    random_index,
    ratio_of,
    require,
    scaled,
    slice_loop,
)

N_ITEMS = MiB // 8
# Work per call in a full run (the dashboard's names quote these; see common.py).
FULL_ACCESSES, FULL_OPENS = 200_000, 200
#: Indexing operations per call (a plain ndarray takes ~5-10 ms for them).
ACCESSES = scaled(FULL_ACCESSES, minimum=5_000)
#: Opens per call.
OPENS = scaled(FULL_OPENS, minimum=20)

NDARRAY, MAPPED_FILE, AS_ARRAY = "ndarray", "MappedFile.array", "np.asarray(MappedArray)"
MAPPED_ARRAY, MM_MEMMAP, NP_MEMMAP = "MappedArray", "mmarray.memmap", "numpy.memmap"
CONTAINERS = [NDARRAY, MAPPED_FILE, AS_ARRAY, MAPPED_ARRAY, MM_MEMMAP, NP_MEMMAP]
SCALAR, SLICE = "a[i]", "a[i:i+8]"
LOOPS = {SCALAR: index_loop, SLICE: slice_loop}


def _npy_file(bench: Benchmark) -> tuple[str, int]:
    """A fresh ``.npy`` of N_ITEMS float64 values; returns its path and data offset."""
    folder = bench.resources().enter_context(tempfile.TemporaryDirectory(prefix="mmarray-asv-"))
    path = os.path.join(folder, "a.npy")
    np.save(path, np.arange(N_ITEMS, dtype=np.float64))
    probe = np.load(path, mmap_mode="r")
    offset = probe.offset
    del probe
    return path, offset


def _container(bench: Benchmark, kind: str, path: str, offset: int):
    """The array to index, opened read-only; closed by teardown."""
    stack = bench.resources()
    if kind == NDARRAY:
        return np.load(path)
    if kind == MAPPED_FILE:
        f = stack.enter_context(mmarray.MappedFile(path))
        return f.array(np.float64, shape=N_ITEMS, offset=offset)
    if kind in (AS_ARRAY, MAPPED_ARRAY):
        require("open_array")
        arr = stack.enter_context(mmarray.open_array(path))
        return np.asarray(arr) if kind == AS_ARRAY else arr
    if kind == MM_MEMMAP:
        require("memmap")
        m = mmarray.memmap(path, np.float64, "r", offset=offset, shape=(N_ITEMS,))
        stack.callback(m.close)
        return m
    if kind == NP_MEMMAP:
        return np.memmap(path, np.float64, "r", offset=offset, shape=(N_ITEMS,))
    raise ValueError(f"unknown container {kind!r}")


class ElementAccess(Benchmark):
    """Loops of scalar reads ``a[i]`` or basic slices ``a[i:i+8]``."""

    params = (CONTAINERS, [SCALAR, SLICE])
    param_names = ["container", "operation"]
    number = 1

    def setup(self, kind, op):
        path, offset = _npy_file(self)
        a = _container(self, kind, path, offset)
        keys = random_index(N_ITEMS - 8, ACCESSES).tolist()
        loop = LOOPS[op]
        self.run = lambda: loop(a, keys)

    @named(f"Indexing: {FULL_ACCESSES:,} scalar reads or basic slices in a Python loop")
    def time_index(self, kind, op):
        """Compare each container with the plain ndarray row; the pages are
        mapped already, so this is pure indexing overhead."""
        self.run()


class AccessRatios(Benchmark):
    """Indexing cost relative to a plain ndarray (lower is better; 1 = same)."""

    params = [[MAPPED_FILE, AS_ARRAY, MAPPED_ARRAY, MM_MEMMAP, NP_MEMMAP]]
    param_names = ["container"]

    def setup(self, kind):
        path, offset = _npy_file(self)
        self.a = _container(self, kind, path, offset)
        self.plain = np.load(path)
        self.keys = random_index(N_ITEMS - 8, ACCESSES // 4).tolist()

    def _ratio(self, loop) -> float:
        a, plain, keys = self.a, self.plain, self.keys
        return ratio_of(lambda: loop(a, keys), lambda: loop(plain, keys), rounds=7)

    @named("Ratio, scalar a[i]: container / plain ndarray", unit="time(container)/time(ndarray)")
    def track_scalar_vs_ndarray(self, kind):
        """Goal for mmarray's ndarray views: <= 1.2."""
        return self._ratio(index_loop)

    @named("Ratio, basic slice a[i:i+8]: container / plain ndarray",
           unit="time(container)/time(ndarray)")
    def track_slice_vs_ndarray(self, kind):
        """Goal for mmarray's ndarray views: <= 1.5."""
        return self._ratio(slice_loop)


class MemmapRatios(Benchmark):
    """``mmarray.memmap`` against the ``numpy.memmap`` it replaces (lower is better)."""

    params = [[SCALAR, SLICE]]
    param_names = ["operation"]

    def setup(self, op):
        require("memmap")
        path, offset = _npy_file(self)
        self.ours = _container(self, MM_MEMMAP, path, offset)
        self.theirs = _container(self, NP_MEMMAP, path, offset)
        self.keys = random_index(N_ITEMS - 8, ACCESSES // 4).tolist()

    @named("Ratio, indexing: mmarray.memmap / numpy.memmap",
           unit="time(mmarray.memmap)/time(numpy.memmap)")
    def track_vs_numpy_memmap(self, op):
        """Goals: scalar <= 1, basic slice <= 0.5."""
        loop, ours, theirs, keys = LOOPS[op], self.ours, self.theirs, self.keys
        return ratio_of(lambda: loop(ours, keys), lambda: loop(theirs, keys), rounds=7)


def _open_close(kind: str, path: str, offset: int) -> None:
    if kind == "MappedFile":
        with mmarray.MappedFile(path):
            pass
    elif kind == "open_array":
        with mmarray.open_array(path):
            pass
    elif kind == MM_MEMMAP:
        mmarray.memmap(path, np.uint8, "r").close()
    elif kind == "numpy.load(mmap_mode='r')":
        np.load(path, mmap_mode="r")
    elif kind == NP_MEMMAP:
        np.memmap(path, np.uint8, "r")
    elif kind == "open()":
        with open(path, "rb"):
            pass
    else:
        raise ValueError(f"unknown opener {kind!r}")


class OpenClose(Benchmark):
    """Open and close (or drop) a 1 MiB ``.npy`` file."""

    params = [["MappedFile", "open_array", MM_MEMMAP, "numpy.load(mmap_mode='r')", NP_MEMMAP,
               "open()"]]
    param_names = ["opener"]
    number = 1

    def setup(self, kind):
        if kind in ("open_array", MM_MEMMAP):
            require({"open_array": "open_array", MM_MEMMAP: "memmap"}[kind])
        path, offset = _npy_file(self)
        self.run = lambda: [_open_close(kind, path, offset) for _ in range(OPENS)]

    @named(f"Open + close latency: {FULL_OPENS} opens of a 1 MiB .npy file")
    def time_open_close(self, kind):
        """``open_array`` and ``numpy.load(mmap_mode='r')`` parse the header;
        the others map raw bytes; ``open()`` is the system-call floor."""
        self.run()


class OpenRatios(Benchmark):
    """Open latency relative to numpy's (lower is better)."""

    def setup(self):
        require("open_array")
        self.path, self.offset = _npy_file(self)

    @named("Ratio, open + close: open_array / numpy.load(mmap_mode='r')",
           unit="time(open_array)/time(np.load)")
    def track_open_array_vs_np_load(self):
        """Goal: <= 1."""
        path, offset = self.path, self.offset

        def ours():
            for _ in range(OPENS):
                _open_close("open_array", path, offset)

        def theirs():
            for _ in range(OPENS):
                _open_close("numpy.load(mmap_mode='r')", path, offset)

        return ratio_of(ours, theirs, rounds=7)
