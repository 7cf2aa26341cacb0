"""The mapping lifecycle: close, resize and garbage collection never crash (issue 2).

``mmap.close()``/``resize()`` under live numpy views is what crashes other
libraries (cpython gh-115635), so the hostile sequences also run in a
subprocess: a segfault or SIGBUS there fails one test instead of the run.
"""

from __future__ import annotations

import gc
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmarray as mm

REPO = pathlib.Path(mm.__file__).resolve().parents[1]

CLOSED_CALLS = {
    "array": lambda f: f.array(),
    "array-dtype": lambda f: f.array(np.int32, shape=2, offset=4),
    "records": lambda f: f.records([("a", "<i4")]),
    "read": lambda f: f.read(0, np.uint8),
    "write": lambda f: f.write(0, np.uint8(1)),
    "read_array": lambda f: f.read_array(0, np.uint8, 4),
    "write_array": lambda f: f.write_array(0, np.ones(4, np.uint8)),
    "flush": lambda f: f.flush(),
    "flush-range": lambda f: f.flush(0, 10),
    "advise": lambda f: f.advise("random"),
    "resize-grow": lambda f: f.resize(8192),
    "resize-shrink": lambda f: f.resize(10),
}


def test_close_is_idempotent(make_file):
    f = mm.MappedFile(make_file(), "r+")
    f.close()
    f.close()
    assert f.closed
    with f:
        pass
    f.close()
    assert f.closed


@pytest.mark.parametrize("call", CLOSED_CALLS.values(), ids=CLOSED_CALLS.keys())
def test_closed_handle_refuses(make_file, call):
    path = make_file(bytes(4096))
    f = mm.MappedFile(path, "r+")
    f.close()
    with pytest.raises(ValueError, match="closed"):
        call(f)
    assert path.read_bytes() == bytes(4096)
    assert "closed" in repr(f)


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_arrays_outlive_close(make_file, mode):
    path = make_file(bytes(range(256)) * 16)
    f = mm.MappedFile(path, mode)
    a = f.array(np.uint8)
    b = a[10:20]
    c = f.array("<u4", shape=(4, 4), offset=1)
    r = f.records([("x", "u1"), ("y", "<u2")], shape=5, offset=3)
    expected_c = c.copy()
    f.close()
    assert a[255] == 255
    assert b.tolist() == list(range(10, 20))
    assert np.array_equal(c, expected_c)
    assert r.x.tolist() == [3, 6, 9, 12, 15]
    assert int(a.sum()) == sum(range(256)) * 16
    if mode != "r":
        a[0] = 99
        assert a[0] == 99
    del f
    gc.collect()
    assert a[255] == 255
    assert b[::-1].tolist() == list(range(19, 9, -1))
    assert np.array_equal(c, expected_c)
    assert r.y.shape == (5,)
    if mode != "r":
        a[1] = 98
        assert a[:2].tolist() == [99, 98]


def test_writes_after_close_reach_the_file(make_file):
    path = make_file(bytes(64))
    f = mm.MappedFile(path, "r+")
    a = f.array(np.uint8)
    f.close()
    del f
    gc.collect()
    a[5] = 55
    with mm.MappedFile(path) as g:
        assert g.read(5, np.uint8) == 55  # same shared pages
    del a
    gc.collect()
    assert path.read_bytes()[5] == 55


def test_arrays_outlive_gc_without_close(make_file):
    path = make_file(bytes(range(100)))
    a = mm.MappedFile(path).array(np.uint8)[50:]
    gc.collect()
    assert a[0] == 50
    assert a.tolist() == list(range(50, 100))


def test_pickled_view_after_close(make_file):
    path = make_file(bytes(range(100)))
    f = mm.MappedFile(path, "r+")
    a = f.array(np.uint8)[10:30:2]
    f.close()
    b = pickle.loads(pickle.dumps(a))
    assert np.array_equal(a, b)
    b[0] = 200
    assert a[0] == 200


# -- resize: growing ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_grow_with_live_views(tmp_path, mode):
    path = tmp_path / "grow.bin"
    if mode == "r+":
        path.write_bytes(bytes(100))
    f = mm.MappedFile(path, mode, capacity=100)
    old = f.array(np.uint8)
    old_slice = old[90:]
    old[:] = 7
    f.resize(10_000)
    assert f.size == 10_000
    assert os.path.getsize(path) == 10_000
    new = f.array(np.uint8)
    assert new.shape == (10_000,)
    assert old.shape == (100,)
    # Both generations see the same bytes, in both directions.
    assert new[:100].tolist() == [7] * 100
    new[5] = 1
    assert old[5] == 1
    old[95] = 2
    assert new[95] == 2
    assert old_slice[5] == 2
    assert f.read(95, np.uint8) == 2
    # New bytes read as zero.
    assert not new[100:].any()
    assert f.read_array(100, np.uint8, 9900).tobytes() == bytes(9900)
    f.close()
    del old, old_slice, new
    gc.collect()
    data = path.read_bytes()
    assert data[:100] == b"\x07" * 5 + b"\x01" + b"\x07" * 89 + b"\x02" + b"\x07" * 4
    assert data[100:] == bytes(9900)


def test_grow_many_generations(make_file):
    path = make_file(bytes(8))
    views = []
    with mm.MappedFile(path, "r+") as f:
        for size in (8, 100, 4096, 4097, 50_000, 1 << 20):
            f.resize(size)
            assert f.size == size
            views.append(f.array(np.uint8, shape=8))
        views[0][3] = 33
        for v in views:
            assert v[3] == 33
        views[-1][4] = 44
        for v in views:
            assert v[4] == 44
        assert not f.array()[8:].any()
    views.clear()
    gc.collect()
    assert os.path.getsize(path) == 1 << 20


def test_resize_same_size_is_a_noop(make_file):
    path = make_file(bytes(range(64)))
    with mm.MappedFile(path, "r+") as f:
        a = f.array()
        f.resize(64)
        assert f.size == 64
        assert np.shares_memory(a, f.array())
    assert path.read_bytes() == bytes(range(64))


@pytest.mark.parametrize("size", [0, -5])
def test_resize_bad_size(make_file, size):
    with mm.MappedFile(make_file(), "r+") as f:
        with pytest.raises(ValueError, match="size must be >= 1"):
            f.resize(size)
        assert f.size == 4096


@pytest.mark.parametrize("mode", ["r", "c"])
@pytest.mark.parametrize("size", [8192, 100])
def test_resize_refused_in_readonly_modes(make_file, mode, size):
    path = make_file(bytes(4096))
    with mm.MappedFile(path, mode) as f:
        with pytest.raises(PermissionError, match=f"mode {mode!r}"):
            f.resize(size)
        assert f.size == 4096
    assert os.path.getsize(path) == 4096


# -- resize: shrinking ----------------------------------------------------------------


PINNING = {
    "array": lambda f: f.array(),
    "slice": lambda f: f.array()[10:20],
    "view-of-view": lambda f: f.array(np.uint16)[2:][::3].view(np.int16)[1:].T,
    "reshape": lambda f: f.array(np.uint32).reshape(8, -1),
    "records": lambda f: f.records([("a", "<u2")], shape=3),
    "field": lambda f: f.records([("a", "<u2"), ("b", "u1")], shape=3).b,
    "memoryview": lambda f: memoryview(f.array()),
    "asarray": lambda f: np.asarray(f.array()),
    "frombuffer": lambda f: np.frombuffer(f.array(), np.uint8),
}


@pytest.mark.parametrize("make_view", PINNING.values(), ids=PINNING.keys())
def test_shrink_with_live_view_is_bufferError(make_file, make_view):
    path = make_file(bytes(range(256)) * 16)
    with mm.MappedFile(path, "r+") as f:
        pin = make_view(f)
        with pytest.raises(BufferError, match="cannot shrink"):
            f.resize(100)
        # The handle still works, with the old size and bytes.
        assert f.size == 4096
        assert os.path.getsize(path) == 4096
        assert f.read(255, np.uint8) == 255
        f.write(0, np.uint8(9))
        assert f.array()[0] == 9
        assert f.array(np.uint8, offset=4000).shape == (96,)
        # Once the views die, shrinking works.
        del pin
        gc.collect()
        f.resize(100)
        assert f.size == 100
        assert f.array().tobytes() == b"\x09" + bytes(range(1, 100))
    assert path.read_bytes() == b"\x09" + bytes(range(1, 100))


def test_shrink_refused_while_pre_growth_view_lives(make_file):
    path = make_file(bytes(100))
    with mm.MappedFile(path, "r+") as f:
        old = f.array()
        f.resize(5000)
        with pytest.raises(BufferError):
            f.resize(50)
        assert f.size == 5000
        old[0] = 1
        assert f.read(0, np.uint8) == 1
        del old
        gc.collect()
        f.resize(50)
        assert f.size == 50
    assert path.read_bytes() == b"\x01" + bytes(49)


def test_shrink_refused_while_new_view_lives(make_file):
    path = make_file(bytes(100))
    with mm.MappedFile(path, "r+") as f:
        old = f.array()
        f.resize(5000)
        new = f.array()
        del old
        gc.collect()
        with pytest.raises(BufferError):
            f.resize(50)
        assert f.size == 5000
        new[4999] = 1
        del new
        gc.collect()
        f.resize(50)
        assert f.size == 50


def test_copies_do_not_pin_the_mapping(make_file):
    path = make_file(bytes(range(200)))
    with mm.MappedFile(path, "r+") as f:
        a = f.array()
        keep = [
            a + 1,
            a.copy(),
            a[[1, 2, 3]],
            np.sin(a),
            f.read_array(0, np.uint8, 10),
            f.read(0, np.uint16),
            f.read(0, [("a", "u1"), ("b", "u1")]),
            a.sum(),
        ]
        del a
        gc.collect()
        f.resize(20)
        assert f.size == 20
    assert keep[0][199] == 200
    assert keep[1][199] == 199
    assert path.read_bytes() == bytes(range(20))


def test_shrink_then_grow_reads_zero(make_file):
    path = make_file(b"\xff" * 1000)
    with mm.MappedFile(path, "r+") as f:
        f.resize(10)
        f.resize(1000)
        assert f.array()[:10].tobytes() == b"\xff" * 10
        assert f.array()[10:].tobytes() == bytes(990)
    assert path.read_bytes() == b"\xff" * 10 + bytes(990)


# -- descriptors ------------------------------------------------------------------------


def test_open_close_many_leaks_no_descriptors(make_file, fd_count):
    path = make_file(bytes(4096))
    mm.MappedFile(path).close()  # warm up imports and caches
    before = fd_count()
    for i in range(1000):
        with mm.MappedFile(path, "r+" if i % 2 else "r") as f:
            f.read(0, np.uint8)
    assert fd_count() == before


def test_views_and_growth_leak_no_descriptors(make_file, fd_count):
    path = make_file(bytes(4096))
    before = fd_count()
    for _ in range(200):
        f = mm.MappedFile(path, "r+")
        a = f.array()
        f.resize(8192)
        b = f.array()[4096:]
        f.resize(8192)  # same size: a no-op
        pickle.loads(pickle.dumps(b))
        f.close()
        del a, b
        f2 = mm.MappedFile(path, "r+")
        f2.resize(4096)
        del f, f2  # f2 not closed: collected
    assert fd_count() == before


def test_unclosed_handles_release_descriptors(make_file, fd_count):
    path = make_file(bytes(64))
    before = fd_count()
    for _ in range(300):
        f = mm.MappedFile(path)
        del f
    assert fd_count() == before


def test_failed_opens_leak_no_descriptors(tmp_path, fd_count):
    full = tmp_path / "full.bin"
    full.write_bytes(bytes(100))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    attempts = [
        (lambda: mm.MappedFile(tmp_path / "missing.bin"), FileNotFoundError),
        (lambda: mm.MappedFile(tmp_path, "r"), OSError),
        (lambda: mm.MappedFile(tmp_path, "r+"), OSError),
        (lambda: mm.MappedFile(empty), ValueError),
        (lambda: mm.MappedFile(full, "r+", capacity=10), ValueError),
        (lambda: mm.MappedFile(full, "c", capacity=1000), PermissionError),
        (lambda: mm.MappedFile(full, "x+", capacity=10), FileExistsError),
        (lambda: mm.MappedFile(full, "q"), ValueError),
    ]
    before = fd_count()
    for _ in range(50):
        for attempt, error in attempts:
            with pytest.raises(error):
                attempt()
    assert fd_count() == before
    assert full.read_bytes() == bytes(100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.bin", "full.bin"]


# -- hostile sequences in a subprocess ------------------------------------------------------

PRELUDE = """
import gc, pickle, sys
import numpy as np
import mmarray as mm
path = sys.argv[1]
with open(path, "wb") as fh:
    fh.write(bytes(range(256)) * 64)
"""

HOSTILE = {
    "close-then-index": """
        f = mm.MappedFile(path, "r+")
        a = f.array(np.uint8)
        v = a[100:][::-3].view(np.uint8)
        w = f.array(np.float64, shape=(8, 8), offset=3).T[::2]
        r = f.records([("a", "<u4"), ("b", "u1")], offset=1)
        f.close(); f.close()
        del f; gc.collect()
        total = int(a.sum()) + int(v.sum()) + float(np.nansum(w[w == w])) + int(r.a.sum() % 7)
        a[:] = 1; v[0] = 2; r.b[-1] = 3
        assert a[100] == 1 and a[-1] == 2 and a[16380] == 3
        for _ in range(3):
            gc.collect()
            print(a[-1], v[-1], r[0].a, w.shape)
        del a; gc.collect()
        print(v.sum(), r.a[0])
    """,
    "resize-up-down-with-views": """
        f = mm.MappedFile(path, "r+")
        keep = []
        for size in (20000, 70000, 131072, 300000):
            keep.append(f.array(np.uint8))
            keep.append(keep[-1][::-7])
            f.resize(size)
            keep.append(f.array(np.int32, offset=1))
        for size in (100, 16384, 1):
            try:
                f.resize(size)
                raise SystemExit("shrink with live views succeeded")
            except BufferError:
                pass
        for k in keep:
            k[...] = k[...] + 1
            _ = k.sum(), k[-1], k[::2].copy(), k.tobytes()
        f.resize(400000)
        keep.append(f.array())
        keep.append(f.records([("q", ">f8")], offset=5))
        f.close()
        for k in keep:
            _ = k.tobytes(), k[::-5].copy()
        del k
        keep.clear(); gc.collect()
        g = mm.MappedFile(path, "r+")
        g.resize(10)
        print(g.array().tolist())
        g.close()
    """,
    "views-of-views-outlive-everything": """
        def make():
            f = mm.MappedFile(path, "r+")
            a = f.array(np.uint16, shape=(64, 128))
            b = a[1:, ::2].T[::-1]
            c = b.view(np.int16)[:, 1::3]
            d = c[..., None]
            mv = memoryview(a)
            e = np.frombuffer(mv, np.uint8)
            f.resize(1 << 20)
            return b, c, d, e
        b, c, d, e = make()
        gc.collect()
        for x in (b, c, d, e):
            x.flat[0] = 5
            _ = x.sum(), x.tobytes()[-1], x.copy()
        del b, c; gc.collect()
        print(d.shape, e[:4])
    """,
    "closed-and-pickled": """
        f = mm.MappedFile(path, "r+", capacity=1 << 16)
        a = f.array(np.int64)[::-2]
        f.close()
        blob = pickle.dumps(a)
        for _ in range(50):
            b = pickle.loads(blob)
            b[0] += 1
        assert a[0] == b[0]
        g = pickle.loads(pickle.dumps(mm.MappedFile(path, "r+")))
        big = g.array()[::-1]
        g.resize(1 << 20)
        c = pickle.loads(pickle.dumps(big))
        try:
            g.resize(10)
            raise SystemExit("shrink with live views succeeded")
        except BufferError:
            pass
        g.close(); del g, big; gc.collect()
        c[0] = 7
        print(a[:3], b[:3], c[:3])
    """,
    "copy-on-write-and-readonly": """
        c = mm.MappedFile(path, "c")
        r = mm.MappedFile(path, "r")
        x = c.array()
        y = r.array(np.uint32)[::-1]
        x[:] = 0
        for h in (c, r):
            for size in (10, 1 << 20):
                try:
                    h.resize(size)
                except PermissionError:
                    pass
            h.close(); h.close()
        del c, r; gc.collect()
        x[5] = 1
        try:
            y[0] = 1
        except ValueError:
            pass
        print(int(x.sum()), int(y.sum()) > 0)
    """,
    "many-handles-one-file": """
        hs = [mm.MappedFile(path, "r+") for _ in range(20)]
        arrs = [h.array(np.uint8)[i:] for i, h in enumerate(hs)]
        hs[0].resize(1 << 18)
        for i, h in enumerate(hs):
            if i % 2:
                h.close()
        hs.clear(); gc.collect()
        for a in arrs:
            a[0] = 1
            _ = a.sum()
        arrs.clear(); gc.collect()
        print("ok")
    """,
    # A second handle of the file, or an unpickled array, in the same process.
    "second-handle-shrinks": """
        f = mm.MappedFile(path, "r+")
        a = f.array(np.uint8)
        g = mm.MappedFile(path, "r+")
        try:
            g.resize(10)
            raise SystemExit("shrank under a live array of another handle")
        except BufferError:
            pass
        print(int(a[-1]), a.sum())
        f.close(); del a; gc.collect()
        g.resize(10)
        assert g.size == 10
    """,
    "unpickled-view-then-shrink": """
        f = mm.MappedFile(path, "r+")
        b = pickle.loads(pickle.dumps(f.array(np.uint8)[::-1]))
        try:
            f.resize(10)
            raise SystemExit("shrank under a live unpickled array")
        except BufferError:
            pass
        print(int(b[0]), b.sum())
        del b; gc.collect()
        f.resize(10)
        assert f.size == 10
    """,
}


@pytest.mark.parametrize("script", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_sequences_never_crash(tmp_path, script):
    code = PRELUDE + textwrap.dedent(script) + "\nprint('DONE')\n"
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "hostile.bin")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    detail = f"returncode {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, detail
    assert proc.stdout.rstrip().endswith("DONE"), detail
    assert "Traceback" not in proc.stderr, detail
