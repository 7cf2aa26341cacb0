"""Several processes: concurrent appends, ``refresh()``, and reserved storage.

Rows of the append benchmarks are ``[("w", "<i4"), ("seq", "<i4"),
("chk", "<u8")]`` (16 bytes): the writer, its sequence number and a
checksum of both, so that every run is checked afterwards -- each writer's
rows all there, in order, intact -- outside the timed part.

Concurrent appends (:class:`ConcurrentAppendRatios`,
:class:`ConcurrentAppendRates`)
    4 processes append their own rows to one array opened with
    ``open_array(..., concurrent=True)``, against the usual alternative:
    4 producer processes put the *same* batches on one
    ``multiprocessing.Queue`` (spawn context) and one process -- the
    benchmark's -- takes them off and appends them to a plain
    ``open_array``.  The workers are started once, before anything is
    timed, and build their rows before the clock starts; the clock starts
    when all of them said they are ready (a line on stdout, or a message on
    a pipe) and each is then sent "go"; it stops when the last writer has
    appended its last batch (for the queue: when the consumer has appended
    every batch and recorded the length with ``flush(durable=False)``;
    concurrent appenders record the length at every append).  Closing,
    with its ``fsync``, is not timed on either side.  Both methods take
    turns, best of 5 rounds (1 in a smoke run); all runs happen once, in
    ``setup_cache``, and the tracked figures read from it, so the ratios
    and the rows/s belong to the same runs.  The 4 appenders need free
    cores and the queue's single appender does not as much: on a machine
    busy with other work the ratio moves toward 1.
Single-process appends (:class:`ConcurrentOverhead`)
    What ``concurrent=True`` costs one process that appends alone: the
    array lock (an OFD ``fcntl`` lock), reading the recorded length and
    recording the new one at every append.
refresh() (:class:`RefreshCost`)
    A reader's ``MappedArray.refresh()`` when nothing changed, against the
    cheapest way to look at a file at all: one ``os.pread`` of 128 bytes
    (the size of the header).
Reserved storage (:class:`ReserveRatios`, :class:`ResizeReserveRatio`)
    ``open_array`` now gives every capacity step real storage
    (``posix_fallocate``), so a full disk is ``ENOSPC`` instead of SIGBUS.
    Its cost is measured with ``MappedFile`` growing a file the way an array
    does (doubling, rows written through ``f.array`` views), once with
    ``allocate=True`` and once sparse (``allocate=False``).

The appenders are subprocesses of ``sys.executable`` with ``PYTHONPATH``
set to the mmarray checkout (from ``mmarray.__file__``) and to this suite;
the queue producers are spawned by ``multiprocessing`` with this suite on
the ``sys.path`` they inherit (asv imports the suite through an import hook
that child processes do not inherit).  Files
live in a fresh temporary folder; every process is stopped and every file
removed, also when a run fails.  Benchmarks of what this mmarray lacks
(``concurrent=``, ``refresh``, ``allocate=``) are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import multiprocessing
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

import mmarray

from .common import SCALE, Benchmark, KiB, named, require, scaled
from .growth import FULL_GROW_STEPS, GROW_STEP, GROW_STEPS, TICK

ROW = np.dtype([("w", "<i4"), ("seq", "<i4"), ("chk", "<u8")])
WORKERS = 4
BATCHES = [1, 100]
# Work per call in a full run (the dashboard's names quote these; see common.py).
FULL_ROWS_PER_WORKER = {1: 10_000, 100: 500_000}
FULL_SINGLE_APPENDS = {1: 20_000, 100: 2_000}
FULL_REFRESHES = 100_000
FULL_RESERVE_ROWS = 10**6
RESERVE_BATCH = 100
#: Rows each of the 4 writers appends per run (a whole number of batches).
ROWS_PER_WORKER = {b: scaled(n, minimum=20 * b) // b * b for b, n in FULL_ROWS_PER_WORKER.items()}
#: Rounds of the 4-process runs (each method once per round).
PROCESS_ROUNDS = 5 if SCALE >= 1 else 1
SINGLE_APPENDS = {b: scaled(n) for b, n in FULL_SINGLE_APPENDS.items()}
REFRESHES = scaled(FULL_REFRESHES, minimum=2_000)
#: Batches appended per call (10^6 rows in a full run).
RESERVE_APPENDS = scaled(FULL_RESERVE_ROWS // RESERVE_BATCH)
#: First capacity of the emulated growth: what open_array reserves first (64 KiB of rows).
FIRST_BYTES = 64 * KiB
#: How long to wait for a worker's answer before giving up, in seconds.
ANSWER_TIMEOUT = 120

CONCURRENT, QUEUE = "open_array(concurrent=True)", "multiprocessing.Queue -> one appender"
ALLOCATE, OPEN_ARRAY = "MappedFile(allocate=True)", "open_array.append"

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The folder that holds this suite's package (what asv's import hook serves).
_SUITE_ROOT = os.path.dirname(_HERE)


def _repo_of_mmarray() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))


def _has_parameter(func: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _require_parameter(func_name: str, param: str) -> None:
    require(func_name)
    if not _has_parameter(getattr(mmarray, func_name), param):
        raise NotImplementedError(f"this mmarray's {func_name} has no {param}=")


def _scratch_dir(bench: Benchmark) -> str:
    return bench.resources().enter_context(tempfile.TemporaryDirectory(prefix="mmarray-asv-"))


def _best(runs: Sequence[Callable[[], float]], rounds: int) -> list[float]:
    """Best of ``rounds`` for each run; each run times itself and returns
    seconds (so that opening, closing and removing files stay untimed).
    The runs take turns, so a burst of noise slows all alike."""
    best = [math.inf] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = min(best[i], run())
    return best


# -- rows, and checking what a run left ----------------------------------------------


def _checksum(worker: int, seq: np.ndarray) -> np.ndarray:
    key = (np.uint64(worker) << np.uint64(32)) | seq.astype(np.uint64)
    return key * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64


def _batches(worker: int, n: int, batch: int) -> list[np.ndarray]:
    """Worker ``worker``'s ``n`` rows, cut into batches (views, made now)."""
    rows = np.empty(n, ROW)
    rows["w"] = worker
    rows["seq"] = np.arange(n)
    rows["chk"] = _checksum(worker, rows["seq"])
    return [rows[i : i + batch] for i in range(0, n, batch)]


def _verify(path: str, n: int, how: str) -> None:
    """Every writer's ``n`` rows are in the array, in its order, intact."""
    data = np.load(path)
    problem = None
    if len(data) != WORKERS * n:
        problem = f"{len(data)} rows instead of {WORKERS * n}"
    for w in range(WORKERS):
        mine = data[data["w"] == w]
        seq = np.arange(n)
        if problem is None and not (
            len(mine) == n
            and np.array_equal(mine["seq"], seq)
            and np.array_equal(mine["chk"], _checksum(w, seq))
        ):
            problem = f"writer {w}'s rows are missing, out of order or damaged"
    if problem is not None:
        raise RuntimeError(f"{how}: {problem} in {path}")


# -- the processes -----------------------------------------------------------------------


def _appender_main() -> None:
    """An appender subprocess: JSON commands on stdin, one answer line each."""
    arr, batches = None, None

    def answer(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        while line := sys.stdin.readline():
            cmd, *args = json.loads(line)
            if cmd == "prep":
                path, worker, n, batch = args
                batches = _batches(worker, n, batch)
                arr = mmarray.open_array(path, "r+", concurrent=True)
                answer("ready")
            elif cmd == "go":
                append = arr.append
                start = time.perf_counter()
                for rows in batches:
                    append(rows)
                answer(f"done {time.perf_counter() - start!r}")
            elif cmd == "close":
                arr.close()
                arr = batches = None
                answer("closed")
            else:
                break
    finally:
        if arr is not None:
            arr.close()


def _producer(conn, data) -> None:
    """A queue producer (spawned): puts its batches on ``data`` at "go"."""
    batches = None
    while True:
        try:
            cmd, *args = conn.recv()
        except EOFError:  # the benchmark process went away
            return
        if cmd == "prep":
            batches = _batches(*args)
            conn.send("ready")
        elif cmd == "go":
            put = data.put
            for rows in batches:
                put(rows)
            put(None)
            batches = None
        else:
            return


class _Appenders:
    """4 appender subprocesses, started once; stopped by the ExitStack."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        env = dict(os.environ)
        paths = [_repo_of_mmarray(), _SUITE_ROOT, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        code = f"import {__name__} as m; m._appender_main()"
        self.procs: list[subprocess.Popen] = []
        stack.callback(self.stop)
        for _ in range(WORKERS):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=env, text=True, bufsize=1,
            ))

    def send(self, *msg) -> None:
        for p in self.procs:
            p.stdin.write(json.dumps(msg) + "\n")
            p.stdin.flush()

    def expect(self, word: str) -> list[str]:
        answers = []
        for p in self.procs:
            # One line answers each command, so nothing waits in the reader's
            # buffer and select() on the pipe tells whether the line came.
            if not select.select([p.stdout], [], [], ANSWER_TIMEOUT)[0]:
                raise RuntimeError(f"appender {p.pid} did not answer {word!r} in time")
            line = p.stdout.readline()
            if not line.startswith(word):
                raise RuntimeError(f"appender {p.pid} answered {line!r} instead of {word!r} "
                                   f"(exit status {p.poll()})")
            answers.append(line)
        return answers

    def run(self, path: str, n: int, batch: int) -> float:
        """Seconds from "go" until all 4 appended their ``n`` rows."""
        with mmarray.open_array(path, "w+", dtype=ROW, shape=(0,)):
            pass  # an empty array for the 4 to share
        for w, p in enumerate(self.procs):
            p.stdin.write(json.dumps(["prep", path, w, n, batch]) + "\n")
            p.stdin.flush()
        self.expect("ready")
        start = time.perf_counter()
        self.send("go")
        self.expect("done")
        elapsed = time.perf_counter() - start
        self.send("close")
        self.expect("closed")
        _verify(path, n, CONCURRENT)
        os.unlink(path)
        return elapsed

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.stdin.close()  # end of input: the appender closes its array and exits
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            with contextlib.suppress(OSError):
                p.stdout.close()


class _Producers:
    """4 spawned queue producers, started once; stopped by the ExitStack."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.data = ctx.Queue()
        self.conns, self.procs = [], []
        stack.callback(self.stop)
        # Spawned children import this module by name: put the suite on the
        # path they inherit while they start.
        sys.path.insert(0, _SUITE_ROOT)
        try:
            for _ in range(WORKERS):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_producer, args=(theirs, self.data), daemon=True)
                proc.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(proc)
        finally:
            sys.path.remove(_SUITE_ROOT)

    def run(self, path: str, n: int, batch: int) -> float:
        """Seconds from "go" until one process appended the 4 producers'
        ``n`` rows each, taken off the queue, and recorded the length."""
        with mmarray.open_array(path, "w+", dtype=ROW, shape=(0,)) as arr:
            for w, conn in enumerate(self.conns):
                conn.send(("prep", w, n, batch))
            for conn, proc in zip(self.conns, self.procs, strict=True):
                if not conn.poll(ANSWER_TIMEOUT) or conn.recv() != "ready":
                    raise RuntimeError(f"queue producer {proc.pid} did not get ready")
            get, append, ended = self.data.get, arr.append, 0
            start = time.perf_counter()
            for conn in self.conns:
                conn.send(("go",))
            while ended < WORKERS:
                rows = get()
                if rows is None:
                    ended += 1
                else:
                    append(rows)
            arr.flush(durable=False)  # the length other processes see, as concurrent appends
            elapsed = time.perf_counter() - start
        _verify(path, n, QUEUE)
        os.unlink(path)
        return elapsed

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit",))
            conn.close()
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.data.close()
        self.data.join_thread()


def measure_concurrent_appends() -> dict:
    """``{(batch, method): best seconds}`` for both methods and batch sizes;
    the methods take turns, ``PROCESS_ROUNDS`` rounds each."""
    out = {}
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mmarray-asv-"))
        appenders, producers = _Appenders(stack), _Producers(stack)
        for batch in BATCHES:
            n = ROWS_PER_WORKER[batch]
            conc = functools.partial(appenders.run, os.path.join(folder, "conc.npy"), n, batch)
            queue = functools.partial(producers.run, os.path.join(folder, "queue.npy"), n, batch)
            out[batch, CONCURRENT], out[batch, QUEUE] = _best([conc, queue], PROCESS_ROUNDS)
    return out


class _ConcurrentRuns(Benchmark):
    """Both classes below read the same runs (asv keys ``setup_cache`` by
    module and line, so they share this one)."""

    def setup_cache(self) -> dict | None:
        if not _has_parameter(getattr(mmarray, "open_array", None), "concurrent"):
            return None  # setup skips
        return measure_concurrent_appends()

    setup_cache.timeout = 600

    def setup(self, cache, *params):
        if cache is None:
            raise NotImplementedError("this mmarray's open_array has no concurrent=")


class ConcurrentAppendRatios(_ConcurrentRuns):
    """4 processes appending to one array, against a queue to one appender."""

    params = [BATCHES]
    param_names = ["batch_rows"]

    @named(f"Headline: appends from {WORKERS} processes, open_array(concurrent=True) / "
           "a Queue to one appender", unit="time(concurrent)/time(queue)")
    def track_concurrent_vs_queue(self, cache, batch):
        """Time for 4 writers to append their rows (10,000 each in batches of
        1, 500,000 each in batches of 100, in a full run) to one array with
        ``concurrent=True``, divided by the time for the same batches to go
        through a ``multiprocessing.Queue`` from 4 producers to one process
        appending them.  Goals: <= 1/1.5 = 0.67 at batch 1 (1.5x the queue's
        rows/s), <= 1/3 = 0.33 at batch 100 (3x)."""
        return cache[batch, CONCURRENT] / cache[batch, QUEUE]


class ConcurrentAppendRates(_ConcurrentRuns):
    """The rows per second behind :class:`ConcurrentAppendRatios`."""

    params = (BATCHES, [CONCURRENT, QUEUE])
    param_names = ["batch_rows", "method"]

    @named(f"Appends from {WORKERS} processes to one array: rows per second",
           unit="rows/s")
    def track_rows_per_second(self, cache, batch, method):
        """All 4 writers' rows divided by the time from "go" until the last
        was appended.  Higher is better here, unlike everywhere else (asv
        flags a rise as a regression: read the ratios for that)."""
        return WORKERS * ROWS_PER_WORKER[batch] / cache[batch, method]


# -- one process ---------------------------------------------------------------------------


def _single_appends(path: str, batches: list[np.ndarray], concurrent: bool) -> float:
    """Seconds to append ``batches`` to a new array; open and close untimed."""
    with mmarray.open_array(path, "w+", dtype=ROW, shape=(0,), concurrent=concurrent) as arr:
        append = arr.append
        start = time.perf_counter()
        for rows in batches:
            append(rows)
        elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


class ConcurrentOverhead(Benchmark):
    """``concurrent=True`` against a plain writer, one process appending alone."""

    params = [BATCHES]
    param_names = ["batch_rows"]

    def setup(self, batch):
        _require_parameter("open_array", "concurrent")
        self.path = os.path.join(_scratch_dir(self), "single.npy")
        self.batches = _batches(0, SINGLE_APPENDS[batch] * batch, batch)

    @named("Ratio, appends in one process: concurrent=True / concurrent=False",
           unit="time(concurrent=True)/time(concurrent=False)")
    def track_concurrent_vs_plain(self, batch):
        """20,000 single rows or 2,000 batches of 100 (full run) into a new
        array; best of 5, taking turns.  The price of the lock, the length
        read and the length recorded at each append; no goal, lower is
        better."""
        path, batches = self.path, self.batches
        t_conc, t_plain = _best([functools.partial(_single_appends, path, batches, True),
                                 functools.partial(_single_appends, path, batches, False)], 5)
        return t_conc / t_plain


class RefreshCost(Benchmark):
    """``MappedArray.refresh()`` on a reader when nothing changed."""

    def setup(self):
        require("open_array")
        if not hasattr(mmarray.MappedArray, "refresh"):
            raise NotImplementedError("this mmarray's MappedArray has no refresh()")
        stack = self.resources()
        path = os.path.join(_scratch_dir(self), "followed.npy")
        with mmarray.open_array(path, "w+", dtype=ROW, shape=(0,)) as arr:
            arr.append(_batches(0, 1_000, 1_000)[0])
        self.reader = stack.enter_context(mmarray.open_array(path, "r"))
        self.reader.refresh()
        self.fd = os.open(path, os.O_RDONLY)
        stack.callback(os.close, self.fd)

    @named("Headline: MappedArray.refresh() with nothing changed / os.pread of 128 B",
           unit="time(refresh)/time(pread)")
    def track_refresh_vs_pread(self):
        """A loop of ``reader.refresh()`` on an array another process could
        append to, against a loop of ``os.pread(fd, 128, 0)`` on the same
        file (one system call: the floor for looking at a header); best of
        7, taking turns.  Goal: <= 3."""
        refresh, fd, pread, n = self.reader.refresh, self.fd, os.pread, REFRESHES

        def refreshes() -> float:
            start = time.perf_counter()
            for _ in range(n):
                refresh()
            return time.perf_counter() - start

        def preads() -> float:
            start = time.perf_counter()
            for _ in range(n):
                pread(fd, 128, 0)
            return time.perf_counter() - start

        t_refresh, t_pread = _best([refreshes, preads], 7)
        return t_refresh / t_pread


# -- reserved storage ------------------------------------------------------------------------


def _grow_like_an_array(path: str, batch: np.ndarray, count: int, allocate: bool) -> float:
    """Seconds to append ``count`` copies of ``batch`` the way an array grows
    its file: start at 64 KiB, double the capacity when full (``resize``),
    write each batch's bytes through an ``f.array`` view; open and close
    untimed."""
    raw_batch = batch.reshape(-1).view(np.uint8)
    step = raw_batch.size
    cap = FIRST_BYTES // step * step
    with mmarray.MappedFile(path, "w+", capacity=cap, allocate=allocate) as f:
        raw = f.array(np.uint8, cap)
        start = time.perf_counter()
        end = 0
        for _ in range(count):
            if end + step > cap:
                cap *= 2
                f.resize(cap)
                raw = f.array(np.uint8, cap)
            raw[end : end + step] = raw_batch
            end += step
        elapsed = time.perf_counter() - start
        del raw
    os.unlink(path)
    return elapsed


def _open_array_appends(path: str, batch: np.ndarray, count: int) -> float:
    """Seconds for ``open_array(...).append`` of ``count`` copies of ``batch``."""
    with mmarray.open_array(path, "w+", dtype=batch.dtype, shape=(0,)) as arr:
        append = arr.append
        start = time.perf_counter()
        for _ in range(count):
            append(batch)
        elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


class ReserveRatios(Benchmark):
    """What reserving storage at each capacity step costs appends."""

    params = [[ALLOCATE, OPEN_ARRAY]]
    param_names = ["method"]

    def setup(self, method):
        _require_parameter("MappedFile", "allocate")
        if method == OPEN_ARRAY:
            require("open_array")
        self.path = os.path.join(_scratch_dir(self), "reserve.bin")

    @named(f"Ratio, appending 10^{round(math.log10(FULL_RESERVE_ROWS))} rows by "
           f"{RESERVE_BATCH}: reserved storage / sparse MappedFile",
           unit="time(allocate)/time(sparse)")
    def track_reserved_vs_sparse(self, method):
        """10^6 rows of 20 B (``growth.TICK``) in 10,000 batches of 100 (full
        run) into a new file that starts at 64 KiB and doubles when full
        (to 32 MiB: what ``open_array`` does).  The baseline grows a
        ``MappedFile(allocate=False)`` (``ftruncate``: a hole, blocks found
        at the first write into each page) and writes each batch's bytes
        through an ``f.array`` view.  ``MappedFile(allocate=True)`` does the
        same with ``posix_fallocate`` at each step: that ratio is the price
        of ``ENOSPC`` instead of SIGBUS (goal: about 1).
        ``open_array.append``, which now reserves the same way, also pays
        for the array's own work per append.  Best of 5, taking turns;
        opening and closing (with its write-back) are not timed."""
        path, count = self.path, RESERVE_APPENDS
        batch = np.zeros(RESERVE_BATCH, TICK)
        if method == ALLOCATE:
            run = functools.partial(_grow_like_an_array, path, batch, count, True)
        else:
            run = functools.partial(_open_array_appends, path, batch, count)
        sparse = functools.partial(_grow_like_an_array, path, batch, count, False)
        t_run, t_sparse = _best([run, sparse], 5)
        return t_run / t_sparse


def _enlarge(path: str, allocate: bool) -> float:
    """Seconds to grow a new file by GROW_STEPS steps of GROW_STEP bytes,
    writing a byte into each new part (as ``growth.Enlarge``), open and
    close included; removing the file is not."""
    one = np.uint8(1)
    start = time.perf_counter()
    with mmarray.MappedFile(path, "w+", capacity=GROW_STEP, allocate=allocate) as f:
        for k in range(GROW_STEPS):
            f.resize(GROW_STEP * (k + 2))
            f.write(GROW_STEP * (k + 1), one)
    elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


class ResizeReserveRatio(Benchmark):
    """``MappedFile.resize`` steps with and without reserved storage."""

    def setup(self):
        _require_parameter("MappedFile", "allocate")
        self.path = os.path.join(_scratch_dir(self), "enlarge.bin")

    @named(f"Ratio, {FULL_GROW_STEPS} MappedFile.resize steps of {GROW_STEP // KiB} KiB: "
           "allocate=True / allocate=False", unit="time(allocate)/time(sparse)")
    def track_resize_allocate_vs_sparse(self):
        """Grow a new file 256 times by 256 KiB (to 64 MiB, full run),
        writing one byte into each new part, as ``growth.Enlarge`` does:
        ``posix_fallocate`` of each new part against ``ftruncate`` (a hole).
        Opening and closing are timed (``MappedFile.close`` does not sync).
        Best of 5, taking turns; lower is better."""
        path = self.path
        t_alloc, t_sparse = _best([functools.partial(_enlarge, path, True),
                                   functools.partial(_enlarge, path, False)], 5)
        return t_alloc / t_sparse
