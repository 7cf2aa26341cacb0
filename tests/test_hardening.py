"""Hardening: full storage, threads and interrupts (issue 11, items 2, 3 and 6).

Everything that could crash runs in a child process, so a SIGBUS or a
segfault is a failing test with the signal's name, not a dead test run.  A
child prints ``STEP`` lines as it goes, a ``PROBLEM`` line for every broken
promise it finds, and one ``RESULT`` line (JSON) at the end; the parent
asserts a clean exit, no problems and the result.

* Full storage ("Full storage never kills the process" in DESIGN.md): the
  child runs in a private mount namespace on a 4 MiB tmpfs (``unshare -m``;
  skipped where mounting is not permitted).  ``append`` and ``resize`` on a
  full disk raise ``OSError`` (ENOSPC) and leave the array as it was;
  ``allocate=True`` turns a full disk into ``OSError`` at open or resize.
* Threads: one handle used by several threads at once never loses, doubles
  or tears a row, and closing it under them gives ``ValueError``, no crash.
* Interrupts: a real SIGINT at a random moment of a large append, resize or
  flush leaves the array at its old or its new length, rows intact, usable.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import pytest

import mmarray as mm

REPO = pathlib.Path(mm.__file__).resolve().parents[1]
TMPFS_SIZE = "4m"

# Helpers every child starts with.
PRELUDE = r'''
import errno, json, os, random, signal, sys, threading, time
import numpy as np
import mmarray as mm

REC = np.dtype([("i", "<i8"), ("x", "<f8"), ("check", "<u8")])
K = np.uint64(0x9E3779B97F4A7C15)

def records(start, n, dtype=REC):
    """Rows start .. start+n-1: each row is a function of its index."""
    i = np.arange(start, start + n, dtype=np.int64)
    out = np.zeros(n, dtype)
    out["i"] = i
    if "x" in dtype.names:
        out["x"] = i * 0.25
    with np.errstate(over="ignore"):
        out["check"] = (i.astype(np.uint64) * K) ^ np.uint64(0xA5A5A5A5)
    return out

def bad_rows(rows, start=0):
    """Indices (counted from 0) of rows that are not records(start + k)."""
    rows = np.asarray(rows)
    return np.flatnonzero(rows != records(start, len(rows), rows.dtype)) + start

def say(*words):
    print(*words, flush=True)

def step(msg):
    say("STEP", msg)

def problem(msg):
    say("PROBLEM", msg)

def result(**kw):
    say("RESULT", json.dumps(kw))

def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize

def left_behind(path):
    """What a failed create left at path: None, or its size in bytes."""
    return os.path.getsize(path) if os.path.exists(path) else None
'''


@dataclass
class Child:
    """What a child process did."""

    returncode: int
    steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    result: dict | None = None
    stderr: str = ""
    hung: bool = False

    def describe(self) -> str:
        if self.hung:
            how = "the child hung (deadlock?) and was killed"
        elif self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            how = f"the child died of {name} (exit code {self.returncode})"
        else:
            how = f"the child exited with code {self.returncode}"
        lines = [how, *("step: " + s for s in self.steps[-6:])]
        lines += ("problem: " + p for p in self.problems)
        if self.stderr.strip():
            lines.append("stderr: " + self.stderr[-3000:])
        return "\n".join(lines)

    def check(self) -> dict:
        """Assert a clean run; the child's result."""
        assert self.returncode == 0 and not self.hung, self.describe()
        assert not self.problems, self.describe()
        assert self.result is not None, self.describe()
        return self.result


def run_child(body: str, *args: object, tmpfs: pathlib.Path | None = None,
              timeout: float = 90) -> Child:
    """Run PRELUDE + body with ``args`` in a fresh interpreter; with ``tmpfs``,
    in a private mount namespace with a small tmpfs mounted there first."""
    code = PRELUDE + body
    cmd = [sys.executable, "-c", code, *map(str, args)]
    if tmpfs is not None:
        mount = f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$1" && shift && exec "$@"'
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh",
               str(tmpfs), *cmd]
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=pythonpath),
    )
    hung = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        proc.kill()
        out, err = proc.communicate()
    child = Child(proc.returncode, stderr=err, hung=hung)
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "STEP":
            child.steps.append(rest)
        elif kind == "PROBLEM":
            child.problems.append(rest)
        elif kind == "RESULT":
            child.result = json.loads(rest)
    return child


@pytest.fixture
def scratch(tmp_path):
    """A scratch directory, emptied afterwards (the data here is in MiB)."""
    yield tmp_path
    for entry in tmp_path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@functools.cache
def tmpfs_unavailable() -> str | None:
    """Why a private tmpfs cannot be mounted here (None if it can)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    with tempfile.TemporaryDirectory() as where:
        script = f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$1" && umount "$1"'
        try:
            done = subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", where],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot run unshare: {e}"
    if done.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {done.stderr.strip()}"
    return None


@pytest.fixture
def small_disk(scratch):
    """A directory where the child mounts a 4 MiB tmpfs (skips if it cannot)."""
    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    where = scratch / "disk"
    where.mkdir()
    return where


# -- full storage ---------------------------------------------------------------

# Append batches until the 4 MiB disk is full, then check that the failed
# append changed nothing, that flush, np.load and further appends behave.
FULL_APPEND = r'''
d, pattern, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
path = os.path.join(d, "log.npy")
LARGE = 5000  # rows: 120,000 bytes, over the 64 KiB that append writes with pwrite

def batch():
    if pattern == "large" or (pattern == "mixed" and rng.random() < 0.05):
        return LARGE
    return rng.randint(1, 100)

a = mm.open_array(path, "a", dtype=REC)
n = flushed = appends = 0
failure = None
while True:
    k = batch()
    try:
        a.append(records(n, k))
    except OSError as e:
        failure = e
        break
    n += k
    appends += 1
    if appends % 64 == 0:
        a.flush()
        flushed = n
    if n * REC.itemsize > 64 << 20:
        break
if failure is None:
    problem(f"{n} rows ({n * REC.itemsize} bytes) appended to a {d} of 4 MiB, no OSError")
    sys.exit(0)
step(f"append of {k} rows after {n} rows raised {failure!r}; capacity {a.capacity}")
if failure.errno != errno.ENOSPC:
    problem(f"the failed append raised errno {failure.errno}, not ENOSPC: {failure!r}")
if len(a) != n:
    problem(f"the failed append changed len(a) from {n} to {len(a)}")
bad = bad_rows(a[:n])
if bad.size:
    problem(f"{bad.size} of the {n} rows before the failed append changed, first {bad[:5]}")

try:
    a.flush()
    flushed, flush_after = n, "ok"
except OSError as e:
    flush_after = repr(e)
step(f"flush after the failure: {flush_after}")
loaded = np.load(path)
if loaded.dtype != REC or not flushed <= len(loaded) <= n:
    problem(f"np.load gives {loaded.dtype} x {len(loaded)}; flushed {flushed}, len {n}")
bad = bad_rows(loaded)
if bad.size:
    problem(f"np.load: {bad.size} damaged rows, first {bad[:5]}")
del loaded

# Rows inside the reserved capacity have storage already: they must append
# (all of them: a write through the mapping to a page without storage is SIGBUS).
cap = a.capacity
room = cap - n
while n < cap:
    k = min(rng.randint(1, 100), cap - n)
    try:
        a.append(records(n, k))
    except OSError as e:
        problem(f"append of {k} rows at {n}, inside the capacity of {cap} rows, raised {e!r}")
        break
    n += k
step(f"{room} rows of spare capacity: {n - (cap - room)} appended")

# Past it: small appends go on, or fail with ENOSPC and change nothing.
extra_ok = extra_failed = failed_in_a_row = 0
for _ in range(300):
    k = rng.randint(1, 10)
    before = len(a)
    try:
        a.append(records(n, k))
    except OSError as e:
        extra_failed += 1
        failed_in_a_row += 1
        if e.errno != errno.ENOSPC:
            problem(f"a small append after the failure raised {e!r}, not ENOSPC")
        if len(a) != before:
            problem(f"a failed small append changed len(a) from {before} to {len(a)}")
        if failed_in_a_row >= 20:
            break
    else:
        n += k
        extra_ok += 1
        failed_in_a_row = 0
step(f"after the failure: {extra_ok} small appends went on, {extra_failed} raised OSError")
if len(a) != n:
    problem(f"len(a) is {len(a)}, expected {n}")
bad = bad_rows(a[:n])
if bad.size:
    problem(f"{bad.size} damaged rows after the small appends, first {bad[:5]}")

try:
    a.close()
    close_after = "ok"
except OSError as e:
    close_after = repr(e)  # allowed on a full disk; the recorded length then stays
loaded = np.load(path)
if close_after == "ok" and len(loaded) != n:
    problem(f"np.load after close gives {len(loaded)} rows, expected {n}")
bad = bad_rows(loaded)
if bad.size:
    problem(f"np.load after close: {bad.size} damaged rows, first {bad[:5]}")
if np.load(path, mmap_mode="r").shape != loaded.shape:
    problem("np.load(mmap_mode='r') disagrees with np.load")
with mm.open_array(path) as again:
    if again.shape != loaded.shape:
        problem(f"open_array gives shape {again.shape}, np.load {loaded.shape}")
result(rows=n, failed_batch=k, errno=failure.errno, capacity=cap, spare_rows=room,
       flush_after=flush_after, close_after=close_after, extra_ok=extra_ok,
       extra_failed=extra_failed, file_size=os.path.getsize(path), free=free_bytes(d))
'''


@pytest.mark.parametrize("pattern", ["small", "large", "mixed"])
def test_append_on_full_disk_raises_enospc_and_keeps_the_array(small_disk, pattern):
    res = run_child(FULL_APPEND, small_disk, pattern, 11, tmpfs=small_disk).check()
    assert res["errno"] == 28  # ENOSPC
    assert res["rows"] > 0


# MappedFile(allocate=True) bigger than the disk: ENOSPC at open, no file and no
# storage left behind; enlarging an existing file that way leaves it as it was.
FULL_OPEN = r'''
d = sys.argv[1]
big = os.path.join(d, "big.bin")
free = free_bytes(d)
try:
    f = mm.MappedFile(big, "w+", capacity=16 << 20, allocate=True)
except OSError as e:
    outcome = repr(e)
    if e.errno != errno.ENOSPC:
        problem(f"MappedFile(16 MiB, allocate=True) raised {e!r}, not ENOSPC")
else:
    outcome = "opened"
    problem(f"MappedFile(16 MiB, allocate=True) opened on a 4 MiB disk (size {f.size})")
    f.close()
left = left_behind(big)
step(f"w+ of 16 MiB: {outcome}; left behind: {left}")
if left:
    problem(f"the failed w+ left a file of {left} bytes behind")
if free_bytes(d) < free - (64 << 10):
    problem(f"the failed open leaked storage: {free} bytes free before, {free_bytes(d)} after")

# Enlarging an existing file: it keeps its size and contents.
old = os.path.join(d, "old.bin")
with open(old, "wb") as fh:
    fh.write(bytes(range(256)) * 16)
try:
    g = mm.MappedFile(old, "r+", capacity=16 << 20, allocate=True)
except OSError as e:
    enlarge = repr(e)
    if e.errno != errno.ENOSPC:
        problem(f"r+ with capacity 16 MiB, allocate=True raised {e!r}, not ENOSPC")
else:
    enlarge = "opened"
    problem("r+ with capacity 16 MiB, allocate=True opened on a 4 MiB disk")
    g.close()
with open(old, "rb") as fh:
    if fh.read() != bytes(range(256)) * 16:
        problem(f"the failed enlargement changed the file (now {os.path.getsize(old)} bytes)")

# What fits is allocated: writing every page cannot SIGBUS.
with mm.MappedFile(os.path.join(d, "fits.bin"), "w+", capacity=3 << 20, allocate=True) as f:
    f.array()[:] = 7
    f.flush()
    ok = int(f.array()[::4096].min()) == 7
if not ok:
    problem("the allocated 3 MiB file does not read back")
result(open_16mib=outcome, left_behind=left, enlarge=enlarge)
'''


def test_mappedfile_allocate_too_large_raises_enospc_at_open(small_disk):
    res = run_child(FULL_OPEN, small_disk, tmpfs=small_disk).check()
    assert res["left_behind"] in (None, 0)


# resize() of an allocated MappedFile past the disk: ENOSPC, and the handle,
# the file and the arrays stay as they were; growing within the disk works.
FULL_RESIZE = r'''
d = sys.argv[1]
path = os.path.join(d, "f.bin")
f = mm.MappedFile(path, "w+", capacity=1 << 20, allocate=True)
a = f.array()
pattern = (np.arange(1 << 20) % 251).astype(np.uint8)
a[:] = pattern
free = free_bytes(d)
try:
    f.resize(16 << 20)
except OSError as e:
    outcome = repr(e)
    if e.errno != errno.ENOSPC:
        problem(f"resize past the disk raised {e!r}, not ENOSPC")
else:
    outcome = "resized"
    problem(f"resize(16 MiB) on a 4 MiB disk succeeded (size {f.size})")
step(f"resize(16 MiB): {outcome}")
if f.size != 1 << 20 or os.path.getsize(path) != 1 << 20:
    problem(f"after the failed resize: size {f.size}, file {os.path.getsize(path)} bytes")
if free_bytes(d) < free - (64 << 10):
    problem(f"the failed resize leaked storage: {free} bytes free before, {free_bytes(d)} after")
if not (a == pattern).all():
    problem("the old array changed")
b = f.array()
if b.shape != (1 << 20,) or not (b == pattern).all():
    problem(f"a new view after the failure: shape {b.shape}")
f.write((1 << 20) - 1, np.uint8(9))
if int(f.read((1 << 20) - 1, np.uint8)) != 9 or a[-1] != 9:
    problem("write/read after the failed resize")

# Growing within the disk still works, and the new bytes have storage.
f.resize(2 << 20)
c = f.array()
c[:] = 3
f.flush()
if f.size != 2 << 20 or a[0] != 3 or b[-1] != 3:
    problem(f"after resize(2 MiB): size {f.size}, old views see {a[0]}, {b[-1]}")
f.close()
del a, b, c
result(resize=outcome, size=os.path.getsize(path))
'''


def test_mappedfile_allocate_resize_past_the_disk_keeps_the_handle(small_disk):
    res = run_child(FULL_RESIZE, small_disk, tmpfs=small_disk).check()
    assert res["size"] == 2 << 20


# memmap(allocate=True) bigger than the disk (by shape or by capacity): ENOSPC.
FULL_MEMMAP = r'''
d = sys.argv[1]
outcomes = {}
for name, kwargs in [
    ("shape", dict(dtype=np.uint8, shape=(16 << 20,))),
    ("capacity", dict(dtype=np.uint8, shape=(16,), capacity=16 << 20)),
]:
    path = os.path.join(d, name + ".dat")
    try:
        m = mm.memmap(path, mode="w+", allocate=True, **kwargs)
    except OSError as e:
        outcomes[name] = repr(e)
        if e.errno != errno.ENOSPC:
            problem(f"memmap(w+, 16 MiB by {name}, allocate=True) raised {e!r}, not ENOSPC")
    else:
        outcomes[name] = "opened"
        problem(f"memmap(w+, 16 MiB by {name}, allocate=True) opened on a 4 MiB disk")
        m.close()
        del m
    outcomes[name + "_left_behind"] = left_behind(path)
    step(f"memmap 16 MiB by {name}: {outcomes[name]}, left {outcomes[name + '_left_behind']}")

# What fits is allocated: writing every page cannot SIGBUS.
path = os.path.join(d, "fits.dat")
m = mm.memmap(path, dtype=np.float64, mode="w+", shape=(3 << 17,), allocate=True)  # 3 MiB
m[:] = 1.5
m.flush()
m.close()
del m
if not (np.fromfile(path, np.float64) == 1.5).all():
    problem("the allocated 3 MiB memmap does not read back")
result(**outcomes)
'''


def test_memmap_allocate_too_large_raises_enospc(small_disk):
    run_child(FULL_MEMMAP, small_disk, tmpfs=small_disk).check()


# -- threads on one handle ------------------------------------------------------

THREAD_PRELUDE = r'''
T = np.dtype([("tid", "<u4"), ("seq", "<u4"), ("check", "<u8")])

def rows(tid, seqs):
    seqs = np.asarray(seqs, dtype=np.uint32)
    out = np.zeros(len(seqs), T)
    out["tid"] = tid
    out["seq"] = seqs
    key = (np.uint64(tid) << np.uint64(32)) | seqs.astype(np.uint64)
    with np.errstate(over="ignore"):
        out["check"] = (key * K) ^ np.uint64(0x5A5A5A5A)
    return out

def complete(arr):
    """Which rows are whole appended rows (check field matches)."""
    arr = np.asarray(arr)
    key = (arr["tid"].astype(np.uint64) << np.uint64(32)) | arr["seq"].astype(np.uint64)
    with np.errstate(over="ignore"):
        return arr["check"] == (key * K) ^ np.uint64(0x5A5A5A5A)

def check_order(arr, ok):
    """Each thread appends in sequence: its rows must appear in that order."""
    for tid in np.unique(arr["tid"][ok]):
        seqs = arr["seq"][ok & (arr["tid"] == tid)]
        if (np.diff(seqs.astype(np.int64)) <= 0).any():
            problem(f"rows of thread {tid} are out of order")

def run_threads(targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        if t.is_alive():
            problem("a thread did not finish within 60 s (deadlock?)")
            os._exit(3)

sys.setswitchinterval(1e-4)  # more interleaving: races show in fewer operations
'''

# Four threads append 20,000 single rows each to one handle, with flush()
# and len() in between; an observer checks that visible rows are complete.
THREAD_APPEND = THREAD_PRELUDE + r'''
path = sys.argv[1]
concurrent = len(sys.argv) > 2 and sys.argv[2] == "concurrent"
N, THREADS = 20_000, 4
a = mm.open_array(path, "w+", dtype=T, shape=(0,), concurrent=concurrent)
start = threading.Barrier(THREADS + 1)
running = [THREADS]
lock = threading.Lock()

def appender(tid):
    def run():
        mine = rows(tid, range(N))
        start.wait()
        try:
            for seq in range(N):
                # single rows: a record scalar, or an array of one row
                a.append(mine[seq] if seq % 2 else mine[seq : seq + 1])
                if seq % 997 == 0:
                    a.flush()
                if seq % 101 == 0:
                    len(a)
        except BaseException as e:
            problem(f"thread {tid} at seq {seq}: {e!r}")
        finally:
            with lock:
                running[0] -= 1
    return run

def observer():
    start.wait()
    torn = 0
    try:
        while running[0]:
            n = len(a)
            if n and not complete(a[n - 1 : n])[0]:
                torn += 1
            time.sleep(0)
    except BaseException as e:
        problem(f"observer: a[{n - 1}:{n}] just after len(a) == {n} raised {e!r}")
    if torn:
        problem(f"{torn} times the last row within len(a) was not a complete row")

run_threads([appender(t) for t in range(THREADS)] + [observer])
arr = np.asarray(a).copy()
ok = complete(arr)
keys = arr["tid"][ok].astype(np.int64) * N + arr["seq"][ok]
unique = np.unique(keys)
lost = N * THREADS - unique.size
step(f"len {len(a)}, complete rows {ok.sum()}, distinct {unique.size}, lost {lost}")
if len(arr) != N * THREADS:
    problem(f"len(a) is {len(arr)}, expected {N * THREADS}")
if (~ok).any():
    problem(f"{(~ok).sum()} rows are torn or empty, first at {np.flatnonzero(~ok)[:5]}")
if lost:
    problem(f"{lost} of the {N * THREADS} appended rows are missing")
if keys.size != unique.size:
    problem(f"{keys.size - unique.size} rows appear more than once")
check_order(arr, ok)
a.close()
loaded = np.load(path)
if loaded.shape != arr.shape or not (loaded == arr).all():
    problem(f"np.load after close: shape {loaded.shape}, differs from the handle's rows")
result(length=len(arr), lost=int(lost), torn=int((~ok).sum()),
       duplicates=int(keys.size - unique.size))
'''


@pytest.mark.parametrize("how", ["plain", "concurrent"])
def test_threads_append_to_one_handle(scratch, how):
    # concurrent=True: pages faulted in ahead without the handle's lock, too.
    res = run_child(THREAD_APPEND, scratch / "threads.npy", how).check()
    assert res["length"] == 80_000


# Threads append, resize (always growing) and flush while another closes the
# handle at a random moment: the others get ValueError, never a crash; every
# append that returned is in the file, and the file is a valid .npy.
THREAD_CLOSE = THREAD_PRELUDE + r'''
base, seed = sys.argv[1], int(sys.argv[2])
concurrent = len(sys.argv) > 3 and sys.argv[3] == "concurrent"
rng = random.Random(seed)
STEP_ROWS = 10_000  # resize targets k * STEP_ROWS: always above the appended rows
MAX_APPENDS = 4_000
for round_ in range(3):
    path = f"{base}.{round_}.npy"
    a = mm.open_array(path, "w+", dtype=T, shape=(0,), concurrent=concurrent)
    closing = threading.Event()
    counts = [0, 0]
    done = {0: [], 1: []}
    resized = []
    threshold = rng.randint(200, 2 * MAX_APPENDS - 500)

    def closed_error(who, e):
        if not isinstance(e, ValueError):
            problem(f"{who}: {e!r} (only ValueError may come of a close)")
        elif not closing.is_set():
            problem(f"{who}: {e!r} before close() was called")
        elif "closed" not in str(e).lower():
            problem(f"{who}: the ValueError does not say closed: {e!r}")

    def appender(tid):
        def run():
            mine = rows(tid, range(MAX_APPENDS))
            for seq in range(MAX_APPENDS):
                try:
                    a.append(mine[seq : seq + 1])
                except BaseException as e:
                    closed_error(f"append in thread {tid}", e)
                    return
                done[tid].append(seq)
                counts[tid] += 1
        return run

    def resizer():
        for k in range(1, 6):
            time.sleep(rng.uniform(0, 0.004))
            try:
                a.resize(k * STEP_ROWS)
            except BaseException as e:
                closed_error("resize", e)
                return
            resized.append(k * STEP_ROWS)

    def flusher():
        while True:
            try:
                a.flush()
                len(a)
            except BaseException as e:
                closed_error("flush", e)
                return
            time.sleep(0.0005)

    def closer():
        deadline = time.monotonic() + 20
        while sum(counts) < threshold and time.monotonic() < deadline:
            time.sleep(0.0002)
        closing.set()
        a.close()

    run_threads([appender(0), appender(1), resizer, flusher, closer])
    for name, call in [("append", lambda: a.append(rows(9, [0]))),
                       ("resize", lambda: a.resize(10**6)), ("flush", a.flush)]:
        try:
            call()
        except ValueError:
            pass
        except BaseException as e:
            problem(f"{name} after close raised {e!r}, not ValueError")
        else:
            problem(f"{name} after close did not raise")
    loaded = np.load(path)
    ok = complete(loaded)
    zero = (loaded == np.zeros(1, T)[0])
    keys = loaded["tid"][ok].astype(np.int64) * MAX_APPENDS + loaded["seq"][ok]
    want = np.array([t * MAX_APPENDS + s for t in (0, 1) for s in done[t]], dtype=np.int64)
    missing = np.setdiff1d(want, keys).size
    step(f"round {round_}: closed after {sum(counts)} appends (threshold {threshold}), "
         f"resized to {resized}, file {len(loaded)} rows")
    if (~ok & ~zero).any():
        problem(f"round {round_}: {(~ok & ~zero).sum()} rows are neither complete nor zero")
    if keys.size != np.unique(keys).size:
        problem(f"round {round_}: {keys.size - np.unique(keys).size} rows appear twice")
    if missing:
        problem(f"round {round_}: {missing} of {want.size} appends that returned are lost")
    if resized and len(loaded) < max(resized):
        problem(f"round {round_}: {len(loaded)} rows, but resize({max(resized)}) returned")
    check_order(loaded, ok)
    with mm.open_array(path) as again:
        if again.shape != loaded.shape:
            problem(f"round {round_}: open_array gives {again.shape}, np.load {loaded.shape}")
    del loaded, ok, zero
    os.unlink(path)
result(rounds=3)
'''


@pytest.mark.parametrize("how", ["plain", "concurrent"])
def test_threads_append_resize_flush_while_one_closes(scratch, how):
    run_child(THREAD_CLOSE, scratch / "closing", 5, how).check()


# Threads resize one MappedFile to random sizes (a shrink is refused with
# BufferError while arrays live); the final size is the largest asked for and
# every array taken on the way still works.
THREAD_FILE_RESIZE = THREAD_PRELUDE + r'''
path, seed = sys.argv[1], int(sys.argv[2])
sys.setswitchinterval(1e-5)
f = mm.MappedFile(path, "w+", capacity=4096)
a0 = f.array()
a0[:] = 1
views, asked, start = [], [4096], threading.Barrier(4)

def resizer(tid):
    def run():
        rng = random.Random(seed + tid)
        # Rising sizes per thread: most calls grow the file, some (behind
        # another thread) would shrink it.
        sizes = sorted(rng.randint(4096, 8 << 20) for _ in range(40))
        start.wait()
        for size in sizes:
            asked.append(size)
            try:
                f.resize(size)
                v = f.array()
            except BufferError:
                continue  # a shrink, refused while arrays are alive
            except BaseException as e:
                problem(f"thread {tid}: resize({size}) raised {e!r}")
                return
            v[-1] = tid + 10
            views.append(v)
    return run

run_threads([resizer(t) for t in range(4)])
want = max(asked)
step(f"{len(views)} resizes returned; size {f.size}, file {os.path.getsize(path)}, "
     f"largest asked {want}")
if f.size != want or os.path.getsize(path) != want:
    problem(f"size {f.size}, file {os.path.getsize(path)} bytes; largest asked {want}")
for v in views:  # touching a page past the end of the file would SIGBUS
    if v[0] != 1 or int(f.read(len(v) - 1, np.uint8)) not in (10, 11, 12, 13):
        problem(f"a view of {len(v)} bytes does not see the file's bytes")
        break
    v[-1] = v[-1]
last = f.array()
last[::4096] = 2
last[-1] = 2
if a0[0] != 2:
    problem("the first array no longer sees the file's bytes")
f.close()
del a0, last, views
result(size=os.path.getsize(path), largest=want)
'''


def test_threads_resize_one_mappedfile(scratch):
    res = run_child(THREAD_FILE_RESIZE, scratch / "grow.bin", 3).check()
    assert res["size"] == res["largest"]


# One thread grows a MappedFile or SharedBlock step by step while others make
# views and read, write and flush through the handle: a growth unmaps the old
# mapping as soon as no array holds it, which can be between a reader taking
# the mapping and its view holding it.  No call may fail.
THREAD_VIEW_VS_GROWTH = THREAD_PRELUDE + r'''
kind, target = sys.argv[1], sys.argv[2]
sys.setswitchinterval(1e-6)
if kind == "file":
    h = mm.MappedFile(target, "w+", capacity=4096)
else:
    h = mm.SharedBlock.create(target, 4096)
h.write(0, np.uint64(7))
done = threading.Event()
calls = [0] * 4

def grower():
    try:
        for size in range(8192, 8192 + 4096 * 600, 4096):
            h.resize(size)
    finally:
        done.set()

def user(tid):
    def run():
        ops = [
            lambda: h.array()[0],
            lambda: h.records([("x", "<u8")])[0],
            lambda: h.read(0, np.uint64),
            lambda: h.read_array(0, np.uint64, 1)[0],
            lambda: h.write(8 + tid, np.uint8(tid)),
            lambda: h.flush(0, 4096) if kind == "file" else None,
        ]
        i = 0
        while not done.is_set():
            op = ops[i % len(ops)]
            try:
                got = op()
            except BaseException as e:
                problem(f"thread {tid}, call {i} (op {i % len(ops)}): raised {e!r}")
                return
            if got is not None and np.asarray(got).tobytes()[0] != 7:
                problem(f"thread {tid}, call {i}: read {got!r}, not 7")
                return
            i += 1
        calls[tid] = i
    return run

run_threads([grower] + [user(t) for t in range(4)])
step(f"{sum(calls)} calls during {h.size // 4096 - 1} growths")
if h.size != 8192 + 4096 * 599:
    problem(f"size {h.size}")
h.close()
result(calls=sum(calls))
'''


@pytest.mark.parametrize("kind", ["file", "shm"])
def test_threads_view_while_another_grows(scratch, shm_name, kind):
    target = scratch / "grow.bin" if kind == "file" else shm_name
    res = run_child(THREAD_VIEW_VS_GROWTH, kind, target).check()
    assert res["calls"] > 0


# Threads resize one SharedBlock (shrinks are refused with ValueError), then
# resize it while another thread closes it: no crash, arrays stay valid.
THREAD_BLOCK = THREAD_PRELUDE + r'''
name, seed = sys.argv[1], int(sys.argv[2])
sys.setswitchinterval(1e-5)
blk = mm.SharedBlock.create(name, 4096)
a0 = blk.array()
a0[:] = 1
views, asked = [], [4096]
closing = threading.Event()

def resizer(tid, phase):
    def run():
        rng = random.Random(seed + 10 * phase + tid)
        for size in sorted(rng.randint(4096, 4 << 20) for _ in range(25)):
            asked.append(size)
            try:
                blk.resize(size)
                v = blk.array()
            except ValueError as e:  # a shrink is refused; so is anything after close
                if "only grow" in str(e) or (closing.is_set() and "closed" in str(e)):
                    continue
                problem(f"phase {phase}, thread {tid}: resize({size}) raised {e!r}")
                return
            except BaseException as e:
                problem(f"phase {phase}, thread {tid}: resize({size}) raised {e!r}")
                return
            v[-1] = 5
            views.append(v)
    return run

def closer():
    time.sleep(random.Random(seed).uniform(0, 0.01))
    closing.set()
    blk.close()

run_threads([resizer(t, 1) for t in range(4)])
want = max(asked)
shm_size = os.path.getsize("/dev/shm/" + name)
step(f"phase 1: {len(views)} resizes returned; size {blk.size}, /dev/shm {shm_size}")
if blk.size != want or shm_size != want:
    problem(f"size {blk.size}, /dev/shm says {shm_size}; largest asked {want}")
run_threads([resizer(t, 2) for t in range(3)] + [closer])
if not blk.closed:
    problem("the block is not closed")
try:
    blk.resize(8 << 20)
except ValueError:
    pass
except BaseException as e:
    problem(f"resize after close raised {e!r}, not ValueError")
else:
    problem("resize after close did not raise")
if name in mm.shared_blocks():
    problem("the owner closed, but the name still exists")
for v in views:  # every array taken stays valid after close
    # (6: a view of the same length, taken while another thread grew the
    # block, shares this last byte and was checked already)
    if v[0] != 1 or v[-1] not in (5, 6):
        problem(f"an array of {len(v)} bytes no longer sees its bytes")
        break
    v[-1] = 6
a0[-1] = 6
result(views=len(views), largest=want)
'''


def test_threads_resize_and_close_one_sharedblock(shm_name):
    run_child(THREAD_BLOCK, shm_name, 4).check()


# -- interrupts -----------------------------------------------------------------

# A real SIGINT (from a timer thread) at a random moment of a large append,
# a resize to a much larger length, or a flush of much new data: the array is
# at its old or new length with rows intact, the handle works, np.load agrees.
INTERRUPT = r'''
path, op, seed, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
R = np.dtype([("i", "<i8"), ("check", "<u8")])
BASE, BIG = 1000, (64 << 20) // R.itemsize  # 64 MiB of rows
big = records(BASE, BIG, R)
a = mm.open_array(path, "w+", dtype=R, shape=(0,))
a.append(records(0, BASE, R))
a.flush()
segments = [(0, BASE, "rows")]  # what a must hold: rows i == records(i), or zeros

def check(arr, what):
    for lo, hi, kind in segments:
        hi = min(hi, len(arr))
        if lo >= hi:
            continue
        part = np.asarray(arr[lo:hi])
        if kind == "rows":
            bad = np.flatnonzero(part != records(lo, hi - lo, R))
        else:
            bad = np.flatnonzero(part != np.zeros(1, R)[0])
        if bad.size:
            first = bad[:3] + lo
            problem(f"{what}: {bad.size} wrong rows in [{lo}, {hi}) ({kind}), first {first}")
            return

def interrupted(fn, delay):
    """Run fn with a SIGINT sent after delay seconds; (completed, interrupted)."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    completed = hit = False
    try:
        timer.start()
        fn()
        completed = True
        timer.join()  # the interrupt lands here if fn was faster
        time.sleep(0.01)
    except KeyboardInterrupt:
        hit = True
    timer.join()
    return completed, hit

def prepare():
    """Set up the operation; return (function, length after it)."""
    if op == "append":
        return (lambda: a.append(big)), BASE + BIG
    if op == "resize":
        return (lambda: a.resize(BASE + 2 * BIG)), BASE + 2 * BIG
    a.append(big)  # flush: much new data to write
    segments.append((BASE, BASE + BIG, "rows"))
    return a.flush, BASE + BIG

def record_outcome(new):
    if len(a) == new and op == "append":
        segments.append((BASE, new, "rows"))
    elif len(a) == new and op == "resize":
        segments.append((BASE, new, "zeros"))

def restore():
    del segments[1:]
    a.resize(BASE)
    a.flush()

# Rehearsals measure how long the operation takes (not the first one: it
# also grows the file and faults its pages in, which the rounds do not).
times = []
for _ in range(3):
    fn, new = prepare()
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    restore()
took = min(times[1:])
step(f"{op} takes {took:.3f} s")
outcomes = []
for r in range(rounds):
    fn, new = prepare()
    old = len(a)
    delay = rng.uniform(0, 1.2 * took)
    completed, hit = interrupted(fn, delay)
    n = len(a)
    outcomes.append([round(delay, 4), completed, hit, n])
    step(f"round {r}: SIGINT after {delay:.4f} s: completed={completed} interrupted={hit} "
         f"len {n} (old {old}, new {new})")
    if not hit:  # Python drops an interrupt raised inside a finalizer, say
        step(f"round {r}: the SIGINT raised no KeyboardInterrupt here")
    if n not in (old, new) or (completed and n != new):
        problem(f"round {r}: len is {n}; old {old}, new {new}, completed {completed}")
    record_outcome(new)
    check(a, f"round {r}, after the interrupt")
    recorded = np.load(path, mmap_mode="r")
    if recorded.dtype != R or len(recorded) not in (BASE, n):
        problem(f"round {r}: np.load gives {len(recorded)} rows; expected {BASE} or {n}")
    del recorded
    try:
        a.append(records(n, 10, R))  # the handle goes on working
    except BaseException as e:
        problem(f"round {r}: append after the interrupt raised {e!r}")
        break
    segments.append((n, n + 10, "rows"))
    if len(a) != n + 10:
        problem(f"round {r}: len {len(a)} after appending 10 rows to {n}")
    check(a, f"round {r}, after one more append")
    if r < rounds - 1:
        restore()
length = len(a)
a.close()
loaded = np.load(path)
if len(loaded) != length:
    problem(f"np.load after close gives {len(loaded)} rows, the handle had {length}")
check(loaded, "np.load after close")
result(took=took, outcomes=outcomes, length=length)
'''


@pytest.mark.parametrize("op", ["append", "resize", "flush"])
def test_sigint_during_large_operation_keeps_the_array(scratch, op):
    res = run_child(INTERRUPT, scratch / f"{op}.npy", op, 2024, 6).check()
    assert len(res["outcomes"]) == 6
