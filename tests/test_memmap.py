"""mmarray.memmap: a drop-in for numpy.memmap, plus capacity, close and pickling (issue 4).

The first part covers the behaviours of numpy's own
``numpy/_core/tests/test_memmap.py`` with tests of our own; the last test
runs numpy's installed module itself against ``mmarray.memmap``.
"""

from __future__ import annotations

import mmap
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

import mmarray as mm

REPO = pathlib.Path(mm.__file__).resolve().parents[1]
SHAPE = (3, 4)
DTYPE = "float32"
DATA = np.arange(12, dtype=DTYPE).reshape(SHAPE)
GRAN = mmap.ALLOCATIONGRANULARITY


@pytest.fixture
def tmpfp():
    """A named temporary file object, as numpy's tests use."""
    with tempfile.NamedTemporaryFile(prefix="mmap") as fp:
        yield fp


@pytest.fixture
def path(tmp_path) -> pathlib.Path:
    return tmp_path / "data.mmap"


def both(path: pathlib.Path, **kwargs):
    """The same memmap from numpy and from mmarray, on two copies of a file."""
    other = path.with_name(path.name + ".np")
    if path.exists():
        other.write_bytes(path.read_bytes())
    return np.memmap(other, **kwargs), mm.memmap(path, **kwargs)


# -- numpy's behaviours ----------------------------------------------------------------


def test_roundtrip(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, mode="w+", shape=SHAPE)
    fp[:] = DATA
    del fp  # releasing it writes the data back
    newfp = mm.memmap(tmpfp, dtype=DTYPE, mode="r", shape=SHAPE)
    np.testing.assert_array_equal(newfp, DATA)
    assert not newfp.flags.writeable
    with pytest.raises(ValueError):
        newfp[0, 0] = 1


def test_open_with_path_and_str(tmp_path):
    for name in (tmp_path / "a.mmap", str(tmp_path / "b.mmap")):
        fp = mm.memmap(name, dtype=DTYPE, mode="w+", shape=SHAPE)
        fp[:] = DATA
        del fp
        assert np.fromfile(name, dtype=DTYPE).tolist() == DATA.ravel().tolist()


def test_unnamed_file():
    with tempfile.TemporaryFile() as f:
        fp = mm.memmap(f, dtype=DTYPE, shape=SHAPE)
        assert fp.filename is None
        fp[:] = DATA
        fp.flush()
        f.seek(0)
        assert np.frombuffer(f.read(), DTYPE).tolist() == DATA.ravel().tolist()
        del fp


@pytest.mark.parametrize("mode", ["w+", "r+", "r", "c"])
def test_attributes(tmpfp, mode):
    tmpfp.write(bytes(100))
    tmpfp.flush()
    fp = mm.memmap(tmpfp, dtype=DTYPE, mode=mode, shape=SHAPE, offset=1)
    assert fp.offset == 1
    assert fp.mode == mode
    assert fp.dtype == np.float32
    assert fp.shape == SHAPE
    sliced = fp[1:]
    assert (sliced.offset, sliced.mode, sliced.filename) == (1, mode, fp.filename)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("readonly", "r"), ("copyonwrite", "c"), ("readwrite", "r+"), ("write", "w+")],
)
def test_long_mode_names(path, given, canonical):
    path.write_bytes(bytes(48))
    fp = mm.memmap(path, dtype=DTYPE, mode=given, shape=SHAPE)
    assert fp.mode == canonical


@pytest.mark.parametrize("mode", ["rw", "a", "x+", "R", ""])
def test_bad_mode(path, mode):
    path.write_bytes(bytes(48))
    with pytest.raises(ValueError, match="mode"):
        mm.memmap(path, mode=mode)
    with pytest.raises(ValueError, match="mode"):
        np.memmap(path, mode=mode)  # numpy agrees


def test_w_plus_needs_a_shape(path):
    with pytest.raises(ValueError, match="shape"):
        mm.memmap(path, mode="w+")


def test_filename_str_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fp = mm.memmap("rel.mmap", dtype=DTYPE, mode="w+", shape=SHAPE)
    assert isinstance(fp.filename, str)
    assert fp.filename == os.path.abspath("rel.mmap")
    assert fp[:1].filename == fp.filename
    assert fp.filename == np.memmap("rel.mmap", dtype=DTYPE, shape=SHAPE).filename


def test_filename_pathlike_is_resolved_path(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    name = tmp_path / "link" / ".." / "link" / "p.mmap"
    fp = mm.memmap(name, dtype=DTYPE, mode="w+", shape=SHAPE)
    assert isinstance(fp.filename, pathlib.Path)
    assert fp.filename == name.resolve()
    assert fp.filename == tmp_path.resolve() / "real" / "p.mmap"
    assert fp[:1].filename == fp.filename
    assert fp.filename == np.memmap(name, dtype=DTYPE, shape=SHAPE).filename


def test_filename_file_object(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, mode="w+", shape=SHAPE)
    assert fp.filename == tmpfp.name
    assert fp.filename == os.path.abspath(tmpfp.name)


def test_file_object_opened_by_us(path):
    path.write_bytes(DATA.tobytes())
    with open(path, "rb") as f:
        fp = mm.memmap(f, dtype=DTYPE, mode="r", shape=SHAPE)
    # The file object is closed; the mapping is not.
    np.testing.assert_array_equal(fp, DATA)
    assert fp.filename == str(path)


def test_flush(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, mode="w+", shape=SHAPE)
    fp[:] = DATA
    assert (fp[0] == DATA[0]).all()
    fp.flush()
    fp[1:].flush()  # views flush too
    with open(tmpfp.name, "rb") as f:
        assert np.frombuffer(f.read(), DTYPE).tolist() == DATA.ravel().tolist()


def test_del_view_keeps_base(tmpfp):
    fp_base = mm.memmap(tmpfp, dtype=DTYPE, mode="w+", shape=SHAPE)
    fp_base[0] = 5
    fp_view = fp_base[0:1]
    assert fp_view[0, 0] == 5
    del fp_view
    assert fp_base[0, 0] == 5
    fp_base[0] = 6
    assert fp_base[0, 0] == 6


def test_del_base_keeps_view(tmpfp):
    fp_base = mm.memmap(tmpfp, dtype=DTYPE, mode="w+", shape=SHAPE)
    fp_base[:] = DATA
    view = fp_base[1:, ::2]
    del fp_base
    np.testing.assert_array_equal(view, DATA[1:, ::2])
    view[0, 0] = -1
    assert view[0, 0] == -1


def test_arithmetic_gives_plain_ndarrays(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, mode="w+", shape=SHAPE)
    fp[:] = DATA
    for result in (fp + 10, fp * fp, -fp, np.sqrt(fp), fp > 3, np.add(fp, DATA)):
        assert type(result) is np.ndarray
        assert not np.shares_memory(result, fp)
    np.testing.assert_array_equal(fp + 10, DATA + 10)


def test_ufunc_reductions(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, shape=SHAPE, mode="w+")
    fp[:] = DATA
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "np.average currently does not preserve")
        for unary_op in (np.sum, np.average, np.prod, np.max, np.mean):
            result = unary_op(fp)
            assert np.isscalar(result)
            assert type(result) is type(DATA[0, 0]) or unary_op is np.mean
            assert type(unary_op(fp, axis=0)) is np.ndarray
            assert type(unary_op(fp, axis=1)) is np.ndarray
    assert np.sum(fp) == DATA.sum()
    for binary_op in (np.add, np.subtract, np.multiply):
        assert type(binary_op(fp, DATA)) is np.ndarray
        assert type(binary_op(DATA, fp)) is np.ndarray
        assert type(binary_op(fp, fp)) is np.ndarray


def test_inplace_keeps_memmap(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, shape=SHAPE, mode="w+")
    original = fp
    fp += 1
    assert type(fp) is mm.memmap
    assert fp is original
    np.add(fp, 1, out=fp)
    assert type(fp) is mm.memmap
    fp[1:] *= 2
    np.testing.assert_array_equal(fp, [[2] * 4, [4] * 4, [4] * 4])


def test_getitem_types(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, shape=SHAPE, mode="w+")
    fp[:] = DATA
    assert type(fp[1:, :-1]) is mm.memmap
    assert type(fp[1]) is mm.memmap
    assert type(fp[..., 0]) is mm.memmap
    assert type(fp[None]) is mm.memmap
    assert type(fp[[0, 1]]) is np.ndarray  # fancy indexing copies
    assert type(fp[fp > 3]) is np.ndarray
    assert type(fp[(1, 2), (2, 3)]) is np.ndarray
    assert type(fp[1, 2]) is np.float32
    assert fp[1, 2] == 6
    copy = fp[[0, 1]]
    copy[0, 0] = 100
    assert fp[0, 0] == 0


def test_slices_share_the_mapping(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, shape=SHAPE, mode="w+")
    part = fp[:2, :2]
    assert np.shares_memory(part, fp)
    part[1, 1] = 42
    assert fp[1, 1] == 42
    assert part.filename == fp.filename
    assert part.offset == fp.offset
    assert part.mode == fp.mode


def test_view_base(tmpfp):
    fp = mm.memmap(tmpfp, dtype=DTYPE, shape=SHAPE, mode="w+")
    new1 = fp.view()
    new2 = new1.view()
    assert new1.base is fp
    assert new2.base is fp
    assert np.asarray(fp).base is fp
    assert type(np.asarray(fp)) is np.ndarray
    assert type(fp.view(np.ndarray)) is np.ndarray
    assert type(new1) is mm.memmap


def test_subclass_keeps_its_type():
    class MemmapSubClass(mm.memmap):
        pass

    with tempfile.NamedTemporaryFile() as f:
        fp = MemmapSubClass(f, dtype=DTYPE, shape=SHAPE, mode="w+")
        fp[:] = DATA
        # as numpy: results of a subclass are never turned into plain ndarrays
        assert type(np.sum(fp, axis=0)) is MemmapSubClass
        assert type(np.sum(fp)) is MemmapSubClass
        assert type(fp[1:, :-1]) is MemmapSubClass
        assert type(fp[[0, 1]]) is MemmapSubClass
        assert isinstance(fp, np.memmap)


def test_offset_greater_than_allocation_granularity(tmpfp):
    size = 5 * GRAN
    offset = GRAN + 1
    fp = mm.memmap(tmpfp, shape=size, mode="w+", offset=offset)
    assert fp.offset == offset
    fp[0] = 7
    fp[-1] = 9
    fp.flush()
    with open(tmpfp.name, "rb") as f:
        raw = f.read()
    assert len(raw) == offset + size
    assert raw[offset] == 7
    assert raw[-1] == 9


def test_empty_array_with_offset_at_granularity(tmpfp):
    tmpfp.write(b"a" * GRAN)
    tmpfp.flush()
    fp = mm.memmap(tmpfp, shape=0, mode="w+", offset=GRAN)
    assert fp.offset == GRAN
    assert fp.shape == (0,)


def test_no_shape(tmpfp):
    tmpfp.write(b"a" * 16)
    tmpfp.flush()
    fp = mm.memmap(tmpfp, dtype="float64")
    assert fp.shape == (2,)
    fp = mm.memmap(tmpfp, dtype="uint8", offset=4)
    assert fp.shape == (12,)


def test_no_shape_not_a_multiple(tmpfp):
    tmpfp.write(b"a" * 15)
    tmpfp.flush()
    with pytest.raises(ValueError, match="multiple"):
        mm.memmap(tmpfp, dtype="float64")


def test_empty_file(tmpfp):
    with pytest.raises(ValueError, match="empty file"):
        mm.memmap(tmpfp, shape=(0, 4), mode="r")
    fp = mm.memmap(tmpfp, shape=(0, 4), mode="w+")  # works, as numpy's does
    assert fp.shape == (0, 4)
    fp = mm.memmap(tmpfp, shape=(0, 4), mode="w+")
    assert fp.shape == (0, 4)


@pytest.mark.parametrize("shape", [3, (3, 4), [3, 4], np.asarray((3, 4)), np.int64(5)])
def test_shape_types(tmpfp, shape):
    fp = mm.memmap(tmpfp, shape=shape, mode="w+")
    expected = np.memmap(tmpfp, shape=shape, mode="r+")
    assert fp.shape == expected.shape


def test_shape_past_the_end_in_r_is_refused(path):
    path.write_bytes(bytes(10))
    with pytest.raises(ValueError, match="greater than file size"):
        mm.memmap(path, mode="r", shape=(11,))
    with pytest.raises(ValueError):
        mm.memmap(path, mode="c", shape=(11,))


def test_r_plus_extends_the_file_like_numpy(path):
    path.write_bytes(bytes(10))
    fp = mm.memmap(path, mode="r+", shape=(100,))
    assert fp.shape == (100,)
    assert os.path.getsize(path) == 100


def test_copy_on_write(path):
    path.write_bytes(DATA.tobytes())
    fp = mm.memmap(path, dtype=DTYPE, mode="c", shape=SHAPE)
    fp[0, 0] = -5
    fp.flush()
    assert fp[0, 0] == -5
    assert np.fromfile(path, DTYPE)[0] == 0  # the file never changes


def test_fortran_order(path):
    fp = mm.memmap(path, dtype=DTYPE, mode="w+", shape=SHAPE, order="F")
    fp[:] = DATA
    assert fp.flags.f_contiguous
    fp.flush()
    np.testing.assert_array_equal(np.fromfile(path, DTYPE), DATA.ravel(order="F"))


def test_object_dtype_refused(path):
    path.write_bytes(bytes(64))
    with pytest.raises(TypeError):
        mm.memmap(path, dtype=object)


def test_matches_numpy_memmap(path):
    path.write_bytes(DATA.tobytes())
    theirs, ours = both(path, dtype=DTYPE, mode="r+", shape=SHAPE, offset=8)
    for get in (
        lambda m: m.shape,
        lambda m: m.offset,
        lambda m: m.mode,
        lambda m: m.dtype,
        lambda m: m.tolist(),
        lambda m: m[1:].shape,
        lambda m: m[1:].offset,
        lambda m: type(m[[0]]).__name__,
        lambda m: type(m[1:]).__name__,
        lambda m: type(m + 1).__name__,
        lambda m: type(np.sum(m)).__name__,
        lambda m: np.asarray(m).tolist(),
        lambda m: m.T.flags.f_contiguous,
    ):
        assert get(theirs) == get(ours)


# -- ours: isinstance, capacity, close, pickling --------------------------------------


def test_is_a_numpy_memmap(path):
    fp = mm.memmap(path, dtype=DTYPE, mode="w+", shape=SHAPE)
    assert isinstance(fp, np.memmap)
    assert isinstance(fp[1:], np.memmap)
    assert isinstance(fp, np.ndarray)


def test_capacity_enlarges_the_file(path):
    path.write_bytes(b"\x01\x02")
    fp = mm.memmap(path, mode="r+", capacity=1000)
    assert os.path.getsize(path) == 1000
    assert fp.shape == (1000,)  # shape=None spans the enlarged file
    assert fp[:3].tolist() == [1, 2, 0]
    assert (fp[2:] == 0).all()
    fp = mm.memmap(path, dtype=np.int32, mode="r+", capacity=4000, offset=8)
    assert fp.shape == (998,)
    assert os.path.getsize(path) == 4000


def test_capacity_with_w_plus(path):
    fp = mm.memmap(path, dtype=np.float64, mode="w+", capacity=800)
    assert fp.shape == (100,)
    assert os.path.getsize(path) == 800
    fp = mm.memmap(path, dtype=np.float64, mode="w+", shape=(3,), capacity=800)
    assert fp.shape == (3,)
    assert os.path.getsize(path) == 800


def test_capacity_smaller_than_file_changes_nothing(path):
    path.write_bytes(bytes(100))
    fp = mm.memmap(path, mode="r+", capacity=10)
    assert fp.shape == (100,)
    assert os.path.getsize(path) == 100
    fp = mm.memmap(path, mode="r", capacity=100)
    assert fp.shape == (100,)


@pytest.mark.parametrize("mode", ["r", "c"])
def test_capacity_in_read_modes_refused(path, mode):
    path.write_bytes(bytes(10))
    with pytest.raises(PermissionError):
        mm.memmap(path, mode=mode, capacity=100)
    assert os.path.getsize(path) == 10


@pytest.mark.parametrize("capacity", [-1, 1.5, "10"])
def test_bad_capacity(path, capacity):
    path.write_bytes(bytes(10))
    with pytest.raises((TypeError, ValueError)):
        mm.memmap(path, mode="r+", capacity=capacity)


def test_close_keeps_data_valid(path):
    fp = mm.memmap(path, dtype=DTYPE, mode="w+", shape=SHAPE)
    view = fp[1:]
    fp[:] = DATA
    fp.close()
    fp.close()  # idempotent
    np.testing.assert_array_equal(np.fromfile(path, DTYPE).reshape(SHAPE), DATA)  # flushed
    np.testing.assert_array_equal(fp, DATA)  # still readable
    np.testing.assert_array_equal(view, DATA[1:])
    fp[0, 0] = 9
    assert fp[0, 0] == 9


def test_pickles_by_reference(path):
    fp = mm.memmap(path, dtype=np.float64, mode="w+", shape=(1024, 1024))  # 8 MiB
    data = pickle.dumps(fp)
    assert len(data) < 4096
    back = pickle.loads(data)
    assert type(back) is mm.memmap
    assert back.shape == fp.shape
    assert back.dtype == fp.dtype
    assert back.mode == "r+"  # never "w+": reopening must not truncate
    assert back.offset == 0
    assert os.path.samefile(back.filename, path)
    back[3, 4] = 1.5
    assert fp[3, 4] == 1.5
    fp[5, 6] = 2.5
    assert back[5, 6] == 2.5
    assert os.path.getsize(path) == 8 * 1024 * 1024


def test_pickled_views_by_reference(path):
    fp = mm.memmap(path, dtype=np.int32, mode="w+", shape=(10, 10), offset=16)
    fp[:] = np.arange(100).reshape(10, 10)
    for view in (fp[2:5], fp[::-1, ::3], fp[:, 4], fp.T, fp[3:4, 5:6]):
        data = pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
        assert len(data) < 1024
        back = pickle.loads(data)
        np.testing.assert_array_equal(back, view)
        back[...] = -np.asarray(view)
        np.testing.assert_array_equal(view, back)
    assert pickle.loads(pickle.dumps(fp)).offset == 16


def test_read_only_memmap_pickles_read_only(path):
    path.write_bytes(DATA.tobytes())
    fp = mm.memmap(path, dtype=DTYPE, mode="r", shape=SHAPE)
    back = pickle.loads(pickle.dumps(fp))
    assert back.mode == "r"
    assert not back.flags.writeable
    np.testing.assert_array_equal(back, DATA)


def test_copy_on_write_memmap_pickles_by_value(path):
    path.write_bytes(DATA.tobytes())
    fp = mm.memmap(path, dtype=DTYPE, mode="c", shape=SHAPE)
    fp[0, 0] = -7
    back = pickle.loads(pickle.dumps(fp))
    assert back[0, 0] == -7  # the private change travels with the value
    back[1, 1] = 100
    assert fp[1, 1] == DATA[1, 1]
    assert np.fromfile(path, DTYPE)[0] == 0


def test_fancy_copies_and_unnamed_files_pickle_by_value(path):
    fp = mm.memmap(path, dtype=DTYPE, mode="w+", shape=SHAPE)
    copy = fp[[0, 2]]
    back = pickle.loads(pickle.dumps(copy))
    assert type(back) is np.ndarray
    back[0, 0] = 5
    assert fp[0, 0] == 0
    with tempfile.TemporaryFile() as f:
        anon = mm.memmap(f, dtype=DTYPE, shape=SHAPE, mode="w+")
        anon[:] = DATA
        back = pickle.loads(pickle.dumps(anon))
        np.testing.assert_array_equal(back, DATA)
        back[0, 0] = 50
        assert anon[0, 0] == 0


# -- numpy's own test module ---------------------------------------------------------------


def test_numpys_memmap_tests_pass(tmp_path):
    source = pathlib.Path(np.__file__).parent / "_core" / "tests" / "test_memmap.py"
    if not source.is_file():
        pytest.skip("numpy's test_memmap.py is not installed")
    text = source.read_text()
    assert "memmap(" in text
    # Functions look their globals up when called: rebinding the name at the
    # end of the module makes every test use ours.
    text += (
        "\n\nfrom mmarray import memmap  # noqa\n"
        "assert memmap.__module__.startswith('mmarray'), memmap\n"
    )
    copy = tmp_path / "test_numpy_memmap.py"
    copy.write_text(text)
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not madvise",
            str(copy),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=pythonpath),
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
    assert "failed" not in out.stdout
