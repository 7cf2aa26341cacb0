"""What ``mmarray bench`` times: the methods, and the sections that group them.

**Adding a benchmark** happens here and only here: write the function that
does one run (it gets a :class:`Workload`), wrap it in a :class:`Method`,
and put the method in a section of :data:`SECTIONS` (or add a section).
The runner times every method of every section, the table prints every
row; only :func:`~mmarray._bench.report.verdict` needs a sentence if the new
row deserves one.

Every run opens its own handle (a new mapping for mmarray and
numpy.memmap), so the figures include first-touch page faults; methods
whose names say "pages already mapped" or "in RAM" prepare untimed.

Labels say whose method a row measures.  "mapping:" rows index the plain
ndarray that :meth:`MappedFile.array <mmarray.MappedFile.array>` returns:
``mmap`` plus numpy's own indexing, which is what ``numpy.memmap`` does
too, so it has no row of its own there.  It has one where its method
differs: a loop of ``m[i]`` runs its Python ``__getitem__`` for every
element.  "mmarray" rows use what only mmarray offers (``take``,
``advise``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._file import MappedFile
from .._take import take
from .units import KiB, MiB

RECORD_SIZES = (8, 64, 4 * KiB)
#: Chunk size of the ``readinto`` baseline.
CHUNK = 1 * MiB
#: Rows per batch of the batched gather: 1 MiB of 4 KiB rows, small enough
#: for the CPU's cache (see :data:`BATCHED_GATHER`).
BATCH = 256


@dataclass
class Workload:
    """Inputs of one measurement; every run does the same work."""

    path: str
    record: int = 0  #: bytes per record (random reads)
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float64))
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    index_list: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    advice: str | None = None


def record_dtype(nbytes: int) -> np.dtype:
    """float64 for 8 B records, else an opaque ``V<n>`` record whose scalars
    are copies (structured scalars would be views that read nothing)."""
    return np.dtype(np.float64) if nbytes == 8 else np.dtype((np.void, nbytes))


def random_workload(path: str, size: int, record: int, reads: int,
                    rng: np.random.Generator) -> Workload:
    """``reads`` records of ``record`` bytes at random offsets of a file of ``size`` bytes."""
    index = rng.integers(0, size // record, reads)
    return Workload(path, record, record_dtype(record), index, index.tolist(),
                    (index * record).tolist())


# -- one run of each method ---------------------------------------------------------


def _gather(w: Workload) -> None:
    with MappedFile(w.path) as f:
        if w.advice:
            f.advise(w.advice)
        f.array(w.dtype)[w.index]


def _take(w: Workload) -> None:
    with MappedFile(w.path) as f:
        # Records as rows of float64, the shape a user gives take (4 KiB: 512 columns).
        rows = f.array(np.float64).reshape(-1, w.record // 8)
        take(rows, w.index, axis=0)
        del rows


def _gather_batches(w: Workload) -> None:
    with MappedFile(w.path) as f:
        a = f.array(w.dtype)
        for start in range(0, len(w.index), BATCH):
            a[w.index[start : start + BATCH]]  # each batch dropped, as the loop's rows are
        del a


def _loop(w: Workload) -> None:
    # Each a[i] is a new scalar holding a copy of the record (record_dtype),
    # dropped at once, as the buffered and pread loops drop their bytes.
    with MappedFile(w.path) as f:
        a = f.array(w.dtype)
        for i in w.index_list:
            a[i]
        del a


def _numpy_memmap_loop(w: Workload) -> None:
    m = np.memmap(w.path, w.dtype, "r")
    for i in w.index_list:
        m[i]
    del m  # unmaps: the next run maps afresh


def _buffered(w: Workload) -> None:
    with open(w.path, "rb") as fh:
        for offset in w.offsets:
            fh.seek(offset)
            fh.read(w.record)


def _pread(w: Workload) -> None:
    fd = os.open(w.path, os.O_RDONLY)
    try:
        for offset in w.offsets:
            os.pread(fd, w.record, offset)
    finally:
        os.close(fd)


def _sum_mapped(w: Workload) -> float:
    with MappedFile(w.path) as f:
        if w.advice:
            f.advise(w.advice)
        return float(f.array(np.float64).sum())


def sum_readinto(w: Workload) -> float:
    """The sequential baseline; also reads a file into the page cache."""
    buf = bytearray(CHUNK)
    values = np.frombuffer(buf, np.float64)
    total = 0.0
    with open(w.path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            total += float(values[: n // 8].sum())
    return total


Runner = Callable[[Workload], "contextlib.AbstractContextManager[Callable[[], Any]]"]


def _each_run(fn: Callable[[Workload], Any]) -> Runner:
    """A method whose every run is ``fn(workload)`` with no setup."""

    @contextlib.contextmanager
    def runner(w: Workload) -> Iterator[Callable[[], Any]]:
        yield lambda: fn(w)

    return runner


@contextlib.contextmanager
def _gather_mapped(w: Workload) -> Iterator[Callable[[], Any]]:
    with MappedFile(w.path) as f:
        a = f.array(w.dtype)
        a[w.index]  # untimed first pass: maps the pages the timed runs read
        yield lambda: a[w.index]


@contextlib.contextmanager
def _sum_in_ram(w: Workload) -> Iterator[Callable[[], Any]]:
    data = np.fromfile(w.path, np.float64)
    yield lambda: float(data.sum())


# -- methods and sections ----------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    key: str  #: stable name used in JSON and by the verdict
    label: str  #: words for the table
    runner: Runner
    advice: str | None = None  #: passed to the workload (``MappedFile.advise``)
    baseline: bool = False  #: the section's ratios are against this method
    needs_ram: bool = False  #: skipped when the file is over half the free memory


@dataclass(frozen=True)
class Section:
    """Methods timed on the same workload, with one baseline among them."""

    test: Literal["random", "sequential"]
    cache: Literal["warm", "cold"]
    methods: tuple[Method, ...]
    record: int | None = None  #: bytes per record (random reads)
    #: "main": the ``--size`` file; "cold": the ``--cold-size`` file.
    scratch: Literal["main", "cold"] = "main"


BUFFERED = Method("buffered", "buffered: f.seek + f.read loop", _each_run(_buffered),
                  baseline=True)
PREAD = Method("pread", "os.pread loop", _each_run(_pread))
#: The 4 KiB section's answer to "why does the loop beat the gather": the
#: gather writes every row into one new array (80 MB for 20,000 rows), the
#: loop copies each row into a scalar it drops.  Gathering 1 MiB at a time
#: and dropping each batch shows what the destination costs.
BATCHED_GATHER = Method("mapping-gather-batches",
                        f"mapping: gather a[idx], {BATCH} rows at a time",
                        _each_run(_gather_batches))
RANDOM_WARM = (
    Method("mapping-gather", "mapping: gather a[idx] (new mapping)", _each_run(_gather)),
    Method("mapping-gather-mapped", "mapping: gather a[idx] (pages already mapped)",
           _gather_mapped),
    Method("mmarray-take", "mmarray.take(a, idx, axis=0) (new mapping)", _each_run(_take)),
    Method("mapping-loop", "mapping: Python loop of a[i] (new mapping)", _each_run(_loop)),
    Method("numpy-memmap-loop", "numpy.memmap: Python loop of m[i] (new mapping)",
           _each_run(_numpy_memmap_loop)),
    BUFFERED,
    PREAD,
)
RANDOM_COLD = (
    Method("mapping-gather", "mapping: gather a[idx], no hint", _each_run(_gather)),
    Method("mmarray-gather-random", 'mmarray: gather a[idx], advise("random")',
           _each_run(_gather), advice="random"),
    Method("mmarray-take", "mmarray.take(a, idx, axis=0)", _each_run(_take)),
    BUFFERED,
    PREAD,
)
SEQUENTIAL_WARM = (
    Method("mapping-sum", "mapping: a.sum() (new mapping)", _each_run(_sum_mapped)),
    Method("mmarray-sum-sequential", 'mmarray: a.sum(), advise("sequential")',
           _each_run(_sum_mapped), advice="sequential"),
    Method("readinto", "buffered: readinto 1 MiB chunks, sum each", _each_run(sum_readinto),
           baseline=True),
    Method("in-ram", "ndarray already in RAM: a.sum() (reference)", _sum_in_ram,
           needs_ram=True),
)
SEQUENTIAL_COLD = SEQUENTIAL_WARM[:3]


def _random_warm(record: int) -> tuple[Method, ...]:
    if record < 4 * KiB:
        return RANDOM_WARM
    return (*RANDOM_WARM[:5], BATCHED_GATHER, *RANDOM_WARM[5:])


#: Everything ``mmarray bench`` measures, in order.  The warm sections come
#: first: evicting a file and reading scattered pages back leaves it cached
#: in small folios, which slows a later warm first pass.  Cold random reads
#: use a file of their own (``--cold-size``), large enough that readahead's
#: cost shows; the cold sequential sum reuses the main file.  Cold, the plain
#: gather has one row: numpy.memmap's ``m[idx]`` is the same mapping and
#: the same indexing.
SECTIONS = (
    *(Section("random", "warm", _random_warm(record), record) for record in RECORD_SIZES),
    Section("sequential", "warm", SEQUENTIAL_WARM),
    *(Section("random", "cold", RANDOM_COLD, record, scratch="cold")
      for record in RECORD_SIZES),
    Section("sequential", "cold", SEQUENTIAL_COLD),
)
