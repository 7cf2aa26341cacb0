"""Crash safety of growable arrays, tested with SIGKILL (issue 4).

A child process appends records in a loop, flushing every few batches and
printing the flushed length after each flush.  The parent kills it with
SIGKILL at random moments; after every kill the file (or block) must open
with ``np.load`` and ``open_array``, be no shorter than the last length the
child reported as flushed, and hold intact rows up to its recorded length.
Then appending resumes in a fresh process and the same holds.
"""

from __future__ import annotations

import io
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import mmarray as mm

REPO = pathlib.Path(mm.__file__).resolve().parents[1]
SHM_DIR = pathlib.Path("/dev/shm")
DT = np.dtype([("i", "<i8"), ("payload", "<f4", (2,)), ("check", "<u8")])

# The child: append random-sized batches of records derived from their row
# index, flush every few batches and report the flushed length.  With a count
# it appends that many rows and exits normally; without, it runs until killed.
CHILD = r"""
import random, sys
import numpy as np
import mmarray as mm

DT = np.dtype([("i", "<i8"), ("payload", "<f4", (2,)), ("check", "<u8")])
K = np.uint64(0x9E3779B97F4A7C15)
# Mostly small batches, now and then one over 64 KiB (written with pwrite).
BATCHES = [1, 1, 2, 5, 17, 60, 60, 200, 500, 3000]

def records(start, n):
    i = np.arange(start, start + n, dtype=np.int64)
    out = np.empty(n, DT)
    out["i"] = i
    out["payload"] = np.stack([i * 0.5, i % 7], axis=1)
    with np.errstate(over="ignore"):
        out["check"] = (i.astype(np.uint64) * K) ^ np.uint64(0xDEADBEEF)
    return out

target, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with mm.open_array(target, "a") as a:
    n = len(a)
    print(n, flush=True)  # ready: the length recorded at open
    end = n + count if count else None
    enough = n + 400_000  # bounds the disk traffic of one run
    appends = 0
    while end is None or n < end:
        k = rng.choice(BATCHES)
        if end is not None:
            k = min(k, end - n)
        a.append(records(n, k))
        n += k
        appends += 1
        if appends % 4 == 0:
            a.flush()
            print(n, flush=True)
        if end is None and n > enough:  # wait for the kill
            import time
            time.sleep(60)
print("done", len(a), flush=True)
"""


def expected(start: int, n: int) -> np.ndarray:
    i = np.arange(start, start + n, dtype=np.int64)
    out = np.empty(n, DT)
    out["i"] = i
    out["payload"] = np.stack([i * 0.5, i % 7], axis=1)
    with np.errstate(over="ignore"):
        out["check"] = (i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(
            0xDEADBEEF
        )
    return out


def start_child(target: str, seed: int, count: int = 0) -> subprocess.Popen:
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, target, str(seed), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=pythonpath),
    )


def kill_at_random(target: str, rng: random.Random) -> list[int]:
    """Run the child until a random moment, SIGKILL it; its reported lengths."""
    proc = start_child(target, rng.randrange(1 << 30))
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:  # drain stdout so the child never blocks on the pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            ready.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the child never started"
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    thread.join(30)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, stderr
    return [int(line) for line in lines]


def npy_path(target: str) -> str:
    if target.startswith("shm://"):
        return str(SHM_DIR / target[len("shm://") :])  # numpy can read the block's bytes
    return target


def check_prefix(target: str, at_least: int) -> int:
    """Open ``target`` every way; return its length after checking every row."""
    loaded = np.load(npy_path(target))
    assert loaded.dtype == DT
    n = len(loaded)
    assert n >= at_least, f"lost flushed rows: length {n} < {at_least} reported flushed"
    good = expected(0, n)
    bad = np.flatnonzero(loaded != good)
    assert bad.size == 0, f"{bad.size} damaged rows, first at {bad[:5]}: {loaded[bad[:3]]}"
    mapped = np.load(npy_path(target), mmap_mode="r")
    assert mapped.shape == (n,)
    assert (mapped[-1:] == good[-1:]).all()
    del mapped
    with mm.open_array(target) as a:
        assert a.shape == (n,)
        assert a.dtype == DT
        assert (np.asarray(a) == good).all()
    return n


@pytest.fixture(params=["file", "shm"])
def target(request, tmp_path, shm_name):
    """A fresh, empty array; a shared block is owned by this process."""
    where = str(tmp_path / "crash.npy") if request.param == "file" else "shm://" + shm_name
    if request.param == "file":
        mm.open_array(where, "x+", dtype=DT, shape=(0,)).close()
    else:
        # A persistent block holding an empty .npy, so that no handle of
        # ours is its writer (the children append); shm_name removes it.
        buf = io.BytesIO()
        np.save(buf, np.zeros(0, DT))
        with mm.SharedBlock.create(shm_name, 1 << 16, persist=True) as blk:
            blk.write_array(0, np.frombuffer(buf.getvalue(), np.uint8))
    yield where


def test_sigkill_never_loses_flushed_rows(target):
    rng = random.Random(20240611)
    kills = 5 if not target.startswith("shm://") else 3
    length = 0
    for _ in range(kills):
        reported = kill_at_random(target, rng)
        assert reported, "the child printed nothing"
        assert reported[0] >= length  # it resumed from the recorded length
        new_length = check_prefix(target, max(reported))
        assert new_length >= length  # the recorded length never shrinks
        length = new_length

    # Appending resumes in a fresh process, from the recorded length.
    proc = start_child(target, 7, count=2500)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.split()
    assert int(lines[0]) == length
    assert lines[-2:] == ["done", str(length + 2500)]
    assert check_prefix(target, length + 2500) == length + 2500
