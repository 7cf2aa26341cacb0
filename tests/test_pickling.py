"""Pickling by reference: arrays travel as (target, offset, dtype, shape, strides, mode) (issue 4).

Every source of mapped arrays -- MappedFile, SharedBlock, open_array and
memmap -- and their basic-slice and strided views pickle to a few hundred
bytes however big they are; unpickling maps the same bytes, so writes are
seen on both sides, in this process and in spawned workers.  Copies
(copy-on-write mappings, fancy indexing, ufunc results) travel by value.

The worker pools are module-scoped and run numpy functions only
(``np.copyto``, ``np.sum``), so the workers never import this module.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import pickle

import numpy as np
import pytest

import mmarray as mm

MiB = 1 << 20
ROWS, COLS = 4096, 2048  # 64 MiB of uint64, sparse
REC = np.dtype([("a", "<i8"), ("b", "<f8")])
PROTOCOLS = range(2, pickle.HIGHEST_PROTOCOL + 1)


def structured(arr: np.ndarray) -> bool:
    return arr.dtype.names is not None


def values(arr):
    """The integer part of an array: itself, or its field ``a``."""
    return arr["a"] if structured(np.asarray(arr)) else arr


def put(arr, index, value) -> None:
    if structured(np.asarray(arr)):
        arr[index] = (value, 0.0)
    else:
        arr[index] = value


def get(arr, index) -> int:
    item = np.asarray(arr)[index]
    return int(item["a"] if structured(np.asarray(arr)) else item)


# -- sources of mapped arrays -----------------------------------------------------------


class Source:
    """A 2-D mapped array of a given kind and the handles that keep it alive."""

    def __init__(self, kind: str, tmp_path, shm_name: str, shape=(ROWS, COLS)):
        self.kind = kind
        self.handles: list = []
        nbytes = shape[0] * shape[1] * 8
        path = tmp_path / f"{kind}.bin"
        if kind == "file-array":
            f = mm.MappedFile(path, "w+", capacity=nbytes)
            self.handles.append(f)
            self.array = f.array(np.uint64, shape)
        elif kind == "file-records":
            f = mm.MappedFile(path, "w+", capacity=nbytes)
            self.handles.append(f)
            self.array = f.records(REC, (shape[0], shape[1] // 2))
        elif kind == "block-array":
            blk = mm.SharedBlock.create(shm_name, nbytes + 64)
            self.handles.append(blk)
            self.array = blk.array(np.uint64, shape, offset=64)
        elif kind == "block-records":
            blk = mm.SharedBlock.create(shm_name, nbytes)
            self.handles.append(blk)
            self.array = blk.records(REC, (shape[0], shape[1] // 2))
        elif kind == "open_array-file":
            a = mm.open_array(path.with_suffix(".npy"), "w+", dtype=np.uint64, shape=shape)
            self.handles.append(a)
            self.array = a
        elif kind == "open_array-shm":
            a = mm.open_array("shm://" + shm_name, "w+", dtype=REC, shape=shape)
            self.handles.append(a)
            self.array = a
        elif kind == "memmap":
            self.array = mm.memmap(path, dtype=np.uint64, mode="w+", shape=shape)
        else:
            raise AssertionError(kind)

    def close(self) -> None:
        self.array = None
        for h in self.handles:
            h.close()


KINDS = [
    "file-array",
    "file-records",
    "block-array",
    "block-records",
    "open_array-file",
    "open_array-shm",
    "memmap",
]

VIEWS = {
    "whole": lambda a: a,
    "rows": lambda a: a[10:20],
    "strided": lambda a: a[1::3, ::2],
    "negative-step": lambda a: a[::-2, ::-3],
    "column": lambda a: a[:, 5],
    "row": lambda a: a[7],
    "transposed": lambda a: a[:].T,  # (np.asarray(a) is a plain ndarray: by value)
    "block": lambda a: a[100:300, 50:60][::-1],
}


@pytest.fixture(params=KINDS)
def source(request, tmp_path, shm_name):
    src = Source(request.param, tmp_path, shm_name)
    yield src
    src.close()


@pytest.mark.parametrize("view", list(VIEWS))
def test_views_pickle_by_reference(source, view):
    arr = source.array
    put(arr, (12, 3), 77)
    put(arr, (-1, -1), 99)
    v = VIEWS[view](arr)
    for protocol in PROTOCOLS:
        data = pickle.dumps(v, protocol=protocol)
        assert len(data) < 4096, (protocol, len(data))
    back = pickle.loads(data)
    expected = np.asarray(v)
    assert back.shape == expected.shape
    assert back.dtype == expected.dtype
    assert back.strides == expected.strides
    if expected.nbytes <= MiB:
        np.testing.assert_array_equal(back, expected)
    else:  # 64 MiB: compare where the data is
        np.testing.assert_array_equal(back[:30], expected[:30])
        np.testing.assert_array_equal(back[-3:], expected[-3:])
    # writes go both ways
    first = (0,) * back.ndim
    put(back, first, 1234)
    assert get(expected, first) == 1234
    put(expected, first, 4321)
    assert get(back, first) == 4321


def test_mapped_array_pickles_its_current_shape(tmp_path):
    path = tmp_path / "a.npy"
    with mm.open_array(path, "w+", dtype=np.int32, shape=(2, 3)) as a:
        a.append(np.ones((5, 3), np.int32))  # not flushed: the header still says 2
        data = pickle.dumps(a)
        assert len(data) < 1024
        back = pickle.loads(data)
        assert back.shape == (7, 3)
        back[6, 2] = 9
        assert a[6, 2] == 9
        a[0, 0] = -1
        assert back[0, 0] == -1
        assert np.load(path).shape == (2, 3)


def test_gibibyte_sparse_file_pickles_small(tmp_path):
    path = tmp_path / "huge.bin"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, no blocks on disk
    with mm.MappedFile(path, "r+") as f:
        a = f.array(np.float64)
        assert a.nbytes == 1 << 30
        data = pickle.dumps(a)
        assert len(data) < 4096
        back = pickle.loads(data)
        assert back.shape == a.shape
        back[-1] = 2.5
        assert a[-1] == 2.5
        assert len(pickle.dumps(a[::-1000])) < 4096
        m = mm.memmap(path, dtype=np.uint8, mode="r+")
        assert len(pickle.dumps(m)) < 4096
        del a, back, m
    assert os.path.getsize(path) == 1 << 30


def test_gibibyte_shared_block_pickles_small(shm_name):
    with mm.SharedBlock.create(shm_name, 1 << 30) as blk:
        a = blk.array(np.uint32)
        data = pickle.dumps(a)
        assert len(data) < 4096
        back = pickle.loads(data)
        back[-7] = 5
        assert a[-7] == 5
        del a, back


# -- reopening never truncates -------------------------------------------------------


def test_w_plus_mapped_file_comes_back_r_plus(tmp_path):
    path = tmp_path / "w.bin"
    with mm.MappedFile(path, "w+", capacity=4096) as f:
        a = f.array(np.uint8)
        a[:] = 7
        f.flush()
        back = pickle.loads(pickle.dumps(a))
        assert (back == 7).all()  # not truncated or zeroed
        assert back.flags.writeable
        back[0] = 1
        assert a[0] == 1
        blob = pickle.dumps(f)
        g = pickle.loads(blob)
        assert g.mode == "r+"
        assert g.size == 4096
        g.close()
    assert os.path.getsize(path) == 4096
    assert path.read_bytes() == b"\x01" + b"\x07" * 4095


def test_w_plus_open_array_comes_back_r_plus(tmp_path):
    path = tmp_path / "w.npy"
    with mm.open_array(path, "w+", dtype=np.int16, shape=(100,)) as a:
        a[:] = np.arange(100)
        a.flush()
        size = os.path.getsize(path)
        back = pickle.loads(pickle.dumps(a))
        np.testing.assert_array_equal(back, np.arange(100))
        back[0] = 500
    assert os.path.getsize(path) == size
    assert np.load(path)[0] == 500
    np.testing.assert_array_equal(np.load(path)[1:], np.arange(1, 100))


def test_w_plus_memmap_comes_back_r_plus(tmp_path):
    path = tmp_path / "w.mmap"
    m = mm.memmap(path, dtype=np.int32, mode="w+", shape=(10,))
    m[:] = 3
    m.flush()
    back = pickle.loads(pickle.dumps(m))
    assert back.mode == "r+"
    assert (back == 3).all()
    assert os.path.getsize(path) == 40


@pytest.mark.parametrize("kind", ["file", "block", "open_array", "memmap"])
def test_read_only_arrays_come_back_read_only(tmp_path, shm_name, kind):
    path = tmp_path / "r.npy"
    np.save(path, np.arange(10, dtype=np.int64))
    keep: list = []
    if kind == "file":
        keep.append(mm.MappedFile(path, "r"))
        arr = keep[0].array(np.int64, (10,), offset=128)
    elif kind == "block":
        keep.append(mm.SharedBlock.create(shm_name, 80))
        keep[0].write_array(0, np.arange(10, dtype=np.int64))
        keep.append(mm.SharedBlock.open(shm_name, readonly=True))
        arr = keep[1].array(np.int64)
    elif kind == "open_array":
        keep.append(mm.open_array(path, "r"))
        arr = keep[0][:]
    else:
        arr = mm.memmap(path, dtype=np.int64, mode="r", offset=128)
    back = pickle.loads(pickle.dumps(arr))
    assert len(pickle.dumps(arr)) < 1024
    assert not back.flags.writeable
    np.testing.assert_array_equal(back, np.arange(10))
    with pytest.raises(ValueError):
        back[0] = 1
    del arr, back
    for h in reversed(keep):
        h.close()


# -- copies travel by value -----------------------------------------------------------------


def test_copy_on_write_arrays_pickle_by_value(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.arange(50_000, dtype=np.int64))
    f = mm.MappedFile(path, "c")
    a = f.array(np.int64, (50_000,), offset=128)
    oa = mm.open_array(path, "c")
    m = mm.memmap(path, dtype=np.int64, mode="c", offset=128)
    for arr in (a, oa, m, a[::2], m[10:20]):
        arr[0] = -1  # a private change
        data = pickle.dumps(arr)
        assert len(data) >= np.asarray(arr).nbytes  # the data itself
        back = pickle.loads(data)
        assert back[0] == -1
        assert not isinstance(back, np.memmap)
        back[1] = -2
        assert arr[1] != -2
    assert np.load(path)[0] == 0  # the file never changed
    oa.close()
    f.close()


@pytest.mark.parametrize(
    "copy",
    {
        "fancy": lambda a: a[[1, 5, 9]],
        "mask": lambda a: a[a > 3],
        "ufunc": lambda a: a + 1,
        "astype": lambda a: a.astype(np.float32),
        "copy": lambda a: a.copy(),
        "reduction": lambda a: np.sum(a, axis=0),
    }.values(),
    ids=["fancy", "mask", "ufunc", "astype", "copy", "reduction"],
)
@pytest.mark.parametrize("kind", ["file-array", "block-array", "memmap", "open_array-file"])
def test_copies_pickle_by_value(tmp_path, shm_name, kind, copy):
    src = Source(kind, tmp_path, shm_name, shape=(512, 64))
    try:
        arr = np.asarray(src.array) if kind == "open_array-file" else src.array
        arr[:] = np.arange(512 * 64).reshape(512, 64)
        c = copy(arr)
        data = pickle.dumps(c)
        assert len(data) >= c.nbytes
        back = pickle.loads(data)
        assert type(back) is np.ndarray
        np.testing.assert_array_equal(back, c)
        back.flat[0] = 10_000
        assert arr[0, 0] != 10_000
    finally:
        src.close()


def test_mapped_file_and_block_handles_pickle_by_reference(tmp_path, shm_name):
    path = tmp_path / "h.bin"
    with mm.MappedFile(path, "w+", capacity=64 * MiB) as f:
        data = pickle.dumps(f)
        assert len(data) < 4096
        with pickle.loads(data) as g:
            g.write(10, np.uint8(5))
            assert f.read(10, np.uint8) == 5
    with mm.SharedBlock.create(shm_name, 64 * MiB) as blk:
        data = pickle.dumps(blk)
        assert len(data) < 4096
        with pickle.loads(data) as other:
            assert not other.owner  # an unpickled handle never removes the block
            other.write(0, np.int32(12345))
        assert blk.read(0, np.int32) == 12345
        assert shm_name in mm.shared_blocks()  # still there


def test_unpickled_array_outlives_the_original_handle(tmp_path):
    path = tmp_path / "o.bin"
    f = mm.MappedFile(path, "w+", capacity=800)
    a = f.array(np.float64)
    a[:] = 1.5
    data = pickle.dumps(a)
    f.close()
    del a
    back = pickle.loads(data)
    assert (back == 1.5).all()
    back[0] = 3.0
    del back
    assert np.fromfile(path)[0] == 3.0


def test_unpickling_after_the_file_shrank_fails_cleanly(tmp_path):
    path = tmp_path / "s.npy"
    with mm.open_array(path, "w+", dtype=np.float64, shape=(100_000,)) as a:
        data = pickle.dumps(a[50_000:])
    os.truncate(path, 5000)  # the bytes the pickle refers to are gone
    with pytest.raises(ValueError):
        pickle.loads(data)


def test_record_field_views_pickle_by_reference(shm_name):
    with mm.SharedBlock.create(shm_name, 4096) as blk:
        rec = blk.records(REC, (10,))
        back = pickle.loads(pickle.dumps(rec.a))
        back[0] = 5
        assert rec.a[0] == 5


# -- across processes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    """One spawn pool for the module (spawn: nothing is inherited, all is pickled)."""
    with multiprocessing.get_context("spawn").Pool(2) as p:
        yield p


@pytest.fixture(scope="module")
def executor():
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        yield ex


def test_pool_workers_are_other_processes(pool, executor):
    assert pool.apply(os.getpid) != os.getpid()
    assert executor.submit(os.getpid).result() != os.getpid()


@pytest.mark.parametrize("kind", KINDS)
def test_spawn_pool_writes_through_pickled_views(pool, tmp_path, shm_name, kind):
    src = Source(kind, tmp_path, shm_name, shape=(64, 32))
    try:
        arr = src.array
        whole = np.asarray(arr)
        views = [arr[i::4, :-1] for i in range(4)]  # strided views, disjoint
        if structured(whole):
            jobs = [(v, np.array([(i + 1, 0.5)], REC)) for i, v in enumerate(views)]
        else:
            jobs = [(v, np.uint64(i + 1)) for i, v in enumerate(views)]
        jobs.append((arr[::-1, -1], np.full(64, 9, whole.dtype)))  # a negative-step column
        assert all(len(pickle.dumps(v)) < 1024 for v, _ in jobs)
        pool.starmap(np.copyto, jobs)
        ints = values(whole)
        for i in range(4):
            assert (ints[i::4, :-1] == i + 1).all()  # written by workers
        assert (ints[:, -1] == 9).all()
        # and the workers read what the parent wrote
        put(arr, (3, 3), 1000)
        sums = pool.map(np.sum, [values(v) for v in views])
        assert sums == [int(ints[i::4, :-1].sum()) for i in range(4)]
    finally:
        src.close()


def test_spawn_pool_map_fills_chunks(pool, tmp_path, shm_name):
    m = mm.memmap(tmp_path / "m.mmap", dtype=np.int32, mode="w+", shape=(40, 10))
    a = mm.open_array("shm://" + shm_name, "w+", dtype=np.int32, shape=(40, 10))
    try:
        for arr in (m, a):
            fill = functools.partial(np.copyto, src=np.int32(3))
            pool.map(fill, [arr[i : i + 10] for i in range(0, 40, 10)])
            assert (np.asarray(arr) == 3).all()
            fill = functools.partial(np.copyto, src=np.arange(10, dtype=np.int32))
            pool.map(fill, [arr[i] for i in range(40)])  # row by row
            assert (np.asarray(arr) == np.arange(10)).all()
    finally:
        a.close()


def test_spawn_pool_with_a_big_array_sends_references(pool, tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    with mm.MappedFile(path, "r+") as f:
        a = f.array(np.uint64, (32, 1 << 18))
        chunks = [a[i, ::4096] for i in range(32)]  # sparse, strided rows
        assert all(len(pickle.dumps(c)) < 1024 for c in chunks)
        pool.starmap(np.copyto, [(c, np.uint64(i + 1)) for i, c in enumerate(chunks)])
        assert [int(a[i, 4096 * (i % 64)]) for i in range(32)] == list(range(1, 33))
        assert int(a[0, 1]) == 0
        del a, chunks


def test_process_pool_executor_with_open_array(executor, tmp_path, shm_name):
    for target in (str(tmp_path / "ex.npy"), "shm://" + shm_name):
        with mm.open_array(target, "w+", dtype=np.float64, shape=(0, 16), capacity=8) as a:
            a.append(np.zeros((100, 16)))  # unflushed: the pickles carry the shape
            futures = [
                executor.submit(np.copyto, a[i * 10 : (i + 1) * 10], float(i)) for i in range(10)
            ]
            for fut in futures:
                fut.result()
            expected = np.repeat(np.arange(10.0), 10)
            np.testing.assert_array_equal(a[:, 0], expected)
            np.testing.assert_array_equal(a[:, 15], expected)
            # the MappedArray itself travels by reference and is read in the worker
            assert executor.submit(np.sum, a).result() == 16 * 10 * 45
            assert list(executor.map(np.max, [a[:50], a[50:]])) == [4.0, 9.0]
            a[99, 0] = 1000.0
            assert executor.submit(np.max, a[::-1]).result() == 1000.0
