"""open_array and MappedArray: modes, .npy compatibility, growth, visibility (issue 4)."""

from __future__ import annotations

import gc
import io
import itertools
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.lib import format as npformat

import mmarray as mm

REC = np.dtype([("t", "<i8"), ("price", "<f8"), ("qty", "<u4")])
BACKENDS = ["file", "shm"]
SHM_DIR = pathlib.Path("/dev/shm")
REPO = pathlib.Path(mm.__file__).resolve().parents[1]


@pytest.fixture(params=BACKENDS)
def target(request, tmp_path, shm_name) -> str:
    """Where a test's array lives: a file path or ``shm://NAME`` (removed afterwards)."""
    if request.param == "file":
        return str(tmp_path / "arr.npy")
    return "shm://" + shm_name


def is_shm(target: str) -> bool:
    return target.startswith("shm://")


def storage_exists(target: str) -> bool:
    if is_shm(target):
        return (SHM_DIR / target[len("shm://") :]).exists()
    return os.path.exists(target)


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's mmarray."""
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, "-c", code], env=env, **kwargs)


def npy_bytes(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    fp = io.BytesIO()
    npformat.write_array(fp, arr, version=version, allow_pickle=False)
    return fp.getvalue()


def rows(n: int, start: int = 0) -> np.ndarray:
    """``n`` records whose fields are all derived from the row number."""
    out = np.zeros(n, REC)
    idx = np.arange(start, start + n)
    out["t"] = idx
    out["price"] = idx * 0.5
    out["qty"] = idx % 7
    return out


# -- modes ------------------------------------------------------------------------------


def test_design_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with mm.open_array("ticks.npy", mode="a", dtype=REC) as ticks:
        assert ticks.shape == (0,)
        ticks.append(np.zeros(3, REC))
        ticks[0] = (1, 99.5, 10)
        assert len(ticks) == 3
    loaded = np.load("ticks.npy", mmap_mode="r")
    assert loaded.shape == (3,)
    assert loaded.dtype == REC
    assert loaded[0].tolist() == (1, 99.5, 10)


def test_w_plus_creates_and_r_reads(target):
    with mm.open_array(target, "w+", dtype=np.int32, shape=(4, 3)) as a:
        assert a.mode == "w+"
        assert a.shape == (4, 3)
        assert (np.asarray(a) == 0).all()
        a[:] = np.arange(12).reshape(4, 3)
        with mm.open_array(target, "r") as b:
            assert b.mode == "r"
            assert b.dtype == np.int32
            assert b.shape == (4, 3)
            np.testing.assert_array_equal(b[:], np.arange(12).reshape(4, 3))
            assert not np.asarray(b).flags.writeable
            with pytest.raises(ValueError):
                b[0, 0] = 1
            with pytest.raises(PermissionError):
                b.append(np.zeros(3, np.int32))
            with pytest.raises(PermissionError):
                b.resize(10)


def test_r_plus_writes_are_seen_by_other_openers(target):
    with mm.open_array(target, "w+", dtype=np.float64, shape=(5,)) as owner:
        with mm.open_array(target, "r+") as a:
            a[2] = 2.5  # in place: allowed beside the writer
            with pytest.raises(BlockingIOError, match="one writer per array"):
                a.append(7.0)  # the "w+" handle is the writer
            assert len(a) == 5
        assert owner[2] == 2.5  # the same bytes
        owner.append(7.0)
        owner.flush()
        with mm.open_array(target, "r") as b:
            assert b.shape == (6,)
            assert b[5] == 7.0


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_existing_modes_need_the_target(tmp_path, shm_name, mode):
    with pytest.raises(FileNotFoundError):
        mm.open_array(tmp_path / "missing.npy", mode)
    if mode != "c":
        with pytest.raises(FileNotFoundError):
            mm.open_array("shm://" + shm_name, mode)


def test_c_mode_writes_stay_private(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(10))
    with mm.open_array(path, "c") as a:
        assert a.mode == "c"
        a[0] = 100
        assert a[0] == 100
        with pytest.raises(PermissionError):
            a.append(1)
        with pytest.raises(PermissionError):
            a.resize(20)
    np.testing.assert_array_equal(np.load(path), np.arange(10))


def test_c_mode_refused_for_shared_blocks(shm_name):
    target = "shm://" + shm_name
    with (
        mm.open_array(target, "w+", dtype=np.uint8, shape=(4,)),
        pytest.raises(ValueError, match="copy-on-write"),
    ):
        mm.open_array(target, "c")


@pytest.mark.parametrize("mode", ["w+", "x+"])
@pytest.mark.parametrize("missing", [{"dtype": np.int8}, {"shape": (3,)}, {}])
def test_creating_modes_need_dtype_and_shape(target, mode, missing):
    with pytest.raises(ValueError, match="dtype= and shape="):
        mm.open_array(target, mode, **missing)
    assert not storage_exists(target)


def test_x_plus_refuses_existing(target):
    with mm.open_array(target, "x+", dtype=np.int16, shape=(2,)) as a:
        assert a.shape == (2,)
        with pytest.raises(FileExistsError):
            mm.open_array(target, "x+", dtype=np.int16, shape=(2,))
        assert a.shape == (2,)


def test_w_plus_truncates_an_existing_file(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(100_000))
    with mm.open_array(path, "w+", dtype=np.uint8, shape=(3,)) as a:
        assert a.shape == (3,)
        assert (np.asarray(a) == 0).all()
    np.testing.assert_array_equal(np.load(path), np.zeros(3, np.uint8))


def test_w_plus_reinitialises_an_existing_block(shm_name):
    target = "shm://" + shm_name
    with mm.SharedBlock.create(shm_name, 1 << 16, persist=True) as blk:
        blk.array()[:] = 255  # what an earlier user left in it
    try:
        with mm.open_array(target, "w+", dtype=np.int64, shape=(10,)) as first:
            assert (np.asarray(first) == 0).all()
            first[:] = 7
            first.flush()
            # first is the writer: a second "w+" must not wipe its rows
            with pytest.raises(BlockingIOError, match="one writer per array"):
                mm.open_array(target, "w+", dtype=np.float32, shape=(2, 3))
            assert (np.asarray(first) == 7).all()
        with mm.open_array(target, "w+", dtype=np.float32, shape=(2, 3)) as second:
            assert second.dtype == np.float32
            assert second.shape == (2, 3)
            assert (np.asarray(second) == 0).all()
            second.resize(100)  # rows past the shape read as zero too
            assert (np.asarray(second) == 0).all()
            with mm.open_array(target) as third:
                assert third.dtype == np.float32
                assert third.shape == (2, 3)
    finally:
        mm.SharedBlock.open(shm_name).unlink()


def test_a_creates_with_default_shape_then_reopens(target):
    with mm.open_array(target, "a", dtype=REC) as a:
        assert a.shape == (0,)
        assert a.mode == "a"
        a.append(rows(3))
        with mm.open_array(target, "r") as again:  # dtype and shape from the header
            assert again.dtype == REC
            assert again.shape == (0,)  # not flushed yet
        a.flush()
        with mm.open_array(target, "r") as again:
            assert again.shape == (3,)
        with pytest.raises(BlockingIOError):  # one writer: a holds the array
            mm.open_array(target, "a")
        assert len(a) == 3
    if not is_shm(target):  # (closing the creator removed the block)
        with mm.open_array(target, "a") as again:
            assert again.shape == (3,)
            again.append(rows(2, start=3))
        np.testing.assert_array_equal(np.load(target), rows(5))


def test_a_creates_with_given_shape(tmp_path):
    with mm.open_array(tmp_path / "a.npy", "a", dtype=np.float32, shape=(2, 5)) as a:
        assert a.shape == (2, 5)
        a.append(np.ones(5, np.float32))
    assert np.load(tmp_path / "a.npy").shape == (3, 5)


def test_a_on_a_missing_block_owns_it(shm_name):
    target = "shm://" + shm_name
    creator = mm.open_array(target, "a", dtype=np.int32)
    opener = mm.open_array(target, "r+")
    opener.close()
    assert (SHM_DIR / shm_name).exists()  # an opener never removes the block
    creator.close()
    assert not (SHM_DIR / shm_name).exists()


def test_w_plus_block_is_removed_on_close(shm_name):
    with mm.open_array("shm://" + shm_name, "w+", dtype=np.int32, shape=(3,)):
        assert (SHM_DIR / shm_name).exists()
    assert not (SHM_DIR / shm_name).exists()


@pytest.mark.parametrize("mode", ["w", "rb", "a+", "", None, "R"])
def test_bad_mode(target, mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        mm.open_array(target, mode, dtype=np.int8, shape=(1,))


def test_object_dtype_refused_on_create(target):
    with pytest.raises(TypeError, match="object"):
        mm.open_array(target, "w+", dtype=object, shape=(3,))
    with pytest.raises(TypeError, match="object"):
        mm.open_array(target, "a", dtype=[("a", "O")])


# -- numpy reads what we write ------------------------------------------------------------


@pytest.mark.parametrize("how", ["flush", "close"])
def test_np_load_reads_exactly_the_current_shape(tmp_path, how):
    path = tmp_path / "a.npy"
    a = mm.open_array(path, "w+", dtype=np.int16, shape=(2, 3), capacity=1000)
    a[:] = [[1, 2, 3], [4, 5, 6]]
    a.append(np.full((5, 3), 9, np.int16))
    a.resize(6)
    getattr(a, how)()
    expected = np.concatenate([[[1, 2, 3], [4, 5, 6]], np.full((4, 3), 9)]).astype(np.int16)
    for loaded in (np.load(path), np.load(path, mmap_mode="r")):
        assert loaded.shape == (6, 3)
        assert loaded.dtype == np.int16
        np.testing.assert_array_equal(loaded, expected)
    a.close()


def test_data_offset_keeps_items_aligned(tmp_path):
    path = tmp_path / "a.npy"
    with mm.open_array(path, "w+", dtype=REC, shape=(3,)):
        pass
    m = np.load(path, mmap_mode="r")
    assert m.offset % npformat.ARRAY_ALIGN == 0
    assert m.offset % 4096 == 0  # a whole page: the header can always grow in place


def test_header_rewrite_keeps_data_offset(tmp_path):
    path = tmp_path / "a.npy"
    with mm.open_array(path, "w+", dtype=np.uint8, shape=(1,)) as a:
        offset = np.load(path, mmap_mode="r").offset
        a.resize(10**7)
        a.flush()
        assert np.load(path, mmap_mode="r").offset == offset


# -- we read what numpy writes -----------------------------------------------------------

SAVED = {
    "1-d": np.arange(10, dtype=np.int64),
    "2-d-c": np.arange(12, dtype=np.float32).reshape(3, 4),
    "2-d-fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "3-d-fortran": np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)),
    "structured": rows(5),
    "structured-subarray": np.array(
        [(1, [1.0, 2.0]), (2, [3.0, 4.0])], dtype=[("id", "<u2"), ("xy", "<f4", (2,))]
    ),
    "nested": np.zeros(3, dtype=[("a", [("b", "<i4"), ("c", "S3")]), ("d", "?")]),
    "big-endian": np.arange(6, dtype=">f8"),
    "big-endian-structured": np.array([(1, 2.0)], dtype=[("a", ">i4"), ("b", ">f8")]),
    "0-d": np.array(3.25),
    "n-d": np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5),
    "empty": np.zeros((0, 4), np.int32),
    "bool": np.array([True, False, True]),
    "complex": np.array([1 + 2j, 3 - 4j], np.complex128),
    "unicode": np.array(["a", "bcd", "éé"], "U3"),
    "datetime": np.array(["2024-01-01", "2025-06-30"], "datetime64[D]"),
}


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0), None])
@pytest.mark.parametrize("name", list(SAVED))
def test_opens_what_numpy_writes(tmp_path, name, version):
    arr = SAVED[name]
    path = tmp_path / "a.npy"
    path.write_bytes(npy_bytes(arr, version))
    with mm.open_array(path) as a:
        assert a.dtype == arr.dtype
        assert a.shape == arr.shape
        np.testing.assert_array_equal(np.asarray(a), arr)
        if arr.ndim > 1 and not arr.flags.c_contiguous:
            assert np.asarray(a).flags.f_contiguous


def test_np_save_file_roundtrip_through_r_plus(tmp_path):
    path = tmp_path / "a.npy"
    arr = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    np.save(path, arr)
    with mm.open_array(path, "r+") as a:
        a[1, 2] = -1.0
    arr[1, 2] = -1.0
    loaded = np.load(path)
    np.testing.assert_array_equal(loaded, arr)
    assert loaded.flags.f_contiguous


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
def test_opens_version_3_with_non_latin1_names(tmp_path):
    dt = np.dtype([("größe€", "<i4"), ("名前", "<f8")])
    arr = np.array([(1, 2.0), (3, 4.0)], dt)
    path = tmp_path / "v3.npy"
    path.write_bytes(npy_bytes(arr, (3, 0)))
    assert path.read_bytes()[6:8] == b"\x03\x00"
    with mm.open_array(path) as a:
        assert a.dtype == dt
        np.testing.assert_array_equal(np.asarray(a), arr)
    with mm.open_array(path, "r+") as a:
        a["名前"][1] = 8.5
    assert np.load(path)["名前"][1] == 8.5


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
def test_appends_to_version_3_file(tmp_path):
    dt = np.dtype([("größe€", "<i4")])
    path = tmp_path / "v3.npy"
    np.save(path, np.array([(1,), (2,)], dt))
    with mm.open_array(path, "a") as a:
        a.append((3,))
        a.append(np.array([(i,) for i in range(4, 5000)], dt))
    assert np.load(path)["größe€"].tolist() == list(range(1, 5000))
    with mm.open_array(path) as a:
        assert a.shape == (4999,)


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
def test_creates_arrays_with_non_latin1_names(tmp_path):
    dt = np.dtype([("€", "<i4")])
    with mm.open_array(tmp_path / "v3.npy", "w+", dtype=dt, shape=(2,)) as a:
        a["€"] = [5, 6]
        a.append((7,))
    assert np.load(tmp_path / "v3.npy")["€"].tolist() == [5, 6, 7]
    assert np.load(tmp_path / "v3.npy", mmap_mode="r").dtype == dt


@pytest.mark.parametrize(
    "dtype",
    [
        np.dtype([("a", "u1"), ("b", "<f8")], align=True),
        np.dtype(
            {"names": ["x", "y"], "formats": ["<i2", "<i4"], "offsets": [0, 8], "itemsize": 16}
        ),
        np.dtype([(("a title", "a"), "<i4"), ("b", ">f4")]),
        np.dtype([("xy", "<f8", (2, 3)), ("tag", "S5")]),
        np.dtype(">c16"),
        np.dtype("m8[ns]"),
    ],
    ids=["aligned", "offsets", "titles", "subarray", "big-endian-complex", "timedelta"],
)
def test_unusual_dtypes_survive_the_header(target, dtype):
    with mm.open_array(target, "w+", dtype=dtype, shape=(2,)) as a:
        a.append(np.ones(3, dtype) if dtype.names is None else np.zeros(3, dtype))
        a.flush()
        with mm.open_array(target) as b:
            assert b.dtype == dtype
            assert b.shape == (5,)
    if not is_shm(target):
        assert np.load(target).dtype == dtype


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_appends_to_np_save_files(tmp_path, version):
    path = tmp_path / "a.npy"
    path.write_bytes(npy_bytes(rows(4), version))
    with mm.open_array(path, "a") as a:
        a.append(rows(3, start=4))
    np.testing.assert_array_equal(np.load(path), rows(7))
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), rows(7))


# -- append ----------------------------------------------------------------------------


def test_append_single_rows_and_batches(target):
    with mm.open_array(target, "w+", dtype=np.int32, shape=(0, 3)) as a:
        a.append([1, 2, 3])  # one row
        a.append(np.array([[4, 5, 6], [7, 8, 9]], np.int32))  # a batch
        a.append(np.zeros((0, 3), np.int32))  # nothing
        a.append(np.array([[10, 11, 12]], np.int64))  # cast like assignment
        assert a.shape == (4, 3)
        np.testing.assert_array_equal(a[:], np.arange(1, 13).reshape(4, 3))


def test_append_scalars_to_1d(target):
    with mm.open_array(target, "w+", dtype=np.float64, shape=(0,)) as a:
        a.append(1.5)
        a.append(np.float64(2.5))
        a.append([3.5, 4.5])
        np.testing.assert_array_equal(a[:], [1.5, 2.5, 3.5, 4.5])


def test_append_structured_tuples(target):
    with mm.open_array(target, "a", dtype=REC) as a:
        a.append((1, 2.0, 3))  # one record
        a.append([(4, 5.0, 6), (7, 8.0, 9)])  # a list of records
        a.append(rows(1, start=10))
        assert len(a) == 4
        assert a[1].tolist() == (4, 5.0, 6)
        assert a["t"].tolist() == [1, 4, 7, 10]
        assert a[3]["price"] == 5.0


@pytest.mark.parametrize("batch", [1, 5000, 40_000])  # 40,000 rows: over 64 KiB at once
def test_append_big_and_odd_batches(target, batch):
    with mm.open_array(target, "a", dtype=REC) as a:
        before = np.asarray(a)
        a.append(rows(batch))
        a.append(rows(2 * batch, start=batch)[::2])  # not contiguous
        a.append(rows(batch, start=2 * batch).astype(REC.newbyteorder()))  # casts
        odd = np.zeros(batch, [("t", "<i4"), ("price", "<f4"), ("qty", "<u8")])
        odd["t"] = np.arange(3 * batch, 4 * batch)  # another dtype: cast by field name
        odd["price"] = odd["t"] * 0.5
        odd["qty"] = odd["t"] % 7
        a.append(odd)
        expected = np.concatenate(
            [rows(batch), rows(2 * batch, start=batch)[::2], rows(2 * batch, start=2 * batch)]
        )
        assert len(a) == 4 * batch
        np.testing.assert_array_equal(a[:], expected)
        assert before.shape == (0,)
        a.flush()
        with mm.open_array(target) as reader:
            np.testing.assert_array_equal(reader[:], expected)


def test_append_own_rows(target):
    with mm.open_array(target, "w+", dtype=np.int64, shape=(0, 2)) as a:
        a.append([[1, 2]])
        for _ in range(15):  # doubles every time, through several growths
            a.append(a[:])
        assert a.shape == (2**15, 2)
        assert (a[:, 0] == 1).all()
        assert (a[:, 1] == 2).all()
        a.append(a[::-1][:3])
        assert len(a) == 2**15 + 3


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 4)), np.zeros((2, 3, 1))])
def test_append_wrong_row_shape(target, bad):
    with mm.open_array(target, "w+", dtype=np.float64, shape=(1, 3)) as a:
        with pytest.raises(ValueError, match="shape"):
            a.append(bad)
        assert a.shape == (1, 3)


def test_append_to_fortran_order_refused(tmp_path):
    path = tmp_path / "f.npy"
    arr = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.save(path, arr)
    with mm.open_array(path, "r+") as a:
        with pytest.raises(ValueError, match="Fortran"):
            a.append(np.zeros(3))
        with pytest.raises(ValueError, match="Fortran"):
            a.resize(5)
        assert a.shape == (2, 3)
    with pytest.raises(ValueError, match="Fortran"):
        mm.open_array(path, "a")
    np.testing.assert_array_equal(np.load(path), arr)


def test_append_to_0d_refused(tmp_path):
    path = tmp_path / "z.npy"
    np.save(path, np.array(1.0))
    with mm.open_array(path, "r+") as a:
        assert a.shape == ()
        assert a.ndim == 0
        with pytest.raises(ValueError, match="0-d"):
            a.append(2.0)
        with pytest.raises(TypeError):
            len(a)
        a[()] = 4.0
    assert np.load(path) == 4.0
    with pytest.raises(ValueError, match="0-d"):
        mm.open_array(path, "a")


def test_append_read_only_refused(target):
    with mm.open_array(target, "w+", dtype=np.int8, shape=(2,)), mm.open_array(target) as a:
        with pytest.raises(PermissionError):
            a.append(1)
        assert a.shape == (2,)


# -- resize and capacity -------------------------------------------------------------------


def test_resize_grow_shrink_grow_reads_zero(target):
    with mm.open_array(target, "w+", dtype=np.int64, shape=(6, 2)) as a:
        a[:] = 5
        a.resize(2)
        assert a.shape == (2, 2)
        a.resize(6)
        np.testing.assert_array_equal(a[:2], 5)
        np.testing.assert_array_equal(a[2:], 0)
        a.resize(50_000)  # past the capacity
        assert a.capacity >= 50_000
        np.testing.assert_array_equal(a[2:], 0)
        a[-1] = 3
        a.flush()
        with mm.open_array(target) as b:
            assert b.shape == (50_000, 2)
            assert b[-1].tolist() == [3, 3]


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_resize_reserves_storage_for_its_rows(tmp_path):
    # Arrays reserve real storage for every row they can hold (a full disk
    # is then ENOSPC at append/resize, never SIGBUS at a later write).
    rows_ = 1 << 23  # 64 MiB of int64
    path = tmp_path / "a.npy"
    with mm.open_array(path, "w+", dtype=np.int64, shape=(3,)) as a:
        a[:] = 7
        a.resize(1)
        a.resize(rows_)  # row 1 and 2 must be zeroed; the rest is new and zero already
        assert a[:4].tolist() == [7, 0, 0, 0]
        assert a[-1] == 0
    assert os.path.getsize(path) >= rows_ * 8
    assert allocated(path) >= rows_ * 8
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[1:], 0)


def test_resize_shrink_is_seen_by_np_load(tmp_path):
    path = tmp_path / "a.npy"
    with mm.open_array(path, "w+", dtype=np.int32, shape=(10,)) as a:
        a[:] = np.arange(10)
        capacity = a.capacity
        a.resize(4)
        assert a.capacity == capacity  # the reserve is kept
    np.testing.assert_array_equal(np.load(path), np.arange(4))


@pytest.mark.parametrize("n", [-1, 2.0, "3", None])
def test_resize_bad_length(target, n):
    with mm.open_array(target, "w+", dtype=np.int32, shape=(1,)) as a:
        with pytest.raises((TypeError, ValueError)):
            a.resize(n)
        assert a.shape == (1,)


def test_capacity_is_reserved_in_rows(target):
    with mm.open_array(target, "w+", dtype=np.float64, shape=(0, 4), capacity=100) as a:
        assert a.capacity == 100
        assert a.shape == (0, 4)
        a.append(np.ones((100, 4)))
        assert a.capacity == 100  # no remap was needed
        assert len(a) == 100
    if not is_shm(target):
        size = os.path.getsize(target)
        offset = np.load(target, mmap_mode="r").offset
        assert size >= offset + 100 * 4 * 8


def test_capacity_on_open_reserves_more(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5, dtype=np.int32))
    with mm.open_array(path, "r+", capacity=1000) as a:
        assert a.capacity >= 1000
        assert a.shape == (5,)
        np.testing.assert_array_equal(a[:], np.arange(5))
    np.testing.assert_array_equal(np.load(path), np.arange(5))


@pytest.mark.parametrize("mode", ["r", "c"])
def test_capacity_in_read_modes_refused(tmp_path, mode):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5, dtype=np.int32))
    size = os.path.getsize(path)
    with pytest.raises(PermissionError):
        mm.open_array(path, mode, capacity=10_000)
    assert os.path.getsize(path) == size


def test_capacity_grows_geometrically(target):
    # 64-byte rows: n single-row appends must remap O(log n) times, not O(n).
    n = 20_000
    with mm.open_array(target, "w+", dtype=np.float64, shape=(0, 8)) as a:
        caps = [a.capacity]
        row = np.ones(8)
        for _ in range(n):
            a.append(row)
            if a.capacity != caps[-1]:
                caps.append(a.capacity)
        assert len(a) == n
        assert a.capacity < 4 * n
        changes = len(caps) - 1
        assert changes <= int(np.log2(n)) + 2
        assert all(b >= 1.25 * c for c, b in itertools.pairwise(caps[1:]))  # geometric
        np.testing.assert_array_equal(a[:], 1.0)


def test_file_size_follows_capacity(tmp_path):
    path = tmp_path / "a.npy"
    with mm.open_array(path, "w+", dtype=np.int16, shape=(0, 3)) as a:
        for _ in range(10):
            a.append(np.zeros((1000, 3), np.int16))
            offset = np.load(path, mmap_mode="r").offset
            assert os.path.getsize(path) >= offset + a.capacity * 3 * 2


def test_views_from_before_growth_stay_valid(target):
    with mm.open_array(target, "w+", dtype=np.int64, shape=(4,)) as a:
        a[:] = [1, 2, 3, 4]
        old_slice = a[1:3]
        old_whole = np.asarray(a)
        capacity = a.capacity
        a.append(np.arange(200_000))  # forces a new, larger mapping
        assert a.capacity > capacity
        old_slice[0] = 20
        assert a[1] == 20
        a[2] = 30
        assert old_slice[1] == 30
        assert old_whole.tolist() == [1, 20, 30, 4]
        assert a[4:8].tolist() == [0, 1, 2, 3]
    # and after close, the old views still read (never a crash)
    assert old_slice.tolist() == [20, 30]


# -- visibility -----------------------------------------------------------------------------


def test_other_readers_see_the_length_at_last_flush(target):
    with mm.open_array(target, "w+", dtype=np.int32, shape=(2,)) as a:
        a.append([5, 6, 7])
        assert len(a) == 5  # at once, in this handle
        with mm.open_array(target) as reader:
            assert reader.shape == (2,)
        if not is_shm(target):
            assert np.load(target).shape == (2,)
            assert np.load(target, mmap_mode="r").shape == (2,)
        a.flush()
        with mm.open_array(target) as reader:
            assert reader.shape == (5,)
            assert reader[:].tolist() == [0, 0, 5, 6, 7]
        if not is_shm(target):
            assert np.load(target).tolist() == [0, 0, 5, 6, 7]


def test_other_process_sees_flushed_length(target):
    with mm.open_array(target, "w+", dtype=np.int32, shape=(0,)) as a:
        a.append(np.arange(10))
        code = textwrap.dedent(
            f"""
            import mmarray as mm
            with mm.open_array({target!r}) as b:
                print(len(b), int(b[:].sum()))
            """
        )
        out = run_python(code, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["0", "0"]
        a.flush()
        out = run_python(code, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["10", "45"]


# -- the ndarray-like surface ---------------------------------------------------------------


def test_attributes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with mm.open_array("rel.npy", "w+", dtype=np.float32, shape=(3, 4), capacity=10) as a:
        assert a.shape == (3, 4)
        assert a.dtype == np.float32
        assert a.ndim == 2
        assert len(a) == 3
        assert a.size == 12
        assert a.nbytes == 48
        assert a.capacity == 10
        assert a.mode == "w+"
        assert a.target == str(tmp_path / "rel.npy")  # absolute
        assert not a.closed
    assert a.closed


def test_shm_target_attribute(shm_name):
    with mm.open_array("shm://" + shm_name, "w+", dtype=np.uint8, shape=(7,)) as a:
        assert a.target == "shm://" + shm_name
        assert a.shape == (7,)


def test_target_accepts_pathlike(tmp_path):
    with mm.open_array(tmp_path / "p.npy", "w+", dtype=np.uint8, shape=(2,)) as a:
        assert a.target == str(tmp_path / "p.npy")


def test_indexing_reads_and_writes(target):
    with mm.open_array(target, "w+", dtype=REC, shape=(4,)) as a:
        a[0] = (1, 2.5, 3)
        a["qty"][1:] = 9
        a[2:]["price"] = 1.25
        assert a[0].tolist() == (1, 2.5, 3)
        assert a["qty"].tolist() == [3, 9, 9, 9]
        assert a["price"].tolist() == [2.5, 0.0, 1.25, 1.25]
        assert a[[0, 2]]["price"].tolist() == [2.5, 1.25]


def test_iteration(target):
    with mm.open_array(target, "w+", dtype=np.int16, shape=(3, 2)) as a:
        a[:] = [[1, 2], [3, 4], [5, 6]]
        assert [r.tolist() for r in a] == [[1, 2], [3, 4], [5, 6]]
        a.append([7, 8])
        assert [r.tolist() for r in a][-1] == [7, 8]


def test_asarray_is_zero_copy(target):
    with mm.open_array(target, "w+", dtype=np.float64, shape=(5,)) as a:
        view = np.asarray(a)
        assert type(view) is not type(a)
        assert isinstance(view, np.ndarray)
        view[1] = 4.0
        assert a[1] == 4.0
        assert np.shares_memory(np.asarray(a), view)
        assert np.shares_memory(np.asarray(a), a[:])
        a.append(1.0)
        assert np.asarray(a).shape == (6,)
        assert np.asarray(a, dtype=np.float32).dtype == np.float32


def test_numpy_functions_return_plain_arrays(target):
    with mm.open_array(target, "w+", dtype=np.int64, shape=(2, 3)) as a:
        a[:] = [[1, 2, 3], [4, 5, 6]]
        total = np.sum(a)
        assert total == 21
        assert not isinstance(total, mm.MappedArray)
        for result in (
            a + 1,
            1 + a,
            a * a,
            -a,
            np.add(a, 1),
            np.sum(a, axis=0),
            np.concatenate([a, a]),
            np.mean(a, axis=1),
            np.where(a > 2, a, 0),
            a == 2,
        ):
            assert type(result) is np.ndarray
            assert not np.shares_memory(result, np.asarray(a))
        np.testing.assert_array_equal(a + 1, [[2, 3, 4], [5, 6, 7]])
        np.testing.assert_array_equal(np.concatenate([a, a]).shape, (4, 3))
        assert float(np.mean(a)) == 3.5


def test_inplace_operators_keep_the_mapped_array(target):
    with mm.open_array(target, "w+", dtype=np.int64, shape=(3,)) as a:
        original = a
        a += 1
        assert a is original
        assert isinstance(a, mm.MappedArray)
        a *= 5
        np.add(a, 1, out=a)
        assert a is original
        assert a[:].tolist() == [6, 6, 6]
        with mm.open_array(target) as b:
            assert b[:].tolist() == [6, 6, 6]


def test_repr(target):
    with mm.open_array(target, "w+", dtype=np.int32, shape=(5,), capacity=64) as a:
        a[:] = [11, 22, 33, 44, 55]
        text = repr(a)
        assert "MappedArray" in text
        assert target.split("/")[-1] in text
        assert "int32" in text
        assert "(5,)" in text
        assert "capacity=64" in text
        assert "'w+'" in text
        assert "[11 22 33 44 55]" in text  # a numpy-style preview
    assert "closed" in repr(a)


def test_repr_of_a_long_array_is_summarised(target):
    with mm.open_array(target, "w+", dtype=np.int64, shape=(100_000,)) as a:
        text = repr(a)
        assert "..." in text
        assert len(text) < 1000


def test_closed_array_refuses_everything(target):
    a = mm.open_array(target, "w+", dtype=np.int32, shape=(3,))
    a.close()
    a.close()  # idempotent
    for action in (
        lambda: a[0],
        lambda: a.__setitem__(0, 1),
        lambda: np.asarray(a),
        lambda: a.append(1),
        lambda: a.resize(5),
        lambda: a.flush(),
        lambda: list(a),
        lambda: a + 1,
    ):
        with pytest.raises(ValueError, match="closed"):
            action()


def test_views_survive_close(target):
    a = mm.open_array(target, "w+", dtype=np.int32, shape=(3,))
    a[:] = [1, 2, 3]
    view = a[:]
    a.close()
    assert view.tolist() == [1, 2, 3]
    view[0] = 9
    assert view.tolist() == [9, 2, 3]


def test_garbage_collected_array_records_its_length(tmp_path):
    path = tmp_path / "a.npy"
    a = mm.open_array(path, "w+", dtype=np.int32, shape=(0,))
    a.append(np.arange(7))
    del a
    gc.collect()
    np.testing.assert_array_equal(np.load(path), np.arange(7))


def test_interpreter_exit_records_the_length(tmp_path):
    path = tmp_path / "a.npy"
    code = textwrap.dedent(
        f"""
        import numpy as np, mmarray as mm
        a = mm.open_array({str(path)!r}, "a", dtype=np.int32)
        a.append(np.arange(9))
        keep = [a]  # never closed, still referenced at exit
        """
    )
    run_python(code, check=True)
    np.testing.assert_array_equal(np.load(path), np.arange(9))


# -- an old header without room to grow ---------------------------------------------------


def old_header_npy(arr: np.ndarray) -> bytes:
    """A v1.0 .npy as numpy < 1.9 wrote it: the header padded only to 16 bytes,
    with no spare room for a longer shape."""
    d = {"descr": npformat.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": arr.shape}
    text = repr(d).encode("latin1")
    total = 10 + len(text) + 1
    pad = -total % 16
    body = text + b" " * pad + b"\n"
    assert (10 + len(body)) % 16 == 0
    return npformat.magic(1, 0) + struct.pack("<H", len(body)) + body + arr.tobytes()


def test_old_header_without_room(tmp_path):
    dt = np.dtype([("a_long_field_name_for_the_test", "<i4"), ("another_long_one", "<f8")])
    arr = np.array([(i, i / 2) for i in range(9)], dt)
    path = tmp_path / "old.npy"
    data = old_header_npy(arr)
    path.write_bytes(data)
    np.testing.assert_array_equal(np.load(path), arr)  # numpy reads it
    with mm.open_array(path) as a:
        np.testing.assert_array_equal(np.asarray(a), arr)
    with pytest.raises(ValueError, match="no room"):
        mm.open_array(path, "a")
    with mm.open_array(path, "r+") as a:
        with pytest.raises(ValueError, match="no room"):
            a.append(arr[:1])
        with pytest.raises(ValueError, match="no room"):
            a.resize(20)
        assert a.shape == (9,)
        a[0] = (100, 1.5)  # writing in place still works
    arr[0] = (100, 1.5)
    np.testing.assert_array_equal(np.load(path), arr)
    assert path.read_bytes()[: -arr.nbytes] == data[: -arr.nbytes]  # header untouched


def test_ndarray_methods_act_on_the_current_view(tmp_path):
    with mm.open_array(tmp_path / "m.npy", "w+", dtype=np.float64, shape=(3, 2)) as a:
        a[:] = [[1, 2], [3, 4], [5, 6]]
        assert a.sum() == 21 and a.mean(axis=0).tolist() == [3.0, 4.0]
        assert a.T.shape == (2, 3) and a.astype(np.int8).dtype == np.int8
        a.append([7, 8])
        assert a.max() == 8 and a.tolist()[-1] == [7.0, 8.0]
        assert "sum" in dir(a)
        with pytest.raises(AttributeError):
            a.no_such_attribute  # noqa: B018
        with pytest.raises(AttributeError):
            a._private  # noqa: B018
    with pytest.raises(ValueError, match="closed"):
        a.sum()


def test_resize_zeroes_rows_left_from_a_shrink_and_from_a_killed_writer(tmp_path):
    path = tmp_path / "z.npy"
    with mm.open_array(path, "w+", dtype=np.int64, shape=(0,), capacity=100) as a:
        a.append(np.arange(1, 11))
        a.resize(3)
        a.resize(10)
        assert a[:].tolist() == [1, 2, 3] + [0] * 7
        a.resize(50)
        assert not a[10:].any()
    # rows appended but never recorded (a killed writer's) read as zero too
    with mm.open_array(path, "r+") as a:
        a.resize(10)
        a.flush()  # the header says 10
        a.append(np.full(5, 7))
        a._state.length = 10  # forget the append, as a killed writer would
    assert np.fromfile(path, np.int64)[-100:][10:15].tolist() == [7] * 5
    with mm.open_array(path, "r+") as a:
        assert len(a) == 10
        a.resize(20)
        assert not a[10:].any()
