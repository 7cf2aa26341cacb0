"""Tests for :func:`mmarray.take` and the paths that use it.

``mm.take(a, indices, axis, out, mode)`` must return what ``np.take`` returns
on a plain copy of ``a`` (same values, shape and dtype, a plain ndarray or
``out``) and raise what it raises, whatever the array (dtype, shape, byte
offset, strides, kind of mapping) and the arguments.  The same holds for
``np.take(view, ...)`` and ``view.take(...)`` on arrays from ``MappedFile``
and ``SharedBlock``, and for ``MappedArray.take`` and ``MappedArray[idx]``.

The prefetch only runs on data that is not resident.  The property tests
can pretend that nothing is resident (``_resident`` patched to say so) and
shrink ``BATCH``, so that the planning and the pipelined copy run on every
random geometry; other tests evict real files from the page cache
(``POSIX_FADV_DONTNEED``).  Nothing here measures time.

Values are compared leaf field by leaf field as bytes (padding between
fields is not data: ``np.array`` does not copy it), and with
``np.array_equal(equal_nan=True)`` for floats.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmarray as mm
import mmarray._take as take_module
from mmarray._bench.cache import evict

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # shm_name / scratch are reused per example
    ],
)

BATCH = take_module.BATCH
MODES = ("raise", "wrap", "clip")
INDEX_DTYPES = (np.int8, np.uint8, np.uint16, np.int32, np.int64, np.intp)

# -- dtypes --------------------------------------------------------------------

PADDED = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8],
                   "itemsize": 24})
ALIGNED = np.dtype([("a", "u1"), ("b", ">f8", (2,))], align=True)
NESTED = np.dtype([("t", ">M8[s]"), ("p", [("x", "<f4"), ("y", ">i2", (3,))]),
                   ("v", "V3"), ("c", "<c8")])
TITLED = np.dtype({"names": ["a", "b"], "formats": ["<i4", "u1"], "titles": ["A", None]})
NAMED_SCALARS = [
    "b1", "i1", "u1", "<i2", ">i2", "<i4", ">i4", "<u8", ">u8", "<f2", "<f4", ">f8",
    "<c8", ">c16", "<M8[ns]", ">M8[s]", "<m8[us]", "V7", "S3", "<U2", ">U2",
]


def mappable(dt: np.dtype) -> bool:
    return not dt.hasobject and 0 < dt.itemsize <= 128


SCALARS = st.one_of(
    st.sampled_from(NAMED_SCALARS).map(np.dtype),
    hnp.scalar_dtypes(),
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness=">"),
)
STRUCTURED = st.one_of(
    st.sampled_from([PADDED, ALIGNED, NESTED, TITLED]),
    hnp.array_dtypes(SCALARS, min_size=1, max_size=4, allow_subarrays=True),
    hnp.nested_dtypes(SCALARS, max_leaves=5, max_itemsize=96),
).filter(lambda dt: dt.names is not None and mappable(dt))
DTYPES = st.one_of(SCALARS, STRUCTURED).filter(mappable)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
OFFSETS = st.one_of(st.integers(0, 17), st.integers(4090, 4100))
KINDS = ("file", "file-c", "shared", "records", "memmap", "open_array")

_counter = itertools.count()


# -- comparing results -----------------------------------------------------------


def same_values(got: np.ndarray, want: np.ndarray) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    if want.dtype.names is not None:
        for name in want.dtype.names:
            same_values(got[name], want[name])
        return
    if want.dtype.kind in "fc":
        assert np.array_equal(got, want, equal_nan=True)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def assert_same(got, want, *, records: bool = False) -> None:
    """``got`` is what ``np.take`` gave (``want``): type, shape, dtype, values.
    (A 0-d index with ``axis=None`` gives a numpy scalar: the same type then.)"""
    if isinstance(want, np.generic):
        assert type(got) is type(want), (type(got), type(want))
    elif records:
        assert isinstance(got, np.ndarray), type(got)
    else:
        assert type(got) is np.ndarray, type(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    same_values(got, want)


def outcome(func, *args, **kwargs):
    """``(result, None)`` or ``(None, exception)``."""
    try:
        return func(*args, **kwargs), None
    except Exception as exc:
        return None, exc


def check_call(func, ref: np.ndarray, indices, axis, mode, *, out: bool, records: bool) -> None:
    """``func(indices, axis=..., out=..., mode=...)`` against ``np.take(ref, ...)``."""
    want, err = outcome(np.take, ref, indices, axis=axis, mode=mode)
    if out and err is None:
        template = np.zeros(want.shape, want.dtype)
        mine = template.copy()
        want_out, err = outcome(np.take, ref, indices, axis=axis, mode=mode, out=template)
        got, got_err = outcome(func, indices, axis=axis, mode=mode, out=mine)
        if err is None:
            assert got_err is None, repr(got_err)
            assert want_out is template
            assert got is mine, "take(..., out=out) must return out"
            assert_same(mine, template, records=False)
            return
    else:
        got, got_err = outcome(func, indices, axis=axis, mode=mode)
    if err is not None:
        assert got_err is not None, f"np.take raised {err!r}; mmarray returned {got!r}"
        assert type(got_err) is type(err), (got_err, err)
        return
    assert got_err is None, repr(got_err)
    assert_same(got, want, records=records)


# -- sources -------------------------------------------------------------------------


def fill_random(arr: np.ndarray, seed: int) -> None:
    """Random bytes in every byte of the contiguous array ``arr``."""
    if arr.size == 0:
        return
    flat = arr.reshape(-1, order="A")
    assert np.shares_memory(flat, arr)
    raw = flat.view(np.uint8)
    raw[...] = np.random.default_rng(seed).integers(0, 256, raw.shape, dtype=np.uint8)


@contextlib.contextmanager
def mapped_source(kind, dtype, shape, offset, order, seed, folder, shm_name):
    """An array of ``kind`` over random bytes; everything removed afterwards."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    size = offset + nbytes + 3
    path = folder / f"take-{next(_counter)}.bin"
    noise = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    with contextlib.ExitStack() as stack:
        stack.callback(path.unlink, missing_ok=True)
        if kind in ("file", "records"):
            f = stack.enter_context(mm.MappedFile(path, "w+", capacity=size))
            f.array(np.uint8)[:] = noise
            if kind == "records":
                yield f.records(dtype, shape, offset)
            else:
                yield f.array(dtype, shape, offset, order=order)
        elif kind == "file-c":
            path.write_bytes(noise.tobytes())
            f = stack.enter_context(mm.MappedFile(path, "c"))
            yield f.array(dtype, shape, offset, order=order)
        elif kind == "shared":
            block = mm.SharedBlock.create(shm_name, size)
            stack.callback(block.close)
            stack.callback(block.unlink)
            block.array(np.uint8)[:] = noise
            yield block.array(dtype, shape, offset, order=order)
        elif kind == "memmap":
            path.write_bytes(noise.tobytes())
            m = mm.memmap(path, dtype, "r+", offset=offset, shape=shape, order=order)
            stack.callback(m.close)
            yield m
        else:
            a = stack.enter_context(mm.open_array(path, "w+", dtype=dtype, shape=shape))
            fill_random(np.asarray(a), seed)
            yield a


@st.composite
def views(draw, arr: np.ndarray) -> np.ndarray:
    """``arr`` itself, or a strided view of it: slices (steps, negative
    steps), then maybe a transpose."""
    if arr.ndim == 0 or not draw(st.booleans()):
        return arr
    key = tuple(draw(st.slices(n)) for n in arr.shape)
    out = arr[key]
    if draw(st.booleans()):
        out = out.transpose(draw(st.permutations(range(out.ndim))))
    return out


@st.composite
def index_args(draw, shape: tuple[int, ...]):
    """``(indices, axis, mode)`` for an array of ``shape``: index arrays of
    any shape and integer dtype, in range or (sometimes) not, as arrays,
    lists or Python ints."""
    ndim = len(shape)
    axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1) if ndim else st.nothing(),
                          st.sampled_from([ndim, -ndim - 1])))
    if axis is None:
        n = int(np.prod(shape))
    elif -ndim <= axis < ndim:
        n = shape[axis]
    else:
        n = 1
    mode = draw(st.sampled_from(MODES))
    dt = np.dtype(draw(st.sampled_from(INDEX_DTYPES)))
    info = np.iinfo(dt)
    wide = n == 0 or draw(st.integers(0, 3)) == 0  # out-of-range indices too
    lo, hi = (-n - 3, n + 3) if wide else (-n, n - 1)
    lo, hi = max(lo, int(info.min)), min(hi, int(info.max))
    idx_shape = draw(st.one_of(
        st.just(()), hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6)
    ))
    if n == 0 and mode != "raise":
        # np.take itself never returns there when the result is empty too
        # (numpy loops forever wrapping into an empty axis): see
        # test_wrap_into_an_empty_axis for what mm.take does instead.
        idx_shape = (0,)
    idx = draw(hnp.arrays(dt, idx_shape, elements=st.integers(lo, hi)))
    form = draw(st.sampled_from(["array", "array", "list"]))
    indices = idx.tolist() if form == "list" else idx
    return indices, axis, mode


@contextlib.contextmanager
def pretend_cold(batch: int):
    """Nothing is resident, and slices of ``batch`` indices: the prefetch
    plans every call and the pipelined copy runs for short index arrays.
    Records the byte ranges handed to the kernel."""
    asked: list[tuple[object, np.ndarray, int]] = []
    real_prefetch = take_module._prefetch

    def prefetch(m, starts, extent):
        asked.append((m, np.array(starts, copy=True), extent))
        return real_prefetch(m, starts, extent)

    with (
        mock.patch.object(take_module, "_resident", lambda m, pages: False),
        mock.patch.object(take_module, "WARM_STREAK", 1 << 62),  # never a warm streak
        mock.patch.object(take_module, "BATCH", batch),
        mock.patch.object(take_module, "_prefetch", prefetch),
    ):
        yield asked


def element_offsets(arr: np.ndarray, address: int) -> np.ndarray:
    """Byte offset in the mapping of every element of ``arr``."""
    off = np.full(arr.shape, arr.__array_interface__["data"][0] - address, dtype=np.int64)
    for d, (n, stride) in enumerate(zip(arr.shape, arr.strides, strict=True)):
        shape = [1] * arr.ndim
        shape[d] = n
        off = off + (np.arange(n, dtype=np.int64) * stride).reshape(shape)
    return off


def check_asked(asked, arr: np.ndarray, indices, axis, mode) -> None:
    """Every range asked for lies in the mapping, and the ranges cover the
    bytes of every item the take copies."""
    if not asked:
        return
    m = asked[0][0]
    assert all(entry[0] is m for entry in asked)
    starts = np.sort(np.concatenate([entry[1] for entry in asked]))
    extent = asked[0][2]
    assert all(entry[2] == extent for entry in asked)
    if len(starts) == 0:
        return
    assert starts[0] >= 0 and starts[-1] + extent <= len(m), (starts[0], starts[-1], extent)
    copied = np.take(element_offsets(arr, m.address), indices, axis=axis, mode=mode).ravel()
    if copied.size == 0:
        return
    best = starts[np.searchsorted(starts, copied, side="right") - 1]
    assert np.all(best <= copied)
    assert np.all(copied + arr.itemsize <= best + extent)


# -- property tests ---------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    yield tmp_path
    assert not list(tmp_path.glob("take-*")), "an example left a file behind"


@settings(SETTINGS, max_examples=200)
@given(
    data=st.data(),
    kind=st.sampled_from(KINDS),
    shape=SHAPES,
    offset=OFFSETS,
    order=st.sampled_from("CF"),
    seed=st.integers(0, 2**32 - 1),
    use_out=st.booleans(),
    cold=st.booleans(),
    batch=st.sampled_from([BATCH, 1, 2, 5]),
)
def test_take_matches_numpy(
    data, kind, shape, offset, order, seed, use_out, cold, batch, folder, shm_name
):
    dtype = data.draw(STRUCTURED if kind == "records" else DTYPES, label="dtype")
    if kind == "records":
        dtype = np.dtype((np.record, dtype))
    with mapped_source(kind, dtype, shape, offset, order, seed, folder, shm_name) as src:
        if isinstance(src, mm.MappedArray):
            arr = np.asarray(src)
            target = src if data.draw(st.booleans(), label="whole MappedArray") else None
            if target is None:
                arr = data.draw(views(arr), label="view")
        else:
            arr = data.draw(views(src), label="view")
            target = None
        ref = np.array(arr)  # a plain in-memory copy
        indices, axis, mode = data.draw(index_args(arr.shape), label="indices, axis, mode")
        records = kind == "records"
        calls = [lambda *a, **k: mm.take(arr, *a, **k)]
        if target is not None:
            calls += [target.take, lambda *a, **k: mm.take(target, *a, **k)]
        elif kind not in ("open_array", "memmap"):  # their own .take is numpy's
            calls += [lambda *a, **k: np.take(arr, *a, **k), arr.take]
        for call in calls:
            with contextlib.ExitStack() as stack:
                asked = stack.enter_context(pretend_cold(batch)) if cold else None
                check_call(call, ref, indices, axis, mode, out=use_out, records=records)
            if cold:
                _, err = outcome(np.take, ref, indices, axis=axis, mode=mode)
                if err is None:
                    check_asked(asked, arr, indices, axis, mode)


@SETTINGS
@given(
    data=st.data(),
    kind=st.sampled_from(KINDS),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
    offset=OFFSETS,
    seed=st.integers(0, 2**32 - 1),
    batch=st.sampled_from([1, 2, 3]),
)
def test_pipelined_copy_matches_numpy(data, kind, shape, offset, seed, batch, folder, shm_name):
    """What the pipelined path (data not resident, 1-D indices longer than
    BATCH, no out) returns is np.take's answer too: values, shape, dtype."""
    dtype = data.draw(STRUCTURED if kind == "records" else DTYPES, label="dtype")
    if kind == "records":
        dtype = np.dtype((np.record, dtype))
    with mapped_source(kind, dtype, shape, offset, "C", seed, folder, shm_name) as src:
        arr = np.asarray(src) if isinstance(src, mm.MappedArray) else src
        arr = data.draw(views(arr), label="view")
        if arr.size == 0:
            return
        ref = np.array(arr)
        axis = data.draw(st.one_of(st.none(), st.integers(-arr.ndim, arr.ndim - 1)), label="axis")
        n = arr.size if axis is None else arr.shape[axis]
        idx = data.draw(hnp.arrays(np.intp, st.integers(batch + 1, 12),
                                   elements=st.integers(-n, n - 1)), label="idx")
        with pretend_cold(batch) as asked:
            got = mm.take(arr, idx, axis=axis)
        assert_same(got, np.take(ref, idx, axis=axis), records=kind == "records")
        check_asked(asked, arr, idx, axis, "raise")


@SETTINGS
@given(
    data=st.data(),
    dtype=st.sampled_from(["<f8", ">i4", "u1", "V7", PADDED]).map(np.dtype),
    rows=st.integers(0, 40),
    row_shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
    seed=st.integers(0, 2**32 - 1),
    cold=st.booleans(),
    batch=st.sampled_from([BATCH, 1, 3]),
)
def test_mapped_array_indexing_matches_numpy(
    data, dtype, rows, row_shape, seed, cold, batch, folder
):
    path = folder / f"take-{next(_counter)}.npy"
    shape = (rows, *row_shape)
    try:
        with mm.open_array(path, "w+", dtype=dtype, shape=shape) as a:
            fill_random(np.asarray(a), seed)
            ref = np.array(a)
            dt = data.draw(st.sampled_from(INDEX_DTYPES).map(np.dtype), label="index dtype")
            info = np.iinfo(dt)
            lo, hi = max(-rows, int(info.min)), min(rows - 1, int(info.max))
            idx_shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0,
                                                   max_side=7), label="index shape")
            if hi < lo:
                idx_shape = (0,)
            idx = data.draw(hnp.arrays(dt, idx_shape, elements=st.integers(lo, max(lo, hi))),
                            label="idx")
            keys = [idx, idx.tolist(), (idx,), (idx, Ellipsis)]
            if len(row_shape) >= 1:
                keys += [(idx, slice(1, 3)), (idx, slice(None, None, -2))]
            if len(row_shape) >= 2:
                keys += [(idx, Ellipsis, slice(0, 2)), (idx, slice(None), slice(1, None))]
            mask = data.draw(hnp.arrays(np.bool_, (rows,)), label="mask")
            keys += [mask, mask.tolist()]
            with contextlib.ExitStack() as stack:
                if cold:
                    stack.enter_context(pretend_cold(batch))
                for key in keys:
                    want, err = outcome(ref.__getitem__, key)
                    got, got_err = outcome(a.__getitem__, key)
                    if err is not None:
                        assert type(got_err) is type(err), (key, got_err, err)
                        continue
                    assert got_err is None, (key, got_err)
                    assert_same(np.asarray(got), want)
                    assert isinstance(got, np.ndarray)
                if len(row_shape) >= 1:
                    col = np.arange(row_shape[0])[::-1].copy()
                    check_call(a.take, ref, col, 1, "raise", out=False, records=False)
    finally:
        path.unlink(missing_ok=True)


# -- example tests: arguments ------------------------------------------------------


@pytest.fixture
def grid(tmp_path):
    """A (30, 5) float64 MappedFile view with NaNs, and its plain copy."""
    with mm.MappedFile(tmp_path / "grid.bin", "w+", capacity=30 * 5 * 8 + 3) as f:
        v = f.array(np.float64, (30, 5), offset=3)
        v[...] = np.arange(150.0).reshape(30, 5)
        v[4, 2] = np.nan
        yield v, np.array(v)


@pytest.mark.parametrize("indices", [3, -1, np.array(3), np.int16(7), np.array(-2, np.int8)])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2])
def test_zero_d_indices(grid, indices, axis):
    v, ref = grid
    for call in (lambda *a, **k: mm.take(v, *a, **k), v.take,
                 lambda *a, **k: np.take(v, *a, **k)):
        check_call(call, ref, indices, axis, "raise", out=False, records=False)
        check_call(call, ref, indices, axis, "raise", out=True, records=False)


@pytest.mark.parametrize("indices", [[], np.array([], np.int64), np.zeros((0, 3), np.uint16),
                                     np.zeros((2, 0), np.int8)])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_empty_indices(grid, indices, axis, mode):
    v, ref = grid
    check_call(lambda *a, **k: mm.take(v, *a, **k), ref, indices, axis, mode,
               out=False, records=False)
    check_call(v.take, ref, indices, axis, mode, out=True, records=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_out_of_range(grid, mode, axis):
    v, ref = grid
    for indices in ([0, 30, 2], [-31], [[1, 2], [150, -151]], np.array([200], np.uint8)):
        check_call(lambda *a, **k: mm.take(v, *a, **k), ref, indices, axis, mode,
                   out=False, records=False)
        check_call(lambda *a, **k: mm.take(v, *a, **k), ref, indices, axis, mode,
                   out=True, records=False)
    if mode == "raise":
        with pytest.raises(IndexError):
            mm.take(v, [30], axis=0)
        with pytest.raises(IndexError):
            np.take(v, [-6], axis=1)


def test_bad_arguments_raise_like_numpy(grid):
    v, ref = grid
    cases = [
        dict(indices=[0], axis=2),
        dict(indices=[0], axis=-3),
        dict(indices=[0.5], axis=0),
        dict(indices=["a"], axis=0),
        dict(indices=[0], axis=0, mode="nonsense"),
        dict(indices=[0], axis=0, out=np.empty((2, 5))),
        dict(indices=[0], axis=0, out=np.empty((1, 5), np.int8)),
        dict(indices=[0, 1], axis=1.0),
    ]
    for case in cases:
        want, err = outcome(np.take, ref, **case)
        got, got_err = outcome(mm.take, v, **case)
        if err is None:
            assert got_err is None, (case, got_err)
            assert_same(got, want)
        else:
            assert type(got_err) is type(err), (case, got_err, err)


def test_repeated_and_negative_indices(grid):
    v, ref = grid
    idx = np.array([5, 5, -1, -30, 0, 5, 29, -1])
    for axis in (None, 0):
        for mode in MODES:
            check_call(v.take, ref, idx, axis, mode, out=False, records=False)
            check_call(v.take, ref, idx, axis, mode, out=True, records=False)


def test_out_may_be_a_mapped_view(grid, tmp_path):
    v, ref = grid
    with mm.MappedFile(tmp_path / "out.bin", "w+", capacity=4 * 5 * 8) as f:
        out = f.array(np.float64, (4, 5))
        got = mm.take(v, [3, 1, 4, 1], axis=0, out=out)
        assert got is out
        assert np.array_equal(out, ref[[3, 1, 4, 1]], equal_nan=True)


# -- batches larger than BATCH ---------------------------------------------------


def write_cold(path, payload: bytes) -> None:
    """Write ``payload`` to ``path``, make it durable, and drop it from the
    page cache (nothing maps it yet)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    evict(path)


def write_npy(target, values: np.ndarray) -> mm.MappedArray:
    """A new MappedArray at ``target`` holding ``values`` (still open)."""
    a = mm.open_array(target, "w+", dtype=values.dtype, shape=values.shape)
    a[...] = values
    return a


def rng_indices(n: int, count: int, seed: int = 0, negative: bool = True) -> np.ndarray:
    idx = np.random.default_rng(seed).integers(0, n, count)
    if negative:
        idx[::3] -= n  # the same items, counted from the end
    return idx


@pytest.fixture
def cold_ints(tmp_path):
    """4 MiB of int64 in a file that is not in the page cache, and the values."""
    values = np.random.default_rng(7).integers(-(2**62), 2**62, 1 << 19)
    path = tmp_path / "cold.bin"
    write_cold(path, values.tobytes())
    return path, values


@pytest.fixture
def spy():
    """Counts calls of the prefetch and of the pipelined copy."""
    counts = {"prefetch": 0, "pipelined": 0}
    real_prefetch, real_pipelined = take_module._prefetch, take_module._pipelined

    def prefetch(*args):
        counts["prefetch"] += 1
        return real_prefetch(*args)

    def pipelined(*args):
        counts["pipelined"] += 1
        return real_pipelined(*args)

    with (
        mock.patch.object(take_module, "_prefetch", prefetch),
        mock.patch.object(take_module, "_pipelined", pipelined),
    ):
        yield counts


def test_large_batch_resident(tmp_path):
    values = np.arange(200_000, dtype=np.int64) * 3
    with mm.MappedFile(tmp_path / "warm.bin", "w+", capacity=values.nbytes) as f:
        v = f.array(np.int64)
        v[:] = values
        idx = rng_indices(len(v), 10_000)
        assert_same(mm.take(v, idx), np.take(values, idx))
        out = np.empty(10_000, np.int64)
        assert mm.take(v, idx, out=out) is out
        assert np.array_equal(out, np.take(values, idx))


def test_large_batch_not_resident(cold_ints, spy):
    path, values = cold_ints
    with mm.MappedFile(path, "r") as f:
        v = f.array(np.int64)
        idx = rng_indices(len(v), 10_000)
        assert_same(mm.take(v, idx), np.take(values, idx))
    assert spy["pipelined"] >= 1, "cold data and 10,000 indices: the pipelined path"


def test_large_batch_not_resident_with_out(cold_ints, spy):
    path, values = cold_ints
    with mm.MappedFile(path, "r") as f:
        v = f.array(np.int64)
        idx = rng_indices(len(v), 10_000, seed=1)
        out = np.full(10_000, -1, np.int64)
        assert mm.take(v, idx, out=out) is out  # filled slice by slice
        assert np.array_equal(out, np.take(values, idx))
        assert spy["pipelined"] == 1
        out2 = np.empty((100, 100), np.int64)
        assert np.take(v, idx.reshape(100, 100), out=out2, mode="wrap") is out2
        assert np.array_equal(out2, np.take(values, idx.reshape(100, 100)))
    assert spy["prefetch"] >= 1
    assert spy["pipelined"] == 1, "an out= for a 2-d index array: numpy fills it at once"


def test_large_batch_not_resident_with_odd_out(cold_ints):
    """An ``out`` that is not a plain match of the result behaves as numpy
    says: cast, strided, overlapping the source, or refused before any write."""
    path, values = cold_ints
    idx = rng_indices(len(values), 10_000, seed=21)
    with mm.MappedFile(path, "r+") as f:
        v = f.array(np.int64)
        for mode in MODES:
            narrow = np.zeros(10_000, np.int32)  # int32 -> int64 is safe: numpy accepts it
            want = np.zeros(10_000, np.int32)
            np.take(values, idx, out=want, mode=mode)
            assert mm.take(v, idx, out=narrow, mode=mode) is narrow
            assert np.array_equal(narrow, want)
            strided = np.zeros(20_000, np.int64)[::2]
            assert mm.take(v, idx, out=strided, mode=mode) is strided
            assert np.array_equal(strided, np.take(values, idx, mode=mode))
            evict(path)
        for bad in (np.zeros(10_000, np.float64), np.zeros(9_999, np.int64),
                    np.zeros(10_000, np.int64)[:0], np.zeros((2, 5_000), np.int64)):
            before = bad.copy()
            with pytest.raises((TypeError, ValueError)) as got:
                mm.take(v, idx, out=bad)
            with pytest.raises(got.type):
                np.take(values, idx, out=before.copy())
            assert np.array_equal(bad, before)
        frozen = np.zeros(10_000, np.int64)
        frozen.flags.writeable = False
        with pytest.raises(ValueError):
            mm.take(v, idx, out=frozen)
        assert not frozen.any()
        # out= over the source itself: numpy takes from the bytes as they were
        small = idx % 10_000
        want = np.take(values, small)
        with pretend_cold(64):
            for over in (v[:10_000], v[:10_000].view(np.ndarray)):
                got = mm.take(v, small, out=over)
                assert got is over
                assert np.array_equal(got, want)
                v[:10_000] = values[:10_000]


@pytest.mark.parametrize("mode", MODES)
def test_large_batch_not_resident_modes(cold_ints, mode):
    path, values = cold_ints
    n = len(values)
    idx = rng_indices(n, 10_000, seed=2)
    idx[5000] = n + 17  # out of range
    idx[9000] = -n - 5
    with mm.MappedFile(path, "r") as f:
        v = f.array(np.int64)
        if mode == "raise":
            with pytest.raises(IndexError):
                mm.take(v, idx, mode=mode)
            with pytest.raises(IndexError):
                v.take(idx, mode=mode, out=np.empty(10_000, np.int64))
        else:
            assert_same(mm.take(v, idx, mode=mode), np.take(values, idx, mode=mode))


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_large_batch_not_resident_2d(cold_ints, axis):
    path, values = cold_ints
    with mm.MappedFile(path, "r") as f:
        v, ref = f.array(np.int64, (1 << 13, 64)), values.reshape(1 << 13, 64)
        if axis in (1, -1):  # keep the result small: (rows, 10_000)
            v, ref = v[:6], ref[:6]
        idx = rng_indices(v.shape[axis], 10_000, seed=3)
        assert_same(mm.take(v, idx, axis=axis), np.take(ref, idx, axis=axis))
        # a strided view, and a multi-dimensional index array
        w, wref = v[::-3, 1::2], ref[::-3, 1::2]
        idx = rng_indices(w.shape[axis], 10_002, seed=4)
        assert_same(mm.take(w, idx, axis=axis), np.take(wref, idx, axis=axis))
        two_d = idx.reshape(2, -1)
        assert_same(np.take(w, two_d, axis=axis), np.take(wref, two_d, axis=axis))


@pytest.mark.parametrize(
    "dtype", [">i4", ">f8", "<U2", ">M8[s]", ">c8", "V7", PADDED, ALIGNED, NESTED],
    ids=str,
)
def test_large_batch_not_resident_keeps_dtype(tmp_path, dtype):
    """The pipelined path must give np.take's dtype (byte order, padding) too."""
    dtype = np.dtype(dtype)
    payload = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "cold.bin"
    write_cold(path, payload)
    with mm.MappedFile(path, "r") as f:
        v = f.array(dtype)
        idx = rng_indices(len(v), 10_000, seed=6)
        got = mm.take(v, idx)
        ref = np.frombuffer(payload, dtype, count=len(v))
        assert_same(got, np.take(ref, idx))


def test_large_batch_not_resident_records(tmp_path):
    dtype = np.dtype([("t", "<i8"), ("v", "<f4"), ("k", "u1", (3,))])
    payload = np.random.default_rng(8).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "rec.bin"
    write_cold(path, payload)
    with mm.MappedFile(path, "r") as f:
        r = f.records(dtype)
        ref = np.frombuffer(payload, dtype, count=len(r))
        idx = rng_indices(len(r), 10_000, seed=9)
        for got in (mm.take(r, idx), np.take(r, idx), r.take(idx)):
            assert isinstance(got, np.ndarray)
            assert got.shape == (10_000,)
            same_values(got, np.take(ref, idx))
        assert np.array_equal(mm.take(r.v, idx), ref["v"][idx], equal_nan=True)


def test_large_batch_not_resident_memmap_and_open_array(tmp_path):
    values = np.random.default_rng(10).standard_normal((1 << 16, 6)).astype(np.float32)
    raw = tmp_path / "m.dat"
    write_cold(raw, bytes(5) + values.tobytes())
    m = mm.memmap(raw, np.float32, "r", offset=5, shape=values.shape)
    try:
        idx = rng_indices(len(values), 10_000, seed=11)
        got = mm.take(m, idx, axis=0)
        assert_same(got, np.take(values, idx, axis=0))
        got = np.take(m, idx, axis=0)  # np.memmap's own take: values only
        assert np.array_equal(got, values[idx])
    finally:
        m.close()

    npy = tmp_path / "a.npy"
    write_npy(npy, values).close()
    evict(npy)
    with mm.open_array(npy, "r") as a:
        idx = rng_indices(len(a), 10_000, seed=12)
        assert_same(a.take(idx, axis=0), values[idx])
        assert_same(a[idx], values[idx])
        assert_same(a[idx, ...], values[idx, ...])
        assert_same(np.asarray(a[idx, 1:3]), values[idx, 1:3])
        assert_same(a[idx.reshape(100, 100)], values[idx.reshape(100, 100)])
        head = np.asarray(a)[:4]  # along axis 1: keep the result small, (4, 9999)
        assert_same(mm.take(head, idx[:9999], axis=1, mode="wrap"),
                    np.take(values[:4], idx[:9999], axis=1, mode="wrap"))
        assert_same(a.take([5, -1, 0], axis=1), values.take([5, -1, 0], axis=1))


def test_sparse_file_and_fresh_block(tmp_path, shm_name):
    """Holes and untouched shared pages are not resident either."""
    size = 4 << 20
    with mm.MappedFile(tmp_path / "sparse.bin", "w+", capacity=size) as f:
        v = f.array(np.int32)
        model = np.zeros(len(v), np.int32)
        written = np.arange(0, len(v), 16 * 1024)
        v[written] = model[written] = np.arange(1, len(written) + 1)
        idx = np.concatenate([written, rng_indices(len(v), 10_000, seed=13)])
        assert_same(mm.take(v, idx), np.take(model, idx))
    block = mm.SharedBlock.create(shm_name, size)
    try:
        v = block.array(np.uint16)
        model = np.zeros(len(v), np.uint16)
        written = np.arange(0, len(v), 8 * 1024)
        v[written] = model[written] = 7
        idx = rng_indices(len(v), 10_000, seed=14)
        assert_same(mm.take(v, idx), np.take(model, idx))
    finally:
        block.unlink()
        block.close()


# -- the warm streak ---------------------------------------------------------------


@contextlib.contextmanager
def counted_residency(answer=True):
    """``_resident`` answers ``answer[0]`` (changeable) and counts its calls."""
    state = {"calls": 0, "answer": answer}

    def resident(m, pages):
        state["calls"] += 1
        return state["answer"]

    with mock.patch.object(take_module, "_resident", resident):
        yield state


def test_warm_streak_skips_checks_and_notices_cold(tmp_path, spy):
    values = np.arange(1 << 16, dtype=np.int64)
    with mm.MappedFile(tmp_path / "w.bin", "w+", capacity=values.nbytes) as f:
        f.array(np.int64)[:] = values
        idx = rng_indices(len(values), 1000, seed=30)
        with counted_residency() as seen, \
                mock.patch.object(take_module, "WARM_RECHECK", 1e9):
            for k in range(take_module.WARM_STREAK):
                # fresh views of one mapping share its streak
                half = idx // 2  # in range for the view
                assert_same(mm.take(f.array(np.int64)[1:], half), np.take(values[1:], half))
                assert seen["calls"] == k + 1
            for _ in range(20):
                assert_same(mm.take(f.array(np.int64), idx), np.take(values, idx))
            assert seen["calls"] == take_module.WARM_STREAK, "warm: no check until the interval"
            assert spy["prefetch"] == 0
    with mm.MappedFile(tmp_path / "w.bin", "r") as f, counted_residency() as seen, \
            mock.patch.object(take_module, "WARM_RECHECK", 0.0):
        v = f.array(np.int64)  # a new mapping: a new streak
        for k in range(take_module.WARM_STREAK + 5):
            assert_same(mm.take(v, idx), np.take(values, idx))
            assert seen["calls"] == k + 1, "interval over: every call checks"
        seen["answer"] = False  # the data left memory
        assert_same(mm.take(v, idx), np.take(values, idx))
        assert spy["prefetch"] >= 1
        checks = seen["calls"]
        assert_same(mm.take(v, idx), np.take(values, idx))
        assert seen["calls"] > checks, "the streak is over: the next call checks again"


# -- handles closed, files grown ------------------------------------------------


def test_not_resident_after_handle_closed(cold_ints):
    path, values = cold_ints
    f = mm.MappedFile(path, "r")
    v = f.array(np.int64)
    f.close()
    idx = rng_indices(len(v), 10_000, seed=15)
    assert_same(mm.take(v, idx), np.take(values, idx))
    assert_same(mm.take(v, idx[:100]), np.take(values, idx[:100]))
    out = np.empty(10_000, np.int64)
    assert v.take(idx, out=out) is out
    assert np.array_equal(out, np.take(values, idx))


def test_not_resident_after_file_grew(cold_ints):
    path, values = cold_ints
    with mm.MappedFile(path, "r") as f:
        old = f.array(np.int64)
        more = np.arange(1 << 18, dtype=np.int64)
        with mm.MappedFile(path, "r+") as g:
            g.resize(values.nbytes + more.nbytes)
            g.array(np.int64, len(more), values.nbytes)[:] = more
            g.flush()
        evict(path)
        idx = rng_indices(len(old), 10_000, seed=16)
        assert_same(mm.take(old, idx), np.take(values, idx))
        f.refresh()
        new = f.array(np.int64)
        both = np.concatenate([values, more])
        assert len(new) == len(both)
        evict(path)
        idx = rng_indices(len(new), 10_000, seed=17)
        assert_same(mm.take(new, idx), np.take(both, idx))
        assert_same(mm.take(old, idx[:50] % len(old)), np.take(values, idx[:50] % len(old)))


# -- MappedArray --------------------------------------------------------------------


@pytest.fixture(params=["file", "shm"])
def table(request, tmp_path, shm_name):
    """A MappedArray of shape (50, 4, 3) over a file or a shared block."""
    target = str(tmp_path / "t.npy") if request.param == "file" else f"shm://{shm_name}"
    values = np.arange(50 * 12, dtype=np.float64).reshape(50, 4, 3)
    values[3, 1, 2] = np.nan
    with write_npy(target, values) as a:
        yield a, np.array(a)


def test_mapped_array_getitem(table):
    a, ref = table
    idx = np.array([4, -1, 0, 4, 49])
    cases = [
        idx, idx.tolist(), (idx,), (idx, Ellipsis), (idx, slice(1, 3)),
        (idx, slice(1, 3), slice(None, None, -1)), (idx, Ellipsis, slice(0, 2)),
        idx.reshape(5, 1), (idx.reshape(1, 5), slice(1, 3)),
        idx.astype(np.int8), idx[idx >= 0].astype(np.uint16), np.array([], np.int64),
        [], [[1, 2], [3, 4]],
    ]
    for key in cases:
        got, want = a[key], ref[key]
        assert isinstance(got, np.ndarray)
        assert not isinstance(got, mm.MappedArray)
        assert_same(np.asarray(got), want)
    check_call(a.take, ref, [2, 0, -1], 1, "raise", out=False, records=False)
    check_call(a.take, ref, [2, 0, -1], 1, "raise", out=True, records=False)
    check_call(a.take, ref, [[7, 9]], None, "wrap", out=False, records=False)
    check_call(lambda *k, **kw: mm.take(a, *k, **kw), ref, [9, 1], -1, "clip",
               out=True, records=False)


def test_mapped_array_boolean_and_other_keys(table):
    a, ref = table
    mask = [i % 3 == 0 for i in range(50)]
    for key in (mask, np.array(mask), (np.array(mask), slice(0, 2)), np.array(3),
                (np.array(2), 1), 3, slice(5, 1, -2), (Ellipsis, 1), ([1, 2], None),
                ([1, 2], [0, 3]), ([0, 1], 1), [True, False] * 25):
        want = ref[key]
        got = a[key]
        assert np.asarray(got).shape == want.shape
        assert np.array_equal(np.asarray(got), want, equal_nan=True), key


def test_mapped_array_out_of_bounds(table):
    a, ref = table
    for key in ([50], [-51], np.array([0, 50]), (np.array([60]), Ellipsis),
                (np.array([1]), 1, 2, 3), [1.0]):
        with pytest.raises(IndexError):
            ref[key]
        with pytest.raises(IndexError):
            a[key]
    with pytest.raises(IndexError):
        a.take([50], axis=0)
    with pytest.raises(IndexError):
        a.take([4], axis=1)


def test_mapped_array_empty(tmp_path):
    with mm.open_array(tmp_path / "e.npy", "w+", dtype=np.int32, shape=(0, 2)) as a:
        ref = np.array(a)
        for key in ([], np.array([], np.intp), (np.array([], np.int8), slice(0, 1))):
            got = a[key]
            assert isinstance(got, np.ndarray)
            assert_same(np.asarray(got), ref[key])
        with pytest.raises(IndexError):
            a[[0]]
        for mode in MODES:
            check_call(a.take, ref, [0], 0, mode, out=False, records=False)
            check_call(a.take, ref, [0], 1, mode, out=False, records=False)


# -- inputs that are not mmarray mappings -----------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_plain_inputs(tmp_path, mode):
    values = np.arange(60, dtype=">i2").reshape(3, 4, 5)
    path = tmp_path / "np.dat"
    np_mm = np.memmap(path, ">i2", "w+", shape=values.shape)
    np_mm[...] = values
    inputs = [values, values[::-1, :, ::2], values.T, values.tolist(), np_mm,
              np.float32(2.5), 7, [[1.5, np.nan]]]
    for src in inputs:
        ref = np.asarray(src)
        for indices, axis in (([0, -1, 1], 0), ([[2, 0], [1, 7]], None), (1, -1),
                              (np.array([], np.int8), None), ([5], None)):
            check_call(lambda *a, src=src, **k: mm.take(src, *a, **k), ref, indices, axis,
                       mode, out=False, records=isinstance(src, np.memmap))
            if isinstance(src, np.generic):
                # np.take(np.float32(2.5), i, out=o) returns a scalar, not o (numpy's
                # own quirk, which mm.take keeps): nothing to compare with out=.
                continue
            check_call(lambda *a, src=src, **k: mm.take(src, *a, **k), ref, indices, axis,
                       mode, out=True, records=isinstance(src, np.memmap))
    big = np.arange(20_000)
    idx = rng_indices(len(big), 10_000, seed=18)
    assert_same(mm.take(big, idx, mode=mode), np.take(big, idx, mode=mode))
    del np_mm


def test_other_subclasses_like_numpy():
    # Arrays that are not ours get numpy's own answer, subclass and all.
    masked = np.ma.array([1, 2, 3], mask=[0, 1, 0])
    want = np.take(masked, [1, 2])
    got = mm.take(masked, [1, 2])
    assert np.array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    matrix = np.matrix([[1, 2], [3, 4]])
    assert mm.take(matrix, [0, 1]).shape == np.take(matrix, [0, 1]).shape


# -- threads ------------------------------------------------------------------------


def test_threads_share_a_view(cold_ints):
    path, values = cold_ints
    with mm.MappedFile(path, "r") as f:
        v = f.array(np.int64)
        rows = f.array(np.int64, (1 << 15, 16))
        ref_rows = values.reshape(1 << 15, 16)
        start = threading.Barrier(4)

        def work(seed: int) -> bool:
            start.wait()
            for k in range(6):
                idx = rng_indices(len(v), 6000 + 1000 * k, seed=100 * seed + k)
                got = mm.take(v, idx) if k % 2 else v.take(idx, mode="wrap")
                if not np.array_equal(got, np.take(values, idx)):
                    return False
                r = rng_indices(len(rows), 5000, seed=100 * seed + k + 50)
                out = np.empty((5000, 16), np.int64)
                if mm.take(rows, r, axis=0, out=out) is not out:
                    return False
                if not np.array_equal(out, ref_rows[r]):
                    return False
                evict(path)  # keep the others reading from storage
            return True

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(work, range(4)))


def test_threads_share_a_mapped_array(tmp_path):
    values = np.random.default_rng(19).integers(0, 1 << 30, (1 << 16, 8))
    path = tmp_path / "th.npy"
    write_npy(path, values).close()
    evict(path)
    with mm.open_array(path, "r") as a:

        def work(seed: int) -> bool:
            ok = True
            for k in range(4):
                idx = rng_indices(len(a), 8000, seed=1000 + 10 * seed + k)
                ok &= np.array_equal(a[idx], values[idx])
                ok &= np.array_equal(a[idx, 2:5], values[idx, 2:5])
                cols = idx[:5] % 8  # (rows, 5): axis 1 of every row
                ok &= np.array_equal(a.take(cols, axis=1), values.take(cols, axis=1))
            return bool(ok)

        with ThreadPoolExecutor(3) as pool:
            assert all(pool.map(work, range(3)))


@pytest.mark.parametrize("mode", ["wrap", "clip"])
def test_wrap_into_an_empty_axis(mode, tmp_path):
    # np.take(np.empty((0, 0)), [1], axis=0, mode="wrap") never returns
    # (numpy 2.4); mm.take raises numpy's own error for a non-empty take instead.
    with mm.MappedFile(tmp_path / "e.bin", "w+", capacity=64) as f:
        empty = f.array(np.uint8, shape=(0, 0))
        for src in (empty, np.empty((0, 0, 0)), np.empty((0, 2))):
            with pytest.raises(IndexError, match="empty"):
                mm.take(src, [1], axis=0, mode=mode)
