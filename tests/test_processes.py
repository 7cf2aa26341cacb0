"""SharedBlock across real processes (issue 3).

Separate interpreters (``subprocess`` running ``sys.executable -c``) and
``multiprocessing`` spawn workers write and read the same blocks; readers
that exit or are killed leave blocks alone; owners that exit remove them
(unless ``persist=True``); owners killed with SIGKILL cannot, and the test
cleans up.  No subprocess may print resource-tracker or "leaked
shared_memory" warnings.  Every block lives under a name from the
``shm_name`` fixture, whose teardown removes it even when a test fails.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmarray as mm

SHM = pathlib.Path("/dev/shm")
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TIMEOUT = 120  # a hang guard only, never a performance threshold
PRELUDE = "import os, sys, pickle, numpy as np, mmarray as mm\nname = sys.argv[1]\n"
NOISE = ("leaked shared_memory", "resource_tracker", "Traceback", "Warning")


def exists(name: str) -> bool:
    return (SHM / name).exists()


def assert_quiet(stderr: str) -> None:
    for word in NOISE:
        assert word not in stderr, stderr


def run(code: str, name: str, *, stdin: str | None = None, ok: bool = True) -> str:
    """Run ``code`` (after PRELUDE) in a fresh interpreter; return stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), name],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert_quiet(proc.stderr)
    return proc.stdout


class Started:
    """A subprocess that has printed "ready"; killed at exit if still running."""

    def __init__(self, code: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> subprocess.Popen:
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=TIMEOUT)
            pytest.fail(f"subprocess did not start: {line!r}\n{err}")
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=TIMEOUT)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL


# -- spawn workers (module level, so spawn children can import them) ------------------------------


def spawn_fill_stripe(name: str, stripe: int, nstripes: int) -> None:
    with mm.SharedBlock.open(name) as blk:
        a = blk.array(np.int64)
        n = len(a) // nstripes
        a[stripe * n : (stripe + 1) * n] = np.arange(n) + 1000 * (stripe + 1)


def spawn_write_through(view: np.ndarray, value: int) -> tuple:
    """Write through an array that arrived by pickle; report what came."""
    view[...] = value
    return type(view).__name__, view.shape, view.strides, os.getpid()


def spawn_create_and_write(name: str) -> int:
    with mm.SharedBlock.create(name, 8 * 100, persist=True) as blk:
        blk.array(np.int64)[:] = np.arange(100)
    return os.getpid()


def spawn_read(name: str) -> list:
    with mm.SharedBlock.open(name, readonly=True) as blk:
        return blk.read_array(0, np.int64, 100).tolist()


def spawn_records_sum(recs: np.recarray) -> float:
    recs.x += 1
    return float(recs.y.sum())


@pytest.fixture(scope="module")
def spawn_pool():
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(2)
    try:
        yield pool
    finally:
        pool.close()
        pool.join()


# -- writer and reader in separate interpreters ---------------------------------------------------


def test_writer_then_reader_subprocesses(shm_name):
    run(
        """
        with mm.SharedBlock.create(name, 4096, persist=True) as blk:
            blk.write_array(0, np.arange(100, dtype=np.int64))
            blk.write(800, np.float64(2.5))
        """,
        shm_name,
    )
    assert exists(shm_name)
    out = run(
        """
        with mm.SharedBlock.open(name, readonly=True) as blk:
            print(int(blk.array(np.int64, shape=100).sum()), float(blk.read(800, np.float64)))
        """,
        shm_name,
    )
    assert out.split() == [str(sum(range(100))), "2.5"]
    with mm.SharedBlock.open(shm_name) as blk:
        assert blk.read(8 * 99, np.int64) == 99
        blk.unlink()


def test_reader_while_owner_lives(shm_name):
    owner = """
        blk = mm.SharedBlock.create(name, 1000)
        a = blk.array(np.int32)
        a[:] = 7
        print("ready", flush=True)
        value = int(sys.stdin.readline())
        a[0] = value          # the reader's write, seen by the owner
        print(int(a[1]), flush=True)
        blk.close()
        """
    with Started(owner, shm_name) as proc:
        out = run(
            """
            with mm.SharedBlock.open(name) as blk:
                a = blk.array(np.int32)
                print(int(a.sum()))
                a[1] = 42
            """,
            shm_name,
        )
        assert int(out) == 7 * 250
        out, err = proc.communicate("5\n", timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert out.split() == ["42"]
        assert_quiet(err)
    assert not exists(shm_name)


def test_array_pickled_to_a_subprocess(shm_name):
    with mm.SharedBlock.create(shm_name, 8000) as blk:
        a = blk.array(np.float64).reshape(10, 100)
        views = {"row": a[3], "strided": a[::3, 1::7], "negative": a[::-2, ::-5]}
        data = pickle.dumps({k: v for k, v in views.items()})
        assert len(data) < 4096
        out = run(
            """
            views = pickle.loads(bytes.fromhex(sys.stdin.read()))
            for i, key in enumerate(sorted(views)):
                views[key][...] += i + 1
            print(sorted((k, v.shape) for k, v in views.items()))
            """,
            shm_name,
            stdin=data.hex(),
        )
        assert out.strip() == str(sorted((k, v.shape) for k, v in views.items()))
        expected = np.zeros((10, 100))
        for i, key in enumerate(sorted(views)):
            take = {"row": np.s_[3], "strided": np.s_[::3, 1::7], "negative": np.s_[::-2, ::-5]}[
                key
            ]
            expected[take] += i + 1
        assert np.array_equal(a, expected)
        assert exists(shm_name)  # the child's exit left the block alone
    assert not exists(shm_name)


# -- readers that exit or crash leave the block alone ---------------------------------------------


READER_EXITS = {
    "normal-without-close": "pass",
    "close": "blk.close()",
    "os._exit": "os._exit(0)",
    "sys.exit-error": "sys.exit(3)",
}


@pytest.mark.parametrize("exit_code", READER_EXITS.values(), ids=READER_EXITS.keys())
def test_reader_exit_leaves_the_block(shm_name, exit_code):
    with mm.SharedBlock.create(shm_name, 4096) as blk:
        blk.write(0, np.int64(1234))
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                PRELUDE
                + textwrap.dedent(f"""
                blk = mm.SharedBlock.open(name)
                a = blk.array(np.int64)
                b = pickle.loads(pickle.dumps(a[1:4]))   # an unpickled mapping too
                b[0] = a[0] + 1
                {exit_code}
                """),
                shm_name,
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == (3 if "sys.exit" in exit_code else 0), proc.stderr
        assert_quiet(proc.stderr)
        assert exists(shm_name)
        assert blk.read_array(0, np.int64, 2).tolist() == [1234, 1235]
        with mm.SharedBlock.open(shm_name) as again:
            assert again.size == 4096
    assert not exists(shm_name)


@pytest.mark.parametrize("readonly", [False, True])
def test_reader_killed_leaves_the_block(shm_name, readonly):
    with mm.SharedBlock.create(shm_name, 4096) as blk:
        blk.write(0, np.int64(99))
        reader = f"""
            blk = mm.SharedBlock.open(name, readonly={readonly})
            a = blk.array(np.int64)
            assert a[0] == 99
            print("ready", flush=True)
            sys.stdin.readline()
            """
        with Started(reader, shm_name) as proc:
            kill9(proc)
        assert exists(shm_name)
        assert blk.read(0, np.int64) == 99
        blk.write(8, np.int64(100))
        with mm.SharedBlock.open(shm_name) as again:
            assert again.read(8, np.int64) == 100
    assert not exists(shm_name)


# -- owners: exit removes, persist keeps, SIGKILL cannot clean up ---------------------------------


OWNER_EXITS = {
    "handle-never-closed": "keep = blk",
    "only-an-array-left": "keep = blk.array()[10:20]; del blk",
    "inside-a-function": "def f(b):\n    global keep\n    keep = b.records([('a', 'u1')])\nf(blk)",
    "uncaught-exception": "keep = blk\nraise SystemExit('bye')",
}


@pytest.mark.parametrize("ending", OWNER_EXITS.values(), ids=OWNER_EXITS.keys())
def test_owner_exit_without_close_removes_the_block(shm_name, ending):
    code = "blk = mm.SharedBlock.create(name, 4096)\nblk.write(0, np.int8(1))\n" + ending
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + code, shm_name],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == (1 if "SystemExit" in ending else 0), proc.stderr
    for word in NOISE[:2]:
        assert word not in proc.stderr
    assert not exists(shm_name)


@pytest.mark.parametrize("close", [True, False])
def test_persistent_owner_exit_keeps_the_block(shm_name, close):
    run(
        f"""
        blk = mm.SharedBlock.create(name, 4096, persist=True)
        blk.write(0, np.int16(-5))
        if {close}:
            blk.close()
        """,
        shm_name,
    )
    assert exists(shm_name)
    with mm.SharedBlock.open(shm_name) as blk:
        assert blk.read(0, np.int16) == -5
        blk.unlink()
    assert not exists(shm_name)


def test_owner_killed_leaves_the_block(shm_name):
    owner = """
        blk = mm.SharedBlock.create(name, 4096)
        blk.write(0, np.int32(777))
        print("ready", flush=True)
        sys.stdin.readline()
        """
    with Started(owner, shm_name) as proc:
        kill9(proc)
    # Nothing could clean up: the block stays until someone removes it.
    assert exists(shm_name)
    with mm.SharedBlock.open(shm_name) as blk:
        assert not blk.owner
        assert blk.read(0, np.int32) == 777
        blk.unlink()
    assert not exists(shm_name)


def test_forked_child_of_owner_does_not_remove(shm_name):
    # A forked child inherits the owner's token; its exit must not unlink.
    out = run(
        """
        blk = mm.SharedBlock.create(name, 4096)
        a = blk.array()
        pid = os.fork()
        if pid == 0:
            a[0] = 1
            del blk, a
            import gc; gc.collect()
            sys.exit(0)          # a normal exit: atexit and finalizers run
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), os.path.exists("/dev/shm/" + name), a[0])
        ctx = __import__("multiprocessing").get_context("fork")
        p = ctx.Process(target=blk.array)
        p.start(); p.join()
        print(p.exitcode, os.path.exists("/dev/shm/" + name))
        """,
        shm_name,
    )
    assert out.split() == ["0", "True", "1", "0", "True"]
    assert not exists(shm_name)  # the owner's own exit removed it


# -- multiprocessing spawn ------------------------------------------------------------------------


def test_spawn_writer_and_reader(shm_name, spawn_pool):
    writer_pid = spawn_pool.apply(spawn_create_and_write, (shm_name,))
    assert writer_pid != os.getpid()
    assert exists(shm_name)
    assert spawn_pool.apply(spawn_read, (shm_name,)) == list(range(100))
    with mm.SharedBlock.open(shm_name) as blk:
        assert blk.read_array(0, np.int64, 100).tolist() == list(range(100))
        blk.unlink()


def test_four_spawn_processes_fill_disjoint_stripes(shm_name):
    nstripes, per = 4, 50_000
    ctx = multiprocessing.get_context("spawn")
    with mm.SharedBlock.create(shm_name, nstripes * per * 8) as blk:
        procs = [
            ctx.Process(target=spawn_fill_stripe, args=(shm_name, i, nstripes))
            for i in range(nstripes)
        ]
        try:
            for p in procs:
                p.start()
        finally:
            for p in procs:
                p.join(TIMEOUT)
        assert [p.exitcode for p in procs] == [0] * nstripes
        a = blk.array(np.int64).reshape(nstripes, per)
        for i in range(nstripes):
            assert np.array_equal(a[i], np.arange(per) + 1000 * (i + 1))
        assert exists(shm_name)
    assert not exists(shm_name)


def test_pool_map_writes_through_pickled_arrays(shm_name, spawn_pool):
    with mm.SharedBlock.create(shm_name, 8 * 12 * 40) as blk:
        a = blk.array("<i8", shape=(12, 40))
        jobs = [(a[i], i + 1) for i in range(4)]
        jobs += [(a[4:8, ::3], 50), (a[8:12][::-1, -2::-2], 60), (a[8:12, 1::2].T, 70)]
        results = spawn_pool.starmap(spawn_write_through, jobs)
        for (view, _), (kind, shape, strides, pid) in zip(jobs, results, strict=True):
            assert kind == "MappedView"
            assert (shape, strides) == (view.shape, view.strides)
            assert pid != os.getpid()
        for i in range(4):
            assert (a[i] == i + 1).all()
        assert (a[4:8, ::3] == 50).all() and (a[4:8, 1::3] == 0).all()
        assert (a[8:12, ::2] == 60).all() and (a[8:12, 1::2] == 70).all()
        # Workers are still alive with the block mapped; the name is ours.
        assert exists(shm_name)
    assert not exists(shm_name)


def test_pool_records_round_trip(shm_name, spawn_pool):
    rec = np.dtype([("x", "<i4"), ("y", "<f8")])
    with mm.SharedBlock.create(shm_name, rec.itemsize * 10 + 3) as blk:
        r = blk.records(rec, offset=3)
        r.y[:] = 0.5
        assert spawn_pool.apply(spawn_records_sum, (r[::2],)) == 2.5
        assert r.x.tolist() == [1, 0] * 5


SPAWN_SCRIPT = """
import multiprocessing, os, sys
import numpy as np
import mmarray as mm


def attach(name):
    blk = mm.SharedBlock.open(name)     # never closed: the worker just exits
    blk.array(np.uint8)[1] = 2
    return blk.size


def crash(name):
    mm.SharedBlock.open(name).array()[2] = 3
    os._exit(0)


if __name__ == "__main__":
    name = sys.argv[1]
    ctx = multiprocessing.get_context("spawn")
    with mm.SharedBlock.create(name, 4096) as blk:
        a = blk.array(np.uint8)
        with ctx.Pool(2) as pool:
            assert pool.map(attach, [name, name]) == [4096, 4096]
            pool.starmap(np.copyto, [(a[3:5], 4)])   # writes through a pickled view
        p = ctx.Process(target=crash, args=(name,))
        p.start()
        p.join()
        assert os.path.exists("/dev/shm/" + name)
        print(a[:5].tolist())
    print(os.path.exists("/dev/shm/" + name))
"""


def test_spawn_in_a_fresh_interpreter_prints_no_tracker_warnings(shm_name, tmp_path):
    # The resource tracker (if any) exits with this interpreter and shares its
    # stderr, so its "leaked shared_memory" warnings would be captured here.
    script = tmp_path / "spawn_script.py"
    script.write_text(SPAWN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), shm_name],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert_quiet(proc.stderr)
    assert proc.stdout.split("\n")[:2] == ["[0, 2, 3, 4, 4]", "False"]
    assert not exists(shm_name)


# -- the README example ---------------------------------------------------------------------------


def readme_processes() -> tuple[str, str]:
    """The README's "process A" and "process B" code blocks."""
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    a = [b for b in blocks if b.startswith("# process A")]
    b = [b for b in blocks if b.startswith("# process B")]
    assert len(a) == 1 and len(b) == 1, "README must show the two-process example"
    return a[0], b[0]


def test_readme_two_process_example(shm_name):
    a, b = readme_processes()
    assert '"Demo"' in a and '"Demo"' in b and "12345" in a
    # A unique name instead of "Demo"; A says when it is ready for B.
    a = a.replace('"Demo"', repr(shm_name))
    b = b.replace('"Demo"', repr(shm_name))
    a, n = re.subn(r"^(\s*)input\(\)", r"\1print('ready', flush=True); input()", a, flags=re.M)
    assert n == 1
    with Started(a, shm_name) as proc_a:
        assert run(b, shm_name).strip() == "12345"
        _, err = proc_a.communicate("\n", timeout=TIMEOUT)
        assert proc_a.returncode == 0, err
        assert_quiet(err)
    assert not exists(shm_name)  # leaving A's `with` removed the block
