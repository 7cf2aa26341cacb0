"""Property tests for MappedFile views (issue 2).

Random dtypes (scalar, structured, big-endian, subarray fields), shapes,
orders and byte offsets (unaligned too).  Data written through mmarray must
be the bytes that plain ``open().read()`` and ``np.memmap`` see, and the
other way round.  Comparisons are on bytes (``tobytes``), never values, so
NaN and NaT need no special care.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import pickle

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mmarray as mm

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def mappable(dt: np.dtype) -> bool:
    return not dt.hasobject and 0 < dt.itemsize <= 256


SCALARS = st.one_of(
    hnp.scalar_dtypes(),
    hnp.integer_dtypes(endianness=">"),
    hnp.unsigned_integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness=">"),
    hnp.complex_number_dtypes(endianness=">"),
    hnp.byte_string_dtypes(max_len=7),
    hnp.unicode_string_dtypes(max_len=3),
)
DTYPES = st.one_of(
    SCALARS,
    hnp.array_dtypes(SCALARS, min_size=1, max_size=4, allow_subarrays=True),
    hnp.nested_dtypes(SCALARS, max_leaves=5, max_itemsize=128),
).filter(mappable)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
OFFSETS = st.one_of(st.integers(0, 17), st.integers(4090, 4100))
SLACK = st.integers(0, 9)
ORDERS = st.sampled_from("CF")

_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """``with scratch() as path`` -> a fresh file name, removed afterwards."""
    folder = tmp_path_factory.mktemp("properties")

    @contextlib.contextmanager
    def make():
        path = folder / f"example-{next(_counter)}.bin"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    yield make
    assert not any(folder.iterdir()), "a property example left a file behind"


def layout(dtype: np.dtype, shape: tuple[int, ...], offset: int, slack: int) -> tuple[int, int]:
    nbytes = math.prod(shape) * dtype.itemsize
    return nbytes, max(offset + nbytes + slack, 1)


def memmap_bytes(path, dtype, shape, offset, order="C") -> bytes:
    """The bytes numpy's own memmap sees for this layout, in that layout's order."""
    m = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    try:
        return m.tobytes(order=order)
    finally:
        del m


def mapping_under(arr: np.ndarray) -> object:
    """Follow ``.base`` down to the object that exports the bytes."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, pickle.PickleBuffer):
        base = base.raw().obj
    return base


# -- data written through mmarray is what other readers see ----------------------------


@SETTINGS
@given(dtype=DTYPES, shape=SHAPES, offset=OFFSETS, slack=SLACK, order=ORDERS, data=st.data())
def test_view_writes_are_file_bytes(scratch, dtype, shape, offset, slack, order, data):
    values = data.draw(hnp.arrays(dtype, shape), label="values")
    nbytes, size = layout(dtype, shape, offset, slack)
    expected = values.tobytes(order=order)
    with scratch() as path:
        with mm.MappedFile(path, "w+", capacity=size) as f:
            view = f.array(dtype, shape=shape, offset=offset, order=order)
            assert view.shape == shape
            assert view.dtype == dtype
            view[...] = values
            assert view.tobytes(order=order) == expected
            f.flush()
        del view
        raw = path.read_bytes()
        assert raw == bytes(offset) + expected + bytes(size - offset - nbytes)
        if nbytes:
            assert memmap_bytes(path, dtype, shape, offset, order) == expected


@SETTINGS
@given(dtype=DTYPES, shape=SHAPES, offset=OFFSETS, slack=SLACK, data=st.data())
def test_write_array_is_file_bytes(scratch, dtype, shape, offset, slack, data):
    values = data.draw(hnp.arrays(dtype, shape), label="values")
    if data.draw(st.booleans(), label="fortran source"):
        values = np.asfortranarray(values)
    nbytes, size = layout(dtype, shape, offset, slack)
    expected = values.tobytes()  # write_array stores C order
    with scratch() as path:
        with mm.MappedFile(path, "w+", capacity=size) as f:
            f.write_array(offset, values)
            got = f.read_array(offset, dtype, values.size)
            assert got.dtype == dtype
            assert got.tobytes() == expected
            if shape == ():
                f.write(offset, values)  # a 0-d array keeps its byte order
                f.write(offset, values[()], dtype=dtype)  # a scalar is native order
                item = f.read(offset, dtype)
                assert isinstance(item, np.generic)
                assert np.asarray(item, dtype=dtype).tobytes() == expected
        raw = path.read_bytes()
        assert raw == bytes(offset) + expected + bytes(size - offset - nbytes)
        if nbytes:
            assert memmap_bytes(path, dtype, shape, offset) == expected


@SETTINGS
@given(dtype=DTYPES, shape=SHAPES, offset=OFFSETS, slack=SLACK, order=ORDERS, data=st.data())
def test_views_read_file_bytes(scratch, dtype, shape, offset, slack, order, data):
    nbytes, size = layout(dtype, shape, offset, slack)
    content = data.draw(st.binary(min_size=size, max_size=size), label="file")
    mode = data.draw(st.sampled_from(["r", "r+", "c"]), label="mode")
    with scratch() as path:
        path.write_bytes(content)
        with mm.MappedFile(path, mode) as f:
            view = f.array(dtype, shape=shape, offset=offset, order=order)
            assert view.flags.writeable is (mode != "r")
            assert view.tobytes(order=order) == content[offset : offset + nbytes]
            if nbytes:
                assert view.tobytes(order=order) == memmap_bytes(path, dtype, shape, offset, order)
                count = nbytes // dtype.itemsize
                assert f.read_array(offset, dtype, count).tobytes() == view.tobytes(order=order)
        del view
        assert path.read_bytes() == content


@SETTINGS
@given(
    dtype=hnp.array_dtypes(SCALARS, min_size=1, max_size=4, allow_subarrays=True).filter(mappable),
    count=st.integers(0, 5),
    offset=OFFSETS,
    data=st.data(),
)
def test_records_match_array_views(scratch, dtype, count, offset, data):
    values = data.draw(hnp.arrays(dtype, count), label="values")
    nbytes, size = layout(dtype, (count,), offset, 1)
    with scratch() as path:
        with mm.MappedFile(path, "w+", capacity=size) as f:
            rec = f.records(dtype, offset=offset, shape=count)
            assert isinstance(rec, np.recarray)
            rec[...] = values
            name = dtype.names[0]
            assert rec.field(0).tobytes() == values[name].tobytes()
            assert f.array(dtype, shape=count, offset=offset).tobytes() == values.tobytes()
        del rec
        assert path.read_bytes()[offset : offset + nbytes] == values.tobytes()


# -- pickling views by reference ---------------------------------------------------------

PICKLE_DTYPES = st.sampled_from(["u1", "<i2", ">u4", "<i8", ">i8"]).map(np.dtype)


@SETTINGS
@given(
    dtype=PICKLE_DTYPES,
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
    offset=st.integers(0, 9),
    data=st.data(),
)
def test_pickled_views_share_the_file(scratch, dtype, shape, offset, data):
    _, size = layout(dtype, shape, offset, 3)
    index = data.draw(hnp.basic_indices(shape, allow_ellipsis=True), label="index")
    transpose = data.draw(st.booleans(), label="transpose")
    content = data.draw(st.binary(min_size=size, max_size=size), label="file")
    with scratch() as path:
        path.write_bytes(content)
        with mm.MappedFile(path, "r+") as f:
            base = f.array(dtype, shape=shape, offset=offset)
            view = base[index]
            assume(isinstance(view, np.ndarray))
            if transpose:
                view = view.T
            blob = pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
            assert len(blob) < 4096
            back = pickle.loads(blob)
            assert type(back) is type(view)
            assert back.shape == view.shape
            assert back.dtype == view.dtype
            assert back.strides == view.strides
            assert back.tobytes() == view.tobytes()
            if view.size:
                pos = data.draw(st.integers(0, view.size - 1), label="position")
                ix = np.unravel_index(pos, view.shape)
                back[ix] = back[ix] ^ 1  # through the copy: seen by the original
                assert view[ix] == back[ix]
                on_disk = np.frombuffer(
                    path.read_bytes(), dtype, count=math.prod(shape), offset=offset
                ).reshape(shape)[index]
                if transpose:
                    on_disk = on_disk.T
                assert on_disk[ix] == back[ix]
                view[ix] = view[ix] ^ 3  # and the other way round
                assert back[ix] == view[ix]
            del back, view, base


@SETTINGS
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6),
    data=st.data(),
)
def test_pickled_record_views(scratch, shape, data):
    dtype = np.dtype([("a", "<u2"), ("b", ">f4", (2,)), ("c", "u1")])
    _, size = layout(dtype, shape, 3, 0)
    index = data.draw(hnp.basic_indices(shape), label="index")
    field = data.draw(st.sampled_from([None, "a", "b", "c"]), label="field")
    with scratch() as path, mm.MappedFile(path, "w+", capacity=size) as f:
        f.array(np.uint8)[:] = np.arange(size) % 256
        rec = f.records(dtype, shape=shape, offset=3)
        view = rec[index]
        assume(isinstance(view, np.ndarray))
        if field is not None:
            view = f.array(dtype, shape=shape, offset=3)[index][field]
        back = pickle.loads(pickle.dumps(view))
        assert back.shape == view.shape
        assert back.dtype == view.dtype
        assert back.tobytes() == view.tobytes()
        assert isinstance(back, np.recarray) is isinstance(view, np.recarray)
        if view.size and field != "b":
            target = back if field else back["a"]
            target.flat[0] = 42
            source = view if field else view["a"]
            assert source.flat[0] == 42
        del back, view, rec


# -- ufunc results and .base -----------------------------------------------------------------


@SETTINGS
@given(
    dtype=st.sampled_from(["u1", "<i4", ">f8", "<c8"]).map(np.dtype),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    data=st.data(),
)
def test_ufunc_results_are_plain_and_views_lead_to_the_mapping(scratch, dtype, shape, data):
    index = data.draw(hnp.basic_indices(shape, allow_ellipsis=True), label="index")
    with scratch() as path:
        _, size = layout(dtype, shape, 1, 0)
        with mm.MappedFile(path, "w+", capacity=size) as f:
            whole = f.array(np.uint8)
            whole[:] = np.arange(size) % 7
            base = f.array(dtype, shape=shape, offset=1)
            view = base[index]
            assume(isinstance(view, np.ndarray))
            root = mapping_under(base)
            assert isinstance(root, mmap.mmap)
            assert len(root) == size
            assert mapping_under(view) is root
            assert mapping_under(view.T[...]) is root
            assert mapping_under(whole) is root
            assert isinstance(view, np.ndarray)
            plain = view.view(np.ndarray)
            for op in (
                lambda x: x + 1,
                np.negative,
                lambda x: x == x,
                lambda x: np.add(x, x, out=None),
                lambda x: np.multiply.outer(x.ravel()[:2], x.ravel()[:2]),
                lambda x: x.sum(),
                lambda x: x.sum(axis=-1) if x.ndim else x.sum(),
                lambda x: np.sqrt(x).T,
            ):
                result = op(view)
                # What a plain ndarray gives: an ndarray, or a scalar for 0-d results.
                assert type(result) is type(op(plain))
                assert type(result) is np.ndarray or isinstance(result, np.generic)
                assert not np.shares_memory(result, base)
            del view, base, whole, root
