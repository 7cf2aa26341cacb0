"""``mmarray bench``: mapping against buffered file reads, measured here.

The main job a newcomer runs first.  It writes a scratch file of random
float64 values (256 MiB in the temp dir by default), then times, in this
process:

* **random reads** of 8 B, 64 B and 4 KiB records at random offsets: a
  vectorised gather ``a[idx]`` on :meth:`MappedFile.array`, a Python loop of
  ``a[i]``, a buffered ``f.seek`` + ``f.read`` loop (the baseline) and an
  ``os.pread`` loop;
* a **sequential sum** of the whole file: through a mapping, through
  ``readinto`` of 1 MiB chunks into one reused buffer (the baseline), and of
  an ndarray already in RAM (the ceiling);

with a warm page cache, and with a cold one where the file system allows it
(before each cold run the file is synced and dropped from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)``; tmpfs has no cold case), with
and without ``advise("random")`` / ``advise("sequential")``.

Every run opens its own handle (a new mapping for mmarray), so the figures
include first-touch page faults; one extra row shows a gather over pages
that are already mapped.  Each figure is the best of several runs
(``time.perf_counter``).  Ratios are ``time(baseline) / time(method)``: 10x
means ten times faster than the buffered baseline.

The asv suite in ``asv_bench/`` measures the same things and more for the
dashboard.  It keeps its own copies of the cache helpers so that it can
benchmark commits older than this module.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import math
import mmap
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ._file import MappedFile

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DEFAULT_SIZE = 256 * MiB
QUICK_SIZE = 32 * MiB
MIN_SIZE = 64 * KiB
#: The scratch file is a whole number of these (the largest record size).
FILE_ALIGN = 4 * KiB
RECORD_SIZES = (8, 64, 4 * KiB)
#: Chunk size of the ``readinto`` baseline.
CHUNK = 1 * MiB
#: Chunk size used to write the scratch file.
WRITE_CHUNK = 8 * MiB
#: Free disk space to leave beyond the scratch file.
DISK_MARGIN = 64 * MiB
#: File systems whose pages live in memory: there is no cold cache to measure.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "hugetlbfs"})
#: After eviction, more than this fraction still cached means eviction failed.
MAX_RESIDENT_AFTER_EVICT = 0.5
SEED = 5


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    reads: int  #: random reads per warm run
    cold_reads: int  #: random reads per cold run
    repeat: int  #: warm random-read runs per method (the best counts)
    scan_repeat: int  #: warm sequential runs per method
    cold_repeat: int  #: cold runs per method


FULL_PLAN = Plan(reads=100_000, cold_reads=2_000, repeat=5, scan_repeat=10, cold_repeat=3)
QUICK_PLAN = Plan(reads=20_000, cold_reads=500, repeat=5, scan_repeat=10, cold_repeat=2)


# -- sizes -------------------------------------------------------------------

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"64M"``, ``"1G"``, ``"1.5GiB"``, ``"512K"``.

    Suffixes are binary (K = 1024 bytes).

    Examples
    --------
    >>> parse_size("64M"), parse_size("1g"), parse_size("4096")
    (67108864, 1073741824, 4096)
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"size must be a number of bytes with an optional K/M/G/T suffix, "
            f"e.g. 64M or 1G (got {text!r})"
        )
    return int(float(match[1]) * _UNITS[match[2].lower()])


def format_size(n: int) -> str:
    """``268435456`` -> ``"256 MiB"``."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def _size_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"size must be at least {format_size(MIN_SIZE)} (got {text!r})"
        )
    return size


# -- the page cache --------------------------------------------------------------


def filesystem_type(path: str) -> str | None:
    """The type of the file system holding ``path`` (Linux), else None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in lines:
        fields = line.split()
        try:
            mount = fields[4].encode().decode("unicode_escape")  # "\040" is a space
            kind = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, kind
    return fstype


def evict(path: str) -> None:
    """Write ``path``'s dirty pages and drop the file from the page cache.

    Pages that a live mapping has touched are not dropped: call this before
    mapping the file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: str) -> float | None:
    """Fraction of ``path``'s pages in the page cache (``mincore``), or None
    where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return None
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    # Mapping without touching the pages leaves the cache as it is.
    with MappedFile(path) as f:
        a = f.array(np.uint8)
        pages = -(-a.size // mmap.PAGESIZE)
        vec = np.zeros(pages, np.uint8)
        rc = mincore(a.ctypes.data, a.size, vec.ctypes.data)
        del a
    return float((vec & 1).mean()) if rc == 0 else None


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError):
        pass
    return None


def _in_virtual_machine() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " hypervisor" in line for line in f)
    except OSError:
        return False


# -- what is timed -----------------------------------------------------------------


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


def _gather(w: Workload) -> None:
    with MappedFile(w.path) as f:
        if w.advice:
            f.advise(w.advice)
        f.array(w.dtype)[w.index]


def _loop(w: Workload) -> None:
    with MappedFile(w.path) as f:
        a = f.array(w.dtype)
        for i in w.index_list:
            a[i]
        del a


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


def _sum_readinto(w: Workload) -> float:
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


@dataclass(frozen=True)
class Method:
    key: str  #: stable name used in JSON
    label: str  #: words for the table
    runner: Runner
    advice: str | None = None
    baseline: bool = False


#: The system-call baselines of the random-read tests, warm and cold alike.
RANDOM_SYSCALLS = (
    Method("buffered", "buffered: f.seek + f.read loop", _each_run(_buffered), baseline=True),
    Method("pread", "os.pread loop", _each_run(_pread)),
)
RANDOM_WARM = (
    Method("mmarray-gather", "mmarray: gather a[idx] (new mapping)", _each_run(_gather)),
    Method("mmarray-gather-mapped", "mmarray: gather a[idx] (pages already mapped)",
           _gather_mapped),
    Method("mmarray-loop", "mmarray: Python loop of a[i] (new mapping)", _each_run(_loop)),
    *RANDOM_SYSCALLS,
)
RANDOM_COLD = (
    Method("mmarray-gather", "mmarray: gather a[idx]", _each_run(_gather)),
    Method("mmarray-gather-random", 'mmarray: gather a[idx], advise("random")',
           _each_run(_gather), advice="random"),
    *RANDOM_SYSCALLS,
)
SEQUENTIAL_WARM = (
    Method("mmarray-sum", "mmarray: a.sum() (new mapping)", _each_run(_sum_mapped)),
    Method("mmarray-sum-sequential", 'mmarray: a.sum(), advise("sequential")',
           _each_run(_sum_mapped), advice="sequential"),
    Method("readinto", "buffered: readinto 1 MiB chunks, sum each", _each_run(_sum_readinto),
           baseline=True),
    Method("in-ram", "ndarray already in RAM: a.sum() (ceiling)", _sum_in_ram),
)
SEQUENTIAL_COLD = SEQUENTIAL_WARM[:3]


# -- results -------------------------------------------------------------------


@dataclass
class Measurement:
    """The best of several runs of one method in one section."""

    test: str  #: "random" or "sequential"
    cache: str  #: "warm" or "cold"
    record: int | None  #: bytes per record (random reads), else None
    method: str
    label: str
    baseline: bool
    seconds: float  #: best time of one run
    count: int  #: reads per run (random) or bytes per run (sequential)
    speedup: float = math.nan  #: time(baseline) / seconds; > 1 is faster
    cached_after: float | None = None  #: fraction of the file cached after a cold run

    @property
    def section(self) -> tuple[str, str, int | None]:
        return (self.test, self.cache, self.record)

    @property
    def per_read(self) -> float:
        return self.seconds / self.count

    @property
    def gb_per_s(self) -> float:
        return self.count / self.seconds / 1e9

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.test == "random":
            out["seconds_per_read"] = self.per_read
        else:
            out["gb_per_s"] = self.gb_per_s
        # asv's convention (lower is better): time(method) / time(baseline).
        out["time_ratio"] = 1 / self.speedup if self.speedup else math.nan
        return out


@dataclass
class Report:
    """What :func:`run_bench` measured, with the facts needed to read it."""

    info: dict[str, Any]
    measurements: list[Measurement]
    cold_reason: str | None  #: why the cold cache was not measured, or None

    def find(self, test: str, cache: str, record: int | None, method: str) -> Measurement | None:
        for m in self.measurements:
            if m.section == (test, cache, record) and m.method == method:
                return m
        return None

    def speedup(self, test: str, cache: str, record: int | None, method: str) -> float | None:
        m = self.find(test, cache, record, method)
        return None if m is None or math.isnan(m.speedup) else m.speedup

    def as_dict(self) -> dict[str, Any]:
        from ._bench_report import verdict

        return {
            **self.info,
            "cold_cache": {"measured": self.cold_reason is None, "reason": self.cold_reason},
            "results": [m.as_dict() for m in self.measurements],
            "verdict": verdict(self),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, allow_nan=False, default=_json_default)

    def table(self) -> str:
        from ._bench_report import format_table

        return format_table(self)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# -- running -----------------------------------------------------------------------


class _Progress:
    """One line per step on stderr (a tqdm bar when tqdm is importable)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar = None
        self._tty = enabled and sys.stderr.isatty()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False)

    def step(self, text: str) -> None:
        self.done = min(self.done + 1, self.total)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description(text, refresh=False)
            self._bar.update()
        elif self._tty:
            sys.stderr.write(f"\r\x1b[K[{self.done}/{self.total}] {text}")
            sys.stderr.flush()
        else:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class _Bench:
    def __init__(self, path: str, size: int, plan: Plan, progress: _Progress) -> None:
        self.path, self.size, self.plan, self.progress = path, size, plan, progress
        self.rng = np.random.default_rng(SEED)
        self.results: list[Measurement] = []

    def write_file(self) -> None:
        self.progress.step(f"writing a {format_size(self.size)} scratch file")
        with open(self.path, "wb") as f:
            for start in range(0, self.size, WRITE_CHUNK):
                n = min(WRITE_CHUNK, self.size - start) // 8
                f.write(self.rng.random(n))
            f.flush()
            # Synced now, so that evicting it later has nothing left to write.
            os.fsync(f.fileno())

    def warm_up(self) -> None:
        """Read the whole file once so that it is in the page cache."""
        _sum_readinto(Workload(self.path))

    def random_workload(self, record: int, reads: int) -> Workload:
        index = self.rng.integers(0, self.size // record, reads)
        return Workload(
            self.path, record, record_dtype(record), index, index.tolist(),
            (index * record).tolist(),
        )

    def measure(
        self, methods: Sequence[Method], w: Workload, test: str, cache: str, count: int,
        skip: Callable[[Method], bool] = lambda m: False,
    ) -> None:
        """Time ``methods`` on ``w``; the best run of each counts."""
        cold = cache == "cold"
        if cold:
            rounds = self.plan.cold_repeat
        else:
            rounds = self.plan.repeat if test == "random" else self.plan.scan_repeat
        record = w.record if test == "random" else None
        chosen = [m for m in methods if not skip(m)]
        what = f"random {format_size(record)} reads" if record else "sequential sum"
        self.progress.step(f"{cache} cache, {what}: {len(chosen)} methods x {rounds} runs")
        best = [math.inf] * len(chosen)
        cached: list[float | None] = [None] * len(chosen)
        with contextlib.ExitStack() as stack:
            runs = [stack.enter_context(m.runner(replace(w, advice=m.advice))) for m in chosen]
            # Round robin, so that a burst of noise from other tenants of the
            # machine slows every method alike and the ratios stay steady.
            for r in range(rounds):
                for i, run in enumerate(runs):
                    if cold:
                        evict(w.path)
                    start = time.perf_counter()
                    run()
                    best[i] = min(best[i], time.perf_counter() - start)
                    if cold and r == rounds - 1:
                        cached[i] = resident_fraction(w.path)
        section = [
            Measurement(test, cache, record, m.key, m.label, m.baseline, t, count,
                        cached_after=c)
            for m, t, c in zip(chosen, best, cached, strict=True)
        ]
        base = next((m.seconds for m in section if m.baseline), None)
        for m in section:
            if base is not None:
                m.speedup = base / m.seconds
        self.results.extend(section)

    def cold_cache_reason(self) -> str | None:
        """Why the cold cache cannot be measured here, or None if it can."""
        if not hasattr(os, "posix_fadvise"):
            return f"{sys.platform} has no posix_fadvise to drop a file from the page cache"
        fstype = filesystem_type(self.path)
        where = os.path.dirname(self.path)
        if fstype in MEMORY_FILESYSTEMS:
            return f"{where} is on {fstype}, which keeps files in memory (no cold cache exists)"
        evict(self.path)
        left = resident_fraction(self.path)
        if left is not None and left > MAX_RESIDENT_AFTER_EVICT:
            return (
                f"the OS kept {left:.0%} of the file cached after POSIX_FADV_DONTNEED, "
                f"so cold reads cannot be staged on {fstype or 'this file system'}"
            )
        return None


def _step_count() -> int:
    """Progress steps: the file, then one per section."""
    return 1 + 2 * (len(RECORD_SIZES) + 1)


def run_bench(
    *,
    size: int | None = None,
    quick: bool = False,
    directory: str | os.PathLike[str] | None = None,
    progress: bool = True,
    plan: Plan | None = None,
) -> Report:
    """Build a scratch file, time the headline comparisons, remove the file.

    Parameters
    ----------
    size : int, optional
        Bytes of the scratch file (rounded down to a multiple of 4 KiB).
        Default 256 MiB, or 32 MiB with ``quick``.
    quick : bool
        Fewer reads and repeats: a run of a few seconds.
    directory : path, optional
        Where to put the scratch file (default: :func:`tempfile.gettempdir`).
    progress : bool
        Report each step on stderr.
    plan : Plan, optional
        Overrides the reads and repeats that ``quick`` chooses.

    Returns
    -------
    Report
        ``report.table()`` for people, ``report.to_json()`` for programs.

    Raises
    ------
    ValueError
        For a size below 64 KiB.
    OSError
        If the directory is missing, not writable or too full.
    """
    size = (QUICK_SIZE if quick else DEFAULT_SIZE) if size is None else int(size)
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} bytes (got {size})")
    size -= size % FILE_ALIGN
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    directory = os.path.abspath(os.fspath(directory or tempfile.gettempdir()))
    free = shutil.disk_usage(directory).free
    if free < size + DISK_MARGIN:
        raise OSError(
            f"not enough free space in {directory}: the scratch file needs "
            f"{format_size(size)} and {format_size(free)} is free (use --size or --dir)"
        )
    avail = _available_memory()
    ram_ok = avail is None or size <= avail // 2
    bar = _Progress(_step_count(), progress)
    fd, path = tempfile.mkstemp(prefix="mmarray-bench-", suffix=".bin", dir=directory)
    os.close(fd)
    try:
        bench = _Bench(path, size, plan, bar)
        bench.write_file()
        bench.warm_up()
        for record in RECORD_SIZES:
            w = bench.random_workload(record, plan.reads)
            bench.measure(RANDOM_WARM, w, "random", "warm", plan.reads)
        bench.measure(
            SEQUENTIAL_WARM, Workload(path), "sequential", "warm", size,
            skip=lambda m: m.key == "in-ram" and not ram_ok,
        )
        cold_reason = bench.cold_cache_reason()
        if cold_reason is None:
            for record in RECORD_SIZES:
                w = bench.random_workload(record, plan.cold_reads)
                bench.measure(RANDOM_COLD, w, "random", "cold", plan.cold_reads)
            bench.measure(SEQUENTIAL_COLD, Workload(path), "sequential", "cold", size)
        info = _machine_info(path, size, plan, directory)
        info["in_ram_measured"] = ram_ok
        return Report(info, bench.results, cold_reason)
    finally:
        bar.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _machine_info(path: str, size: int, plan: Plan, directory: str) -> dict[str, Any]:
    from . import __version__

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mmarray": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "virtual_machine": _in_virtual_machine(),
        "file": {"directory": directory, "size": size, "filesystem": filesystem_type(path)},
        "plan": asdict(plan),
    }


# -- command line ----------------------------------------------------------------------


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on an argparse ``subparsers`` object (``_cli`` calls this).

    The parser's ``func`` default is :func:`main`, which returns an exit code.
    """
    p = subparsers.add_parser(
        "bench",
        help="time mapped against buffered file reads on this machine",
        description=(
            "Write a scratch file (random float64 values), time random reads of 8 B, 64 B "
            "and 4 KiB records and a sequential sum through mmarray, buffered reads and "
            "os.pread, with a warm and (where the file system allows) a cold page cache, "
            "print a table of speed-ups and a verdict, and remove the file."
        ),
    )
    p.add_argument(
        "--size", type=_size_arg, default=None, metavar="BYTES",
        help="scratch file size, e.g. 64M or 1G (default 256M; 32M with --quick)",
    )
    p.add_argument("--quick", action="store_true",
                   help="a run of a few seconds: smaller file, fewer reads and repeats")
    p.add_argument("--json", action="store_true",
                   help="print machine-readable results instead of the table")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also save a bar chart of the speed-ups (needs matplotlib)")
    p.add_argument("--dir", metavar="DIR", default=None, dest="directory",
                   help="where to put the scratch file (default: the temp dir, "
                        f"now {tempfile.gettempdir()})")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``mmarray bench`` with parsed ``args``; return the exit code."""
    from ._bench_report import matplotlib_missing, plot_report

    plot = getattr(args, "plot", None)
    if plot:
        missing = matplotlib_missing()
        if missing:
            print(f"mmarray bench: error: {missing}", file=sys.stderr)
            return 2
    try:
        report = run_bench(
            size=getattr(args, "size", None),
            quick=getattr(args, "quick", False),
            directory=getattr(args, "directory", None),
        )
    except KeyboardInterrupt:
        print("mmarray bench: interrupted; scratch file removed", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        print(f"mmarray bench: error: {exc}", file=sys.stderr)
        return 1
    print(report.to_json() if getattr(args, "json", False) else report.table())
    if plot:
        try:
            plot_report(report, plot)
        except (OSError, ValueError) as exc:
            print(f"mmarray bench: error: cannot save {plot}: {exc}", file=sys.stderr)
            return 1
        print(f"mmarray bench: chart saved to {plot}", file=sys.stderr)
    return 0
