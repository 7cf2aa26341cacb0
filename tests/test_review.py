"""Regression tests for the hardening issue (notebook re-runs) and the review issue.

Hardening (A1, A2): ``"w+"`` on a file that live arrays or handles map -- in
this process or another mmarray process -- puts a *new* file at the same path
(a new inode), and the old arrays keep the old bytes; a file nobody maps is
truncated in place (same inode, same permission bits).

Review (1-12): each test is named after the item it pins down.

Whatever could crash the interpreter (SIGBUS when a mapped file shrinks under
an array, SIGSEGV) runs in a child interpreter with faulthandler on, so a
crash is a failing test that names the signal and shows the child's stderr
(:func:`run_child` and :class:`Child`).  Cross-process cases use real
subprocesses and ``multiprocessing`` with the fork, forkserver and spawn start
methods.  Files live under ``tmp_path``; shared blocks under names from the
``shm_name`` fixture, which removes them afterwards.
"""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing
import os
import pathlib
import pickle
import select
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import mmarray as mm

REPO = pathlib.Path(mm.__file__).resolve().parents[1]
SHM = pathlib.Path("/dev/shm")
TIMEOUT = 60  # a hang guard only, never a performance threshold

# What every child starts with.
PRELUDE = (
    "import gc, json, os, signal, stat, sys, time\nimport numpy as np\nimport mmarray as mm\n"
)


# -- running children -------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=pythonpath, PYTHONFAULTHANDLER="1")


def child_cmd(code: str, *args: object) -> list[str]:
    body = PRELUDE + textwrap.dedent(code)
    return [sys.executable, "-X", "faulthandler", "-c", body, *map(str, args)]


def describe(returncode: int | None, stderr: str, what: str = "the child") -> str:
    """How a child ended, with the tail of its stderr (faulthandler's dump on a crash)."""
    if returncode is None:
        how = f"{what} hung and was killed"
    elif returncode < 0:
        how = f"{what} died of {signal.Signals(-returncode).name} (exit code {returncode})"
    else:
        how = f"{what} exited with code {returncode}"
    return f"{how}\n--- stderr ---\n{stderr[-4000:]}"


def run_child(code: str, *args: object, timeout: float = TIMEOUT) -> str:
    """Run ``code`` (after PRELUDE) in a fresh interpreter; assert it exits 0; its stdout."""
    try:
        proc = subprocess.run(
            child_cmd(code, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        pytest.fail(describe(None, err or ""))
    assert proc.returncode == 0, describe(proc.returncode, proc.stderr)
    return proc.stdout


class Child:
    """A child interpreter we talk to line by line (``send``/``readline``);
    killed on leaving ``with`` if it is still running."""

    def __init__(self, code: str, *args: object) -> None:
        # stderr goes to an unnamed file: a pipe could fill up and block the child.
        self._stderr, name = tempfile.mkstemp(prefix="mmarray-child-")
        os.unlink(name)
        self.proc = subprocess.Popen(
            child_cmd(code, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env(),
        )
        self._buf = b""

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        os.close(self._stderr)

    def stderr(self) -> str:
        size = os.fstat(self._stderr).st_size
        return os.pread(self._stderr, size, 0).decode(errors="replace")

    def fail(self, why: str) -> None:
        try:
            rc = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            rc = None
        pytest.fail(f"{why}\n{describe(rc, self.stderr())}")

    def readline(self, timeout: float = TIMEOUT) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.fail("timed out waiting for a line from the child")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.fail(f"the child ended before printing a line (got {self._buf!r})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def expect(self, want: str) -> None:
        line = self.readline()
        if line != want:
            self.fail(f"expected {want!r} from the child, got {line!r}")

    def send(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        """Wait for a clean exit (assert it); the rest of its stdout."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            rest = self.proc.stdout.read()
            rc = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("the child did not exit")
        assert rc == 0, describe(rc, self.stderr())
        return (self._buf + rest).decode()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(TIMEOUT) == -signal.SIGKILL, describe(
            self.proc.returncode, self.stderr()
        )


# -- multiprocessing workers (module level: spawn and forkserver children import them) ---------

#: What a worker keeps alive until it exits (a notebook-style global, never closed).
_WORKER_KEEP: object = None


def worker_append_without_close(path: str) -> None:
    global _WORKER_KEEP
    _WORKER_KEEP = mm.open_array(path, "a", dtype=np.int64)
    _WORKER_KEEP.append(np.arange(1000))


def worker_own_block_without_close(name: str) -> None:
    global _WORKER_KEEP
    _WORKER_KEEP = mm.SharedBlock.create(name, 4096)


START_METHODS = ["fork", "forkserver", "spawn"]


def run_worker(method: str, target, *args: object) -> None:
    proc = multiprocessing.get_context(method).Process(target=target, args=args)
    proc.start()
    proc.join(TIMEOUT)
    if proc.exitcode is None:
        proc.kill()
        proc.join(TIMEOUT)
        pytest.fail(f"the {method} worker hung")
    assert proc.exitcode == 0, describe(
        proc.exitcode, "(the worker's stderr is captured above)", f"the {method} worker"
    )


# == hardening A1: "w+" on a file that this process maps ========================================

A1_CHILD = r"""
p, variant = sys.argv[1], sys.argv[2]

def ino():
    return os.stat(p).st_ino

if variant in ("handle", "handle-closed"):
    f = mm.MappedFile(p, "w+", capacity=1 << 20)
    a = f.array(np.uint8)
    a[:] = 7
    os.chmod(p, 0o640)
    before = ino()
    if variant == "handle-closed":
        f.close()
    g = mm.MappedFile(p, "w+", capacity=10)
    assert int(a[-1]) == 7 and int(a[0]) == 7 and int(a.min()) == 7, "old bytes lost"
    a[-1] = 9  # the old mapping is still writable, and not the new file
    assert g.size == 10, g.size
    assert os.path.getsize(p) == 10, os.path.getsize(p)
    assert ino() != before, "w+ reused the inode of a mapped file"
    assert not g.array(np.uint8).any(), g.array(np.uint8)
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode == 0o640, oct(mode)
elif variant in ("open_array", "open_array-view"):
    a = mm.open_array(p, "w+", dtype=np.int64, shape=(100_000,))
    a[:] = np.arange(100_000)
    keep = a[10:] if variant == "open_array-view" else a
    before = ino()
    # A notebook cell re-run: rebinding drops the old MappedArray (its view lives on).
    a = mm.open_array(p, "w+", dtype=np.int64, shape=(10,))
    gc.collect()
    assert int(keep[-1]) == 99_999, int(keep[-1])
    assert (np.asarray(keep[:5]) == np.arange(5) + (10 if variant.endswith("view") else 0)).all()
    assert a.shape == (10,) and not np.asarray(a).any()
    assert ino() != before, "w+ reused the inode of a mapped file"
    loaded = np.load(p)
    assert loaded.shape == (10,) and not loaded.any(), loaded
elif variant == "memmap":
    m = mm.memmap(p, mode="w+", shape=(1 << 20,))
    m[:] = 5
    before = ino()
    m2 = mm.memmap(p, mode="w+", shape=(10,))
    assert int(m[-1]) == 5 and int(m[0]) == 5, "old bytes lost"
    assert os.path.getsize(p) == 10, os.path.getsize(p)
    assert ino() != before, "w+ reused the inode of a mapped file"
    assert m2.shape == (10,) and not m2.any()
else:
    raise SystemExit(f"unknown variant {variant}")
print("ok")
"""


@pytest.mark.parametrize(
    "variant", ["handle", "handle-closed", "open_array", "open_array-view", "memmap"]
)
def test_a1_w_plus_replaces_a_file_this_process_maps(tmp_path, variant):
    p = tmp_path / "data.bin"
    assert run_child(A1_CHILD, p, variant).split() == ["ok"]


@pytest.mark.parametrize("before", ["never-mapped", "mapped-then-released"])
def test_a1_w_plus_on_a_file_nobody_maps_truncates_in_place(tmp_path, before):
    p = tmp_path / "data.bin"
    if before == "never-mapped":
        p.write_bytes(b"\x07" * 100_000)
    else:
        f = mm.MappedFile(p, "w+", capacity=100_000)
        a = f.array()
        a[:] = 7
        f.close()
        del a
        gc.collect()
    os.chmod(p, 0o640)
    ino = os.stat(p).st_ino
    with mm.MappedFile(p, "w+", capacity=10) as g:
        assert g.size == 10
        assert not g.array().any()
    st = os.stat(p)
    assert st.st_ino == ino, "w+ replaced a file that nobody maps"
    assert st.st_size == 10
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_a1_open_array_w_plus_on_a_closed_array_truncates_in_place(tmp_path):
    p = tmp_path / "a.npy"
    mm.open_array(p, "w+", dtype=np.int64, shape=(1000,)).close()
    ino = os.stat(p).st_ino
    with mm.open_array(p, "w+", dtype=np.int64, shape=(3,)) as a:
        assert a.shape == (3,)
    assert os.stat(p).st_ino == ino
    assert np.load(p).shape == (3,)


# == hardening A2: "w+" and shrinking while another process maps the file ======================

A2_READER = r"""
f = mm.MappedFile(sys.argv[1], "r")
a = f.array(np.uint8)
print("ready", flush=True)
sys.stdin.readline()
print(int(a[0]), int(a[-1]), len(a), int(a.min()), int(a.max()), flush=True)
"""


def test_a2_w_plus_and_shrink_while_another_process_maps(tmp_path):
    p = tmp_path / "shared.bin"
    p.write_bytes(b"\x03" * (1 << 20))
    with Child(A2_READER, p) as child:
        child.expect("ready")
        # Shrinking a file another process maps: refused, nothing changes.
        with mm.MappedFile(p, "r+") as h:
            with pytest.raises(BufferError):
                h.resize(4096)
            assert h.size == 1 << 20
        assert os.path.getsize(p) == 1 << 20
        # "w+" replaces it: a new file here, the child keeps the old bytes.
        ino = os.stat(p).st_ino
        with mm.MappedFile(p, "w+", capacity=10) as g:
            assert g.size == 10
        assert os.path.getsize(p) == 10
        assert os.stat(p).st_ino != ino
        child.send()
        assert child.readline() == f"3 3 {1 << 20} 3 3"
        child.finish()


# == review 1: a handle with an out-of-date size never shrinks the file ===========================

STALE_HANDLE_CHILD = r"""
p = sys.argv[1]
h1 = mm.MappedFile(p, "w+", capacity=4096)
h2 = mm.MappedFile(p, "r+")
h2.resize(1 << 20)
big = h2.array()
try:
    h1.resize(8192)
except BufferError:
    pass
else:
    raise AssertionError(f"h1.resize(8192) did not raise; the file has {os.path.getsize(p)} bytes")
assert os.path.getsize(p) == 1 << 20, os.path.getsize(p)
big[-1] = 1  # SIGBUS here if the file shrank
assert int(h2.read((1 << 20) - 1, np.uint8)) == 1
assert os.path.getsize(p) == 1 << 20, os.path.getsize(p)
print("ok")
"""


def test_review1_stale_handle_does_not_shrink_a_file(tmp_path):
    assert run_child(STALE_HANDLE_CHILD, tmp_path / "f.bin").split() == ["ok"]


GROWER_CHILD = r"""
blk = mm.SharedBlock.open(sys.argv[1])
blk.resize(1 << 20)
a = blk.array(np.uint8)
a[-1] = 5
print("grown", blk.size, flush=True)
sys.stdin.readline()
a[-1] = 6  # SIGBUS here if the block shrank
a[:] = 1
print(int(a[-1]), int(a.sum()), flush=True)
"""


def test_review1_stale_block_handle_in_another_process_cannot_shrink(shm_name):
    with mm.SharedBlock.create(shm_name, 4096, persist=True):
        pass
    b = mm.SharedBlock.open(shm_name)  # process B: sees 4096 bytes
    try:
        assert b.size == 4096
        with Child(GROWER_CHILD, shm_name) as a:  # process A grows it to 1 MiB
            a.expect(f"grown {1 << 20}")
            with pytest.raises(ValueError, match="only grow"):
                b.resize(8192)
            assert (SHM / shm_name).stat().st_size == 1 << 20
            a.send()
            assert a.readline() == f"1 {1 << 20}"
            a.finish()
        assert (SHM / shm_name).stat().st_size == 1 << 20
    finally:
        b.close()


TWO_R_PLUS_CHILD = r"""
p = sys.argv[1]
mm.open_array(p, "w+", dtype=np.int64, shape=(10,)).close()
a1 = mm.open_array(p, "r+")
a2 = mm.open_array(p, "r+")
s0 = os.path.getsize(p)
a1.append(np.arange(100_000))  # a1 becomes the writer
s1 = os.path.getsize(p)
assert s1 >= s0, (s0, s1)
for call in (lambda: a2.append(np.arange(5)), lambda: a2.resize(3)):
    try:
        call()
    except BlockingIOError as e:
        assert p in str(e), str(e)
    else:
        raise AssertionError(f"a second writer was allowed; length {len(a2)}")
    assert os.path.getsize(p) == s1, (s1, os.path.getsize(p))
assert int(a1[-1]) == 99_999  # SIGBUS here if the file shrank
a1.close()
a2.close()
assert os.path.getsize(p) == s1, (s1, os.path.getsize(p))
loaded = np.load(p)
assert loaded.shape == (100_010,), loaded.shape
assert (loaded[10:] == np.arange(100_000)).all()
print("ok")
"""


def test_review1_two_r_plus_handles_one_writer_never_shrinks(tmp_path):
    assert run_child(TWO_R_PLUS_CHILD, tmp_path / "a.npy").split() == ["ok"]


# == review 2: re-running a "w+" cell ==========================================================


def test_review2_rerun_w_plus_cell_old_finalizer_stays_out_of_the_new_file(tmp_path):
    p = tmp_path / "cell.npy"
    a = mm.open_array(p, "w+", dtype=np.int64, shape=(0,))
    a.append(np.arange(500))
    old = os.open(p, os.O_RDONLY)  # the first file, to look at afterwards
    try:
        # The same cell again: rebinding a collects the old object.
        a = mm.open_array(p, "w+", dtype=np.int64, shape=(0,))
        assert np.load(p).shape == (0,)  # before any flush
        gc.collect()
        assert np.load(p).shape == (0,), "the old finalizer wrote into the new file"
        assert a.shape == (0,)
        # The old object recorded its rows in its own (old) file.
        with os.fdopen(os.dup(old), "rb") as f:
            first = np.load(f)
        assert first.shape == (500,)
        assert (first == np.arange(500)).all()
    finally:
        os.close(old)
    a.append(np.arange(3))
    a.close()
    assert np.load(p).tolist() == [0, 1, 2]


# == review 3: a forked child's exit does not rewrite the parent's header =======================

FORK_CHILD = r"""
p, how = sys.argv[1], sys.argv[2]
a = mm.open_array(p, "a", dtype=np.int64)
a.append(np.arange(100))
a.flush()
a.append(np.arange(100, 150))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)  # until the parent has flushed 300 rows
    if how == "sys.exit":
        sys.exit(0)
    # else: fall off the end of the script (a normal interpreter exit)
else:
    os.close(r)
    a.append(np.arange(150, 300))
    a.flush()
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"forked child: {status}"
    shape = np.load(p).shape
    assert shape == (300,), f"after the forked child exited: {shape}"
    a.close()
    loaded = np.load(p)
    assert loaded.shape == (300,), f"after close: {loaded.shape}"
    assert (loaded == np.arange(300)).all()
    print("ok")
"""


@pytest.mark.parametrize("how", ["sys.exit", "end-of-script"])
def test_review3_forked_child_exit_keeps_the_parents_length(tmp_path, how):
    assert run_child(FORK_CHILD, tmp_path / "f.npy", how).split() == ["ok"]


# == review 4: multiprocessing workers that never close ========================================


@pytest.mark.parametrize("method", START_METHODS)
def test_review4_worker_global_array_is_flushed_at_exit(tmp_path, method):
    p = tmp_path / "w.npy"
    run_worker(method, worker_append_without_close, str(p))
    loaded = np.load(p)
    assert loaded.shape == (1000,)
    assert (loaded == np.arange(1000)).all()


@pytest.mark.parametrize("method", START_METHODS)
def test_review4_worker_global_owned_block_is_removed_at_exit(shm_name, method):
    run_worker(method, worker_own_block_without_close, shm_name)
    assert not (SHM / shm_name).exists(), "the worker's owned block outlived it"


# == review 5: Fortran-order files ===============================================================


def test_review5_fortran_order_cannot_grow_and_indexes_right(tmp_path):
    p = tmp_path / "f.npy"
    np.save(p, np.asfortranarray(np.arange(6).reshape(3, 2)))
    before = p.read_bytes()
    with pytest.raises(ValueError, match="Fortran"):
        mm.open_array(p, "r+", capacity=5)
    assert p.read_bytes() == before
    with mm.open_array(p, "r+") as a:
        assert np.asarray(a).tolist() == [[0, 1], [2, 3], [4, 5]]
        a[0, 1] = 99
    loaded = np.load(p)
    assert loaded.tolist() == [[0, 99], [2, 3], [4, 5]]


# == review 6: copies are in memory, pickles are references ======================================


def test_review6_copy_and_deepcopy_are_independent_pickle_is_a_reference(tmp_path):
    p = tmp_path / "c.npy"
    with mm.open_array(p, "w+", dtype=np.int64, shape=(5,)) as a:
        a[:] = np.arange(5)
        a.flush()
        for c in (copy.copy(a), copy.deepcopy(a)):
            assert type(c) is np.ndarray
            assert c.base is None and not np.shares_memory(c, np.asarray(a))
            assert c.tolist() == [0, 1, 2, 3, 4]
            c[:] = -1
            assert np.asarray(a).tolist() == [0, 1, 2, 3, 4]
            a.flush()
            assert np.load(p).tolist() == [0, 1, 2, 3, 4]
        r = pickle.loads(pickle.dumps(a))
        r[0] = 42
        assert a[0] == 42
        a.flush()
        assert np.load(p)[0] == 42


# == review 7: rows of a reinitialised block read as zero ========================================


def test_review7_resize_in_reinitialised_block_reads_zero(shm_name):
    with mm.SharedBlock.create(shm_name, 1 << 20, persist=True) as blk:
        blk.array(np.uint8)[:] = 255
    with mm.open_array("shm://" + shm_name, "w+", dtype=np.uint8, shape=(10,)) as a:
        assert not np.asarray(a).any()
        a.resize(20)
        assert np.asarray(a[10:]).tolist() == [0] * 10
        assert a.capacity > 20
        a.resize(a.capacity)
        rest = np.asarray(a[10:])
        assert rest.size == a.capacity - 10
        assert not rest.any(), (
            f"{np.count_nonzero(rest)} non-zero bytes, first at {np.flatnonzero(rest)[:5] + 10}"
        )


# == review 8: one writer per array ===============================================================

SECOND_WRITER_CHILD = r"""
p = sys.argv[1]
try:
    mm.open_array(p, "a")
except BlockingIOError as e:
    print(json.dumps(["BlockingIOError", str(e)]))
else:
    print(json.dumps(["opened", ""]))
for mode in ("r", "c"):
    with mm.open_array(p, mode) as r:
        assert len(r) == 10, (mode, len(r))
"""


def test_review8_second_writer_refused_readers_welcome(tmp_path):
    p = tmp_path / "w.npy"
    with mm.open_array(p, "a", dtype=np.int64) as w:
        w.append(np.arange(10))
        w.flush()
        # In this process.
        with pytest.raises(BlockingIOError) as e:
            mm.open_array(p, "a")
        assert str(p) in str(e.value)
        for mode in ("r", "c"):
            with mm.open_array(p, mode) as r:
                assert np.asarray(r).tolist() == list(range(10))
        # In another process.
        kind, message = json.loads(run_child(SECOND_WRITER_CHILD, p))
        assert kind == "BlockingIOError", "a second process opened the array with 'a'"
        assert str(p) in message, message
        w.append(np.arange(10, 20))
    assert np.load(p).tolist() == list(range(20))


KILLED_WRITER_CHILD = r"""
a = mm.open_array(sys.argv[1], "a", dtype=np.int64)
a.append(np.arange(5))
print("ready", flush=True)
time.sleep(60)
"""


def test_review8_writer_killed_by_sigkill_leaves_no_lock(tmp_path):
    p = tmp_path / "k.npy"
    with Child(KILLED_WRITER_CHILD, p) as child:
        child.expect("ready")
        with pytest.raises(BlockingIOError):
            mm.open_array(p, "a")
        child.kill9()
    with mm.open_array(p, "a") as a:
        a.append(np.arange(3))
        assert a.dtype == np.int64


# == review 9: big appends of datetime-like rows ================================================


@pytest.mark.parametrize("dtype", ["datetime64[ns]", "timedelta64[s]"])
def test_review9_large_datetime_appends_round_trip(tmp_path, dtype):
    p = tmp_path / "t.npy"
    rows = (np.arange(20_000) * 1_000_003).astype(dtype)
    assert rows.nbytes >= 1 << 16
    with mm.open_array(p, "w+", dtype=dtype, shape=(0,)) as a:
        a.append(rows)
        a.append(rows[:7])
        assert len(a) == 20_007
    loaded = np.load(p)
    assert loaded.dtype == np.dtype(dtype)
    assert (loaded[:20_000] == rows).all() and (loaded[20_000:] == rows[:7]).all()


# == review 10: headers numpy cannot load, and huge empty shapes ================================


def test_review10_header_too_large_is_a_short_valueerror_and_no_file(tmp_path):
    p = tmp_path / "wide.npy"
    dt = np.dtype([(f"f{i}", "<f4") for i in range(700)])
    with pytest.raises(ValueError) as e:
        mm.open_array(p, "w+", dtype=dt, shape=(0,))
    assert len(str(e.value)) < 300, len(str(e.value))
    assert not p.exists(), "a failed 'w+' left a file"
    with pytest.raises(ValueError) as e2:  # not FileExistsError
        mm.open_array(p, "x+", dtype=dt, shape=(0,))
    assert len(str(e2.value)) < 300
    assert not p.exists(), "a failed 'x+' left a file"


HUGE_EMPTY_CHILD = r"""
p = sys.argv[1]
try:
    a = mm.open_array(p, "w+", dtype=np.uint8, shape=(0, 2**31, 2**31))
except ValueError as e:
    assert not os.path.exists(p), "a failed 'w+' left a file"
    print("ValueError", str(e)[:200].replace(chr(10), " "))
else:
    assert a.shape == (0, 2**31, 2**31), a.shape
    a.close()
    loaded = np.load(p)
    assert loaded.shape == (0, 2**31, 2**31), loaded.shape
    print("works")
"""


def test_review10_huge_empty_shape_works_or_valueerror(tmp_path):
    out = run_child(HUGE_EMPTY_CHILD, tmp_path / "huge.npy")
    assert out.split()[0] in ("works", "ValueError"), out


# == review 11: create_or_open racing with creators ===========================================

RACER_CHILD = r"""
name, start, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
calls = created = 0
errors = {}
end = start + duration
while time.time() < end:
    calls += 1
    try:
        blk = mm.SharedBlock.create_or_open(name, 4096)
    except Exception as e:
        key = f"{type(e).__name__}: {e}"
        errors[key] = errors.get(key, 0) + 1
        continue
    created += blk.owner
    blk.close()
print(json.dumps({"pid": os.getpid(), "calls": calls, "created": created, "errors": errors}))
"""


def test_review11_create_or_open_races_never_raise(shm_name):
    start = time.time() + 1.0  # after the four interpreters have started
    procs = [
        subprocess.Popen(
            child_cmd(RACER_CHILD, shm_name, start, 1.5),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(4)
    ]
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, describe(proc.returncode, err)
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    summary = "\n".join(json.dumps(r) for r in reports)
    assert all(r["calls"] > 0 for r in reports), summary
    assert not any(r["errors"] for r in reports), f"create_or_open raised:\n{summary}"
    assert sum(r["created"] for r in reports) > 1, f"no race happened:\n{summary}"
    assert not (SHM / shm_name).exists(), "a created block outlived its owner's close()"


# == review 12: smaller ones ==================================================================


def test_review12a_subarray_dtype_is_base_dtype_with_trailing_axes(tmp_path):
    p = tmp_path / "sub.npy"
    with mm.open_array(p, "w+", dtype=("<f4", (3,)), shape=(0,)) as a:
        assert a.dtype == np.float32
        assert a.shape == (0, 3)
        a.append(np.array([1.0, 2.0, 3.0], "<f4"))
        assert a.shape == (1, 3)
        a.append(np.ones((2, 3), "<f4"))
        assert a.shape == (3, 3)
    loaded = np.load(p)
    assert loaded.dtype == np.float32 and loaded.shape == (3, 3)
    assert loaded[0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("open_mode, memmap_mode", [("rb", "r"), ("r+b", "r+")])
def test_review12b_memmap_of_relative_file_object_pickles_after_chdir(
    tmp_path, monkeypatch, open_mode, memmap_mode
):
    # numpy.memmap(f) of a file opened "rb" raises PermissionError (its default
    # mode is "r+"), so the read-only case passes mode="r".
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "rel.bin").write_bytes(bytes(range(16)))
    (elsewhere / "rel.bin").write_bytes(bytes(range(100, 116)))  # a decoy
    monkeypatch.chdir(here)
    with open("rel.bin", open_mode) as f:
        monkeypatch.chdir(elsewhere)
        m = mm.memmap(f, mode=memmap_mode)
    assert os.path.samefile(m.filename, here / "rel.bin"), m.filename
    r = pickle.loads(pickle.dumps(m))
    assert r.filename == m.filename
    assert os.path.samefile(r.filename, here / "rel.bin"), r.filename
    assert np.asarray(r).tolist() == list(range(16))
    if memmap_mode == "r+":
        r[0] = 200
        assert m[0] == 200
        r.flush()
        assert (here / "rel.bin").read_bytes()[0] == 200
    assert (elsewhere / "rel.bin").read_bytes() == bytes(range(100, 116))


def test_review12c_memmap_shape_errors_as_numpy(tmp_path):
    p = tmp_path / "m.dat"
    with pytest.raises(TypeError):
        mm.memmap(p, mode="w+", shape=[2.5])
    with pytest.raises(ValueError):
        mm.memmap(p, mode="w+", shape=(-1,))


def test_review12d_info_on_a_fifo_fails_fast_with_one_line(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    began = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mmarray", "info", str(fifo)],
            capture_output=True,
            text=True,
            timeout=10,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`mmarray info FIFO` hung (it waits for a writer)")
    took = time.monotonic() - began
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert took < 5, took


def test_review12e_sem_prefix_names_are_refused(shm_name):
    name = "sem." + shm_name
    try:
        for call in (
            lambda: mm.SharedBlock.create(name, 64),
            lambda: mm.SharedBlock.open(name),
            lambda: mm.SharedBlock.create_or_open(name, 64),
            lambda: mm.open_array("shm://" + name, "w+", dtype=np.uint8, shape=(4,)),
        ):
            with pytest.raises(ValueError, match="sem"):
                call()
        assert not (SHM / name).exists()
    finally:
        (SHM / name).unlink(missing_ok=True)


def test_review12f_read_only_view_of_writable_file_unpickles_read_only(tmp_path):
    with mm.MappedFile(tmp_path / "ro.bin", "w+", capacity=64) as f:
        f.array(np.uint8)[:] = np.arange(64)
        v = f.array(np.uint8)[8:16]
        v.flags.writeable = False
        r = pickle.loads(pickle.dumps(v))
        assert not r.flags.writeable
        assert r.tolist() == list(range(8, 16))
        with pytest.raises(ValueError):
            r[0] = 1
        w = pickle.loads(pickle.dumps(f.array(np.uint8)[8:16]))
        assert w.flags.writeable  # writable views stay writable


def test_review12g_append_shape_mismatch_names_both_shapes(tmp_path):
    with mm.open_array(tmp_path / "g.npy", "w+", dtype=np.float64, shape=(0, 2, 3)) as a:
        with pytest.raises(ValueError) as e:
            a.append(np.zeros(3))
        message = str(e.value)
        assert "(3,)" in message and "(2, 3)" in message, message
        assert "rows of shape ()" not in message, message
        assert a.shape == (0, 2, 3)


def test_review12h_huge_sizes_are_valueerror_not_overflowerror(tmp_path, shm_name):
    huge = 2**70
    p = tmp_path / "huge.bin"
    calls = {
        "MappedFile": lambda: mm.MappedFile(p, "w+", capacity=huge),
        "SharedBlock": lambda: mm.SharedBlock.create(shm_name, huge),
        "open_array": lambda: mm.open_array(p, "w+", dtype=np.uint8, shape=(huge,)),
        "memmap": lambda: mm.memmap(p, mode="w+", shape=(huge,)),
    }
    for what, call in calls.items():
        try:
            call()
        except ValueError:
            pass
        except Exception as e:  # OverflowError, MemoryError, ...
            pytest.fail(f"{what} of 2**70 raised {type(e).__name__}: {e}")
        else:
            pytest.fail(f"{what} of 2**70 did not raise")
        assert not p.exists(), f"{what} left a file behind"
        assert not (SHM / shm_name).exists(), f"{what} left a block behind"


def test_open_finds_rows_another_writer_recorded_after_mapping(tmp_path):
    """Opening maps the file, then reads the header: an appender in between
    may have grown the file and recorded a longer length (four pool workers
    opening with "a", concurrent=True hit it).  The open maps the new size."""
    from mmarray._array import MappedArray
    from mmarray._file import MappedFile

    path = tmp_path / "grown.npy"
    mm.open_array(path, "w+", dtype=np.int64, shape=(0,)).close()
    buf = MappedFile(path, "r")  # mapped at the size of an empty array
    with mm.open_array(path, "a", concurrent=True) as w:
        w.append(np.arange(10_000))
        w.flush()
    a = MappedArray._from_buffer(buf, str(path), "r")
    try:
        assert len(a) == 10_000 and int(a[-1]) == 9_999
    finally:
        a.close()
