"""Running ``mmarray bench``: scratch files in, a :class:`Report` out.

It writes the main scratch file (``--size``), times every warm section of
:data:`~mmarray._bench.workloads.SECTIONS` on it, then, where a cold cache
can be staged, writes the cold-read file (``--cold-size``) and times the
cold sections, dropping the file from the page cache before each cold run.
Both files are removed on every way out, Ctrl-C included.

Methods take turns round robin, so that a burst of noise from other tenants
of the machine falls on every method alike.  Every run's time
(``time.perf_counter``) is kept: the report gives the median and the range,
and calls a difference only where ranges do not overlap
(:meth:`~mmarray._bench.results.Measurement.compare`).  That rule needs
about seven runs to mean something, so cold runs get seven too,
``--quick`` included.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .cache import (
    PAGE_SIZE,
    available_memory,
    cold_cache_reason,
    evict,
    filesystem_type,
    in_virtual_machine,
    resident_fraction,
    write_scratch_file,
)
from .results import Measurement, Report
from .units import GiB, KiB, MiB, format_size
from .workloads import SECTIONS, Section, Workload, random_workload, sum_readinto

DEFAULT_SIZE = 256 * MiB
QUICK_SIZE = 32 * MiB
#: The cold random reads' file: big enough that readahead's cost shows.
DEFAULT_COLD_SIZE = 1 * GiB
QUICK_COLD_SIZE = 64 * MiB
MIN_SIZE = 64 * KiB
#: Scratch files are a whole number of these (the largest record size).
FILE_ALIGN = 4 * KiB
#: Free disk space to leave beyond a scratch file.
DISK_MARGIN = 64 * MiB
SEED = 5


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    reads: int  #: random reads per warm run
    cold_reads: int  #: random reads per cold run
    repeat: int  #: warm random-read runs per method
    scan_repeat: int  #: warm sequential runs per method
    cold_repeat: int  #: cold runs per method


FULL_PLAN = Plan(reads=50_000, cold_reads=1_000, repeat=7, scan_repeat=10, cold_repeat=7)
QUICK_PLAN = Plan(reads=10_000, cold_reads=200, repeat=7, scan_repeat=10, cold_repeat=7)


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
    """One run of the bench: its files, its random numbers, its results."""

    def __init__(self, directory: str, plan: Plan, progress: _Progress, ram_ok: bool) -> None:
        self.directory, self.plan, self.progress = directory, plan, progress
        self.ram_ok = ram_ok  #: whether methods that copy the file into RAM may run
        self.rng = np.random.default_rng(SEED)
        self.results: list[Measurement] = []
        self.files: dict[str, tuple[str, int]] = {}  #: scratch name -> (path, size)

    def new_file(self, scratch: str, size: int) -> str:
        """Create the scratch file ``scratch`` ("main" or "cold"); it is
        removed by :meth:`remove_files`, also when writing it fails."""
        fd, path = tempfile.mkstemp(prefix="mmarray-bench-", suffix=".bin", dir=self.directory)
        os.close(fd)
        self.files[scratch] = (path, size)
        self.write_file(path, size)
        return path

    def write_file(self, path: str, size: int) -> None:
        self.progress.step(f"writing a {format_size(size)} scratch file")
        write_scratch_file(path, size, self.rng)

    def remove_files(self) -> None:
        for path, _ in self.files.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def run_section(self, section: Section) -> None:
        path, size = self.files[section.scratch]
        if section.test == "random":
            reads = self.plan.cold_reads if section.cache == "cold" else self.plan.reads
            w = random_workload(path, size, section.record or 0, reads, self.rng)
            self.measure(section, w, reads, size)
        else:
            self.measure(section, Workload(path), size, size)

    def measure(self, section: Section, w: Workload, count: int, size: int) -> None:
        """Time the methods of ``section`` on ``w``, every run of each kept."""
        cold = section.cache == "cold"
        if cold:
            rounds = self.plan.cold_repeat
        else:
            rounds = self.plan.repeat if section.test == "random" else self.plan.scan_repeat
        chosen = [m for m in section.methods if self.ram_ok or not m.needs_ram]
        what = (f"random {format_size(section.record)} reads" if section.record
                else "sequential sum")
        self.progress.step(f"{section.cache} cache, {what}: {len(chosen)} methods x {rounds} runs")
        times: list[list[float]] = [[] for _ in chosen]
        cached: list[float | None] = [None] * len(chosen)
        growth: list[float | None] = [None] * len(chosen)
        with contextlib.ExitStack() as stack:
            runs = [stack.enter_context(m.runner(replace(w, advice=m.advice))) for m in chosen]
            for r in range(rounds):
                last = cold and r == rounds - 1
                for i, run in enumerate(runs):
                    if cold:
                        evict(w.path)
                    before = resident_fraction(w.path) if last else None
                    start = time.perf_counter()
                    run()
                    times[i].append(time.perf_counter() - start)
                    if last:
                        cached[i] = after = resident_fraction(w.path)
                        if section.test == "random" and after is not None and before is not None:
                            pages = -(-size // PAGE_SIZE)
                            growth[i] = max(0.0, after - before) * pages / count
        rows = [
            Measurement(section.test, section.cache, section.record, m.key, m.label,
                        m.baseline, tuple(t), count, cached_after=c, pages_per_read=g)
            for m, t, c, g in zip(chosen, times, cached, growth, strict=True)
        ]
        base = next((m for m in rows if m.baseline), None)
        if base is not None:
            for m in rows:
                versus = m.compare(base)
                m.speedup, m.call = versus.ratio, versus.call
        self.results.extend(rows)


def _checked_size(size: int, what: str) -> int:
    if size < MIN_SIZE:
        raise ValueError(f"{what} must be at least {MIN_SIZE} bytes (got {size})")
    return size - size % FILE_ALIGN


def _free_space(directory: str) -> int:
    return shutil.disk_usage(directory).free


def run_bench(
    *,
    size: int | None = None,
    cold_size: int | None = None,
    quick: bool = False,
    directory: str | os.PathLike[str] | None = None,
    progress: bool = True,
    plan: Plan | None = None,
) -> Report:
    """Build the scratch files, time the headline comparisons, remove the files.

    Parameters
    ----------
    size : int, optional
        Bytes of the main scratch file (warm sections and the cold
        sequential sum; rounded down to a multiple of 4 KiB).  Default
        256 MiB, or 32 MiB with ``quick``.
    cold_size : int, optional
        Bytes of the file for the cold random reads.  Default 1 GiB, or
        64 MiB with ``quick``.  If it does not fit on the disk, the cold
        random reads are skipped and the report says why.
    quick : bool
        Smaller files, fewer reads and repeats: a run of a few seconds.
    directory : path, optional
        Where to put the scratch files (default: :func:`tempfile.gettempdir`).
    progress : bool
        Report each step on stderr.
    plan : Plan, optional
        Overrides the reads and repeats that ``quick`` chooses.

    Returns
    -------
    Report
        :func:`~mmarray._bench.report.format_table` of it for people,
        :func:`~mmarray._bench.report.to_json` for programs.

    Raises
    ------
    ValueError
        For a size or cold size below 64 KiB.
    OSError
        If the directory is missing, not writable or too full for the main file.
    """
    size = _checked_size(
        (QUICK_SIZE if quick else DEFAULT_SIZE) if size is None else int(size), "size")
    cold_size = _checked_size(
        (QUICK_COLD_SIZE if quick else DEFAULT_COLD_SIZE) if cold_size is None
        else int(cold_size), "cold size")
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    directory = os.path.abspath(os.fspath(directory or tempfile.gettempdir()))
    free = _free_space(directory)
    if free < size + DISK_MARGIN:
        raise OSError(
            f"not enough free space in {directory}: the scratch file needs "
            f"{format_size(size)} and {format_size(free)} is free (use --size or --dir)"
        )
    avail = available_memory()
    ram_ok = avail is None or size <= avail // 2
    bar = _Progress(2 + len(SECTIONS), progress)  # two files, then one step per section
    bench = _Bench(directory, plan, bar, ram_ok)
    cold_random_reason = None
    try:
        main = bench.new_file("main", size)
        sum_readinto(Workload(main))  # now the whole file is in the page cache
        for section in SECTIONS:
            if section.cache == "warm":
                bench.run_section(section)
        cold_reason = cold_cache_reason(main)
        if cold_reason is None:
            cold_random_reason = _stage_cold_file(bench, directory, cold_size)
            for section in SECTIONS:
                if section.cache == "cold" and (
                        section.scratch == "main" or cold_random_reason is None):
                    bench.run_section(section)
        info = _machine_info(main, size, plan, directory)
        info["cold_file"] = {"size": cold_size}
        info["in_ram_measured"] = ram_ok
        return Report(info, bench.results, cold_reason, cold_random_reason)
    finally:
        bar.close()
        bench.remove_files()


def _stage_cold_file(bench: _Bench, directory: str, cold_size: int) -> str | None:
    """Write and evict the cold random reads' file; why that could not be done, or None."""
    free = _free_space(directory)
    if free < cold_size + DISK_MARGIN:
        return (
            f"the {format_size(cold_size)} file for them does not fit in {directory} "
            f"({format_size(free)} free; use --cold-size or --dir)"
        )
    return cold_cache_reason(bench.new_file("cold", cold_size))


def _machine_info(path: str, size: int, plan: Plan, directory: str) -> dict[str, Any]:
    from .. import __version__

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mmarray": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "virtual_machine": in_virtual_machine(),
        "file": {"directory": directory, "size": size, "filesystem": filesystem_type(path)},
        "plan": asdict(plan),
    }
