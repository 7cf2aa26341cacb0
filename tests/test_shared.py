"""SharedBlock specifics: names, creation, permissions, lifetime, interop (issue 3).

What SharedBlock shares with MappedFile is in test_contract.py; processes
are in test_processes.py.  Every block made here has a name from the
``shm_name`` fixture (conftest.py), whose teardown removes it even when a
test fails; blocks made under derived names are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pathlib
import pickle
import stat
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import pytest

import mmarray as mm

SHM = pathlib.Path("/dev/shm")
SIZE = 5000


def exists(name: str) -> bool:
    return (SHM / name).exists()


def remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (SHM / name).unlink()


@contextlib.contextmanager
def attached(name: str):
    """``multiprocessing.shared_memory`` attached to ``name`` without letting
    its resource tracker unlink the block later (cpython gh-82300)."""
    try:
        shm = shared_memory.SharedMemory(name=name, track=False)  # Python 3.13+
    except TypeError:
        shm = shared_memory.SharedMemory(name=name)
        resource_tracker.unregister(shm._name, "shared_memory")
    try:
        yield shm
    finally:
        shm.close()


# -- construction -----------------------------------------------------------------------


def test_create(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE) as blk:
        assert blk.name == shm_name
        assert blk.size == SIZE
        assert blk.owner
        assert not blk.readonly
        assert not blk.closed
        assert os.path.getsize(SHM / shm_name) == SIZE  # exact, not page-rounded
        assert not blk.array().any()
        assert shm_name in repr(blk) and "owner" in repr(blk)
    assert blk.closed


def test_constructor_is_not_the_way_in(shm_name):
    with pytest.raises(TypeError, match="create"):
        mm.SharedBlock(shm_name)
    assert not exists(shm_name)


def test_create_existing_name(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE) as blk:
        blk.write(0, np.int64(7))
        with pytest.raises(FileExistsError):
            mm.SharedBlock.create(shm_name, SIZE)
        with pytest.raises(FileExistsError):
            mm.SharedBlock.create(shm_name, 2 * SIZE, persist=True)
        # The failed create neither removed nor resized nor cleared the block.
        assert exists(shm_name)
        assert os.path.getsize(SHM / shm_name) == SIZE
        assert blk.read(0, np.int64) == 7
    assert not exists(shm_name)


@pytest.mark.parametrize("size", [0, -1])
def test_create_bad_size(shm_name, size):
    with pytest.raises(ValueError, match="size"):
        mm.SharedBlock.create(shm_name, size)
    assert not exists(shm_name)


def test_create_impossible_size_leaves_nothing(shm_name, fd_count):
    before = fd_count()
    with pytest.raises((OSError, OverflowError, ValueError)):
        mm.SharedBlock.create(shm_name, 2**62)  # more than any address space
    assert not exists(shm_name)
    assert fd_count() == before


@pytest.mark.parametrize("size", [1.5, "10", None, True])
def test_create_size_type(shm_name, size):
    with pytest.raises(TypeError, match="size"):
        mm.SharedBlock.create(shm_name, size)
    assert not exists(shm_name)


def test_create_accepts_numpy_integer_size(shm_name):
    with mm.SharedBlock.create(shm_name, np.int64(10)) as blk:
        assert blk.size == 10


def test_open(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE) as owner:
        owner.write(8, np.float64(1.25))
        with mm.SharedBlock.open(shm_name) as blk:
            assert blk.name == shm_name
            assert blk.size == SIZE
            assert not blk.owner and not blk.readonly
            assert "owner" not in repr(blk)
            assert blk.read(8, np.float64) == 1.25
            blk.write(0, np.int32(5))
            assert owner.read(0, np.int32) == 5
        # Closing an opened handle never removes the name.
        assert exists(shm_name)
        mm.SharedBlock.open(shm_name).close()
        assert exists(shm_name)


@pytest.mark.parametrize("readonly", [False, True])
def test_open_missing(shm_name, readonly):
    with pytest.raises(FileNotFoundError):
        mm.SharedBlock.open(shm_name, readonly=readonly)
    assert not exists(shm_name)


def test_open_empty_block_is_refused(shm_name):
    # Another program made the name but has not sized it yet.
    fd = os.open(SHM / shm_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    with pytest.raises(ValueError, match="size 0"):
        mm.SharedBlock.open(shm_name)
    assert exists(shm_name)  # refusing is not removing


def test_create_or_open_creates(shm_name):
    with mm.SharedBlock.create_or_open(shm_name, SIZE) as blk:
        assert blk.owner and blk.size == SIZE
        assert exists(shm_name)
    assert not exists(shm_name)  # the creating handle owned it


@pytest.mark.parametrize("size", [1, SIZE])
def test_create_or_open_opens(shm_name, size):
    with mm.SharedBlock.create(shm_name, SIZE) as owner:
        owner.write(0, np.uint16(999))
        with mm.SharedBlock.create_or_open(shm_name, size) as blk:
            assert not blk.owner
            assert blk.size == SIZE  # the existing size, not the one asked for
            assert blk.read(0, np.uint16) == 999
        assert exists(shm_name)


def test_create_or_open_smaller_existing(shm_name, fd_count):
    with mm.SharedBlock.create(shm_name, SIZE) as owner:
        owner.write(0, np.uint8(3))
        before = fd_count()
        with pytest.raises(ValueError, match=str(SIZE)):
            mm.SharedBlock.create_or_open(shm_name, SIZE + 1)
        assert fd_count() == before  # the probing handle was closed
        assert os.path.getsize(SHM / shm_name) == SIZE
        assert owner.read(0, np.uint8) == 3


# -- names ----------------------------------------------------------------------------------


BAD_NAMES = [
    "",
    "abc\n",
    "a" * 200 + "\n",
    "\u0661",  # a non-ASCII digit
    "\uff41",  # a full-width letter
    ".x",
    ".",
    "..",
    "a/b",
    "/abc",
    "abc/",
    "a" * 201,
    "blöck",
    "名前",
    "a b",
    "a\x00b",
    "a\nb",
    "sem:x",
    "x*",
]
CONSTRUCTORS = {
    "create": lambda name: mm.SharedBlock.create(name, 10),
    "create-persist": lambda name: mm.SharedBlock.create(name, 10, persist=True),
    "open": lambda name: mm.SharedBlock.open(name),
    "open-readonly": lambda name: mm.SharedBlock.open(name, readonly=True),
    "create_or_open": lambda name: mm.SharedBlock.create_or_open(name, 10),
}


@pytest.mark.parametrize("make", CONSTRUCTORS.values(), ids=CONSTRUCTORS.keys())
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names(make, name):
    before = set(os.listdir(SHM))
    with pytest.raises(ValueError, match=r"A-Za-z0-9") as info:
        make(name)
    assert repr(name) in str(info.value)  # the message shows what came
    # (Other processes may create blocks meanwhile: look for this name only.)
    created = set(os.listdir(SHM)) - before
    assert not any(n in (name, name.lstrip("/")) for n in created)


@pytest.mark.parametrize("make", CONSTRUCTORS.values(), ids=CONSTRUCTORS.keys())
@pytest.mark.parametrize("name", [None, b"abc", 5, pathlib.Path("abc")], ids=repr)
def test_name_must_be_str(make, name):
    if name is None and make in (CONSTRUCTORS["create"], CONSTRUCTORS["create-persist"]):
        pytest.skip("create(None, size) picks a fresh name (tests/test_conveniences.py)")
    with pytest.raises(TypeError, match="str"):
        make(name)


@pytest.mark.parametrize("suffix", ["", "-" + "x" * (200 - 40), "_A.b-9", ".dot"])
def test_good_names(shm_name, suffix):
    name = shm_name + suffix
    assert len(name) <= 200
    try:
        with mm.SharedBlock.create(name, 10) as blk:
            assert blk.name == name
            assert name in mm.shared_blocks()
            with mm.SharedBlock.open(name) as other:
                assert other.size == 10
        assert not exists(name)
    finally:
        remove(name)


def test_two_hundred_character_name():
    name = ("mmtest-200-" + os.urandom(8).hex()).ljust(200, "z")
    assert len(name) == 200
    try:
        with mm.SharedBlock.create(name, 10):
            assert exists(name)
    finally:
        remove(name)


@pytest.mark.parametrize("first", ["-", "_", "0", "Z"])
def test_names_may_start_with_any_allowed_character_but_dot(shm_name, first):
    name = first + shm_name
    try:
        with mm.SharedBlock.create(name, 10):
            assert exists(name)
    finally:
        remove(name)


# -- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
@pytest.mark.parametrize("persist", [False, True])
def test_created_0600_whatever_the_umask(shm_name, umask, persist):
    old = os.umask(umask)
    try:
        blk = mm.SharedBlock.create(shm_name, SIZE, persist=persist)
    finally:
        os.umask(old)
    with blk:
        st = os.stat(SHM / shm_name)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()


def test_readonly_handle(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE) as owner:
        owner.write_array(0, np.arange(10, dtype=np.uint8))
        with mm.SharedBlock.open(shm_name, readonly=True) as ro:
            assert ro.readonly and not ro.owner
            a = ro.array()
            r = ro.records([("a", "u1"), ("b", "<u2")])
            assert not a.flags.writeable and not r.flags.writeable
            with pytest.raises(ValueError):  # numpy's own error
                a[0] = 1
            with pytest.raises(PermissionError):
                ro.write(0, np.uint8(1))
            with pytest.raises(PermissionError):
                ro.write(0, 1, dtype=np.uint8)
            with pytest.raises(PermissionError):
                ro.write_array(0, np.ones(4, np.uint8))
            with pytest.raises(PermissionError):
                ro.resize(2 * SIZE)
            with pytest.raises(PermissionError):
                ro.resize(SIZE // 2)
            assert ro.read_array(0, np.uint8, 10).tolist() == list(range(10))
            ro.flush()
            owner.write(0, np.uint8(42))
            assert a[0] == 42
            b = pickle.loads(pickle.dumps(a[2:5]))
            assert not b.flags.writeable
            other = pickle.loads(pickle.dumps(ro))
            with other:
                assert other.readonly
        assert owner.size == SIZE
        assert owner.read_array(1, np.uint8, 9).tolist() == list(range(1, 10))
        assert exists(shm_name)


# -- lifetime ---------------------------------------------------------------------------------


def test_owner_close_removes_the_name_at_once(shm_name):
    blk = mm.SharedBlock.create(shm_name, SIZE)
    a = blk.array()
    a[0] = 9
    blk.close()
    assert not exists(shm_name)
    with pytest.raises(FileNotFoundError):
        mm.SharedBlock.open(shm_name)
    assert a[0] == 9  # the mapping outlives the name
    a[1] = 10
    assert a[:2].tolist() == [9, 10]


def test_with_removes_the_name_even_on_error(shm_name):
    with pytest.raises(RuntimeError), mm.SharedBlock.create(shm_name, SIZE):
        raise RuntimeError
    assert not exists(shm_name)


def test_persist_keeps_the_name(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE, persist=True) as blk:
        blk.write(0, np.int32(12345))
    assert exists(shm_name)
    with mm.SharedBlock.open(shm_name) as again:
        assert again.read(0, np.int32) == 12345
        again.unlink()
        assert not exists(shm_name)
        assert again.read(0, np.int32) == 12345


def test_persist_handle_dropped_keeps_the_name(shm_name):
    blk = mm.SharedBlock.create(shm_name, SIZE, persist=True)
    a = blk.array()
    del blk, a
    gc.collect()
    assert exists(shm_name)


def test_persist_creator_is_owner(shm_name):
    # DESIGN.md: the handle returned by create owns the name, persist or not.
    with mm.SharedBlock.create(shm_name, SIZE, persist=True) as blk:
        assert blk.owner
        assert "owner" in repr(blk)
    assert exists(shm_name)


def test_opened_handles_never_remove(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE):
        for readonly in (False, True):
            h = mm.SharedBlock.open(shm_name, readonly=readonly)
            a = h.array()
            h.close()
            del h, a
            h = mm.SharedBlock.open(shm_name, readonly=readonly)
            del h
            gc.collect()
            assert exists(shm_name)


def test_unlink_keeps_mappings_valid(shm_name):
    owner = mm.SharedBlock.create(shm_name, SIZE)
    reader = mm.SharedBlock.open(shm_name)
    a = owner.array(np.uint32)
    owner.unlink()
    assert not exists(shm_name)
    assert shm_name not in mm.shared_blocks()
    with pytest.raises(FileNotFoundError):
        mm.SharedBlock.open(shm_name)
    # Both handles and the old array still share the (now nameless) bytes.
    a[3] = 77
    assert reader.read(12, np.uint32) == 77
    reader.write(16, np.uint32(78))
    assert owner.read(16, np.uint32) == 78
    owner.resize(2 * SIZE)  # the descriptor still works for growth
    assert owner.array(np.uint32)[3] == 77
    # A new block under the same name is not the old owner's to remove.
    with mm.SharedBlock.create(shm_name, 10, persist=True) as newer:
        owner.close()
        reader.close()
        del a
        gc.collect()
        assert exists(shm_name)
        assert newer.size == 10
        newer.unlink()


def test_unlink_from_a_reader(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE) as owner, mm.SharedBlock.open(shm_name) as r:
        r.unlink()
        assert not exists(shm_name)
        owner.write(0, np.uint8(1))
        assert r.read(0, np.uint8) == 1
    assert not exists(shm_name)


@pytest.mark.parametrize("how", ["close", "gc"])
def test_owner_leaves_a_replaced_name_alone(shm_name, how):
    # Someone removes the owner's name (mmarray rm) and makes a new block
    # under it: the old owner must not remove the new block.
    old = mm.SharedBlock.create(shm_name, SIZE)
    (SHM / shm_name).unlink()
    newer = mm.SharedBlock.create(shm_name, 10, persist=True)
    try:
        if how == "close":
            old.close()
        else:
            del old
            gc.collect()
        assert exists(shm_name)
        assert os.path.getsize(SHM / shm_name) == 10
    finally:
        newer.close()


KEEPERS = {
    "array": lambda blk: blk.array(),
    "slice": lambda blk: blk.array(np.int16)[5:50:3],
    "records": lambda blk: blk.records([("a", "<i4")], shape=3, offset=1),
    "grown-before": lambda blk: (blk.array(), blk.resize(2 * SIZE))[0],
    "grown-after": lambda blk: (blk.resize(2 * SIZE), blk.array())[1],
}


@pytest.mark.parametrize("keep", KEEPERS.values(), ids=KEEPERS.keys())
def test_owner_dropped_without_close(shm_name, keep):
    blk = mm.SharedBlock.create(shm_name, SIZE)
    kept = keep(blk)
    del blk
    gc.collect()
    # An array made from the owner keeps the name alive ...
    assert exists(shm_name)
    with mm.SharedBlock.open(shm_name) as r:
        r.array()[:] = 0xAB  # still the same bytes
        assert set(kept.tobytes()) == {0xAB}
    # ... until it is gone too.
    del kept
    gc.collect()
    assert not exists(shm_name)


def test_owner_dropped_without_arrays(shm_name):
    blk = mm.SharedBlock.create(shm_name, SIZE)
    del blk
    gc.collect()
    assert not exists(shm_name)


def test_readers_and_unpickled_arrays_do_not_keep_the_name(shm_name):
    blk = mm.SharedBlock.create(shm_name, SIZE)
    reader = mm.SharedBlock.open(shm_name)
    a = blk.array()
    a[0] = 5
    copy_by_reference = pickle.loads(pickle.dumps(a[:10]))
    del blk, a
    gc.collect()
    assert not exists(shm_name)
    # They keep their mappings, though.
    assert copy_by_reference[0] == 5
    assert reader.read(0, np.uint8) == 5
    reader.close()


def test_closed_owner_unpickled_array_keeps_working(shm_name):
    blk = mm.SharedBlock.create(shm_name, SIZE)
    a = blk.array(np.int64)
    b = pickle.loads(pickle.dumps(a))
    blk.close()
    b[1] = 11
    assert a[1] == 11


# -- the process's resources -------------------------------------------------------------------


def test_create_close_cycles_leak_no_descriptors(shm_name, fd_count):
    # Warm up first: lazy imports may open a descriptor once.
    with mm.SharedBlock.create(shm_name, 4096) as blk:
        blk.array()[0] = 1
    before = fd_count()
    for i in range(1000):
        with mm.SharedBlock.create(shm_name, 4096) as blk:
            a = blk.array(np.uint32)
            a[0] = i
            with mm.SharedBlock.open(shm_name, readonly=bool(i % 2)) as r:
                assert r.read(0, np.uint32) == i
            if i % 100 == 0:
                blk.resize(8192)
        assert not exists(shm_name)
    del a
    assert fd_count() == before


def test_no_resource_tracker_registration(shm_name, monkeypatch):
    calls = []
    monkeypatch.setattr(resource_tracker, "register", lambda *a: calls.append(a))
    monkeypatch.setattr(resource_tracker, "unregister", lambda *a: calls.append(a))
    with mm.SharedBlock.create(shm_name, SIZE) as blk:
        a = blk.array()
        pickle.loads(pickle.dumps(a))
        pickle.loads(pickle.dumps(blk)).close()
        mm.SharedBlock.open(shm_name, readonly=True).close()
        mm.SharedBlock.create_or_open(shm_name, 10).close()
        blk.unlink()
    assert calls == []


# -- listing ------------------------------------------------------------------------------------


def _posix_semaphore(name: str):
    """Make a named POSIX semaphore (``/dev/shm/sem.NAME``); return a cleanup
    function.  Falls back to a plain file of that name if libc lacks sem_open."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sem_open = libc.sem_open
        sem_open.restype = ctypes.c_void_p
        sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
        libc.sem_close.argtypes = [ctypes.c_void_p]
        libc.sem_unlink.argtypes = [ctypes.c_char_p]
    except (OSError, AttributeError):
        sem = None
    else:
        sem = sem_open(("/" + name).encode(), os.O_CREAT | os.O_EXCL, 0o600, 0)
    if not sem:
        (SHM / ("sem." + name)).write_bytes(bytes(32))
        return lambda: remove("sem." + name)

    def cleanup():
        libc.sem_close(sem)
        libc.sem_unlink(("/" + name).encode())
        remove("sem." + name)

    return cleanup


def test_shared_blocks_lists_blocks_not_semaphores(shm_name):
    cleanup = _posix_semaphore(shm_name)
    try:
        assert exists("sem." + shm_name)
        names = mm.shared_blocks()
        assert names == sorted(names)
        assert not any(n.startswith("sem.") for n in names)
        assert shm_name not in names
        with mm.SharedBlock.create(shm_name, SIZE):
            names = mm.shared_blocks()
            assert shm_name in names and "sem." + shm_name not in names
            assert names == sorted(names)
        assert shm_name not in mm.shared_blocks()
    finally:
        cleanup()


def test_shared_blocks_lists_blocks_made_by_others(shm_name):
    shm = shared_memory.SharedMemory(name=shm_name, create=True, size=100)
    try:
        assert shm_name in mm.shared_blocks()
    finally:
        shm.close()
        shm.unlink()
    assert shm_name not in mm.shared_blocks()


# -- interop with multiprocessing.shared_memory ------------------------------------------------


def test_mmarray_block_opens_in_shared_memory(shm_name):
    with mm.SharedBlock.create(shm_name, SIZE) as blk:
        blk.write(0, np.int32(12345))
        with attached(shm_name) as shm:
            assert shm.size >= SIZE
            assert np.frombuffer(shm.buf, np.int32, count=1)[0] == 12345
            shm.buf[4:8] = np.int32(-6).tobytes()
        assert blk.read(4, np.int32) == -6
        assert exists(shm_name)  # attaching and closing left the block alone
    assert not exists(shm_name)


def test_shared_memory_block_opens_in_mmarray(shm_name):
    shm = shared_memory.SharedMemory(name=shm_name, create=True, size=SIZE)
    try:
        shm.buf[:4] = np.int32(12345).tobytes()
        with mm.SharedBlock.open(shm_name) as blk:
            assert not blk.owner
            assert blk.size == shm.size
            assert blk.read(0, np.int32) == 12345
            blk.write(4, np.int32(54321))
            a = blk.array(np.int32)
        assert bytes(shm.buf[4:8]) == np.int32(54321).tobytes()
        a[2] = 7  # arrays outlive the handle
        assert bytes(shm.buf[8:12]) == np.int32(7).tobytes()
        del a
        gc.collect()
        assert exists(shm_name)  # an opened handle never removes
        with pytest.raises(FileExistsError):
            mm.SharedBlock.create(shm_name, 10)
        with mm.SharedBlock.create_or_open(shm_name, SIZE) as blk:
            assert not blk.owner
    finally:
        shm.close()
        shm.unlink()
