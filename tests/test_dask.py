"""Dask over mapped arrays (issue 7): ``to_dask``, ``dask.array.store`` into
mapped targets, and both on a real distributed scheduler.

The cluster tests share one module-scoped ``LocalCluster``: two worker
processes of one thread each, on the loopback interface.  Everything here
skips when the ``dask`` extra (dask + distributed) is not installed.
"""

from __future__ import annotations

import gc
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import mmarray as mm
from mmarray._views import mapping_of

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

REPO = pathlib.Path(mm.__file__).resolve().parents[1]
SHM_DIR = pathlib.Path("/dev/shm")
GIB = 1 << 30


@pytest.fixture(scope="module")
def client():
    """A 2-process cluster on 127.0.0.1; the default scheduler while it lives."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env)


# -- sources -------------------------------------------------------------------

DATA = np.random.default_rng(7).random((1000, 7))

# Each maker returns a source holding DATA; ``keep`` holds what must stay
# open for the duration of the test (an owned shared block, a handle).


def _open_array(tmp_path, shm_name, keep):
    a = mm.open_array(tmp_path / "a.npy", "w+", dtype=DATA.dtype, shape=DATA.shape)
    a[:] = DATA
    return a


def _npy_path(tmp_path, shm_name, keep):
    np.save(tmp_path / "p.npy", DATA)
    return str(tmp_path / "p.npy")


def _memmap(tmp_path, shm_name, keep):
    m = mm.memmap(tmp_path / "m.f8", dtype=DATA.dtype, mode="w+", offset=24, shape=DATA.shape)
    m[:] = DATA
    return m


def _mapped_file_view(tmp_path, shm_name, keep):
    f = mm.MappedFile(tmp_path / "f.bin", "w+", capacity=64 + DATA.nbytes)
    v = f.array(DATA.dtype, DATA.shape, offset=64)
    v[:] = DATA
    return v


def _shm_array(tmp_path, shm_name, keep):
    a = mm.open_array(f"shm://{shm_name}", "w+", dtype=DATA.dtype, shape=DATA.shape)
    a[:] = DATA
    return a


def _shm_target(tmp_path, shm_name, keep):
    keep.append(_shm_array(tmp_path, shm_name, keep))  # owns the block
    return f"shm://{shm_name}"


def _shared_block_view(tmp_path, shm_name, keep):
    blk = mm.SharedBlock.create(shm_name, DATA.nbytes)
    v = blk.array(DATA.dtype, DATA.shape)
    v[:] = DATA
    return v


def _data_file(tmp_path) -> str:
    return _npy_path(tmp_path, None, [])


# -- reading on the cluster ----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [_open_array, _npy_path, _memmap, _mapped_file_view, _shm_array, _shm_target,
     _shared_block_view],
    ids=lambda f: f.__name__[1:],
)
def test_reduce_on_cluster_matches_numpy(client, tmp_path, shm_name, make):
    keep: list = []
    source = make(tmp_path, shm_name, keep)
    x = mm.to_dask(source, chunks=128)
    assert x.shape == DATA.shape and x.dtype == DATA.dtype
    assert x.numblocks == (8, 1)
    total, col_means, top = dask.compute(x.sum(), x.mean(axis=0), x.max(axis=1))
    np.testing.assert_allclose(total, DATA.sum())
    np.testing.assert_allclose(col_means, DATA.mean(axis=0))
    np.testing.assert_array_equal(top, DATA.max(axis=1))
    np.testing.assert_array_equal(x[[5, 999, 0], 2:5].compute(), DATA[[5, 999, 0], 2:5])
    np.testing.assert_array_equal(x[::-7].compute(), DATA[::-7])


def test_workers_map_the_bytes_themselves(client, tmp_path):
    a = _open_array(tmp_path, None, [])
    x = mm.to_dask(a, chunks=100)
    path = a.target

    def probe(block):
        m = mapping_of(block)
        return np.array([[os.getpid(), m is not None and m.source.target == path,
                          type(block) is np.ndarray, block.flags.writeable]])

    seen = x.map_blocks(probe, chunks=(1, 4), dtype=np.int64).compute()
    workers = set(client.run(os.getpid).values())
    assert set(seen[:, 0]) <= workers and os.getpid() not in set(seen[:, 0])
    # Each chunk is a read-only plain-ndarray view of the worker's own mapping.
    assert seen[:, 1:].tolist() == [[1, 1, 0]] * 10


def test_rows_appended_without_flush_reach_the_workers(client, tmp_path):
    a = mm.open_array(tmp_path / "g.npy", "a", dtype=np.int64)
    a.append(np.arange(1000))
    x = mm.to_dask(a, chunks=100)
    assert np.load(tmp_path / "g.npy").shape == (0,)  # not flushed: the header says 0
    assert int(x.sum().compute()) == 499_500  # the reference carries its own shape
    a.append(np.arange(10))
    assert x.shape == (1000,)  # a snapshot of the shape at to_dask time
    a.close()


def test_dask_array_keeps_an_owned_block_alive(client, shm_name):
    def make():
        a = mm.open_array(f"shm://{shm_name}", "w+", dtype=np.int64, shape=(100,))
        a[:] = 3
        return mm.to_dask(a, chunks=10)  # the owner handle is dropped here

    x = make()
    gc.collect()
    assert (SHM_DIR / shm_name).exists()
    assert int(x.sum().compute()) == 300
    del x
    gc.collect()
    assert not (SHM_DIR / shm_name).exists()


# -- writing on the cluster ------------------------------------------------------------


def _mapped_array_target(path, like):
    return mm.open_array(path, "w+", dtype=like.dtype, shape=like.shape)  # the recipe


def _memmap_target(path, like):
    return mm.memmap(path, dtype=like.dtype, mode="w+", shape=like.shape)


@pytest.mark.parametrize("lock", [False, True], ids=["lock=False", "lock=True"])
@pytest.mark.parametrize("make_target", [_mapped_array_target, _memmap_target],
                         ids=["MappedArray", "memmap"])
def test_store_into_a_mapped_file_from_workers(client, tmp_path, make_target, lock):
    src = _open_array(tmp_path, None, [])
    y = mm.to_dask(src, chunks=128) * 2 + 1
    # 1.7 MB: without mmarray's sizeof, store would put the target in a task of its own.
    big = da.concatenate([y] * 30, axis=0)
    path = tmp_path / "out.bin"
    target = make_target(path, big)
    assert da.store(big, target, lock=lock) is None
    target.flush()
    expected = np.concatenate([DATA * 2 + 1] * 30)
    if isinstance(target, mm.MappedArray):
        np.testing.assert_array_equal(np.load(path), expected)
    else:
        np.testing.assert_array_equal(np.fromfile(path).reshape(expected.shape), expected)


def test_mapped_array_moves_between_workers_by_reference(client, tmp_path):
    # distributed ships ndarray subclasses by value unless told otherwise: a
    # store target fetched from another worker would be a copy, its writes lost.
    target = _memmap_target(tmp_path / "d.bin", DATA)
    w0, w1 = sorted(client.scheduler_info()["workers"])
    held = client.scatter(target, workers=[w0])

    def write(t):
        t[:] = 1.5
        return mapping_of(t) is not None

    assert client.submit(write, held, workers=[w1], allow_other_workers=False).result()
    np.testing.assert_array_equal(np.fromfile(tmp_path / "d.bin"), np.full(DATA.size, 1.5))


def test_store_into_a_shared_block(client, shm_name):
    y = da.arange(10_000, chunks=1000, dtype=np.int32)
    with mm.open_array(f"shm://{shm_name}", "w+", dtype=y.dtype, shape=y.shape) as target:
        da.store(y, target, lock=False)
        np.testing.assert_array_equal(np.asarray(target), np.arange(10_000, dtype=np.int32))


# -- the graph carries references -----------------------------------------------------


def test_graph_of_1gib_stays_in_kib(tmp_path, client):
    cloudpickle = pytest.importorskip("cloudpickle")
    path = tmp_path / "big.npy"
    mm.open_array(path, "w+", dtype=np.float64, shape=(GIB // 8,)).close()  # sparse
    assert os.path.getsize(path) > GIB
    for source in (str(path), mm.memmap(path, dtype=np.float64, mode="r", offset=4096),
                   mm.MappedFile(path).array(np.uint8, offset=4096)):
        x = mm.to_dask(source)
        assert x.nbytes == GIB and x.numblocks == (8,)  # 128 MiB chunks
        graph = dict(x.sum().__dask_graph__())
        assert len(pickle.dumps(graph)) < 16 * 1024
        assert len(cloudpickle.dumps(graph)) < 16 * 1024
    assert float(x[-10:].sum().compute()) == 0.0  # reads only its own bytes


def test_names_and_tokens(tmp_path):
    path = tmp_path / "t.npy"
    mm.open_array(path, "w+", dtype=np.float64, shape=(GIB // 8,)).close()
    a, b = mm.to_dask(path), mm.to_dask(str(path))
    assert a.name == b.name
    assert mm.to_dask(path, chunks=1000).name != a.name
    m = mm.memmap(path, dtype=np.float64, mode="r+", offset=4096)
    start = time.perf_counter()
    dask.base.tokenize(m)  # the client does not read 1 GiB to name a task
    assert time.perf_counter() - start < 0.5
    assert dask.sizeof.sizeof(m) < 4096


def test_mapped_arrays_ship_as_pickles_in_distributed(tmp_path):
    mm.to_dask(_data_file(tmp_path))  # registers with dask and distributed
    m = mm.memmap(tmp_path / "s.bin", dtype=np.float64, mode="w+", shape=(1 << 20,))
    header, frames = distributed.protocol.serialize(m)
    assert header["serializer"] == "pickle"
    assert sum(len(memoryview(f).cast("B")) for f in frames) < 4096
    back = distributed.protocol.deserialize(header, frames)
    back[7] = 5.0
    assert m[7] == 5.0
    cow = mm.memmap(tmp_path / "s.bin", dtype=np.float64, mode="c")
    header, frames = distributed.protocol.serialize(cow)  # by value, all of it
    assert sum(len(memoryview(f).cast("B")) for f in frames) >= cow.nbytes


# -- chunks ---------------------------------------------------------------------------


def test_auto_chunks_cut_along_the_slowest_axis(tmp_path):
    c = mm.open_array(tmp_path / "c.npy", "w+", dtype=np.float64, shape=(1000, 1000))
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((1000, 1000))))
    with dask.config.set({"array.chunk-size": "1MiB"}):
        rows = mm.to_dask(c).chunks
        cols = mm.to_dask(tmp_path / "f.npy").chunks
        transposed = mm.to_dask(np.asarray(c).T).chunks
    assert rows[1] == (1000,) and len(rows[0]) > 1 and max(rows[0]) * 8000 <= 1 << 20
    assert cols[0] == (1000,) and len(cols[1]) > 1
    assert transposed == cols
    assert mm.to_dask(c).chunks == ((1000,), (1000,))  # 8 MB: one chunk
    assert mm.to_dask(c, chunks=(250, 500)).chunks == ((250,) * 4, (500, 500))
    assert mm.to_dask(c, chunks={0: 400}).chunks[0] == (400, 400, 200)


def _fill(arr: np.ndarray) -> None:
    values = np.arange(arr.size).reshape(arr.shape)
    for name in arr.dtype.names or [None]:
        (arr if name is None else arr[name])[...] = values


@pytest.mark.parametrize(
    "make",
    [
        lambda p: np.asarray(mm.open_array(p, "w+", dtype=np.int32, shape=(6, 4))),
        lambda p: mm.open_array(p, "w+", dtype=np.float32, shape=()),
        lambda p: mm.open_array(p, "w+", dtype=np.float32, shape=(0, 3)),
        lambda p: mm.open_array(p, "w+", dtype=[("t", "<i8"), ("v", "<f4")], shape=(5,)),
        lambda p: mm.MappedFile(p, "w+", capacity=96).records([("t", "<i8"), ("v", "<f4")]),
        lambda p: mm.memmap(p, dtype=np.int16, mode="w+", shape=(5, 6))[1:, ::-2],
    ],
    ids=["ndarray-view", "0-d", "empty", "structured", "records", "strided"],
)
def test_shapes_and_dtypes_round_trip(tmp_path, make):
    src = make(tmp_path / "s.bin")
    _fill(np.asarray(src))
    want = np.array(src)
    x = mm.to_dask(src, chunks=2 if want.ndim else ())
    got = x.compute(scheduler="sync")
    assert type(got) is np.ndarray
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


# -- errors and the optional dependency --------------------------------------------------


def _in_memory_copy(tmp_path):
    return mm.open_array(_data_file(tmp_path))[[1, 2]]  # fancy indexing copies


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: np.arange(3.0), TypeError, "for in-memory arrays use dask.array.from_array"),
        (lambda p: [1.0, 2.0], TypeError, r"got builtins\.list"),
        (_in_memory_copy, TypeError, "holds no mapped bytes"),
        (lambda p: np.memmap(_data_file(p), mode="r"), TypeError,
         "open the file with mmarray.memmap"),
        (lambda p: mm.open_array(_data_file(p), "c"), ValueError, "copy-on-write"),
        (lambda p: mm.memmap(_data_file(p), mode="c"), ValueError, "copy-on-write"),
        (lambda p: mm.MappedFile(_data_file(p), "c").array(), ValueError, "copy-on-write"),
        (lambda p: p / "missing.npy", FileNotFoundError, "missing.npy"),
        (lambda p: "shm://mmtest-no-such-block", FileNotFoundError, "mmtest-no-such-block"),
    ],
    ids=["ndarray", "list", "fancy-copy", "numpy.memmap", "cow-array", "cow-memmap",
         "cow-view", "missing-file", "missing-block"],
)
def test_bad_sources_raise_clearly(tmp_path, make, error, match):
    source = make(tmp_path)
    with pytest.raises(error, match=match):
        mm.to_dask(source)


def test_raw_file_path_suggests_memmap(tmp_path):
    (tmp_path / "raw.bin").write_bytes(bytes(4096))
    with pytest.raises(ValueError, match=r"no \.npy header.*mmarray\.memmap\(path"):
        mm.to_dask(tmp_path / "raw.bin")


def test_closed_array_raises(tmp_path):
    a = mm.open_array(_data_file(tmp_path))
    a.close()
    with pytest.raises(ValueError, match="closed"):
        mm.to_dask(a)


def test_truncated_file_fails_clearly(tmp_path):
    path = _data_file(tmp_path)
    x = mm.to_dask(path, chunks=100)
    os.truncate(path, 4096)  # numpy refuses the short buffer: no SIGBUS
    with pytest.raises(ValueError, match="no longer holds the array given to to_dask"):
        x.sum().compute(scheduler="sync")


def test_without_dask_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r'pip install "mmarray\[dask\]"'):
        mm.to_dask(_data_file(tmp_path))


def test_importing_mmarray_does_not_import_dask():
    proc = _run("""
        import sys
        import mmarray
        assert callable(mmarray.to_dask)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
        assert not loaded, loaded
    """)
    assert proc.returncode == 0, proc.stderr


def test_mmarray_imported_first_still_registers_with_dask(tmp_path):
    # The dask.sizeof entry point (pyproject.toml) makes Dask size mapped
    # arrays as references whatever the import order, so dask.array.store
    # inlines a memmap target in each task instead of shipping a copy.
    proc = _run(f"""
        import numpy as np
        import mmarray as mm
        m = mm.memmap({str(tmp_path / 'e.bin')!r}, dtype=np.uint8, mode="w+", shape=({GIB},))
        import dask.array, distributed.protocol
        from dask.sizeof import sizeof
        assert sizeof(m) < 4096, "no sizeof: is the dask.sizeof entry point installed?"
        header, frames = distributed.protocol.serialize(m)
        assert header["serializer"] == "pickle", header
    """)
    assert proc.returncode == 0, proc.stderr
