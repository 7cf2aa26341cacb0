"""Several processes on one array, file or block; one writer unless asked.

Everything here runs in real, unrelated processes: *workers*, fresh
interpreters (``sys.executable -c``) that execute the snippets the test
sends them and answer with the value of the last expression (or the
exception it raised, re-raised here as the same built-in type).  Whatever
could crash on a bad mapping -- touching rows or bytes that another process
added -- happens in a worker, so a SIGBUS is a failing test ("the worker
died"), never a dead test run.  Every wait is bounded; blocks and files live
under ``shm_name`` and ``tmp_path``.

Rows carry (writer, sequence number, payload, checksum): a torn or zero row
fails its checksum, and each writer's rows, in array order, must be exactly
its sequence 0..k-1.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import mmarray as mm

REPO = pathlib.Path(mm.__file__).resolve().parents[1]
SHM_DIR = pathlib.Path("/dev/shm")
#: A hang guard for one answer of a worker, never a performance threshold.
TIMEOUT = 20.0
#: Rows each appender writes in the tests with four of them.
N_ROWS = 250

# Code shared by the workers and this module (exec'd in both).
COMMON = r'''
import hashlib, os, sys, time
import numpy as np
import mmarray as mm

DT = np.dtype([("writer", "<i4"), ("seq", "<i4"), ("payload", "<u8", (6,)), ("check", "<u8")])
U = np.uint64


def mix(x):
    """SplitMix64 of a uint64 array."""
    x = x + U(0x9E3779B97F4A7C15)
    x = (x ^ (x >> U(30))) * U(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> U(27))) * U(0x94D049BB133111EB)
    return x ^ (x >> U(31))


def checksum(rows):
    """Covers every other field; an all-zero row fails it."""
    c = (rows["writer"].astype(U) << U(32)) ^ rows["seq"].astype(U) ^ U(0x5EED0F00D5EED)
    for j in range(rows["payload"].shape[-1]):
        c = mix(c ^ rows["payload"][:, j])
    return c


def rows_of(writer, start, n):
    """Rows ``start .. start+n-1`` of ``writer`` (a pure function of the seq)."""
    seq = np.arange(start, start + n, dtype=np.int64)
    out = np.zeros(n, DT)
    out["writer"] = writer
    out["seq"] = seq
    base = (U(writer) << U(40)) ^ (seq.astype(U) << U(8))
    for j in range(6):
        out["payload"][:, j] = mix(base ^ U(j))
    out["check"] = checksum(out)
    return out


def verify(rows, writers):
    """Every row complete; each writer's rows its sequence 0..k-1 in order.
    Returns the k of each writer."""
    rows = np.asarray(rows)
    bad = np.flatnonzero(rows["check"] != checksum(rows))
    if bad.size:
        raise AssertionError(
            f"{bad.size} of {len(rows)} rows torn or damaged, first at {bad[:5].tolist()}: "
            f"{rows[bad[:2]]!r}"
        )
    who = rows["writer"]
    if len(rows) and (who.min() < 0 or who.max() >= writers):
        raise AssertionError(f"rows from unknown writers: {np.unique(who).tolist()}")
    counts = []
    for w in range(writers):
        seq = rows["seq"][who == w]
        if not np.array_equal(seq, np.arange(len(seq))):
            wrong = np.flatnonzero(seq != np.arange(len(seq)))[:5]
            raise AssertionError(
                f"writer {w}: rows missing, repeated or out of order; positions {wrong.tolist()}"
                f" hold seqs {seq[wrong].tolist()}"
            )
        counts.append(len(seq))
    return counts


def digest(rows):
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()


def write_loop(target, writer, n, start=0, flag=None, flag_at=-1, chunk=256):
    """Append ``n`` rows of ``writer`` one at a time with concurrent=True;
    create the file ``flag`` after ``flag_at`` of them."""
    done = 0
    with mm.open_array(target, "a", concurrent=True) as a:
        while done < n:
            rows = rows_of(writer, start + done, min(chunk, n - done))
            for i in range(len(rows)):
                a.append(rows[i : i + 1])
                done += 1
                if done == flag_at:
                    open(flag, "x").close()
    return done


def read_loop(a, writers, stop, seconds=20.0):
    """Follow ``a`` with refresh() until the file ``stop`` exists, checking
    every visible row and that the length never goes back."""
    deadline = time.monotonic() + seconds
    last, polls, changes = len(a), 0, 0
    while True:
        stopped = os.path.exists(stop)  # before the refresh: the last one sees all
        n = a.refresh()
        if n < last:
            raise AssertionError(f"the length went back from {last} to {n}")
        if len(a) != n or a.shape[0] != n:
            raise AssertionError(f"refresh() returned {n} but len() is {len(a)}")
        verify(a[:n], writers)
        changes += n != last
        last, polls = n, polls + 1
        if stopped:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"not told to stop within {seconds} s (length {n})")
        time.sleep(0.001)
    rows = a[:last]
    return {"length": last, "polls": polls, "changes": changes,
            "counts": verify(rows, writers), "digest": digest(rows)}


def job(a, start, n, batch=10, pause=0.002):
    """A running job: append batches of rows, flushing each (durable or not)."""
    for i, s in enumerate(range(start, start + n, batch)):
        a.append(rows_of(0, s, min(batch, start + n - s)))
        a.flush(durable=i % 2 == 0)
        time.sleep(pause)
    return len(a)


def timed(fn, *args, **kwargs):
    """(exception type name or None, seconds) of one call."""
    t0 = time.monotonic()
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return type(e).__name__, time.monotonic() - t0
    return None, time.monotonic() - t0
'''

# The worker loop: one JSON-encoded snippet per line in, one answer out.
SERVER = r'''
import ast, json, traceback


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot send {type(o).__name__} back")


def _serve(ns):
    out, sys.stdout = sys.stdout, sys.stderr  # stray prints cannot break the protocol
    def send(msg):
        out.write(json.dumps(msg, default=_plain) + "\n")
        out.flush()
    send({"ready": True})
    for line in sys.stdin:
        try:
            tree = ast.parse(json.loads(line))
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, "<test>", "exec"), ns)
            value = None if last is None else eval(compile(last, "<test>", "eval"), ns)
            send({"ok": value})
        except BaseException as e:
            send({"err": [type(e).__name__, str(e), traceback.format_exc()]})


_serve(globals())
'''

HERE: dict[str, Any] = {}
exec(COMMON, HERE)
DT: np.dtype = HERE["DT"]
rows_of: Callable[[int, int, int], np.ndarray] = HERE["rows_of"]
verify: Callable[[Any, int], list[int]] = HERE["verify"]
digest: Callable[[Any], str] = HERE["digest"]


class WorkerDied(AssertionError):
    """A worker ended while the test waited for it (e.g. killed by SIGBUS)."""


class WorkerError(Exception):
    """An exception of a type that is not a built-in, raised in a worker."""


class Worker:
    """A fresh interpreter that runs the snippets it is sent."""

    def __init__(self) -> None:
        self._err: list[str] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]
        ))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", COMMON + SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.killed = False
        self.pending = 0  # snippets sent and not answered yet
        self._answers: queue.Queue[dict | None] = queue.Queue()
        self._early: list[dict] = []
        self._threads = [
            threading.Thread(target=self._drain, daemon=True),
            threading.Thread(target=self._drain_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    def _err_text(self) -> str:
        return "".join(self._err)[-3000:]

    def _next(self, timeout: float) -> dict | None:
        """The next answer (skipping the start-up greeting), or None."""
        if self._early:
            return self._early.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._answers.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return None
            if msg is None:
                self._answers.put(None)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
                raise WorkerDied(
                    f"worker {self.proc.pid} ended (returncode {self.proc.returncode}); "
                    f"stderr:\n{self._err_text()}"
                )
            if "ready" not in msg:
                return msg

    def send(self, code: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        self.pending += 1

    def reply(self, timeout: float = TIMEOUT) -> Any:
        msg = self._next(timeout)
        if msg is None:
            raise AssertionError(f"worker {self.proc.pid} gave no answer within {timeout} s")
        self.pending -= 1
        if "err" in msg:
            name, text, trace = msg["err"]
            cls = getattr(builtins, name, None)
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                cls = WorkerError
                text = f"{name}: {text}"
            raise cls(f"{text}\n--- in the worker ---\n{trace}")
        return msg["ok"]

    def run(self, code: str, timeout: float = TIMEOUT) -> Any:
        self.send(code)
        return self.reply(timeout)

    def answered(self, within: float) -> bool:
        """Whether an answer arrives within ``within`` seconds (kept for reply())."""
        msg = self._next(within)
        if msg is None:
            return False
        self._early.append(msg)
        return True

    def kill(self) -> int | None:
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self) -> str:
        """End the worker (closing stdin lets it exit normally; one still busy
        with a snippet, after a test failed, is killed); its stderr."""
        if self.pending and self.proc.poll() is None:
            self.kill()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        for t in self._threads:
            t.join(5)
        return self._err_text()


@pytest.fixture
def spawn() -> Iterator[Callable[[int], list[Worker]]]:
    """``spawn(n)`` -> n workers (started at once); all end in teardown, and
    those that were not killed must have printed no traceback or warning."""
    workers: list[Worker] = []

    def start(n: int = 1) -> list[Worker]:
        new = [Worker() for _ in range(n)]
        workers.extend(new)
        return new

    yield start
    noisy = []
    for w in workers:
        err = w.stop()
        if not w.killed and ("Traceback" in err or "Warning" in err):
            noisy.append(err)
    assert not noisy, noisy


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.002)


@pytest.fixture(params=["file", "shm"])
def shared_array(request, tmp_path, shm_name):
    """An empty array of DT rows: (target, path numpy can load, handle of
    this process or None).  The block is created with a concurrent handle
    that stays open, so that no handle of this process is a plain writer."""
    if request.param == "file":
        path = tmp_path / "shared.npy"
        mm.open_array(path, "x+", dtype=DT, shape=(0,)).close()
        yield str(path), path, None
    else:
        target = "shm://" + shm_name
        owner = mm.open_array(target, "w+", dtype=DT, shape=(0,), concurrent=True)
        try:
            yield target, SHM_DIR / shm_name, owner
        finally:
            owner.close()
        assert not (SHM_DIR / shm_name).exists()


@pytest.fixture(params=["file", "shm"])
def any_target(request, tmp_path, shm_name):
    """(target that does not exist yet, path numpy can load)."""
    if request.param == "file":
        path = tmp_path / "target.npy"
        return str(path), path
    return "shm://" + shm_name, SHM_DIR / shm_name


def start_readers(readers: list[Worker], target: str, writers: int, stop: pathlib.Path) -> None:
    for r in readers:
        r.run(f"a = mm.open_array({target!r}, 'r')")
        r.send(f"read_loop(a, {writers}, {str(stop)!r})")


def check_final(path: pathlib.Path, counts: list[int], seen: list[dict]) -> np.ndarray:
    """np.load agrees with the readers; every (writer, seq) exactly once."""
    loaded = np.load(path)
    assert loaded.dtype == DT
    assert loaded.shape == (sum(counts),)
    assert verify(loaded, len(counts)) == counts
    pairs = set(zip(loaded["writer"].tolist(), loaded["seq"].tolist(), strict=True))
    assert pairs == {(w, s) for w, k in enumerate(counts) for s in range(k)}
    for w, k in enumerate(counts):
        assert loaded[loaded["writer"] == w].tobytes() == rows_of(w, 0, k).tobytes()
    for s in seen:
        assert s["length"] == len(loaded)
        assert s["counts"] == counts
        assert s["digest"] == digest(loaded)
    return loaded


# -- 1, 2: many appenders, readers following ------------------------------------------


def test_four_appenders_two_readers(shared_array, spawn, tmp_path):
    target, path, owner = shared_array
    readers, writers = spawn(2), spawn(4)
    stop = tmp_path / "stop"
    start_readers(readers, target, 4, stop)
    for i, w in enumerate(writers):
        w.send(f"write_loop({target!r}, {i}, {N_ROWS})")
    for w in writers:
        assert w.reply(timeout=30) == N_ROWS
    stop.touch()
    seen = [r.reply(timeout=30) for r in readers]
    check_final(path, [N_ROWS] * 4, seen)
    # The readers polled while the writers ran and saw it grow more than once.
    assert sum(s["changes"] for s in seen) >= 2, seen
    if owner is not None:
        assert owner.refresh() == 4 * N_ROWS


def test_appenders_killed_halfway(shared_array, spawn, tmp_path):
    """Three appenders finish while two others are killed with SIGKILL at
    different points of their run (two kills: twice the chance to land
    between recording a length and writing its rows, were that possible)."""
    target, path, _ = shared_array
    readers, writers = spawn(2), spawn(5)
    stop = tmp_path / "stop"
    start_readers(readers, target, 5, stop)
    for i, w in enumerate(writers[:3]):
        w.send(f"write_loop({target!r}, {i}, {N_ROWS})")
    victims = writers[3:]
    flags = [tmp_path / f"victim-{i}" for i in range(len(victims))]
    for i, (victim, flag) in enumerate(zip(victims, flags, strict=True)):
        at = N_ROWS * (i + 1) // 3
        victim.send(f"write_loop({target!r}, {3 + i}, 10**9, flag={str(flag)!r}, flag_at={at})")
    for victim, flag in zip(victims, flags, strict=True):
        wait_until(flag.exists, 30, "a victim did not get far enough")
        assert victim.kill() == -signal.SIGKILL
    # Nobody hangs on a lock a victim held when it died.
    for w in writers[:3]:
        assert w.reply(timeout=30) == N_ROWS
    # Appending still works after the kills, in a fresh open.
    assert writers[0].run(f"write_loop({target!r}, 0, 10, start={N_ROWS})") == 10
    stop.touch()
    seen = [r.reply(timeout=30) for r in readers]
    killed = seen[0]["counts"][3:]
    assert killed[0] >= N_ROWS // 3
    assert killed[1] >= 2 * N_ROWS // 3
    # Each victim's rows are a contiguous prefix 0..k-1 of its sequence (verify).
    check_final(path, [N_ROWS + 10, N_ROWS, N_ROWS, *killed], seen)


# -- 3: following a writer with wait() -------------------------------------------------


def test_reader_follows_writer_with_wait(any_target, spawn):
    target, path = any_target
    writer, reader = spawn(2)
    writer.run(f"a = mm.open_array({target!r}, 'a', dtype=DT)")
    reader.run(f"b = mm.open_array({target!r}, 'r')")
    assert reader.run("len(b), b.refresh(), b.wait(0, timeout=0)") == [0, 0, 0]

    writer.run("a.append(rows_of(0, 0, 10)); a.flush()")
    assert reader.run("b.wait(10, timeout=5)") == 10
    assert reader.run("verify(b[:], 1)") == [10]

    writer.run("a.append(rows_of(0, 10, 5)); a.flush(durable=False)")
    assert reader.run("b.wait(12, timeout=5), verify(b[:], 1)") == [15, [15]]
    assert np.load(path).shape == (15,)  # not durable, but recorded at once

    # Appended but not flushed: the header still records 15.
    writer.run("a.append(rows_of(0, 15, 7))")
    with pytest.raises(TimeoutError, match="15 rows"):
        reader.run("b.wait(22, timeout=0.3)")
    assert reader.run("len(b)") == 15
    writer.run("a.flush(durable=False)")
    assert reader.run("b.wait(22, timeout=5)") == 22
    assert reader.run("b.wait(5, timeout=0)") == 22  # reached already: at once, >= n

    # A length never reached: TimeoutError after about the timeout.
    name, seconds = reader.run("timed(b.wait, 10**6, timeout=0.2)")
    assert name == "TimeoutError"
    assert 0.19 <= seconds < 5

    # Following a running job.
    writer.send("job(a, 22, 200)")
    goals = list(range(40, 223, 30))
    got = reader.run(f"[b.wait(k, timeout=10) for k in {goals}]", timeout=30)
    assert all(g >= k for g, k in zip(got, goals, strict=True)), got
    assert got == sorted(got)
    assert writer.reply(timeout=30) == 222
    assert reader.run("b.wait(222, timeout=10), verify(b[:], 1)") == [222, [222]]
    assert np.load(path).tobytes() == rows_of(0, 0, 222).tobytes()


# -- 4: growth picked up by refresh() --------------------------------------------------

MARK = 0x1234_5678_9ABC_DEF0


@pytest.fixture(params=["file", "shm"])
def raw_handle(request, tmp_path, shm_name):
    """(handle of this process, 4096 bytes; code that opens it as ``h`` in a worker)."""
    if request.param == "file":
        path = tmp_path / "raw.bin"
        handle: mm.MappedFile | mm.SharedBlock = mm.MappedFile(path, "w+", capacity=4096)
        code = f"h = mm.MappedFile({str(path)!r}, 'r+')"
    else:
        handle = mm.SharedBlock.create(shm_name, 4096)
        code = f"h = mm.SharedBlock.open({shm_name!r})"
    with handle:
        yield handle, code


def test_growth_is_picked_up_by_refresh(raw_handle, spawn):
    handle, open_h = raw_handle
    handle.write(0, np.uint64(MARK))
    follower, grower = spawn(2)
    follower.run(f"{open_h}\nv = h.array(np.uint64)\n"
                 "where = lambda: h.array().__array_interface__['data'][0]\naddr = where()")
    assert follower.run("h.size, v.shape, int(v[0]), h.refresh(), h.size") == [
        4096, [512], MARK, 4096, 4096
    ]
    # Nothing changed: the same mapping (no remap).
    assert follower.run("[h.refresh() for _ in range(100)], where() == addr") == [
        [4096] * 100, True
    ]
    grower.run(open_h)
    big = 1 << 20
    assert grower.run(f"h.resize({big}); h.write({big} - 8, np.uint64(0xC0FFEE)); h.size") == big
    assert follower.run("h.size") == 4096  # nothing changes before refresh()
    assert follower.run("h.refresh(), h.size") == [big, big]
    assert follower.run(
        f"int(h.read({big} - 8, np.uint64)), int(h.array(np.uint64)[-1]), h.array().shape,"
        " int(h.array(np.uint8)[4096:-8].max())"
    ) == [0xC0FFEE, 0xC0FFEE, [big], 0]
    # Arrays taken before stay valid and keep seeing the same bytes, both ways.
    assert follower.run("v[1] = 7\nv.shape, int(v[0])") == [[512], MARK]
    assert grower.run("int(h.read(8, np.uint64))") == 7
    # Growing again; refreshes with nothing changed return the same size.
    grower.run(f"h.resize({3 * big}); h.write({3 * big} - 8, np.uint64(5))")
    assert follower.run(
        "h.refresh(); addr = where()\n[h.refresh() for _ in range(5)], h.size, where() == addr"
    ) == [[3 * big] * 5, 3 * big, True]
    assert follower.run(f"int(h.read({3 * big} - 8, np.uint64)), int(v[1]), v.shape") == [
        5, 7, [512]
    ]
    assert handle.size == 4096
    assert handle.refresh() == 3 * big
    assert handle.size == 3 * big


# -- 5: locks --------------------------------------------------------------------------


def expect_timeout(lock: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Call ``lock`` expecting TimeoutError; return the seconds it took."""
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        lock(*args, **kwargs)
    return time.monotonic() - t0


def test_range_locks_between_processes(raw_handle, spawn):
    h, open_h = raw_handle
    holder, other = spawn(2)
    holder.run(f"{open_h}\nheld = h.lock(0, 8)")
    assert holder.run("held.held") is True
    other.run(open_h)

    assert expect_timeout(h.lock, 0, 8, timeout=0.2) >= 0.19
    with h.lock(8, 8, timeout=0) as mine:  # the next range is free
        assert mine.held
    assert not mine.held
    # timeout=0 tries once: it fails at once.
    assert expect_timeout(h.lock, 0, 8, shared=True, timeout=0) < 1
    assert expect_timeout(h.lock, 4, 8, timeout=0) < 1  # overlapping
    assert expect_timeout(h.lock, timeout=0) < 1  # the whole range
    with pytest.raises(TimeoutError):
        other.run("h.lock(0, 1, shared=True, timeout=0)")

    # The kernel drops the lock of a killed holder at once.
    assert holder.kill() == -signal.SIGKILL
    t0 = time.monotonic()
    with h.lock(0, 8, timeout=2):
        assert time.monotonic() - t0 < 1
        with pytest.raises(TimeoutError):  # and this process holds it now
            other.run("h.lock(0, 8, shared=True, timeout=0)")

    # Shared locks of two processes coexist, and hold out exclusive ones.
    other.run("s = h.lock(0, 8, shared=True, timeout=2)")
    with h.lock(0, 8, shared=True, timeout=0):
        with pytest.raises(TimeoutError):
            other.run("h.lock(0, 8, timeout=0)")
        assert other.run("s.held") is True
    expect_timeout(h.lock, 0, 8, timeout=0)
    other.run("s.release()")
    with h.lock(0, 8, timeout=0):
        pass
    other.run("with h.lock(0, 8, timeout=0): pass")


def test_array_lock_between_processes(tmp_path, spawn):
    path = tmp_path / "locked.npy"
    mm.open_array(path, "x+", dtype=np.int64, shape=(0,)).close()
    holder, appender = spawn(2)
    holder.run(f"a = mm.open_array({str(path)!r}, 'r+')\nheld = a.lock()")
    appender.run(f"w = mm.open_array({str(path)!r}, 'a', concurrent=True)")
    with mm.open_array(path, "r") as r:
        assert expect_timeout(r.lock, timeout=0.2) >= 0.19
        assert expect_timeout(r.lock, shared=True, timeout=0) < 1

        # A concurrent append waits for the lock another process holds.
        appender.send("w.append(np.arange(3)); len(w)")
        assert not appender.answered(within=0.5)
        assert r.refresh() == 0
        holder.run("held.release()")
        assert appender.reply(timeout=5) == 3
        assert r.refresh() == 3  # recorded before append returned

        # A shared lock() holds appends back too (but not other readers' locks);
        # a killed holder releases it.
        holder.run("held = a.lock(shared=True)")
        with r.lock(shared=True, timeout=0):
            pass
        appender.send("w.append(np.arange(3, 5)); len(w)")
        assert not appender.answered(within=0.3)
        assert holder.kill() == -signal.SIGKILL
        assert appender.reply(timeout=5) == 5
        t0 = time.monotonic()
        with r.lock(timeout=2):
            assert time.monotonic() - t0 < 1
            appender.send("w.append(np.arange(5, 6)); len(w)")
            assert not appender.answered(within=0.3)
        assert appender.reply(timeout=5) == 6
        assert r.refresh() == 6
    appender.run("w.close()")
    assert np.load(path).tolist() == list(range(6))


def run_threads(target: Callable[[], None], n: int) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


@contextlib.contextmanager
def held_in_thread(lock: Callable[[], Any]) -> Iterator[None]:
    """Hold ``lock()`` in another thread for the duration of the block."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock():
            holding.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        done.set()
        t.join(10)
    assert not t.is_alive()


THREADS, BUMPS = 4, 150


def test_range_lock_between_threads_of_one_handle(tmp_path):
    with mm.MappedFile(tmp_path / "counter.bin", "w+", capacity=64) as f:
        counter = f.array(np.int64, shape=2)

        def bump() -> None:
            for _ in range(BUMPS):
                with f.lock(0, 8, timeout=10):
                    value = int(counter[0])
                    time.sleep(0)  # let the other threads run in between
                    counter[0] = value + 1

        run_threads(bump, THREADS)
        assert int(counter[0]) == THREADS * BUMPS
        with held_in_thread(lambda: f.lock(0, 8)):
            assert expect_timeout(f.lock, 0, 8, timeout=0) < 1
            assert expect_timeout(f.lock, 0, 8, shared=True, timeout=0.1) >= 0.09
            with f.lock(8, 8, timeout=0):
                pass
        with f.lock(0, 8, timeout=0):
            pass


def test_array_lock_between_threads_of_one_handle(tmp_path):
    with mm.open_array(tmp_path / "counter.npy", "w+", dtype=np.int64, shape=(1,)) as a:

        def bump() -> None:
            for _ in range(BUMPS):
                with a.lock(timeout=10):
                    value = int(a[0])
                    time.sleep(0)
                    a[0] = value + 1

        run_threads(bump, THREADS)
        assert int(a[0]) == THREADS * BUMPS
        with held_in_thread(a.lock):
            assert expect_timeout(a.lock, timeout=0) < 1
            assert expect_timeout(a.lock, shared=True, timeout=0) < 1
        with a.lock(timeout=0), pytest.raises(RuntimeError):
            a.lock(timeout=0)  # not reentrant in one thread
    assert np.load(tmp_path / "counter.npy").tolist() == [THREADS * BUMPS]


def test_append_under_array_lock_between_threads(tmp_path):
    """Read the length and append under lock(): threads of one concurrent
    handle write 0, 1, 2, ... with none lost or doubled."""
    path = tmp_path / "seq.npy"
    with mm.open_array(path, "x+", dtype=np.int64, shape=(0,), concurrent=True) as a:

        def count() -> None:
            for _ in range(50):
                with a.lock(timeout=10):
                    n = len(a)
                    time.sleep(0)
                    a.append([n])

        run_threads(count, THREADS)
        assert len(a) == THREADS * 50
    assert np.load(path).tolist() == list(range(THREADS * 50))


CLOSE_INSIDE_LOCK = r"""
import os, sys, threading, time
import numpy as np, mmarray as mm
path = sys.argv[1]
a = mm.open_array(path, "w+", dtype=np.int64, shape=(0,), concurrent=True)
a.append([1])
errors, started = [], threading.Event()

def appender():
    started.set()
    try:
        a.append([2])  # waits for the lock() the main thread holds
    except Exception as e:
        errors.append(e)

held = a.lock()
t = threading.Thread(target=appender)
t.start()
started.wait()
time.sleep(0.2)
a.close()  # inside lock(), while the other thread waits for it
held.release()
t.join(20)
assert not t.is_alive(), "the appender hung"
assert len(errors) == 1 and isinstance(errors[0], ValueError), errors
assert "closed" in str(errors[0])
assert np.load(path).tolist() == [1]
print("ok")
"""


def test_close_inside_lock_while_a_thread_waits_to_append(tmp_path):
    """close() from inside lock() does not wait for the thread that waits
    for that lock (it holds the array's thread lock); that thread gets the
    closed error, and nothing is appended."""
    for i in range(3):
        path = tmp_path / f"c{i}.npy"
        out = subprocess.run([sys.executable, "-c", CLOSE_INSIDE_LOCK, str(path)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- 6: refresh() when nothing changed, and after another process's flush --------------


def test_refresh_keeps_views_and_picks_up_flushes(tmp_path, spawn):
    path = str(tmp_path / "refresh.npy")
    writer, reader = spawn(2)
    writer.run(f"a = mm.open_array({path!r}, 'a', dtype=DT, capacity=16)\n"
               "a.append(rows_of(0, 0, 8)); a.flush()")
    reader.run(f"b = mm.open_array({path!r}, 'r')\nv0 = b[:]\nsnap0 = v0.tobytes()\n"
               "where = lambda: b[:].__array_interface__['data'][0]\naddr = where()")
    same = "v0.shape, v0.tobytes() == snap0"
    # Nothing changed: the same length, the same mapping, the views untouched.
    assert reader.run("[b.refresh() for _ in range(200)]") == [8] * 200
    assert reader.run(f"len(b), where() == addr, {same}") == [8, True, [8], True]

    # Appended, not flushed: the header still records 8 (the writer has 12).
    assert writer.run("a.append(rows_of(0, 8, 4)); a.refresh(), len(a)") == [12, 12]
    assert reader.run("b.refresh()") == 8
    writer.run("a.flush()")
    assert reader.run(f"b.refresh(), len(b), {same}, verify(b[:], 1)") == [
        12, 12, [8], True, [12]
    ]

    # Past the capacity: the reader maps the grown file; old views stay valid.
    reader.run("v1 = b[:]\nsnap1 = v1.tobytes()")
    assert writer.run("a.append(rows_of(0, 12, 1000)); a.flush(durable=False); a.capacity") >= 1012
    assert reader.run(
        f"b.refresh(), {same}, v1.shape, v1.tobytes() == snap1, verify(b[:], 1), b.capacity"
    )[:6] == [1012, [8], True, [12], True, [1012]]
    assert reader.run("addr = where()\n[b.refresh() for _ in range(50)], where() == addr") == [
        [1012] * 50, True
    ]
    assert reader.run("digest(b[:])") == digest(rows_of(0, 0, 1012))
    writer.run("a.close()")
    assert np.load(path).tobytes() == rows_of(0, 0, 1012).tobytes()


# -- 7: one writer unless concurrent=True ----------------------------------------------


def test_one_writer_rule_with_concurrent(tmp_path, spawn):
    path = tmp_path / "writers.npy"
    p = str(path)
    mm.open_array(path, "x+", dtype=np.int64, shape=(0,)).close()
    c1, c2, plain, reader = spawn(4)
    c1.run(f"c = mm.open_array({p!r}, 'a', concurrent=True)")

    # A plain writer is refused while a concurrent handle is open, here and elsewhere.
    with pytest.raises(BlockingIOError, match="concurrent=True"):
        mm.open_array(path, "a")
    with pytest.raises(BlockingIOError, match="concurrent=True"):
        plain.run(f"mm.open_array({p!r}, 'a')")
    plain.run(f"r = mm.open_array({p!r}, 'r+')")  # opens; refused at its first append
    with pytest.raises(BlockingIOError, match="concurrent=True"):
        plain.run("r.append(np.arange(2))")
    assert plain.run("r.close(); 'closed'") == "closed"

    # Concurrent handles coexist, across processes.
    c2.run(f"c = mm.open_array({p!r}, 'r+', concurrent=True)")
    c1.run("c.append(np.arange(3))")
    c2.run("c.append(np.arange(3, 5))")
    c1.run("c.append(np.arange(5, 6))")
    assert c2.run("c.refresh(), c.tolist()") == [6, list(range(6))]
    # Readers never fail.
    reader.run(f"rr = mm.open_array({p!r}, 'r')\ncc = mm.open_array({p!r}, 'c')")
    assert reader.run("rr.tolist(), cc.tolist()") == [list(range(6))] * 2
    c1.run("c.close()")
    c2.run("c.close()")

    # The reverse: a plain writer holds it, concurrent handles are refused.
    plain.run(f"w = mm.open_array({p!r}, 'a')\nw.append(np.arange(6, 8)); w.flush()")
    for mode in ("a", "r+"):
        with pytest.raises(BlockingIOError, match="concurrent=True"):
            mm.open_array(path, mode, concurrent=True)
    with pytest.raises(BlockingIOError, match="concurrent=True"):
        c1.run(f"mm.open_array({p!r}, 'a', concurrent=True)")
    with pytest.raises(BlockingIOError, match="concurrent=True"):
        c1.run(f"mm.open_array({p!r}, 'a')")  # and a second plain writer
    assert reader.run(
        f"rr.refresh(), rr.tolist(), mm.open_array({p!r}, 'c').tolist()"
    ) == [8, list(range(8)), list(range(8))]

    # A plain writer killed by SIGKILL leaves no lock behind.
    assert plain.kill() == -signal.SIGKILL
    assert c1.run(f"c = mm.open_array({p!r}, 'a', concurrent=True)\n"
                  "c.append(np.arange(8, 9)); c.close(); 'ok'") == "ok"
    assert np.load(path).tolist() == list(range(9))


def test_one_writer_rule_within_one_process(tmp_path):
    path = tmp_path / "here.npy"
    with mm.open_array(path, "x+", dtype=np.int64, shape=(0,), concurrent=True) as c:
        with pytest.raises(BlockingIOError, match="concurrent=True"):
            mm.open_array(path, "a")
        with mm.open_array(path, "a", concurrent=True) as d:
            d.append(np.arange(2))
            c.append(np.arange(2, 3))
            assert d.refresh() == 3
        with mm.open_array(path, "r") as r:
            assert r.tolist() == [0, 1, 2]
    with mm.open_array(path, "a") as w:
        with pytest.raises(BlockingIOError, match="concurrent=True"):
            mm.open_array(path, "a", concurrent=True)
        w.append(np.arange(3, 4))
    assert np.load(path).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["x+", "w+", "a"])
def test_creating_concurrent_handle_keeps_the_others_rows(tmp_path, spawn, mode):
    """The handle that created the array closes last, never having appended:
    the length the others recorded must survive its close."""
    path = tmp_path / "created.npy"
    creator = mm.open_array(path, mode, dtype=np.int64, shape=(0,), concurrent=True)
    try:
        (other,) = spawn(1)
        other.run(f"with mm.open_array({str(path)!r}, 'a', concurrent=True) as c:\n"
                  "    c.append(np.arange(5))")
        assert np.load(path).tolist() == list(range(5))
    finally:
        creator.close()
    assert np.load(path).tolist() == list(range(5))


def test_concurrent_append_casts_as_assignment(tmp_path):
    """A concurrent handle casts rows before taking the lock: the same
    values as a plain handle's append (assignment's casting), for another
    dtype, non-contiguous rows and lists."""
    rows = np.arange(12, dtype=np.float64).reshape(6, 2) + 0.75
    got = {}
    for concurrent in (False, True):
        path = tmp_path / f"cast-{concurrent}.npy"
        with mm.open_array(path, "x+", dtype=np.int32, shape=(0, 2),
                           concurrent=concurrent) as a:
            a.append(rows)           # float64 -> int32
            a.append(rows[::2])      # not contiguous
            a.append(rows.T.copy().T)  # Fortran order
            a.append([7.9, 8.1])     # one row, a list
        got[concurrent] = np.load(path)
    assert got[True].dtype == np.int32
    np.testing.assert_array_equal(got[True], got[False])


def test_concurrent_append_after_another_handle_shrinks(tmp_path):
    """An appender that finds the header bytes it last wrote takes their
    length without parsing: after another handle grew the array and
    resized it back, that is still the length the header records."""
    path = tmp_path / "back.npy"
    with mm.open_array(path, "x+", dtype=np.int64, shape=(0,), concurrent=True) as a, \
            mm.open_array(path, "a", concurrent=True) as b:
        a.append(np.arange(3))
        b.append(np.arange(3, 8))
        b.resize(3)                  # the header says 3 again, as a wrote it
        a.append(np.arange(10, 12))
        b.append(np.arange(20, 21))
        assert a.refresh() == b.refresh() == 6
    assert np.load(path).tolist() == [0, 1, 2, 10, 11, 20]
