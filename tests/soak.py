"""Soak test: processes share files, shared blocks and growable arrays (issue 11 item 5).

    python tests/soak.py --seconds 8 --procs 5 --seed 1

The parent sets up, in a fresh temporary directory and under a unique
``/dev/shm`` prefix:

* growable arrays (``open_array``): ``.npy`` files, and one array in a
  shared block that the parent owns; each has exactly ONE appending worker;
* shared files (``MappedFile``) and shared blocks (``SharedBlock``, owned
  by the parent) that every mixer opens, checks, writes and grows;
* a "guard" file the parent keeps mapped, which workers try to shrink
  (``BufferError`` expected: another process maps it).

Then it starts the workers (``sys.executable`` subprocesses of this very
script, with ``PYTHONPATH`` pointing at the repository):

* an **appender** opens its array with ``"a"`` and continues the sequence
  from ``len()``: it appends batches (small ones through the mapping, big
  ones with ``pwrite``), single rows, and ``resize`` + fill; each row holds
  (writer id, array id, sequence number, payload, checksum).  Now and then
  it flushes and prints the flushed length, and pickles a slice of flushed
  rows into a drop box for others to unpickle.  A replacement appender
  checks that the array is no shorter than the last length its predecessor
  reported flushed.
* a **mixer** does random short operations: check/write/grow the shared
  files and blocks (through long-lived handles and fresh ones, holding a
  lock while it does), pickle and unpickle views of them, create, use and
  close shared blocks of its own, open arrays with ``"r"`` and check the
  recorded rows, unpickle the appenders' drop box, try to shrink the guard
  file, and -- told by the parent, while the array's appender is alive and
  cannot be killed -- try to become a second writer (``open_array(..., "a")``
  must raise ``BlockingIOError`` at open; an ``"r+"`` handle must raise it at
  its first ``resize``).

Meanwhile the parent SIGKILLs random workers at random moments (one mixer,
the "elder", is spared so that one long-lived worker always reaches the
end) and starts replacements.  At the end it closes the workers' stdin (the
stop signal), and checks:

* every worker either was SIGKILLed by the parent or exited with 0 and an
  empty stderr (a -SIGBUS/-SIGSEGV or any other exit is a failure);
* a worker's descriptor count (``/proc/self/fd`` after ``gc.collect()``) is
  the same at the start and at the end of its work loop, and back to its
  baseline after it closed everything;
* no shared block with the soak's prefix is left in ``/dev/shm``, except
  blocks whose creator was SIGKILLed (counted apart, then removed);
* every array file loads with ``np.load``, is no shorter than the last
  length reported flushed, and holds only valid rows with sequence numbers
  0..len-1; the shared files and blocks hold only valid words.

The last line on stdout is a JSON summary; the exit status is 0 when no
check failed.  Worker checks that fail print ``FAIL ...`` lines, which the
parent collects.  Everything is bounded in time, and the temporary
directory and the prefix's blocks are removed even on failure.

Appenders keep to ``ROWS_PER_SECOND`` and stop at ``MAX_ROWS`` (a few
minutes in); very long runs then soak the other operations.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import fcntl
import gc
import json
import os
import pathlib
import pickle
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mmarray as mm  # noqa: E402

SHM_DIR = pathlib.Path("/dev/shm")
FD_DIR = "/proc/self/fd"

#: One appended row: who wrote it, to which array, its index, and checks.
DT = np.dtype(
    [("writer", "<u4"), ("array", "<u4"), ("seq", "<i8"), ("payload", "<f8"), ("check", "<u8")]
)
K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xC2B2AE3D27D4EB4F)
K3 = np.uint64(0x165667B19E3779F9)
K4 = np.uint64(0xFF51AFD7ED558CCD)
SALT = np.uint64(0x5EED5EED)

#: Batch sizes of appends; 2100 rows (67 KiB) goes through pwrite.
BATCHES = (1, 1, 2, 3, 5, 8, 17, 60, 200, 700, 2100)
#: Rows after which an appender stops appending (bounds disk and memory).
MAX_ROWS = {"file": 1_000_000, "shm": 300_000}
#: Appenders keep an array below this many rows per second of the run (plus
#: a head start), so that MAX_ROWS lasts a few minutes.
ROWS_PER_SECOND = 4000
HEAD_START = 5000
#: Shared files and blocks start at this size and grow up to MAX_REGION.
REGION_START = 64 * 1024
MAX_REGION = 1 << 20
GUARD_SIZE = 64 * 1024
#: Bounds on waiting for locks, for a worker to stop, for a probe answer.
LOCK_TIMEOUT = 5.0
STOP_TIMEOUT = 15.0
PROBE_TIMEOUT = 5.0
#: A worker that is never told to stop gives up this long after the end.
WORKER_GRACE = 60.0
#: At most this many worker processes in one run (replacements included).
MAX_PROCESSES = 400


# -- rows and words ----------------------------------------------------------------------


def checksum(aid: int, writer: Any, seq: Any) -> np.ndarray:
    """The check value of rows (array id, writer ids, sequence numbers)."""
    with np.errstate(over="ignore"):
        s = np.asarray(seq).astype(np.uint64)
        w = np.asarray(writer).astype(np.uint64)
        h = (s * K1) ^ (w * K2) ^ (np.uint64(aid + 1) * K3) ^ SALT
        return (h ^ (h >> np.uint64(29))) * K4


def make_rows(aid: int, writer: int, start: int, n: int) -> np.ndarray:
    """Rows ``start .. start+n-1`` of array ``aid`` written by ``writer``."""
    seq = np.arange(start, start + n, dtype=np.int64)
    out = np.empty(n, DT)
    out["writer"] = writer
    out["array"] = aid
    out["seq"] = seq
    out["payload"] = seq * 0.25 + aid
    out["check"] = checksum(aid, writer, seq)
    return out


def bad_rows(rows: np.ndarray, aid: int, start: int) -> np.ndarray:
    """Indices (into ``rows``) of rows that are not row ``start + i`` of ``aid``."""
    rows = np.asarray(rows)
    seq = rows["seq"]
    ok = (
        (seq == np.arange(start, start + len(rows), dtype=np.int64))
        & (rows["array"] == aid)
        & (rows["writer"] > 0)
        & (rows["payload"] == seq * 0.25 + aid)
        & (rows["check"] == checksum(aid, rows["writer"], seq))
    )
    return np.flatnonzero(~ok)


def pattern(tid: int, n: int) -> np.ndarray:
    """The only non-zero value each 8-byte word of shared region ``tid`` may hold."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return ((i * K1) ^ (np.uint64(tid + 1) * K2)) | np.uint64(1)


def bad_words(words: np.ndarray, tid: int) -> np.ndarray:
    words = np.asarray(words)
    return np.flatnonzero((words != 0) & (words != pattern(tid, len(words))))


def fd_count() -> int:
    gc.collect()
    return len(os.listdir(FD_DIR))


def shm_names(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(prefix + "*"))


# ======================================================================================
# Workers
# ======================================================================================


def emit(*parts: Any) -> None:
    print(*parts, flush=True)


def fail(msg: str) -> None:
    emit("FAIL", msg.replace("\n", " | ")[:2000])


def real_size(target: dict) -> int:
    """The size on storage now (another process may have grown it)."""
    path = target["name"] if target["kind"] == "file" else SHM_DIR / target["name"]
    return os.stat(path).st_size


@contextlib.contextmanager
def exclusive(handle: Any, lockpath: str):
    """Hold a lock that every worker takes before touching a shared region.

    The contract's ``lock()`` when the implementation has it, else
    ``flock`` on a side file (raw handles take no writer lock: processes
    coordinate themselves).
    """
    lock = getattr(handle, "lock", None)
    if lock is not None:
        with lock(timeout=LOCK_TIMEOUT):
            yield
        return
    fd = os.open(lockpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"lock {lockpath} not acquired") from None
                time.sleep(0.001)
        yield
    finally:
        os.close(fd)


@dataclass
class Stats:
    ops: int = 0
    rows_checked: int = 0
    appended: int = 0
    flushes: int = 0
    grows: int = 0
    pickles: int = 0
    temp_blocks: int = 0
    region_checks: int = 0
    shrink_refused: int = 0
    drops_read: int = 0


class Worker:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.wid: int = cfg["wid"]
        self.rng = random.Random(cfg["seed"])
        self.stats = Stats()
        self.stop = threading.Event()
        self.commands: queue.Queue[str] = queue.Queue()
        self.deadline = cfg["deadline"]
        threading.Thread(target=self._read_stdin, daemon=True).start()

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            self.commands.put(line.strip())
        self.stop.set()  # stdin closed: the parent says stop

    def running(self) -> bool:
        if self.stop.is_set():
            return False
        if time.time() > self.deadline:
            fail("never told to stop; giving up")
            return False
        return True

    def pause(self, lo: float, hi: float) -> None:
        self.stop.wait(self.rng.uniform(lo, hi))

    def finish(self) -> None:
        """Report the descriptors at the end of the loop (the parent compares)."""
        emit("fd end", fd_count())


# -- the appender ----------------------------------------------------------------------


def run_appender(w: Worker) -> None:
    cfg = w.cfg
    aid, target = cfg["aid"], cfg["target"]
    rng, st = w.rng, w.stats
    cap = MAX_ROWS[cfg["kind"]]
    end = time.monotonic() + 2.0
    while True:
        try:
            a = mm.open_array(target, "a")
            break
        except BlockingIOError as e:  # only a live writer may hold the lock
            if time.monotonic() > end:
                fail(f"array {aid}: 'a' still refused 2 s after its last writer ended: {e}")
                return
            time.sleep(0.02)
    n = len(a)
    emit("opened", aid, n)
    if a.dtype != DT:
        fail(f"array {aid} has dtype {a.dtype}")
    if n < cfg["expect_min"]:
        fail(f"array {aid}: length {n} at open < {cfg['expect_min']} reported flushed")
    lo = max(0, n - 4096)
    bad = bad_rows(a[lo:n], aid, lo)
    st.rows_checked += n - lo
    if bad.size:
        fail(f"array {aid}: {bad.size} bad rows at open, first {bad[:5] + lo}")
    flushed = n
    emit("fd start", fd_count())
    while w.running():
        if n >= min(cap, HEAD_START + ROWS_PER_SECOND * (time.time() - cfg["t0"])):
            w.pause(0.005, 0.02)
            continue
        st.ops += 1
        r = rng.random()
        if r < 0.6:
            k = min(rng.choice(BATCHES), cap - n)
            a.append(make_rows(aid, w.wid, n, k))
        elif r < 0.75:
            k = 1
            a.append(tuple(make_rows(aid, w.wid, n, 1)[0].tolist()))
        elif r < 0.9:
            k = min(rng.choice(BATCHES), cap - n)
            a.resize(n + k)
            a[n : n + k] = make_rows(aid, w.wid, n, k)
        else:
            k = 0
            lo = max(0, n - rng.randint(1, 3000))
            bad = bad_rows(a[lo:n], aid, lo)
            st.rows_checked += n - lo
            if bad.size:
                fail(f"array {aid}: own rows damaged, first {bad[:5] + lo}")
        n += k
        st.appended += k
        if len(a) != n:
            fail(f"array {aid}: len {len(a)} after appending up to {n}")
            n = len(a)
        if rng.random() < 0.25:
            a.flush()
            flushed = n
            st.flushes += 1
            emit("flushed", aid, n)
        if flushed and rng.random() < 0.05:
            drop_pickle(w, a, aid, flushed)
        w.pause(0.0005, 0.003)
    w.finish()
    a.close()
    emit("closed", aid, n)
    emit("fd closed", fd_count())


def drop_pickle(w: Worker, a: Any, aid: int, flushed: int) -> None:
    """Pickle a slice of flushed rows where mixers will unpickle it."""
    lo = w.rng.randrange(flushed)
    hi = min(flushed, lo + w.rng.randint(1, 5000))
    data = pickle.dumps({"aid": aid, "start": lo, "view": a[lo:hi]})
    if len(data) > 4096:
        fail(f"a pickled view of {hi - lo} rows takes {len(data)} bytes: not by reference")
    drops = pathlib.Path(w.cfg["drops"])
    tmp = drops / f".d{aid}-{w.wid}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, drops / f"d{aid}-{w.rng.randrange(4)}.pkl")
    w.stats.pickles += 1


# -- the mixer ---------------------------------------------------------------------------


class Mixer:
    def __init__(self, w: Worker) -> None:
        self.w = w
        self.cfg = w.cfg
        self.rng = w.rng
        self.st = w.stats
        self.seen: dict[int, int] = {}  # array id -> longest length seen
        self.remembered: dict[int, set[int]] = {}  # region id -> words written
        self.temp = 0
        self.long: dict[int, Any] = {}

    def open_region(self, t: dict) -> Any:
        if t["kind"] == "file":
            return mm.MappedFile(t["name"], "r+")
        return mm.SharedBlock.open(t["name"])

    def run(self) -> None:
        w, rng = self.w, self.rng
        regions = self.cfg["regions"]
        for t in regions:  # long-lived handles, open for the whole loop
            self.long[t["tid"]] = self.open_region(t)
        emit("fd start", fd_count())
        ops = (
            (0.30, self.region_long),
            (0.45, self.region_fresh),
            (0.55, self.temp_block),
            (0.80, self.read_array),
            (0.92, self.read_drop),
            (1.00, self.shrink_guard),
        )
        while w.running():
            while True:
                try:
                    cmd = w.commands.get_nowait()
                except queue.Empty:
                    break
                self.command(cmd)
            r = rng.random()
            op = next(f for p, f in ops if r < p)
            self.st.ops += 1
            op()
            w.pause(0.001, 0.005)
        w.finish()
        for h in self.long.values():
            h.close()
        self.long.clear()
        emit("fd closed", fd_count())

    # A second writer must be refused while the appender holds the array.
    def command(self, cmd: str) -> None:
        parts = cmd.split()
        if len(parts) != 3 or parts[0] != "probe":
            fail(f"unknown command {cmd!r}")
            return
        aid, mode = int(parts[1]), parts[2]
        arr = self.cfg["arrays"][aid]
        target = arr["target"]
        try:
            if mode == "a":
                h = mm.open_array(target, "a")
            else:
                h = mm.open_array(target, "r+")
                try:
                    h.resize(len(h))  # the first resize takes the writer lock
                except BaseException:
                    h.close()
                    raise
        except BlockingIOError as e:
            text = str(e)
            missing = [
                what
                for what, ok in (
                    ("the file", os.path.basename(arr["name"]) in text),
                    ("concurrent=True", "concurrent" in text),
                )
                if not ok
            ]
            if missing:
                fail(f"the BlockingIOError of a second writer (mode {mode!r}) does not name "
                     f"{' or '.join(missing)}: {text!r}")
            emit("probe", aid, mode, "blocked", int(not missing))
            return
        h.close()
        emit("probe", aid, mode, "admitted", 0)

    def region_op(self, h: Any, t: dict) -> None:
        rng, st, tid = self.rng, self.st, t["tid"]
        with exclusive(h, t["lock"]):
            refresh = getattr(h, "refresh", None)
            if refresh is not None:
                refresh()
            real = real_size(t)
            if real < h.size:
                fail(f"{t['name']} is {real} bytes, smaller than a mapping of {h.size}")
                return
            n = h.size // 8
            words = h.array(np.uint64, n)
            exp = pattern(tid, n)
            bad = bad_words(words, tid)
            st.region_checks += 1
            if bad.size:
                fail(f"{t['name']}: {bad.size} bad words, first {bad[:5]}")
            mine = self.remembered.setdefault(tid, set())
            lost = [i for i in mine if i < n and words[i] != exp[i]]
            if lost:
                fail(f"{t['name']}: words written before were lost: {sorted(lost)[:5]}")
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                if rng.random() < 0.5:
                    words[i] = exp[i]
                else:
                    h.write(i * 8, exp[i])
                if len(mine) < 512:
                    mine.add(i)
            i = rng.randrange(n)
            if words[i] not in (0, exp[i]) or h.read(i * 8, np.uint64) != words[i]:
                fail(f"{t['name']}: read() and array() disagree at word {i}")
            if rng.random() < 0.25:
                lo = rng.randrange(n)
                hi = min(n, lo + rng.randint(1, 4096))
                v = words[lo:hi]
                data = pickle.dumps(v)
                back = pickle.loads(data)
                st.pickles += 1
                if len(data) > 4096 or not np.array_equal(back, v):
                    fail(f"{t['name']}: pickled view ({len(data)} bytes) differs")
                j = rng.randrange(hi - lo)
                back[j] = exp[lo + j]  # a write through the unpickled view...
                if words[lo + j] != exp[lo + j]:  # ...is seen through the original
                    fail(f"{t['name']}: a write through an unpickled view was not seen")
                del v, back
            del words
            if rng.random() < 0.2 and real < MAX_REGION:
                h.resize(max(real, h.size) + 4096 * rng.randint(1, 4))
                st.grows += 1
                if real_size(t) < h.size:
                    fail(f"{t['name']}: resize did not grow it to {h.size}")

    def region_long(self) -> None:
        t = self.rng.choice(self.cfg["regions"])
        self.region_op(self.long[t["tid"]], t)

    def region_fresh(self) -> None:
        t = self.rng.choice(self.cfg["regions"])
        with self.open_region(t) as h:
            self.region_op(h, t)

    def temp_block(self) -> None:
        """A block of our own: create, use, pickle, grow, close -- and it is gone."""
        rng, st = self.rng, self.st
        self.temp += 1
        name = f"{self.cfg['prefix']}-w{self.w.wid}-t{self.temp}"
        size = 4096 * rng.randint(1, 16)
        with mm.SharedBlock.create(name, size) as blk:
            st.temp_blocks += 1
            if not (SHM_DIR / name).exists():
                fail(f"created block {name} is not in /dev/shm")
            a = blk.array(np.uint64)
            a[:] = pattern(7, len(a))
            if rng.random() < 0.5:
                back = pickle.loads(pickle.dumps(a[1::3]))
                st.pickles += 1
                if not np.array_equal(back, a[1::3]):
                    fail(f"{name}: pickled view differs")
                del back
            with mm.SharedBlock.open(name, readonly=True) as ro:
                if not np.array_equal(ro.array(np.uint64), a):
                    fail(f"{name}: a second handle sees other bytes")
            if rng.random() < 0.3:
                blk.resize(size * 2)
                st.grows += 1
                b = blk.array(np.uint64)
                if not (np.array_equal(b[: len(a)], a) and not b[len(a) :].any()):
                    fail(f"{name}: grown block lost its bytes or is not zero-filled")
                del b
            del a
        if (SHM_DIR / name).exists():
            fail(f"block {name} still exists after its owner closed it")

    def read_array(self) -> None:
        """Open an array with "r" and check the rows its header records."""
        rng, st = self.rng, self.st
        arr = rng.choice(self.cfg["arrays"])
        aid = arr["aid"]
        with mm.open_array(arr["target"], "r") as a:
            n = len(a)
            if n < self.seen.get(aid, 0):
                fail(f"array {aid}: recorded length went down from {self.seen[aid]} to {n}")
            self.seen[aid] = max(n, self.seen.get(aid, 0))
            if n <= 30_000:
                spans = [(0, n)]
            else:
                lo = rng.randrange(n - 8192)
                spans = [(lo, lo + 8192), (n - 2048, n)]
            for lo, hi in spans:
                bad = bad_rows(a[lo:hi], aid, lo)
                st.rows_checked += hi - lo
                if bad.size:
                    fail(f"array {aid}: {bad.size} bad recorded rows (len {n}), first "
                         f"{(bad[:5] + lo).tolist()}: {np.asarray(a[bad[:2] + lo])}")
            if n and rng.random() < 0.3:
                lo = rng.randrange(n)
                v = a[lo : min(n, lo + 1000)]
                back = pickle.loads(pickle.dumps(v))
                st.pickles += 1
                if not np.array_equal(back, v):
                    fail(f"array {aid}: unpickled view differs")
                del v, back
        if arr["kind"] == "file" and rng.random() < 0.2:
            m = np.load(arr["name"], mmap_mode="r")
            if m.dtype != DT or len(m) < n:
                fail(f"np.load sees {m.dtype} {m.shape}, open_array saw length {n}")
            del m

    def read_drop(self) -> None:
        drops = sorted(pathlib.Path(self.cfg["drops"]).glob("*.pkl"))
        if not drops:
            return
        path = self.rng.choice(drops)
        d = pickle.loads(path.read_bytes())
        v = d["view"]
        bad = bad_rows(v, d["aid"], d["start"])
        self.st.rows_checked += len(v)
        self.st.drops_read += 1
        if bad.size:
            fail(f"array {d['aid']}: unpickled rows from {path.name} are bad at "
                 f"{(bad[:5] + d['start']).tolist()}")
        del v, d

    def shrink_guard(self) -> None:
        """Shrinking a file that another process maps must raise BufferError."""
        if self.rng.random() < 0.7:
            return  # rare
        with mm.MappedFile(self.cfg["guard"], "r+") as f:
            size = f.size
            try:
                f.resize(size - 4096)
            except BufferError:
                self.st.shrink_refused += 1
                return
            emit("shrink admitted")
            f.resize(size)


def worker_main(cfg: dict) -> int:
    faulthandler.enable()  # a SIGSEGV or SIGBUS prints where it happened
    w = Worker(cfg)
    emit("fd base", fd_count())
    if cfg["role"] == "appender":
        run_appender(w)
    else:
        Mixer(w).run()
    emit("done", json.dumps(w.stats.__dict__))
    return 0


# ======================================================================================
# The parent
# ======================================================================================


@dataclass
class Proc:
    wid: int
    role: str
    aid: int | None
    proc: subprocess.Popen
    elder: bool = False
    killed: bool = False
    abnormal: bool = False  # ended in a way already reported as a failure
    ready: bool = False
    finished: bool = False
    fds: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] | None = None
    stderr: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


class Soak:
    def __init__(self, seconds: float, procs: int, seed: int) -> None:
        if procs < 2:
            raise SystemExit("--procs must be at least 2 (an appender and a mixer)")
        self.seconds = seconds
        self.nprocs = procs
        self.seed = seed
        self.rng = random.Random(seed)
        self.t0 = time.time()
        self.prefix = f"mmsoak-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="mmsoak-"))
        self.events: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.procs: dict[int, Proc] = {}
        self.next_wid = 1
        self.failures: list[str] = []
        self.repeats: dict[str, int] = {}
        self.flushed: dict[int, int] = {}
        self.closed_len: dict[int, int] = {}
        self.owned: list[Any] = []  # the parent's handles (blocks it owns, the guard)
        self.arrays: list[dict] = []
        self.regions: list[dict] = []
        self.probe: tuple[int, int, float] | None = None  # (mixer, appender, since)
        self.c = dict.fromkeys(
            ("processes_started", "kills", "rows_checked", "probes",
             "blocked_second_writers", "admitted_second_writers", "probe_bad_message",
             "leaks", "left_by_killed", "shrink_admitted", "flushes_reported", "fd_checked"), 0)
        self.probe_modes = {"a": 0, "r+": 0}

    def failure(self, msg: str, who: str = "") -> None:
        """Record a failed check; repeats of one message (from any worker) count once."""
        if msg in self.failures:
            self.repeats[msg] += 1
            return
        self.failures.append(msg)
        self.repeats[msg] = 1
        print("soak: FAILURE:", who + msg, file=sys.stderr, flush=True)

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        (self.tmp / "drops").mkdir()
        (self.tmp / "locks").mkdir()
        narrays = min(3, max(1, self.nprocs // 2))
        for aid in range(narrays):
            kind = "shm" if aid == 1 else "file"
            if kind == "file":
                name = str(self.tmp / f"array{aid}.npy")
                mm.open_array(name, "x+", dtype=DT, shape=(0,)).close()
                target = name
            else:
                name = f"{self.prefix}-array{aid}"
                target = "shm://" + name
                self.owned.append(self.shm_array(name))
            self.arrays.append({"aid": aid, "kind": kind, "name": name, "target": target})
            self.flushed[aid] = 0
        for tid in range(2):
            path = self.tmp / f"region{tid}.bin"
            mm.MappedFile(path, "x+", capacity=REGION_START).close()
            self.regions.append(self.region(tid, "file", str(path)))
        for tid in range(2, 4):
            name = f"{self.prefix}-region{tid}"
            self.owned.append(mm.SharedBlock.create(name, REGION_START))
            self.regions.append(self.region(tid, "shm", name))
        self.guard = str(self.tmp / "guard.bin")
        mm.MappedFile(self.guard, "x+", capacity=GUARD_SIZE).close()
        self.owned.append(mm.MappedFile(self.guard, "r"))  # maps it; never touches it

    def region(self, tid: int, kind: str, name: str) -> dict:
        lock = str(self.tmp / "locks" / f"region{tid}.lock")
        return {"tid": tid, "kind": kind, "name": name, "lock": lock}

    def shm_array(self, name: str) -> Any:
        """An empty growable array in a block this process owns.

        ``open_array("shm://...", "x+")`` would make this process its
        writer; instead the header of an empty array file is copied into
        a plain block, which the appenders then open with ``"a"``.
        """
        scratch = self.tmp / "header.npy"
        mm.open_array(scratch, "x+", dtype=DT, shape=(0,)).close()
        head = np.frombuffer(scratch.read_bytes(), np.uint8)
        scratch.unlink()
        blk = mm.SharedBlock.create(name, len(head) + 1024 * DT.itemsize)
        blk.write_array(0, head)
        return blk

    # -- workers -------------------------------------------------------------------------

    def start(self, role: str, aid: int | None = None, elder: bool = False) -> Proc:
        wid = self.next_wid
        self.next_wid += 1
        cfg: dict[str, Any] = {
            "wid": wid,
            "role": role,
            "seed": self.rng.randrange(1 << 30),
            "prefix": self.prefix,
            "deadline": time.time() + self.seconds + WORKER_GRACE,
            "t0": self.t0,
            "arrays": self.arrays,
            "regions": self.regions,
            "guard": self.guard,
            "drops": str(self.tmp / "drops"),
        }
        if aid is not None:
            arr = self.arrays[aid]
            cfg.update(aid=aid, target=arr["target"], kind=arr["kind"],
                       expect_min=self.flushed[aid])
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        popen = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=pythonpath),
        )
        p = Proc(wid, role, aid, popen, elder=elder)
        self.procs[wid] = p
        self.c["processes_started"] += 1
        p.threads = [
            threading.Thread(target=self._pump_out, args=(p,), daemon=True),
            threading.Thread(target=self._pump_err, args=(p,), daemon=True),
        ]
        for t in p.threads:
            t.start()
        return p

    def _pump_out(self, p: Proc) -> None:
        assert p.proc.stdout is not None
        for line in p.proc.stdout:
            self.events.put((p.wid, line.rstrip("\n")))
        self.events.put((p.wid, None))

    def _pump_err(self, p: Proc) -> None:
        assert p.proc.stderr is not None
        for line in p.proc.stderr:
            p.stderr.append(line)

    def drain(self, timeout: float = 0.0) -> None:
        """Handle what workers printed (waiting up to ``timeout`` for the first line)."""
        try:
            wid, line = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            if line is not None:
                self.handle(self.procs[wid], line)
            try:
                wid, line = self.events.get_nowait()
            except queue.Empty:
                return

    def handle(self, p: Proc, line: str) -> None:
        who = f"worker {p.wid} ({p.role}{'' if p.aid is None else f' of array {p.aid}'})"
        parts = line.split()
        head = parts[0] if parts else ""
        if head == "fd" and len(parts) == 3:
            p.fds[parts[1]] = int(parts[2])
            if parts[1] == "start":
                p.ready = True
        elif head in ("flushed", "closed", "opened") and len(parts) == 3:
            aid, n = int(parts[1]), int(parts[2])
            self.c["flushes_reported"] += head == "flushed"
            if head != "opened":
                self.flushed[aid] = max(self.flushed[aid], n)
            if head == "closed":
                self.closed_len[aid] = n
        elif head == "probe" and len(parts) == 5:
            self.probe = None
            self.c["probes"] += 1
            self.probe_modes[parts[2]] += 1
            if parts[3] == "blocked":
                self.c["blocked_second_writers"] += 1
                self.c["probe_bad_message"] += parts[4] != "1"  # the worker said why
            else:
                self.c["admitted_second_writers"] += 1
                self.failure(f"a second writer (mode {parts[2]!r}) was admitted to array "
                             f"{parts[1]} while its appender held it", who=f"{who}: ")
        elif head == "shrink":
            self.c["shrink_admitted"] += 1
            self.failure("MappedFile.resize shrank a file that another process maps "
                         "(expected BufferError)", who=f"{who}: ")
        elif head == "done" and len(parts) >= 2:
            p.stats = json.loads(line[len("done ") :])
        elif head == "FAIL":
            self.failure(line[5:], who=f"{who}: ")
        else:
            self.failure(f"{who}: unexpected output {line!r}")

    def live(self) -> list[Proc]:
        return [p for p in self.procs.values() if not p.finished]

    def reap(self, p: Proc, expect: int) -> None:
        """``p`` has exited (or been killed): collect its output and check how it ended."""
        for t in p.threads:
            t.join(10)
        assert p.proc.stdin is not None
        with contextlib.suppress(OSError):
            p.proc.stdin.close()
        p.finished = True
        self.drain()
        rc = p.proc.returncode
        stderr = "".join(p.stderr).strip()
        who = f"worker {p.wid} ({p.role}{'' if p.aid is None else f' of array {p.aid}'})"
        if rc != expect:
            p.abnormal = True
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            self.failure(f"{who} ended with {how} (expected "
                         f"{'SIGKILL' if expect < 0 else 'exit 0'}); stderr:\n{stderr}")
        elif stderr:
            self.failure(f"{who} wrote to stderr:\n{stderr}")
        if self.probe is not None and p.wid in self.probe[:2]:
            self.probe = None

    def kill_one(self) -> None:
        protected = set() if self.probe is None else {self.probe[1]}
        cands = [p for p in self.live() if not p.elder and p.wid not in protected]
        if not cands:
            return
        p = self.rng.choice(cands)
        if p.proc.poll() is not None:
            return  # it ended by itself: check_exits deals with it
        p.proc.send_signal(signal.SIGKILL)
        p.killed = True
        self.c["kills"] += 1
        try:
            p.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.failure(f"worker {p.wid} did not die within 10 s of SIGKILL")
            return
        self.reap(p, -signal.SIGKILL)
        self.replace(p)

    def replace(self, p: Proc) -> None:
        if self.c["processes_started"] >= MAX_PROCESSES:
            return
        self.start(p.role, p.aid)

    def check_exits(self) -> None:
        for p in self.live():
            if p.proc.poll() is not None:
                self.reap(p, 0)
                p.abnormal = True
                self.failure(f"worker {p.wid} ({p.role}) exited before it was told to stop")
                self.replace(p)

    def maybe_probe(self) -> None:
        now = time.monotonic()
        if self.probe is not None:
            if now - self.probe[2] > PROBE_TIMEOUT:
                self.failure(f"worker {self.probe[0]} did not answer a probe in "
                             f"{PROBE_TIMEOUT} s")
                self.probe = None
            return
        mixers = [p for p in self.live() if p.role == "mixer" and p.ready]
        appenders = [p for p in self.live() if p.role == "appender" and p.ready]
        if not (mixers and appenders):
            return
        m, a = self.rng.choice(mixers), self.rng.choice(appenders)
        mode = self.rng.choice(("a", "a", "r+"))
        assert m.proc.stdin is not None
        try:
            m.proc.stdin.write(f"probe {a.aid} {mode}\n")
            m.proc.stdin.flush()
        except OSError:
            return  # it just died; check_exits or kill_one deals with it
        self.probe = (m.wid, a.wid, now)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        for aid in range(len(self.arrays)):
            self.start("appender", aid)
        for i in range(self.nprocs - len(self.arrays)):
            self.start("mixer", elder=i == 0)
        end = time.monotonic() + self.seconds
        next_kill = time.monotonic() + self.rng.uniform(0.3, 0.9)
        next_probe = time.monotonic() + 0.3
        while time.monotonic() < end:
            self.drain(timeout=0.02)
            self.check_exits()
            now = time.monotonic()
            if now >= next_kill:
                self.kill_one()
                next_kill = time.monotonic() + self.rng.uniform(0.2, 0.8)
            if now >= next_probe:
                self.maybe_probe()
                next_probe = time.monotonic() + self.rng.uniform(0.1, 0.3)
        self.stop_all()
        self.verify()

    def stop_all(self) -> None:
        """Close every worker's stdin (the stop signal) and collect them."""
        if self.probe is not None:  # let an outstanding probe finish first
            end = time.monotonic() + PROBE_TIMEOUT
            while self.probe is not None and time.monotonic() < end:
                self.drain(timeout=0.05)
        for p in self.live():
            assert p.proc.stdin is not None
            with contextlib.suppress(OSError):
                p.proc.stdin.close()
        end = time.monotonic() + STOP_TIMEOUT
        for p in self.live():
            try:
                p.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
                self.failure(f"worker {p.wid} ({p.role}) did not stop within "
                             f"{STOP_TIMEOUT} s; killed")
                p.killed = True
                self.reap(p, -signal.SIGKILL)
                continue
            self.reap(p, 0)
        self.drain()
        for p in self.procs.values():
            if p.killed or p.abnormal:
                continue
            who = f"worker {p.wid} ({p.role})"
            if p.stats is None:
                self.failure(f"{who} stopped without its final report")
            fds = p.fds
            self.c["fd_checked"] += "start" in fds and "base" in fds
            if "start" in fds and fds.get("end") != fds["start"]:
                self.failure(f"{who}: {fds['start']} descriptors at the start of its loop, "
                             f"{fds.get('end')} at the end")
            if "base" in fds and fds.get("closed") != fds["base"]:
                self.failure(f"{who}: {fds['base']} descriptors before opening anything, "
                             f"{fds.get('closed')} after closing everything")

    # -- the checks at the end -----------------------------------------------------------

    def verify(self) -> None:
        for arr in self.arrays:
            self.verify_array(arr)
        for t in self.regions:
            path = t["name"] if t["kind"] == "file" else SHM_DIR / t["name"]
            words = np.fromfile(path, dtype=np.uint64)
            bad = bad_words(words, t["tid"])
            if bad.size:
                self.failure(f"{t['name']}: {bad.size} bad words at the end, first {bad[:5]}")
        if os.path.getsize(self.guard) != GUARD_SIZE:
            self.failure(f"the guard file is {os.path.getsize(self.guard)} bytes, "
                         f"not {GUARD_SIZE}")

    def verify_array(self, arr: dict) -> None:
        aid = arr["aid"]
        path = arr["name"] if arr["kind"] == "file" else str(SHM_DIR / arr["name"])
        try:
            loaded = np.load(path)
        except Exception as e:
            self.failure(f"array {aid}: np.load fails: {e!r}")
            return
        n = len(loaded)
        self.c["rows_checked"] += n
        if loaded.dtype != DT:
            self.failure(f"array {aid}: dtype {loaded.dtype}")
            return
        if n < self.flushed[aid]:
            self.failure(f"array {aid}: lost flushed rows: length {n} < {self.flushed[aid]} "
                         "reported flushed")
        if aid in self.closed_len and self.closed_len[aid] != n:
            self.failure(f"array {aid}: its last appender closed it at {self.closed_len[aid]} "
                         f"rows, np.load sees {n}")
        bad = bad_rows(loaded, aid, 0)
        if bad.size:
            self.failure(f"array {aid}: {bad.size} bad rows of {n}, first {bad[:5].tolist()}: "
                         f"{loaded[bad[:3]]}")
        with mm.open_array(arr["target"], "r") as a:
            if a.shape != (n,):
                self.failure(f"array {aid}: open_array sees shape {a.shape}, np.load {n}")

    def shm_leftovers(self) -> None:
        """Count (then remove) the prefix's blocks still in /dev/shm."""
        killed = {p.wid for p in self.procs.values() if p.killed}
        for name in shm_names(self.prefix):
            rest = name[len(self.prefix) :]
            wid = int(rest[2:].split("-")[0]) if rest.startswith("-w") else None
            if wid in killed:
                self.c["left_by_killed"] += 1
            else:
                self.c["leaks"] += 1
                self.failure(f"shared block {name} left in /dev/shm by a clean owner")
            with contextlib.suppress(FileNotFoundError):
                (SHM_DIR / name).unlink()

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        for h in self.owned:
            h.close()
        self.owned = []
        gc.collect()
        self.shm_leftovers()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def summary(self, wall: float) -> dict:
        totals: dict[str, int] = {}
        for p in self.procs.values():
            for k, v in (p.stats or {}).items():
                totals[k] = totals.get(k, 0) + v
        return {
            "ok": not self.failures,
            "seconds": self.seconds,
            "procs": self.nprocs,
            "seed": self.seed,
            "wall_s": round(wall, 2),
            **self.c,
            "probes_by_mode": self.probe_modes,
            "flushed_lengths": dict(sorted(self.flushed.items())),
            "lock": "mmarray" if hasattr(mm.MappedFile, "lock") else "flock",
            "worker_totals": totals,
            "failure_count": sum(self.repeats.values()),
            "failures": [
                f[:400] + (f" (x{self.repeats[f]})" if self.repeats[f] > 1 else "")
                for f in self.failures[:20]
            ],
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="how long to soak (default 8)")
    ap.add_argument("--procs", type=int, default=5, help="worker processes at once (default 5)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    t0 = time.monotonic()
    soak = Soak(args.seconds, args.procs, seed)
    try:
        soak.run()
    except Exception as e:
        traceback.print_exc()
        soak.failure(f"the soak itself failed: {e!r}")
    finally:
        soak.cleanup()
    print(json.dumps(soak.summary(time.monotonic() - t0)), flush=True)
    return 0 if not soak.failures else 1


if __name__ == "__main__":
    sys.exit(main())
