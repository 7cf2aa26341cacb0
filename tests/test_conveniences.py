"""The conveniences of DESIGN.md: ``open_array(data=)``, ``advise`` on
arrays and memmaps, ``with memmap``, unnamed shared blocks, ``info()``,
notebook display, and errors that say what to do."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mmarray as mm

SHM_DIR = "/dev/shm"


def vm_flags(path: str) -> list[tuple[int, set[str]]]:
    """``(size in bytes, VmFlags)`` of this process's mappings of ``path``
    (``rr``: MADV_RANDOM, ``sr``: MADV_SEQUENTIAL)."""
    found, size, current = [], 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                current, size = line.rstrip().endswith(path), hi - lo
            elif current and line.startswith("VmFlags:"):
                found.append((size, set(line.split()[1:])))
    return found


# -- open_array(data=) -------------------------------------------------------------

dtypes = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(32, 64)),
    hnp.complex_number_dtypes(endianness="="),
    st.just(np.dtype([("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3")])),
    st.just(np.dtype("M8[ms]")),
    st.just(np.dtype("?")),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                        min_side=0, max_side=5))),
       fortran=st.booleans(), shm=st.booleans())
def test_data_round_trips(tmp_path, shm_name, data, fortran, shm):
    if fortran:
        data = np.asfortranarray(data)
    target = f"shm://{shm_name}" if shm else str(tmp_path / "d.npy")
    # Compared as bytes: assert_array_equal finds NaN inside records unequal.
    with mm.open_array(target, "w+", data=data) as a:
        assert a.dtype == data.dtype and a.shape == data.shape
        assert np.asarray(a).tobytes() == data.tobytes()
        with mm.open_array(target) as b:  # another reader (a block goes with its creator)
            assert np.asarray(b).tobytes() == data.tobytes()
    if not shm:
        assert np.load(target).tobytes() == data.tobytes()


def test_data_list_with_dtype_and_capacity(tmp_path):
    path = tmp_path / "l.npy"
    with mm.open_array(path, "x+", data=[[1, 2], [3, 4]], dtype="f4", capacity=100) as a:
        assert a.dtype == np.float32 and a.capacity == 100
        a.append([[5, 6]])
    assert np.load(path).tolist() == [[1, 2], [3, 4], [5, 6]]


def test_data_from_a_mapped_array(tmp_path):
    src = mm.open_array(tmp_path / "s.npy", "w+", data=np.arange(6).reshape(3, 2))
    with mm.open_array(tmp_path / "t.npy", "w+", data=src) as dst:
        assert dst[:].tolist() == src[:].tolist()
    src.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="f4"), "not dtype=float32"),
        (dict(shape=(4, 4)), r"not shape=\(4, 4\)"),
        (dict(shape=3), r"not shape=\(3,\)"),
    ],
)
def test_data_that_disagrees_is_refused_and_leaves_nothing(tmp_path, kwargs, message):
    path = tmp_path / "x.npy"
    with pytest.raises(ValueError, match=message):
        mm.open_array(path, "w+", data=np.eye(3), **kwargs)
    assert not path.exists()


def test_data_that_agrees_is_accepted(tmp_path):
    with mm.open_array(tmp_path / "a.npy", "w+", data=np.eye(3), dtype="f8", shape=(3, 3)) as a:
        assert float(a[2, 2]) == 1.0
    sub = np.dtype(("<i2", (2,)))  # a subarray dtype is its base plus trailing axes
    with mm.open_array(tmp_path / "b.npy", "w+", data=np.ones((4, 2), "<i2"), dtype=sub) as a:
        assert a.shape == (4, 2)


@pytest.mark.parametrize("mode", ["r", "r+", "a", "c"])
def test_data_needs_a_creating_mode(tmp_path, mode):
    path = tmp_path / "m.npy"
    np.save(path, np.arange(3))
    with pytest.raises(ValueError, match="data= is for modes 'w\\+' and 'x\\+'"):
        mm.open_array(path, mode, data=[1, 2, 3])
    assert np.load(path).tolist() == [0, 1, 2]


def test_data_with_x_plus_on_an_existing_file(tmp_path):
    path = tmp_path / "e.npy"
    np.save(path, np.arange(3))
    with pytest.raises(FileExistsError):
        mm.open_array(path, "x+", data=[7, 8])
    assert np.load(path).tolist() == [0, 1, 2]


def test_data_of_objects_is_a_type_error(tmp_path):
    with pytest.raises(TypeError):
        mm.open_array(tmp_path / "o.npy", "w+", data=np.array([1, "a"], dtype=object))
    assert not (tmp_path / "o.npy").exists()


def test_data_cell_run_twice_while_the_first_array_lives(tmp_path):
    # A notebook's history keeps the first array alive; the second run
    # makes a new file and the old array keeps its bytes.
    path = tmp_path / "cell.npy"
    first = mm.open_array(path, "w+", data=np.arange(5))
    second = mm.open_array(path, "w+", data=np.arange(5) * 10)
    assert first[:].tolist() == [0, 1, 2, 3, 4]
    assert second[:].tolist() == [0, 10, 20, 30, 40]
    second.close()
    first.close()
    assert np.load(path).tolist() == [0, 10, 20, 30, 40]


def test_no_file_descriptor_leaks_when_data_fails(tmp_path, fd_count):
    before = fd_count()
    for _ in range(3):
        with pytest.raises(ValueError):
            mm.open_array(tmp_path / "f.npy", "w+", data=np.eye(2), shape=(3,))
        # Fails after the array opened: the writer lock must not be closed twice.
        np.save(tmp_path / "g.npy", np.arange(3))
        with pytest.raises(ValueError):
            mm.open_array(tmp_path / "g.npy", "a", dtype="f4")
    assert fd_count() == before


# -- advise ----------------------------------------------------------------------


def test_mapped_array_advise_covers_rows_appended_later(tmp_path):
    path = str(tmp_path / "adv.npy")
    with mm.open_array(path, "w+", dtype="f8", shape=(0,), capacity=16) as a:
        a.advise("random")
        assert any("rr" in flags for _, flags in vm_flags(path))
        a.append(np.zeros(1 << 18))          # grows: a new, larger mapping
        size, flags = max(vm_flags(path))
        assert size >= (1 << 18) * 8 and "rr" in flags
        a.advise("sequential")
        size, flags = max(vm_flags(path))
        assert "sr" in flags and "rr" not in flags
        a.advise("normal")
        a.append(np.zeros(1 << 19))
        size, flags = max(vm_flags(path))
        assert not {"rr", "sr"} & flags


def test_mapped_array_advise_errors(tmp_path):
    a = mm.open_array(tmp_path / "e.npy", "w+", dtype="u1", shape=(10,))
    with pytest.raises(ValueError, match="hint must be one of"):
        a.advise("fast")
    a.advise("willneed")
    a.advise("dontneed")
    assert a[:].tolist() == [0] * 10
    a.close()
    with pytest.raises(ValueError, match="closed"):
        a.advise("random")


def test_mapped_array_advise_dontneed_keeps_copy_on_write_changes(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.arange(5000))
    with mm.open_array(path, "c") as a:
        a[0] = -1
        a.advise("dontneed")
        assert int(a[0]) == -1


def test_memmap_advise_and_context_manager(tmp_path):
    path = str(tmp_path / "m.dat")
    with mm.memmap(path, np.float64, "w+", shape=(1000, 8)) as m:
        assert isinstance(m, mm.memmap)
        m.advise("random")
        assert any("rr" in flags for _, flags in vm_flags(path))
        m[3] = 7.0
        m[10:20].advise("sequential")      # a view's pages
        m[::7].advise("willneed")
        m[:0].advise("random")             # nothing to advise
        with pytest.raises(ValueError, match="hint must be one of"):
            m.advise("soon")
    assert np.fromfile(path)[24] == 7.0    # closed (flushed) on exit


def test_memmap_context_manager_closes_on_error(tmp_path):
    path = str(tmp_path / "err.dat")
    with pytest.raises(RuntimeError), mm.memmap(path, np.uint8, "w+", shape=(4,)) as m:
        m[:] = 5
        raise RuntimeError
    assert np.fromfile(path, np.uint8).tolist() == [5, 5, 5, 5]


def test_mapped_file_hint_survives_resize(tmp_path):
    path = str(tmp_path / "f.bin")
    with mm.MappedFile(path, "w+", capacity=4096) as f:
        f.advise("random")
        f.resize(1 << 20)
        size, flags = max(vm_flags(path))
        assert size == 1 << 20 and "rr" in flags


# -- SharedBlock.create(None, ...) ---------------------------------------------------


def test_unnamed_block_has_a_fresh_name_and_is_owned():
    a = mm.SharedBlock.create(None, 1000)
    b = mm.SharedBlock.create(None, 1000)
    try:
        assert a.name != b.name and a.owner and b.owner
        assert re.fullmatch(r"mm-[0-9a-f]{16}", a.name)
        assert a.name in mm.shared_blocks()
        arr = a.array(np.int32, 10)
        arr[:] = 3
        back = pickle.loads(pickle.dumps(arr))
        assert back.tolist() == [3] * 10
        del arr, back
    finally:
        a.close()
        b.close()
    assert not os.path.exists(os.path.join(SHM_DIR, a.name))
    assert not os.path.exists(os.path.join(SHM_DIR, b.name))


def _fill(view, value):
    view[:] = value
    return int(view.sum())


def test_unnamed_block_in_a_spawned_pool():
    import multiprocessing as mp

    with mm.SharedBlock.create(None, 4 * 1000) as blk:
        arr = blk.array(np.int32, 1000)
        with mp.get_context("spawn").Pool(2) as pool:
            sums = pool.starmap(_fill, [(arr[i * 250:(i + 1) * 250], i + 1) for i in range(4)])
        assert sums == [250 * (i + 1) for i in range(4)]
        assert np.array_equal(arr, np.repeat(np.arange(1, 5, dtype=np.int32), 250))
        del arr


def test_unnamed_block_persist():
    blk = mm.SharedBlock.create(None, 10, persist=True)
    blk.close()
    try:
        assert blk.name in mm.shared_blocks()
    finally:
        mm.SharedBlock.open(blk.name).unlink()


def test_unnamed_block_bad_size():
    before = set(mm.shared_blocks())
    with pytest.raises(ValueError):
        mm.SharedBlock.create(None, 0)
    assert set(mm.shared_blocks()) <= before | set()


# -- info() ----------------------------------------------------------------------


def test_info_of_a_growable_array(tmp_path):
    path = tmp_path / "i.npy"
    with mm.open_array(path, "w+", dtype="<f4", shape=(2, 3), capacity=1000):
        pass
    i = mm.info(path)
    assert (i.kind, i.dtype, i.shape, i.capacity, i.fortran_order) == (
        "file", np.dtype("<f4"), (2, 3), 1000, False)
    assert i.target == str(path) and i.size == path.stat().st_size
    assert i.allocated == path.stat().st_blocks * 512
    assert i.format == ".npy version 1.0" and i.data_offset >= 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        i.size = 0


def test_info_of_a_sparse_raw_file(tmp_path):
    path = tmp_path / "sparse.bin"
    with mm.MappedFile(path, "w+", capacity=64 << 20):
        pass
    i = mm.info(str(path))
    assert i.format == "raw bytes" and i.dtype is None and i.capacity is None
    assert i.size == 64 << 20 and i.allocated < i.size
    assert "sparse" in str(i)


def test_info_of_a_shared_block_and_its_array():
    blk = mm.SharedBlock.create(None, 12345)
    try:
        i = mm.info("shm://" + blk.name)
        assert (i.kind, i.size, i.format) == ("shared block", 12345, "raw bytes")
        assert i.allocated >= 12345  # blocks are allocated up front
    finally:
        blk.close()
    with mm.open_array("shm://" + blk.name, "w+", dtype="i8", shape=(7,)):
        i = mm.info("shm://" + blk.name)
        assert i.shape == (7,) and i.capacity == 7


def test_info_matches_the_command_line(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((4, 2), ">i2"))
    proc = subprocess.run([sys.executable, "-m", "mmarray", "info", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == str(mm.info(path))


def test_info_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        mm.info(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError):
        mm.info("shm://mmtest-surely-not-there")
    with pytest.raises(IsADirectoryError):
        mm.info(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError):
        mm.info(tmp_path / "fifo")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <}     \n")
    with pytest.raises(ValueError):
        mm.info(bad)


# -- notebook display ----------------------------------------------------------------


def test_array_html(tmp_path):
    path = tmp_path / "<b>&.npy"
    a = mm.open_array(path, "w+", dtype="f8", shape=(0, 2), capacity=10)
    a.append(np.ones((3, 2)))
    html = a._repr_html_()
    assert "&lt;b&gt;&amp;.npy" in html and "<b>&" not in html   # escaped
    for text in ("float64", "(3, 2)", "3 of 10 rows", "not flushed yet", "3 in memory",
                 "on storage", "mode"):
        assert text in html, text
    a.flush()
    assert "3 rows (all flushed)" in a._repr_html_()
    a.append(np.ones((1, 2)))
    assert "3 rows; 4 in memory" in a._repr_html_()
    a.close()
    assert "closed" in a._repr_html_()


def test_buffer_html(tmp_path):
    with mm.MappedFile(tmp_path / "f.bin", "w+", capacity=1 << 20) as f:
        html = f._repr_html_()
        assert "MappedFile" in html and "1.0 MiB" in html and "(sparse)" in html
    assert "closed" in f._repr_html_()
    with mm.SharedBlock.create(None, 4096) as blk:
        html = blk._repr_html_()
        assert "shm://" + blk.name in html and "removes the name" in html
    assert "<table>" in mm.info(tmp_path / "f.bin")._repr_html_()


# -- errors that say what to do ----------------------------------------------------


def test_open_array_on_raw_bytes_points_to_mapped_file(tmp_path, shm_name):
    path = tmp_path / "raw.bin"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match=r"raw\.bin.*no \.npy header.*MappedFile.*memmap"):
        mm.open_array(path)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        mm.open_array(tmp_path / "empty.bin", "r+")
    with mm.SharedBlock.create(shm_name, 100), pytest.raises(ValueError, match=r"no \.npy header"):
        mm.open_array("shm://" + shm_name)
    assert path.read_bytes() == b"x" * 100


def test_writing_into_a_read_only_array_says_which_mode(tmp_path):
    path = tmp_path / "ro.npy"
    np.save(path, np.arange(4))
    with mm.open_array(path) as a:
        with pytest.raises(ValueError, match=r"read-only.*mode 'r' \(the default\).*'r\+'"):
            a[0] = 1
        with pytest.raises(ValueError, match="mode 'r'"):
            np.add(a, 1, out=a)
        assert a[:].tolist() == [0, 1, 2, 3]
    with mm.open_array(path, "r+") as a:
        a[0] = 9
        np.add(a, 1, out=a)
    assert np.load(path).tolist() == [10, 2, 3, 4]


def test_version_flag():
    proc = subprocess.run([sys.executable, "-m", "mmarray", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mmarray {mm.__version__}"
