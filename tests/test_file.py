"""MappedFile: modes, capacity, views, accessors, flush/advise, errors (issue 2)."""

from __future__ import annotations

import gc
import os
import pathlib
import pickle

import numpy as np
import pytest

import mmarray as mm

REC = np.dtype([("t", "<i8"), ("price", "<f8"), ("qty", "<u4")])
WRITABLE_MODES = ["r+", "w+", "x+"]
EXISTING_MODES = ["r", "r+", "c"]
HINTS = ["normal", "random", "sequential", "willneed", "dontneed"]


def pattern(n: int) -> bytes:
    """``n`` bytes that are not all equal, so misplaced reads show."""
    return bytes(i % 251 for i in range(n))


# -- the classic examples from DESIGN.md ------------------------------------------


def test_classic_example_long_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("long.bin", "wb") as f:
        f.write(bytes(1_000_000))
    with mm.MappedFile("long.bin", mode="r+") as f:
        f.write(500_000, np.uint8(77))
        assert f.read(500_000, np.uint8) == 77
        a = f.array(np.uint8)
        assert a[500_000] == 77
        assert a.shape == (1_000_000,)
    del a
    data = (tmp_path / "long.bin").read_bytes()
    assert len(data) == 1_000_000
    assert data[500_000] == 77
    assert data.count(0) == 999_999


def test_classic_example_capacity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("short.bin", "wb") as f:
        f.write(b"\x00")
    with mm.MappedFile("short.bin", mode="r+", capacity=1000) as f:
        assert f.size == 1000
    assert os.path.getsize(tmp_path / "short.bin") == 1000
    assert (tmp_path / "short.bin").read_bytes() == bytes(1000)


# -- modes ------------------------------------------------------------------------


def test_mode_r_reads_and_is_readonly(make_file):
    path = make_file(pattern(100))
    with mm.MappedFile(path) as f:
        assert f.mode == "r"
        assert f.readonly
        assert f.array().tobytes() == pattern(100)
        assert not f.array().flags.writeable


def test_mode_r_plus_writes_reach_the_file(make_file):
    path = make_file(bytes(16))
    with mm.MappedFile(path, "r+") as f:
        assert not f.readonly
        f.array()[3] = 9
    assert path.read_bytes()[3] == 9


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_existing_modes_need_the_file(tmp_path, mode):
    path = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError):
        mm.MappedFile(path, mode)
    assert not path.exists()


def test_mode_c_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        mm.MappedFile(tmp_path / "missing.bin", "c")


def test_mode_w_plus_creates(tmp_path):
    path = tmp_path / "new.bin"
    with mm.MappedFile(path, "w+", capacity=123) as f:
        assert f.size == 123
        assert f.mode == "w+"
        assert not f.readonly
        assert f.array().tobytes() == bytes(123)
    assert path.read_bytes() == bytes(123)


def test_mode_w_plus_truncates(make_file):
    path = make_file(pattern(500))
    with mm.MappedFile(path, "w+", capacity=50) as f:
        assert f.size == 50
        assert f.array().tobytes() == bytes(50)
    assert path.read_bytes() == bytes(50)


def test_mode_x_plus_creates(tmp_path):
    path = tmp_path / "new.bin"
    with mm.MappedFile(path, "x+", capacity=10) as f:
        f.write(0, np.uint8(5))
    assert path.read_bytes() == b"\x05" + bytes(9)


def test_mode_x_plus_refuses_existing(make_file):
    path = make_file(pattern(64))
    with pytest.raises(FileExistsError):
        mm.MappedFile(path, "x+", capacity=10)
    assert path.read_bytes() == pattern(64)


@pytest.mark.parametrize("mode", ["w+", "x+"])
def test_creating_modes_need_capacity(tmp_path, mode):
    path = tmp_path / "new.bin"
    with pytest.raises(ValueError, match=r"capacity="):
        mm.MappedFile(path, mode)
    assert not path.exists()


def test_w_plus_without_capacity_leaves_existing_file(make_file):
    path = make_file(pattern(64))
    with pytest.raises(ValueError, match=r"capacity="):
        mm.MappedFile(path, "w+")
    assert path.read_bytes() == pattern(64)


@pytest.mark.parametrize("mode", ["w", "a", "rw", "rb", "R", "", "r+b", None, 1])
def test_bad_mode(tmp_path, mode):
    path = tmp_path / "new.bin"
    with pytest.raises(ValueError, match=r"mode must be one of"):
        mm.MappedFile(path, mode, capacity=10)
    assert not path.exists()


def test_copy_on_write_never_touches_the_file(make_file):
    original = pattern(4096)
    path = make_file(original)
    st = os.stat(path)
    with mm.MappedFile(path, "c") as f:
        assert f.mode == "c"
        assert not f.readonly
        a = f.array(np.uint8)
        assert a.flags.writeable
        a[:10] = 255
        f.write(100, np.int32(-1))
        f.write_array(200, np.arange(5, dtype=np.uint16))
        f.records(np.dtype([("x", "u1")]), shape=3, offset=300).x[:] = 7
        f.flush()
        # This mapping sees its own writes ...
        assert f.read(100, np.int32) == -1
        assert a[:10].tolist() == [255] * 10
        assert f.read_array(200, np.uint16, 5).tolist() == [0, 1, 2, 3, 4]
        # ... another mapping of the file does not.
        with mm.MappedFile(path, "r") as other:
            assert other.array().tobytes() == original
        assert path.read_bytes() == original
    del a
    gc.collect()
    assert path.read_bytes() == original
    assert os.stat(path).st_size == st.st_size


def test_copy_on_write_arrays_pickle_by_value(make_file):
    path = make_file(bytes(64))
    with mm.MappedFile(path, "c") as f:
        a = f.array(np.uint8)
        a[5] = 42
        b = pickle.loads(pickle.dumps(a))
        assert b.tobytes() == a.tobytes()
        b[6] = 1
        assert a[6] == 0
    assert path.read_bytes() == bytes(64)


# -- capacity ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_capacity_enlarges_zero_filled(make_file, mode):
    path = make_file(b"\x07" * 10)
    with mm.MappedFile(path, mode, capacity=5000) as f:
        assert f.size == 5000
    data = path.read_bytes()
    assert len(data) == 5000
    if mode == "r+":
        assert data == b"\x07" * 10 + bytes(4990)
    else:
        assert data == bytes(5000)


def test_capacity_equal_to_size_is_accepted_everywhere(make_file):
    path = make_file(pattern(100))
    for mode in EXISTING_MODES:
        with mm.MappedFile(path, mode, capacity=100) as f:
            assert f.size == 100
    assert path.read_bytes() == pattern(100)


@pytest.mark.parametrize("mode", ["r+", "r", "c"])
def test_capacity_smaller_than_file(make_file, mode):
    path = make_file(pattern(100))
    with pytest.raises(ValueError, match=r"capacity 99 is smaller than the file"):
        mm.MappedFile(path, mode, capacity=99)
    assert path.read_bytes() == pattern(100)


@pytest.mark.parametrize("mode", ["r", "c"])
def test_capacity_in_readonly_modes(make_file, mode):
    path = make_file(pattern(100))
    with pytest.raises(PermissionError, match=r"cannot write"):
        mm.MappedFile(path, mode, capacity=200)
    assert path.read_bytes() == pattern(100)


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(tmp_path, capacity):
    with pytest.raises(ValueError, match=r"capacity must be >= 1"):
        mm.MappedFile(tmp_path / "x.bin", "w+", capacity=capacity)
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize("capacity", [1.5, "10", True])
def test_capacity_must_be_an_integer(tmp_path, capacity):
    with pytest.raises(TypeError, match=r"capacity must be an integer"):
        mm.MappedFile(tmp_path / "x.bin", "w+", capacity=capacity)


def test_capacity_accepts_numpy_integers(tmp_path):
    with mm.MappedFile(tmp_path / "x.bin", "w+", capacity=np.int64(77)) as f:
        assert f.size == 77


@pytest.mark.parametrize("mode", EXISTING_MODES)
def test_empty_file_needs_capacity(make_file, mode):
    path = make_file(b"")
    with pytest.raises(ValueError, match=r"empty: pass capacity="):
        mm.MappedFile(path, mode)


def test_empty_file_with_capacity(make_file):
    path = make_file(b"")
    with mm.MappedFile(path, "r+", capacity=64) as f:
        assert f.size == 64
    assert path.read_bytes() == bytes(64)


def test_empty_file_capacity_in_readonly_mode(make_file):
    path = make_file(b"")
    with pytest.raises(PermissionError):
        mm.MappedFile(path, "r", capacity=64)
    assert path.read_bytes() == b""


def test_sparse_file_beyond_4gib(tmp_path):
    # Probe first: on a filesystem without holes the big file would be written out.
    probe = tmp_path / "probe.bin"
    try:
        with open(probe, "wb") as fh:
            fh.truncate(64 << 20)
        if os.stat(probe).st_blocks * 512 >= 1 << 20:
            pytest.skip("filesystem does not make sparse files")
    finally:
        probe.unlink()
    capacity = (5 << 30) + 12_345  # > 4 GiB, not page-aligned
    path = tmp_path / "sparse.bin"
    try:
        f = mm.MappedFile(path, "w+", capacity=capacity)
    except OSError as exc:  # EFBIG, ENOSPC, ENOMEM: the system refuses
        if path.exists():
            path.unlink()
        pytest.skip(f"cannot make a {capacity}-byte sparse file here: {exc}")
    try:
        with f:
            assert f.size == capacity
            f.write(capacity - 8, np.array(0x0123456789ABCDEF, dtype="<u8"))
            tail = f.array(np.uint8, offset=capacity - 100)
            assert tail.shape == (100,)
            tail[0] = 0xAB
            del tail
            f.write(2**32 + 1, np.uint16(0xBEEF))  # straddles no boundary, past 4 GiB
            assert f.read(capacity - 8, "<u8") == 0x0123456789ABCDEF
            assert f.read(2**32 + 1, "<u2") == 0xBEEF
            assert f.read(0, np.uint8) == 0
            f.flush(capacity - 4096, 4096)
        st = os.stat(path)
        assert st.st_size == capacity
        assert st.st_blocks * 512 < 16 << 20, "the file should stay sparse"
        with open(path, "rb") as fh:
            fh.seek(capacity - 100)
            end = fh.read()
            fh.seek(2**32 + 1)
            mid = fh.read(2)
        assert end[0] == 0xAB
        assert end[-8:] == (0x0123456789ABCDEF).to_bytes(8, "little")
        assert mid == (0xBEEF).to_bytes(2, "little")
    finally:
        path.unlink()


# -- attributes and repr ----------------------------------------------------------


def test_attributes(make_file):
    path = make_file(bytes(300))
    f = mm.MappedFile(str(path), "r+")
    assert isinstance(f.path, pathlib.Path)
    assert f.path.is_absolute()
    assert f.path == path
    assert f.mode == "r+"
    assert f.size == 300
    assert f.readonly is False
    assert f.closed is False
    f.close()
    assert f.closed is True


@pytest.mark.parametrize("mode", EXISTING_MODES)
def test_readonly_attribute(make_file, mode):
    with mm.MappedFile(make_file(), mode) as f:
        assert f.readonly is (mode == "r")


def test_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel.bin").write_bytes(bytes(8))
    with mm.MappedFile("rel.bin") as f:
        assert f.path == tmp_path / "rel.bin"
        assert f.path.is_absolute()
    monkeypatch.chdir("/")
    assert f.path == tmp_path / "rel.bin"


def test_bytes_and_pathlike_paths(make_file):
    path = make_file(bytes(8))
    for p in (path, os.fsencode(path)):
        with mm.MappedFile(p) as f:
            assert f.path == path


def test_bad_path_type(tmp_path):
    with pytest.raises(TypeError, match=r"path"):
        mm.MappedFile(12.5)


def test_repr(make_file):
    path = make_file(bytes(321))
    f = mm.MappedFile(path, "r+")
    text = repr(f)
    assert "MappedFile" in text
    assert str(path) in text
    assert "321" in text
    assert "r+" in text
    f.close()
    closed = repr(f)
    assert "MappedFile" in closed
    assert "closed" in closed
    assert str(path) in closed


def test_context_manager_returns_self_and_closes(make_file):
    f = mm.MappedFile(make_file())
    with f as g:
        assert g is f
        assert not f.closed
    assert f.closed


def test_context_manager_closes_on_error(make_file):
    with pytest.raises(KeyError), mm.MappedFile(make_file()) as f:
        raise KeyError("boom")
    assert f.closed


# -- array() ----------------------------------------------------------------------


def test_array_default_is_whole_file_uint8(make_file):
    path = make_file(pattern(1000))
    with mm.MappedFile(path) as f:
        a = f.array()
        assert isinstance(a, np.ndarray)
        assert a.dtype == np.uint8
        assert a.shape == (1000,)
        assert a.tobytes() == pattern(1000)


@pytest.mark.parametrize(
    ("dtype", "offset", "expected"),
    [
        (np.int32, 0, (250,)),
        (np.int32, 1, (249,)),
        (np.float64, 3, (124,)),
        ("<u2", 999, (0,)),
        (REC, 5, (995 // REC.itemsize,)),
        (np.uint8, 1000, (0,)),
    ],
)
def test_array_default_shape(make_file, dtype, offset, expected):
    with mm.MappedFile(make_file(pattern(1000))) as f:
        assert f.array(dtype, offset=offset).shape == expected


@pytest.mark.parametrize("offset", [0, 1, 3, 5, 7, 4093, 4096, 4099])
@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<i4", ">u2", "<c16"])
def test_array_at_any_offset(make_file, dtype, offset):
    path = make_file(bytes(8192))
    dt = np.dtype(dtype)
    values = (np.arange(10) * 3 - 7).astype(dt)
    with mm.MappedFile(path, "r+") as f:
        a = f.array(dt, shape=10, offset=offset)
        assert a.dtype == dt
        assert a.shape == (10,)
        a[:] = values
        assert f.read(offset + 4 * dt.itemsize, dt) == values[4]
        assert np.array_equal(f.read_array(offset, dt, 10), values)
    del a
    data = path.read_bytes()
    assert data[offset : offset + values.nbytes] == values.tobytes()
    assert data[:offset] == bytes(offset)
    assert data[offset + values.nbytes :] == bytes(8192 - offset - values.nbytes)


@pytest.mark.parametrize("order", ["C", "F"])
def test_array_shape_and_order(make_file, order):
    path = make_file(bytes(1024))
    values = np.arange(24, dtype="<i4").reshape(2, 3, 4)
    with mm.MappedFile(path, "r+") as f:
        a = f.array("<i4", shape=(2, 3, 4), offset=8, order=order)
        assert a.shape == (2, 3, 4)
        assert a.flags["C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"]
        a[...] = values
    del a
    data = path.read_bytes()
    assert data[8 : 8 + values.nbytes] == values.tobytes(order=order)
    on_disk = np.memmap(path, "<i4", "r", offset=8, shape=(2, 3, 4), order=order)
    assert np.array_equal(on_disk, values)
    del on_disk


def test_array_int_shape_and_empty_shapes(make_file):
    with mm.MappedFile(make_file(bytes(64))) as f:
        assert f.array(np.uint16, shape=5).shape == (5,)
        assert f.array(np.uint16, shape=[2, 3]).shape == (2, 3)
        assert f.array(np.uint16, shape=()).shape == ()
        assert f.array(np.uint16, shape=(0, 7)).shape == (0, 7)
        assert f.array(np.uint8, shape=(0,), offset=64).shape == (0,)


def test_arrays_share_the_mapping(make_file):
    with mm.MappedFile(make_file(bytes(64)), "r+") as f:
        a = f.array(np.uint8)
        b = f.array(np.uint32, offset=4, shape=2)
        assert np.shares_memory(a, b)
        b[0] = 0x01020304
        assert a[4:8].tolist() == [4, 3, 2, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": 65}, r"needs 65 bytes, but the mapping has 64"),
        ({"shape": (9,), "dtype": np.float64}, r"needs 72 bytes"),
        ({"shape": (2, 4), "dtype": np.float64, "offset": 1}, r"needs 65 bytes"),
        ({"shape": 1, "offset": 64}, r"needs 65 bytes"),
        ({"offset": 65}, r"offset 65 is past the end"),
        ({"offset": 10**12}, r"past the end"),
        ({"offset": -1}, r"offset must be >= 0"),
        ({"shape": -1}, r"shape entries must be >= 0"),
        ({"shape": (2, -3)}, r"shape entries must be >= 0"),
        ({"order": "K"}, r"order must be one of"),
        ({"order": "c"}, r"order must be one of"),
        ({"dtype": "V0"}, r"non-zero item size"),
    ],
)
def test_array_value_errors(make_file, kwargs, message):
    with mm.MappedFile(make_file(bytes(64))) as f, pytest.raises(ValueError, match=message):
        f.array(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": 2.0}, r"shape"),
        ({"shape": "abc"}, r"shape"),
        ({"offset": 1.0}, r"offset must be an integer"),
        ({"offset": "8"}, r"offset must be an integer"),
    ],
)
def test_array_type_errors(make_file, kwargs, message):
    with mm.MappedFile(make_file(bytes(64))) as f, pytest.raises(TypeError, match=message):
        f.array(**kwargs)


@pytest.mark.parametrize(
    "dtype", [object, np.dtype("O"), np.dtype([("a", "<i4"), ("o", "O")]), np.dtype(("O", 2))]
)
def test_object_dtypes_are_refused(make_file, dtype):
    with mm.MappedFile(make_file(bytes(64)), "r+") as f:
        with pytest.raises(TypeError, match=r"object"):
            f.array(dtype)
        with pytest.raises(TypeError, match=r"object"):
            f.read(0, dtype)
        with pytest.raises(TypeError, match=r"object"):
            f.read_array(0, dtype, 1)
        with pytest.raises(TypeError, match=r"object"):
            f.write_array(0, np.zeros(1, dtype))
        with pytest.raises(TypeError, match=r"object"):
            f.write(0, np.zeros((), dtype))


def test_object_dtype_records_refused(make_file):
    with mm.MappedFile(make_file(bytes(64))) as f, pytest.raises(TypeError, match=r"object"):
        f.records([("a", "<i4"), ("o", "O")])


def test_readonly_array_assignment_is_numpys_valueerror(make_file):
    path = make_file(bytes(64))
    with mm.MappedFile(path) as f:
        a = f.array(np.uint8)
        assert not a.flags.writeable
        with pytest.raises(ValueError, match=r"read-only"):
            a[0] = 1
        with pytest.raises(ValueError, match=r"read-only"):
            a[2:4] += 1
        r = f.records(REC, shape=1)
        with pytest.raises(ValueError, match=r"read-only"):
            r.qty[0] = 1
    assert path.read_bytes() == bytes(64)


# -- records() ----------------------------------------------------------------------


def test_records_is_a_recarray(make_file):
    path = make_file(bytes(REC.itemsize * 10 + 3))
    with mm.MappedFile(path, "r+") as f:
        r = f.records(REC, offset=3)
        assert isinstance(r, np.recarray)
        assert r.shape == (10,)
        assert r.dtype.names == REC.names
        r.price[2] = 99.5
        r[4] = (1, 2.5, 3)
        r.qty[9] = 7
        assert f.read(3 + 2 * REC.itemsize + 8, "<f8") == 99.5
        rec4 = f.read(3 + 4 * REC.itemsize, REC)
        assert isinstance(rec4, np.void)
        assert rec4.tolist() == (1, 2.5, 3)
        assert f.records(REC, shape=(2, 5), offset=3).qty[1, 4] == 7
    del r
    on_disk = np.frombuffer(path.read_bytes()[3:], REC)
    assert on_disk["price"][2] == 99.5
    assert on_disk[4].tolist() == (1, 2.5, 3)


@pytest.mark.parametrize("dtype", [np.uint8, "<f8", np.dtype(("<i4", 3)), "S4"])
def test_records_needs_structured_dtype(make_file, dtype):
    with mm.MappedFile(make_file(bytes(64))) as f, pytest.raises(ValueError, match="structured"):
        f.records(dtype)


def test_records_out_of_range(make_file):
    with mm.MappedFile(make_file(bytes(64))) as f, pytest.raises(ValueError, match="needs"):
        f.records(REC, shape=4)


# -- read / write / read_array / write_array ------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 3, 6])
@pytest.mark.parametrize(
    "value",
    [
        np.uint8(200),
        np.int16(-2),
        np.int32(-123456),
        np.uint64(2**64 - 1),
        np.float32(1.5),
        np.float64(-2.25),
        np.complex64(1 - 2j),
        np.bool_(True),
        np.array(7, dtype=">i4")[()],
        np.datetime64("2024-01-02", "D"),
    ],
    ids=repr,
)
def test_write_read_numpy_scalars(make_file, offset, value):
    path = make_file(bytes(32))
    with mm.MappedFile(path, "r+") as f:
        f.write(offset, value)
        got = f.read(offset, value.dtype)
        assert isinstance(got, np.generic)
        assert got.dtype == value.dtype
        assert got == value
    data = path.read_bytes()
    size = value.dtype.itemsize
    assert data[offset : offset + size] == np.asarray(value).tobytes()
    assert data[:offset] + data[offset + size :] == bytes(32 - size)


def test_big_endian_bytes(make_file):
    path = make_file(bytes(8))
    with mm.MappedFile(path, "r+") as f:
        f.write(0, np.array(0x01020304, dtype=">u4"))
        f.write(4, 0x01020304, dtype="<u4")
        assert f.read(0, ">u4") == 0x01020304
        assert f.read(0, "<u4") == 0x04030201
    assert path.read_bytes() == b"\x01\x02\x03\x04\x04\x03\x02\x01"


def test_structured_read_write(make_file):
    path = make_file(bytes(2 * REC.itemsize + 1))
    with mm.MappedFile(path, "r+") as f:
        f.write(1, np.array((5, 1.25, 9), dtype=REC)[()])
        got = f.read(1, REC)
        assert isinstance(got, np.void)
        assert got.dtype == REC
        assert got["price"] == 1.25
        assert got.tolist() == (5, 1.25, 9)
        f.write(1 + REC.itemsize, (-1, 0.5, 2), dtype=REC)
        assert f.read(1 + REC.itemsize, REC).tolist() == (-1, 0.5, 2)
    on_disk = np.frombuffer(path.read_bytes()[1:], REC)
    assert on_disk.tolist() == [(5, 1.25, 9), (-1, 0.5, 2)]


def test_read_returns_a_copy(make_file):
    with mm.MappedFile(make_file(bytes(16)), "r+") as f:
        before = f.read(0, "<i8")
        rec = f.read(0, np.dtype([("a", "u1"), ("b", "u1")]))
        f.write(0, np.uint8(9))
        assert before == 0
        assert rec["a"] == 0


@pytest.mark.parametrize("value", [1, 2.5, True, 1 + 2j, (1, 2.0, 3), [1, 2], "x", b"x"])
def test_write_python_value_needs_dtype(make_file, value):
    path = make_file(bytes(64))
    with mm.MappedFile(path, "r+") as f, pytest.raises(TypeError, match=r"dtype="):
        f.write(0, value)
    assert path.read_bytes() == bytes(64)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(1, np.uint8), (-2, "<i8"), (2.5, ">f4"), (True, "?"), (3 + 4j, "<c8"), ([1, 2], "<u2")],
)
def test_write_python_value_with_dtype(make_file, value, dtype):
    path = make_file(bytes(16))
    with mm.MappedFile(path, "r+") as f:
        f.write(2, value, dtype=dtype)
        expected = np.asarray(value, dtype=dtype)
        assert f.read_array(2, dtype, expected.size).tobytes() == expected.tobytes()
    assert path.read_bytes()[2 : 2 + expected.nbytes] == expected.tobytes()


def test_write_ndarray_without_dtype(make_file):
    path = make_file(bytes(32))
    values = np.arange(6, dtype="<i2").reshape(2, 3)
    with mm.MappedFile(path, "r+") as f:
        f.write(1, values)
    assert path.read_bytes()[1:13] == values.tobytes()


@pytest.mark.parametrize("offset", [0, 1, 7])
def test_read_write_array(make_file, offset):
    path = make_file(bytes(128))
    values = np.linspace(-1, 1, 9).astype(">f8")
    with mm.MappedFile(path, "r+") as f:
        f.write_array(offset, values)
        got = f.read_array(offset, ">f8", 9)
        assert got.dtype == np.dtype(">f8")
        assert np.array_equal(got, values)
        assert not np.shares_memory(got, f.array())
        got[:] = 0  # a copy: the file keeps its bytes
        assert np.array_equal(f.read_array(offset, ">f8", 9), values)
        assert f.read_array(offset, ">f8", 0).shape == (0,)
    assert path.read_bytes()[offset : offset + values.nbytes] == values.tobytes()


def test_write_array_lists_and_structured(make_file):
    path = make_file(bytes(REC.itemsize * 3))
    rows = np.array([(1, 1.5, 2), (3, 4.5, 6)], dtype=REC)
    with mm.MappedFile(path, "r+") as f:
        f.write_array(0, [1, 2, 3])  # np.asarray: int64
        assert f.read_array(0, np.int64, 3).tolist() == [1, 2, 3]
        f.write_array(REC.itemsize, rows)
        got = f.read_array(REC.itemsize, REC, 2)
        assert got.tolist() == rows.tolist()
    assert path.read_bytes()[REC.itemsize :] == rows.tobytes()


@pytest.mark.parametrize(
    "make_values",
    [
        lambda: np.asfortranarray(np.arange(12, dtype="<u2").reshape(3, 4)),
        lambda: np.arange(24, dtype="<u2")[::-2],
        lambda: np.arange(12, dtype="<u2").reshape(3, 4).T,
    ],
    ids=["fortran", "negative-stride", "transposed"],
)
def test_write_array_writes_c_order(make_file, make_values):
    values = make_values()
    path = make_file(bytes(64))
    with mm.MappedFile(path, "r+") as f:
        f.write_array(4, values)
    assert path.read_bytes()[4 : 4 + values.nbytes] == np.ascontiguousarray(values).tobytes()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.read(63, np.uint16), r"needs 65 bytes"),
        (lambda f: f.read(65, np.uint8), r"past the end"),
        (lambda f: f.read(-1, np.uint8), r"offset must be >= 0"),
        (lambda f: f.write(63, np.uint16(1)), r"needs 65 bytes"),
        (lambda f: f.write(0, np.zeros(65, np.uint8)), r"needs 65 bytes"),
        (lambda f: f.read_array(0, np.uint8, 65), r"needs 65 bytes"),
        (lambda f: f.read_array(0, np.uint8, -1), r"count must be >= 0"),
        (lambda f: f.write_array(60, np.zeros(5, np.uint8)), r"needs 65 bytes"),
        (lambda f: f.write_array(-2, np.zeros(1, np.uint8)), r"offset must be >= 0"),
    ],
)
def test_accessor_range_errors(make_file, call, message):
    path = make_file(bytes(64))
    with mm.MappedFile(path, "r+") as f, pytest.raises(ValueError, match=message):
        call(f)
    assert path.read_bytes() == bytes(64)


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f.write(0, np.uint8(1)),
        lambda f: f.write(0, 1, dtype=np.uint8),
        lambda f: f.write_array(0, np.ones(4, np.uint8)),
        lambda f: f.resize(128),
        lambda f: f.resize(32),
    ],
    ids=["write", "write-dtype", "write_array", "grow", "shrink"],
)
def test_writes_through_readonly_handle(make_file, call):
    path = make_file(bytes(64))
    with mm.MappedFile(path, "r") as f:
        with pytest.raises(PermissionError, match=r"read-only|mode 'r'"):
            call(f)
        assert f.size == 64
    assert path.read_bytes() == bytes(64)


# -- flush and advise -------------------------------------------------------------------


RANGES = [
    {},
    {"offset": 0, "size": 0},
    {"offset": 5},
    {"offset": 4095, "size": 2},
    {"offset": 100, "size": 9000},
    {"offset": 10_000},
    {"offset": 12_288, "size": 0},
    {"size": 12_288},
]


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
@pytest.mark.parametrize("rng", RANGES, ids=str)
def test_flush_ranges(make_file, mode, rng):
    path = make_file(bytes(12_288))
    with mm.MappedFile(path, mode) as f:
        if mode != "r":
            f.array()[4096:4100] = 1
        f.flush(**rng)
    expected = bytes(4096) + b"\x01" * 4 + bytes(8188) if mode == "r+" else bytes(12_288)
    assert path.read_bytes() == expected


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize("rng", RANGES, ids=str)
def test_advise_ranges(make_file, hint, rng):
    path = make_file(pattern(12_288))
    with mm.MappedFile(path, "r+") as f:
        f.write(7000, np.uint8(255))
        f.advise(hint, **rng)
        # Shared file pages keep their contents whatever the advice.
        assert f.read(7000, np.uint8) == 255
        assert f.array()[:7000].tobytes() == pattern(7000)


def test_advise_dontneed_keeps_copy_on_write_data(make_file):
    path = make_file(bytes(8192))
    with mm.MappedFile(path, "c") as f:
        f.write(10, np.uint8(5))
        f.advise("dontneed")
        assert f.read(10, np.uint8) == 5
    assert path.read_bytes() == bytes(8192)


@pytest.mark.parametrize("hint", ["", "RANDOM", "hugepage", "free", None, 4])
def test_advise_bad_hint(make_file, hint):
    with mm.MappedFile(make_file()) as f, pytest.raises(ValueError, match="hint must be one of"):
        f.advise(hint)


@pytest.mark.parametrize(
    ("rng", "error", "message"),
    [
        ({"offset": 4097, "size": 0}, ValueError, "past the end"),
        ({"offset": 0, "size": 4097}, ValueError, "past the end"),
        ({"offset": 4000, "size": 97}, ValueError, "past the end"),
        ({"offset": -1}, ValueError, "offset must be >= 0"),
        ({"size": -1}, ValueError, "size must be >= 0"),
        ({"offset": 1.0}, TypeError, "offset must be an integer"),
    ],
)
@pytest.mark.parametrize("method", ["flush", "advise"])
def test_flush_advise_range_errors(make_file, method, rng, error, message):
    with mm.MappedFile(make_file(bytes(4096)), "r+") as f:
        call = f.flush if method == "flush" else lambda **kw: f.advise("normal", **kw)
        with pytest.raises(error, match=message):
            call(**rng)


@pytest.mark.parametrize("offset", [4097, 5000, 10**6])
@pytest.mark.parametrize("method", ["flush", "advise"])
def test_flush_advise_offset_past_end(make_file, method, offset):
    with mm.MappedFile(make_file(bytes(4096)), "r+") as f:
        call = f.flush if method == "flush" else lambda **kw: f.advise("normal", **kw)
        with pytest.raises(ValueError, match="past the end"):
            call(offset=offset)


# -- pickling -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_pickle_handle(make_file, mode):
    path = make_file(pattern(256))
    with mm.MappedFile(path, mode) as f:
        g = pickle.loads(pickle.dumps(f))
        with g:
            assert isinstance(g, mm.MappedFile)
            assert g is not f
            assert g.path == f.path
            assert g.mode == mode
            assert g.size == 256
            assert g.array().tobytes() == pattern(256)
            if mode == "r+":
                g.write(0, np.uint8(250))
                assert f.read(0, np.uint8) == 250
    expected = bytes([250]) + pattern(256)[1:] if mode == "r+" else pattern(256)
    assert path.read_bytes() == expected


@pytest.mark.parametrize("mode", ["w+", "x+"])
def test_pickle_creating_handle_never_truncates(tmp_path, mode):
    path = tmp_path / "made.bin"
    with mm.MappedFile(path, mode, capacity=64) as f:
        f.write(10, np.uint8(3))
        blob = pickle.dumps(f)
    with pickle.loads(blob) as g:
        assert g.mode == "r+"
        assert g.size == 64
        assert g.read(10, np.uint8) == 3


def test_pickle_closed_handle(make_file):
    f = mm.MappedFile(make_file())
    f.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(f)


def test_array_pickles_by_reference(tmp_path):
    path = tmp_path / "big.bin"
    with mm.MappedFile(path, "w+", capacity=64 << 20) as f:
        a = f.array(np.float64)
        blob = pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)
        assert len(blob) < 4096
        b = pickle.loads(blob)
        assert type(b) is type(a)
        assert b.shape == a.shape
        b[-1] = 2.5
        assert a[-1] == 2.5
        r = f.records(REC, shape=3, offset=8)
        r2 = pickle.loads(pickle.dumps(r))
        assert isinstance(r2, np.recarray)
        r2.qty[1] = 11
        assert r.qty[1] == 11
    del a, b, r, r2


def test_readonly_array_unpickles_readonly(make_file):
    with mm.MappedFile(make_file()) as f:
        b = pickle.loads(pickle.dumps(f.array()[10:20]))
        assert not b.flags.writeable
        assert b.shape == (10,)


def test_copies_pickle_by_value(make_file):
    with mm.MappedFile(make_file(bytes(4096)), "r+") as f:
        a = f.array(np.uint8)
        for copy in (a[[1, 2, 3]], a + 1, a.copy(), a[a > 5]):
            b = pickle.loads(pickle.dumps(copy))
            assert np.array_equal(b, copy)
            if b.size:
                b[0] = 77
                assert a[1] == 0
        assert type(a + 1) is np.ndarray
