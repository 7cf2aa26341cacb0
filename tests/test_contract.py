"""The typed-view contract shared by MappedFile and SharedBlock (issue 3).

Every test here runs against both backends through the ``backend`` fixture,
which yields a fresh writable handle of ``N`` bytes: a ``MappedFile`` in
``tmp_path`` and a ``SharedBlock`` with a unique name (removed in teardown
even when the test fails).  The one difference DESIGN.md names -- files may
shrink, shared blocks only grow -- is asserted explicitly per backend.
"""

from __future__ import annotations

import gc
import os
import pathlib
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmarray as mm

N = 3 * 4096 + 100  # several pages and not a multiple of the page size
BACKENDS = ["file", "shm"]
HINTS = ["normal", "random", "sequential", "willneed", "dontneed"]
REC = np.dtype([("t", "<i8"), ("price", ">f8"), ("qty", "<u2"), ("tag", "S3")])


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Iterator[mm.MappedFile | mm.SharedBlock]:
    """A fresh writable handle of ``N`` zero bytes, closed afterwards."""
    if request.param == "file":
        handle = mm.MappedFile(tmp_path / "data.bin", "w+", capacity=N)
    else:
        # shm_name's teardown removes the block even if the test failed.
        handle = mm.SharedBlock.create(request.getfixturevalue("shm_name"), N)
    try:
        yield handle
    finally:
        handle.close()


def storage(handle) -> pathlib.Path:
    """Where the handle's bytes can be read without mapping them."""
    if isinstance(handle, mm.MappedFile):
        return handle.path
    return pathlib.Path("/dev/shm") / handle.name


def open_readonly(handle):
    """A second, read-only handle on the same bytes."""
    if isinstance(handle, mm.MappedFile):
        return mm.MappedFile(handle.path, "r")
    return mm.SharedBlock.open(handle.name, readonly=True)


def pattern(n: int) -> np.ndarray:
    """``n`` bytes that are not all equal, so misplaced reads show."""
    return (np.arange(n) % 251).astype(np.uint8)


# -- state ----------------------------------------------------------------------


def test_fresh_handle(backend):
    assert backend.size == N
    assert not backend.closed
    assert not backend.readonly
    assert os.path.getsize(storage(backend)) == N
    a = backend.array()
    assert type(a) is not np.ndarray and isinstance(a, np.ndarray)
    assert a.shape == (N,) and a.dtype == np.uint8
    assert not a.any()


def test_repr_shows_what_and_how_big(backend):
    text = repr(backend)
    assert type(backend).__name__ in text
    assert str(N) in text
    what = str(backend.path) if isinstance(backend, mm.MappedFile) else backend.name
    assert what in text
    backend.close()
    assert "closed" in repr(backend)


def test_context_manager(backend):
    with backend as h:
        assert h is backend
        h.write(0, np.uint8(1))
    assert backend.closed


# -- views at offsets -------------------------------------------------------------


DTYPES = ["u1", "<i2", ">i4", "<u8", "<f4", ">f8", "<c16", "?", "S5", REC]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0, 1, 3, 7, 4096 + 5, "last"])
def test_array_at_any_offset(backend, dtype, offset):
    dt = np.dtype(dtype)
    if offset == "last":
        offset = N - dt.itemsize
    backend.write_array(0, pattern(N))
    a = backend.array(dt, offset=offset)
    assert a.shape == ((N - offset) // dt.itemsize,)
    assert a.tobytes() == pattern(N)[offset : offset + a.nbytes].tobytes()
    # A write through the view lands at the right bytes for every accessor.
    item = np.frombuffer(bytes(range(200, 200 + dt.itemsize)), dtype=dt)[0]
    a[0] = item
    stored = np.array([item], dtype=dt).tobytes()  # in dt's byte order
    assert backend.read(offset, dt) == item
    assert backend.read_array(offset, dt, 1).tobytes() == stored
    raw = backend.array()
    assert raw[offset : offset + dt.itemsize].tobytes() == stored
    if offset:
        assert raw[offset - 1] == pattern(N)[offset - 1]
    end = offset + dt.itemsize
    if end < N:
        assert raw[end] == pattern(N)[end]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    dtype=st.sampled_from(["u1", "<i2", ">u4", "<f8", ">c8", "V3", REC]),
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
    offset=st.integers(0, 600),
    order=st.sampled_from(["C", "F"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_array_roundtrip_property(backend, dtype, shape, offset, order, seed):
    dt = np.dtype(dtype)
    values = np.frombuffer(
        np.random.default_rng(seed).bytes(int(np.prod(shape)) * dt.itemsize), dtype=dt
    ).reshape(shape, order=order)
    a = backend.array(dt, shape=shape, offset=offset, order=order)
    assert a.shape == shape
    if a.size:  # numpy's strides of empty arrays vary and mean nothing
        assert a.strides == np.empty(shape, dt, order=order).strides
    a[...] = values
    expected = values.tobytes(order=order)
    assert backend.read_array(offset, np.uint8, len(expected)).tobytes() == expected
    # write_array writes C order; read_array reads it back.
    backend.write_array(offset, values)
    flat = backend.read_array(offset, dt, values.size)
    assert flat.tobytes() == values.tobytes(order="C")


def test_array_shapes_and_order(backend):
    c = backend.array("<i4", shape=(3, 4), offset=2)
    f = backend.array("<i4", shape=(3, 4), offset=2, order="F")
    assert c.flags.c_contiguous and f.flags.f_contiguous
    c[...] = np.arange(12).reshape(3, 4)
    assert f.T.reshape(-1).tolist() == list(range(12))
    assert backend.array(np.int32, shape=5).shape == (5,)
    assert backend.array(np.int32, shape=()).shape == ()
    assert backend.array(np.int32, shape=(0, 7), offset=N).shape == (0, 7)
    with pytest.raises(ValueError, match="order"):
        backend.array(order="K")


def test_arrays_of_one_handle_share_bytes(backend):
    a = backend.array(np.uint8)
    b = backend.array("<u4", shape=2, offset=1)
    b[1] = 0x01020304
    assert a[5:9].tolist() == [4, 3, 2, 1]


def test_records_are_recarrays(backend):
    r = backend.records(REC, shape=4, offset=3)
    assert isinstance(r, np.recarray)
    assert r.shape == (4,)
    r.price[2] = 99.5
    r[1] = (7, -1.0, 3, b"abc")
    assert r[2].price == 99.5
    v = backend.read(3 + REC.itemsize, REC)
    assert isinstance(v, np.void)
    assert v.item() == (7, -1.0, 3, b"abc")
    assert backend.records(REC, offset=3).shape == ((N - 3) // REC.itemsize,)


@pytest.mark.parametrize("dtype", ["<i4", "S4", np.dtype((np.int32, 3))])
def test_records_need_a_structured_dtype(backend, dtype):
    with pytest.raises(ValueError, match="structured"):
        backend.records(dtype)


# -- scalar and array accessors ---------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.uint8(200),
        np.int16(-2),
        np.int32(-123456),
        np.float64(2.5),
        np.complex64(1 - 2j),
        np.bool_(True),
        np.datetime64("2024-01-02", "D"),
        np.bytes_(b"xyz"),
    ],
    ids=lambda v: type(v).__name__,
)
@pytest.mark.parametrize("offset", [0, 1, 13, "last"])
def test_write_read_numpy_scalars(backend, value, offset):
    if offset == "last":
        offset = N - value.dtype.itemsize
    backend.write(offset, value)
    got = backend.read(offset, value.dtype)
    assert isinstance(got, np.generic)
    assert got == value


def test_structured_scalar_roundtrip(backend):
    backend.write(5, (1, 2.0, 3, b"xy"), dtype=REC)
    v = backend.read(5, REC)
    assert isinstance(v, np.void)
    assert v["t"] == 1 and v["price"] == 2.0 and v["qty"] == 3 and v["tag"] == b"xy"
    backend.write(100, v)  # an np.void needs no dtype
    assert backend.read(100, REC) == v


@pytest.mark.parametrize("value", [1, 2.5, True, 1j, (1, 2)], ids=repr)
def test_write_python_value_without_dtype(backend, value):
    with pytest.raises(TypeError, match="dtype"):
        backend.write(0, value)
    assert not backend.array().any()


@pytest.mark.parametrize(("value", "dtype"), [(7, "<i8"), (2.5, ">f4"), (300, "<u2")])
def test_write_python_value_with_dtype(backend, value, dtype):
    backend.write(3, value, dtype=dtype)
    assert backend.read(3, dtype) == value


def test_write_ndarray_value(backend):
    backend.write(1, np.arange(6, dtype="<i2").reshape(2, 3))
    assert backend.read_array(1, "<i2", 6).tolist() == list(range(6))


def test_read_returns_copies(backend):
    backend.write(0, np.int32(5))
    s = backend.read(0, np.int32)
    arr = backend.read_array(0, np.int32, 3)
    backend.write(0, np.int32(6))
    assert s == 5 and arr[0] == 5
    arr[1] = 9
    assert backend.read(4, np.int32) == 0


@pytest.mark.parametrize("offset", [0, 1, 4095, 4097, N - 24])
def test_read_write_array_at_offsets(backend, offset):
    values = np.linspace(-1, 1, 3).astype(">f8")
    backend.write_array(offset, values)
    assert np.array_equal(backend.read_array(offset, ">f8", 3), values)
    backend.write_array(offset, [1, 2, 3])  # array-likes take numpy's dtype
    assert backend.read_array(offset, np.int_, 3).tolist() == [1, 2, 3]


# -- errors -------------------------------------------------------------------------


OUT_OF_RANGE = {
    "array-offset": lambda h: h.array(offset=N + 1),
    "array-shape": lambda h: h.array(shape=N + 1),
    "array-tail": lambda h: h.array(np.int32, shape=1, offset=N - 3),
    "array-2d": lambda h: h.array(np.uint8, shape=(N, 2)),
    "array-negative-offset": lambda h: h.array(offset=-1),
    "records-tail": lambda h: h.records(REC, shape=1, offset=N - REC.itemsize + 1),
    "read": lambda h: h.read(N - 3, np.int32),
    "read-past-end": lambda h: h.read(N, np.uint8),
    "read_array": lambda h: h.read_array(N - 4, np.int32, 2),
    "read_array-negative-count": lambda h: h.read_array(0, np.int32, -1),
    "write": lambda h: h.write(N - 1, np.int16(1)),
    "write-array-value": lambda h: h.write(N - 2, np.ones(3, np.uint8)),
    "write_array": lambda h: h.write_array(N - 2, np.ones(3, np.uint8)),
    "flush": lambda h: h.flush(N - 10, 11),
    "advise": lambda h: h.advise("random", 1, N),
    "resize-zero": lambda h: h.resize(0),
}


@pytest.mark.parametrize("call", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_out_of_range_is_valueerror(backend, call):
    backend.write_array(0, pattern(N))
    with pytest.raises(ValueError):
        call(backend)
    # A refused write changes nothing, and the handle stays usable.
    assert backend.size == N
    assert backend.read_array(0, np.uint8, N).tobytes() == pattern(N).tobytes()


@pytest.mark.parametrize("method", ["flush", "advise"])
@pytest.mark.parametrize("offset", [N + 1, N + 4096])
def test_flush_advise_offset_past_end(backend, method, offset):
    args = ("normal",) if method == "advise" else ()
    with pytest.raises(ValueError, match="past the end"):
        getattr(backend, method)(*args, offset=offset)


OBJECT_CALLS = {
    "array": lambda h: h.array(object),
    "array-structured": lambda h: h.array([("a", "<i4"), ("o", object)]),
    "records": lambda h: h.records([("a", "<i4"), ("o", object)]),
    "read": lambda h: h.read(0, object),
    "read_array": lambda h: h.read_array(0, object, 1),
    "write-dtype": lambda h: h.write(0, 1, dtype=object),
    "write-value": lambda h: h.write(0, np.array([1, None], dtype=object)),
    "write_array": lambda h: h.write_array(0, np.array([1, None], dtype=object)),
}


@pytest.mark.parametrize("call", OBJECT_CALLS.values(), ids=OBJECT_CALLS.keys())
def test_object_dtypes_are_typeerror(backend, call):
    with pytest.raises(TypeError, match="object"):
        call(backend)
    assert not backend.array().any()


@pytest.mark.parametrize(
    "call",
    [
        lambda h: h.array(offset=1.5),
        lambda h: h.array(shape="x"),
        lambda h: h.resize(2.0),
        lambda h: h.read_array(0, np.uint8, None),
    ],
    ids=["float-offset", "str-shape", "float-size", "none-count"],
)
def test_wrong_kinds_are_typeerror(backend, call):
    with pytest.raises(TypeError):
        call(backend)


@pytest.mark.parametrize("hint", ["", "RANDOM", "hugepage", None, 1])
def test_bad_advise_hint(backend, hint):
    with pytest.raises(ValueError, match="hint"):
        backend.advise(hint)


# -- flush and advise ---------------------------------------------------------------


RANGES = [
    (0, None),
    (0, N),
    (1, 10),
    (4095, 2),
    (4096, 4096),
    (N - 1, 1),
    (N, 0),
    (17, 0),
    (0, 0),
    (N - 100, None),
]


@pytest.mark.parametrize(("offset", "size"), RANGES)
def test_flush_ranges_reach_storage(backend, offset, size):
    backend.write_array(0, pattern(N))
    backend.flush(offset, size)
    backend.flush()
    assert storage(backend).read_bytes() == pattern(N).tobytes()


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize(("offset", "size"), RANGES)
def test_advise_ranges_keep_data(backend, hint, offset, size):
    backend.write_array(0, pattern(N))
    backend.advise(hint, offset, size)
    # "dontneed" on shared mappings drops pages, never data.
    assert backend.read_array(0, np.uint8, N).tobytes() == pattern(N).tobytes()


# -- resize ---------------------------------------------------------------------------


def test_grow_with_live_views(backend):
    old = backend.array(np.uint8)
    old_words = backend.array("<u4", shape=4, offset=1)
    old[N - 1] = 7
    backend.resize(2 * N)
    assert backend.size == 2 * N
    assert os.path.getsize(storage(backend)) == 2 * N
    new = backend.array(np.uint8)
    assert new.shape == (2 * N,)
    assert new[N - 1] == 7
    assert not new[N:].any()  # new bytes read as zero
    # Old and new arrays are the same bytes, both ways.
    new[0] = 5
    assert old[0] == 5
    old[1] = 6
    assert new[1] == 6
    old_words[0] = 0xAABBCCDD
    assert backend.read(1, "<u4") == 0xAABBCCDD
    # A second growth: arrays from both earlier mappings still see writes.
    backend.resize(3 * N + 1)
    backend.write(2, np.uint8(9))
    assert old[2] == 9 and new[2] == 9
    backend.write(2 * N - 1, np.uint8(4))
    assert new[2 * N - 1] == 4
    assert backend.array().shape == (3 * N + 1,)


def test_grow_without_views_and_same_size(backend):
    backend.write(0, np.uint8(3))
    backend.resize(N)  # no-op
    assert backend.size == N
    backend.resize(N + 1)
    assert backend.size == N + 1
    assert backend.read(0, np.uint8) == 3
    assert backend.read(N, np.uint8) == 0


def test_views_from_before_a_grow_pickle_and_survive_close(backend):
    old = backend.array("<i8", shape=3)
    backend.resize(N * 2)
    old[:] = [1, 2, 3]
    back = pickle.loads(pickle.dumps(old[::-1]))
    assert back.tolist() == [3, 2, 1]
    back[0] = 30
    assert old[2] == 30
    backend.close()
    del back
    gc.collect()
    assert old.tolist() == [1, 2, 30]


def test_shrink_differs_by_backend(backend):
    backend.write_array(0, pattern(N))
    view = backend.array(np.uint8)
    if isinstance(backend, mm.SharedBlock):
        # Blocks only grow: shrinking would crash other processes mapping them.
        with pytest.raises(ValueError, match="grow"):
            backend.resize(N - 1)
        del view
        gc.collect()
        with pytest.raises(ValueError, match="grow"):
            backend.resize(1)
        assert backend.size == N
        assert os.path.getsize(storage(backend)) == N
    else:
        # Files may shrink, but not under a live view (BufferError, no crash).
        with pytest.raises(BufferError):
            backend.resize(N - 1)
        assert backend.size == N
        assert view[N - 1] == pattern(N)[N - 1]
        view = view[:10]  # a view of the view keeps the mapping alive too
        with pytest.raises(BufferError):
            backend.resize(N - 1)
        del view
        gc.collect()
        backend.resize(100)
        assert backend.size == 100
        assert os.path.getsize(storage(backend)) == 100
        assert backend.read_array(0, np.uint8, 100).tobytes() == pattern(100).tobytes()
        with pytest.raises(ValueError):
            backend.read(100, np.uint8)


def test_failed_grow_changes_nothing(backend):
    backend.write(0, np.uint8(1))
    a = backend.array()
    # No address space holds 2**62 bytes: either the storage refuses the size
    # (ext4: EFBIG) or mapping it fails (tmpfs: ENOMEM).
    with pytest.raises(OSError):
        backend.resize(2**62)
    assert backend.size == N
    assert a[0] == 1 and backend.read(0, np.uint8) == 1
    assert os.path.getsize(storage(backend)) == N
    with open_readonly(backend) as ro:
        assert ro.size == N


def test_shrink_after_grow_with_old_views(backend):
    old = backend.array()
    backend.resize(2 * N)
    if isinstance(backend, mm.SharedBlock):
        with pytest.raises(ValueError, match="grow"):
            backend.resize(N // 2)
        assert backend.size == 2 * N
        return
    with pytest.raises(BufferError):
        backend.resize(N // 2)
    old[0] = 1
    assert backend.read(0, np.uint8) == 1
    del old
    gc.collect()
    backend.resize(N // 2)
    assert backend.size == N // 2


# -- close ------------------------------------------------------------------------------


CLOSED_CALLS = {
    "size": lambda h: h.size,
    "array": lambda h: h.array(),
    "records": lambda h: h.records(REC),
    "read": lambda h: h.read(0, np.uint8),
    "write": lambda h: h.write(0, np.uint8(1)),
    "read_array": lambda h: h.read_array(0, np.uint8, 4),
    "write_array": lambda h: h.write_array(0, np.ones(4, np.uint8)),
    "flush": lambda h: h.flush(),
    "flush-range": lambda h: h.flush(0, 10),
    "advise": lambda h: h.advise("random"),
    "resize-grow": lambda h: h.resize(2 * N),
    "resize-shrink": lambda h: h.resize(10),
    "pickle": lambda h: pickle.dumps(h),
}


@pytest.mark.parametrize("call", CLOSED_CALLS.values(), ids=CLOSED_CALLS.keys())
def test_closed_handle_refuses(backend, call):
    backend.close()
    with pytest.raises(ValueError, match="closed"):
        call(backend)


def test_close_is_idempotent(backend):
    backend.close()
    backend.close()
    assert backend.closed
    with backend:
        pass
    assert backend.closed


def test_arrays_stay_valid_after_close_and_gc(backend):
    backend.write_array(0, pattern(N))
    a = backend.array(np.uint8)
    s = a[10:20]
    w = backend.array("<u2", shape=(2, 3), offset=1)
    r = backend.records(REC, shape=2, offset=5)
    expected_w = w.copy()
    expected_r = r.copy()
    backend.close()
    del backend
    gc.collect()
    assert a.tobytes() == pattern(N).tobytes()
    assert s.tolist() == pattern(N)[10:20].tolist()
    assert np.array_equal(w, expected_w)
    assert np.array_equal(r, expected_r)
    a[11] = 0
    assert s[1] == 0  # still one set of bytes
    assert int(a.sum()) == int(pattern(N).sum()) - int(pattern(N)[11])


# -- numpy behaviour of the views ------------------------------------------------------


def test_ufunc_and_copy_results_are_plain_ndarrays(backend):
    a = backend.array("<f8", shape=(4, 5))
    a[...] = np.arange(20).reshape(4, 5)
    for result in (
        a + 1,
        np.sqrt(a),
        a * a,
        a.sum(axis=0),
        np.add.reduce(a, axis=1),
        np.where(a > 3, a, 0),
        -a,
    ):
        assert type(result) is np.ndarray
    assert float(np.sum(a)) == 190.0
    assert type(np.sum(a)) is np.float64
    assert a.max() == 19
    assert type(a[1]) is type(a)  # basic slices stay views of the mapping
    assert type(a[1, 2]) is np.float64


def test_readonly_handle_views(backend):
    backend.write_array(0, pattern(N))
    with open_readonly(backend) as ro:
        assert ro.readonly
        a = ro.array(np.uint8)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0] = 1
        assert not ro.records(REC).flags.writeable
        assert a.tobytes() == pattern(N).tobytes()
        for call in (
            lambda: ro.write(0, np.uint8(1)),
            lambda: ro.write_array(0, np.ones(2, np.uint8)),
            lambda: ro.resize(2 * N),
        ):
            with pytest.raises(PermissionError):
                call()
        ro.flush()  # nothing to write: a no-op
        ro.advise("willneed")
        backend.write(0, np.uint8(250))
        assert a[0] == 250  # the read-only mapping sees the writer's bytes
    assert backend.size == N


# -- pickling by reference ---------------------------------------------------------------


SLICES = {
    "whole": lambda a: a,
    "basic": lambda a: a[3:50],
    "row": lambda a: a.reshape(-1, 16)[7],
    "step": lambda a: a[1::3],
    "negative": lambda a: a[::-1],
    "negative-step": lambda a: a[-2:2:-5],
    "2d-strided": lambda a: a.reshape(-1, 16)[2:9:2, ::-3],
    "transposed": lambda a: a.reshape(-1, 16).T,
    "scalar-view": lambda a: a[5:6].reshape(()),
    "empty": lambda a: a[10:10],
}


@pytest.mark.parametrize("take", SLICES.values(), ids=SLICES.keys())
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_views_pickle_by_reference(backend, take, protocol):
    base = backend.array("<i4", shape=3072, offset=3)  # unaligned: tests offset arithmetic
    base[:] = np.arange(base.size)
    v = take(base)
    data = pickle.dumps(v, protocol=protocol)
    assert len(data) < 1024  # a reference, not the data
    back = pickle.loads(data)
    assert back.shape == v.shape and back.strides == v.strides and back.dtype == v.dtype
    assert back.tobytes() == v.tobytes()
    assert type(back) is type(v)
    if v.size:
        # The same bytes: writes show on both sides.
        back[(0,) * back.ndim] = -1
        assert v[(0,) * v.ndim] == -1
        v[(-1,) * v.ndim] = -2
        assert back[(-1,) * back.ndim] == -2


def test_big_view_pickles_small(backend):
    backend.resize(64 * 1024 * 1024)
    a = backend.array(np.float64)
    assert len(pickle.dumps(a)) < 4096


def test_records_pickle_by_reference(backend):
    r = backend.records(REC, shape=6, offset=1)
    r.t[:] = np.arange(6)
    for v in (r, r[1:5:2], r[::-1]):
        back = pickle.loads(pickle.dumps(v))
        assert isinstance(back, np.recarray)
        assert back.tobytes() == v.tobytes()
    back = pickle.loads(pickle.dumps(r[::-2]))
    back.qty[0] = 77
    assert r.qty[5] == 77


def test_copies_pickle_by_value(backend):
    a = backend.array("<i2", shape=10)
    a[:] = np.arange(10)
    for copy in (a[[1, 3]], a + 0, a.copy(), backend.read_array(0, "<i2", 10)):
        back = pickle.loads(pickle.dumps(copy))
        assert back.tolist() == copy.tolist()
        back[0] = 100
        assert a[1] != 100 and a[0] != 100


def test_readonly_views_unpickle_readonly(backend):
    with open_readonly(backend) as ro:
        a = ro.array(np.uint8)[4:8]
        back = pickle.loads(pickle.dumps(a))
        assert not back.flags.writeable
        backend.write(4, np.uint8(9))
        assert back[0] == 9


def test_handle_pickles_by_reference(backend):
    backend.write(0, np.int64(42))
    other = pickle.loads(pickle.dumps(backend))
    try:
        assert type(other) is type(backend)
        assert other.size == N
        assert other.read(0, np.int64) == 42
        other.write(8, np.int64(43))
        assert backend.read(8, np.int64) == 43
    finally:
        other.close()
    # Closing the reopened handle leaves the original (and its name) alone.
    assert backend.read(0, np.int64) == 42
    assert storage(backend).exists()
