"""The fast paths of appending: pages faulted in ahead, and the header's
length recorded without reading it back.

* ``append`` faults a stretch of fresh pages in at once
  (``_region.prefault``, ``MADV_POPULATE_WRITE``) instead of one page fault
  per page; rows must be exactly what plain copies would leave, across
  growth, both kinds of storage and ``concurrent=`` on and off.  A
  concurrent appender faults its stretch in *before* taking the array lock,
  so that the others go on appending meanwhile.
* A concurrent appender remembers the header bytes it wrote
  (``LengthField.head + tail(n)``) so that the next append compares instead
  of parsing; those bytes must be the header's, byte for byte.  Its
  common case (``MappedArray._append_shared``) is written out, apart from
  the general calls that big batches and threads inside ``lock()`` take.
* mmarray's own holds of the array lock try a few times before they sleep
  in the kernel (``_locks.holder``).
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import threading
import time

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import mmarray as mm
from mmarray import _locks, _region
from mmarray._header import LengthField, data_offset_for, encode_header, read_header

MiB = 1 << 20
ROW = np.dtype([("w", "<i4"), ("seq", "<i4"), ("chk", "<u8")])


def rss_of(path: str) -> int:
    """Resident bytes of this process's mappings of ``path``."""
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.rstrip().endswith(path)
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def numbered(start: int, n: int) -> np.ndarray:
    rows = np.zeros(n, ROW)
    rows["seq"] = np.arange(start, start + n)
    rows["chk"] = rows["seq"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return rows


# -- prefault() ---------------------------------------------------------------------


def test_prefault_clips_to_the_mapping_and_rounds_to_a_page(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_region, "_POPULATE_WRITE", 23)
    path = tmp_path / "p.bin"
    with mm.MappedFile(path, "w+", capacity=3 * mmap.PAGESIZE + 100) as f:
        m = f._map()
        m.madvise = lambda *args: calls.append(args)
        # The start rounded down to its page; the end is where the range ends.
        assert _region.prefault(m, 10, 50) == 60
        assert calls.pop() == (23, 0, 60)
        # Clipped at the end of the mapping.
        assert _region.prefault(m, mmap.PAGESIZE + 1, 100 * MiB) == len(m)
        assert calls.pop() == (23, mmap.PAGESIZE, len(m) - mmap.PAGESIZE)
        # Nothing past the end.
        assert _region.prefault(m, len(m), 10) == len(m)
        assert all(start + length <= len(m) for _, start, length in calls)
        del m.madvise


def test_prefault_faults_pages_in(tmp_path):
    if _region._POPULATE_WRITE is None:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    path = tmp_path / "p.bin"
    with mm.MappedFile(path, "w+", capacity=4 * MiB) as f:
        m = f._map()
        before = rss_of(str(path))
        _region.prefault(m, 0, 2 * MiB)
        assert rss_of(str(path)) - before >= 2 * MiB


def test_prefault_without_support_does_nothing_and_stops_trying(tmp_path, monkeypatch):
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(_region, "_POPULATE_WRITE", 23)
    with mm.MappedFile(tmp_path / "p.bin", "w+", capacity=8 * mmap.PAGESIZE) as f:
        m = f._map()
        m.madvise = refuse  # (a Map has a __dict__)
        assert _region.prefault(m, 0, mmap.PAGESIZE) == mmap.PAGESIZE
        assert _region._POPULATE_WRITE is None  # an old kernel: never again
        _region.prefault(m, 0, mmap.PAGESIZE)
        assert len(calls) == 1
        del m.madvise


def test_prefault_failure_other_than_einval_is_ignored(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(errno.EFAULT, "Bad address")

    monkeypatch.setattr(_region, "_POPULATE_WRITE", 23)
    with mm.MappedFile(tmp_path / "p.bin", "w+", capacity=8 * mmap.PAGESIZE) as f:
        m = f._map()
        m.madvise = fail
        assert _region.prefault(m, 0, mmap.PAGESIZE) == mmap.PAGESIZE
        assert _region._POPULATE_WRITE == 23  # kept: the next stretch may work
        del m.madvise


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_small_append_faults_a_stretch_ahead(tmp_path, concurrent):
    if _region._POPULATE_WRITE is None:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    path = str(tmp_path / "a.npy")
    with mm.open_array(path, "w+", dtype=ROW, shape=(0,), capacity=(4 * MiB) // ROW.itemsize,
                       concurrent=concurrent) as a:
        a.append(numbered(0, 1))
        assert rss_of(path) >= _region.PREFAULT_BYTES  # not just the page written
        assert rss_of(path) < 4 * MiB  # ...and not the whole capacity
        assert a[0]["seq"] == 0


def test_a_concurrent_appender_faults_pages_in_without_the_array_lock(tmp_path, monkeypatch):
    """The others append while one populates a stretch: nothing of the
    1 MiB populate may happen under the array lock."""
    from mmarray import _array, _locks

    path = str(tmp_path / "a.npy")
    seen = []
    real = _array.prefault

    def watching(m, start, length):
        fd = os.open(path, os.O_RDWR)
        try:
            free = _locks.try_lock(fd, _locks.ARRAY)  # another description's view
        finally:
            os.close(fd)  # (drops the probe's lock too)
        seen.append((length, free))
        return real(m, start, length)

    monkeypatch.setattr(_array, "prefault", watching)
    with mm.open_array(path, "w+", dtype=ROW, shape=(0,), concurrent=True) as a:
        for i in range(0, 3 * MiB // ROW.itemsize, 500):
            a.append(numbered(i, 500))
        assert np.array_equal(a[:]["seq"], np.arange(len(a)))
    stretches = [free for length, free in seen if length >= _region.PREFAULT_BYTES]
    assert len(stretches) >= 3  # one per MiB appended, at least
    assert all(stretches)
    assert all(free or length < _region.PREFAULT_BYTES for length, free in seen)


def test_fault_ahead_survives_a_mapping_closed_under_it(tmp_path, monkeypatch):
    """Made without the handle's lock: another thread may close or remap
    the handle meanwhile; the append goes on (or fails) as it would."""
    from mmarray import _array

    path = str(tmp_path / "a.npy")
    a = mm.open_array(path, "w+", dtype=ROW, shape=(0,), concurrent=True)
    a.append(numbered(0, 10))

    real = _array.prefault

    def unmapped(m, start, length):
        if length == _region.PREFAULT_BYTES:  # the stretch made before the lock
            raise ValueError("mmap closed or invalid")
        return real(m, start, length)

    monkeypatch.setattr(_array, "prefault", unmapped)
    a._state.ahead = (0, 0)
    a.append(numbered(10, 10))  # the populate failed; the rows still land
    assert a._state.ahead == (0, 0)  # (the copy took its own page faults)
    monkeypatch.undo()
    a.append(numbered(20, 10))  # the next append faults the stretch in
    assert a._state.ahead[0] == a._state.buf._region.map.address
    a.close()
    a._fault_ahead(160)  # closed: nothing to fault, nothing raised
    with pytest.raises(ValueError, match="closed"):
        a.append(numbered(30, 1))
    assert np.array_equal(np.load(path)["seq"], np.arange(30))


# -- rows through the fast copy -------------------------------------------------------


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(0, 5000), min_size=1, max_size=12),
    concurrent=st.booleans(),
    shm=st.booleans(),
    populate=st.booleans(),
)
def test_appended_rows_are_exactly_the_rows_given(tmp_path, shm_name, monkeypatch, batches,
                                                  concurrent, shm, populate):
    """Batches of random sizes (so appends cross prefault stretches, growth
    steps and the pwrite threshold), with the hint on and off."""
    if not populate:
        monkeypatch.setattr(_region, "_POPULATE_WRITE", None)
    target = f"shm://{shm_name}" if shm else str(tmp_path / "rows.npy")
    want, start = [], 0
    with mm.open_array(target, "w+", dtype=ROW, shape=(0,), concurrent=concurrent) as a:
        for n in batches:
            rows = numbered(start, n)
            a.append(rows)
            want.append(rows)
            start += n
        got = np.asarray(a[:]).copy()
        if not shm:
            a.flush()
            assert np.array_equal(np.load(target), np.concatenate(want))
    assert np.array_equal(got, np.concatenate(want))
    monkeypatch.undo()


# -- the header bytes a concurrent appender remembers ------------------------------------

row_dtypes = st.one_of(
    hnp.scalar_dtypes().filter(lambda d: d.kind not in "OV"),
    st.just(np.dtype([("a", "<i4"), ("b", "<f8", (3,)), ("c", "S5")])),
    st.just(np.dtype([("x", ">u2"), ("y", "<c16")], align=True)),
)


@settings(max_examples=60, deadline=None)
@given(dtype=row_dtypes, rows=st.lists(st.integers(0, 9), max_size=3),
       lengths=st.lists(st.integers(0, 10**12), min_size=1, max_size=5))
def test_length_field_bytes_are_the_header_numpy_writes(dtype, rows, lengths):
    shape = (0, *rows)
    offset = data_offset_for(dtype, len(shape))
    raw = encode_header(dtype, shape, False, offset)
    field = LengthField(read_header(raw, len(raw)), raw)
    for n in lengths:
        header = encode_header(dtype, (n, *rows), False, offset)
        assert field.head + field.tail(n) == header[: field.probe]
        assert field.read(header[: field.probe]) == n


def test_a_concurrent_appender_remembers_the_bytes_it_wrote(tmp_path):
    path = str(tmp_path / "c.npy")
    with mm.open_array(path, "w+", dtype=ROW, shape=(0,), concurrent=True) as a, \
            mm.open_array(path, "r+", concurrent=True) as b:
        for i in range(30):
            (a if i % 3 else b).append(numbered(i * 7, 7))
            writer = (a if i % 3 else b)._state
            assert writer.parsed == (bytes(writer._probe(writer.field.probe)), (i + 1) * 7)
        assert np.array_equal(np.load(path)["seq"], np.arange(210))
    assert os.path.getsize(path) > 0


# -- every length recorded ---------------------------------------------------------------


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=row_dtypes, rows=st.lists(st.integers(1, 3), max_size=2),
       steps=st.lists(st.one_of(st.integers(0, 3), st.integers(0, 2000)),
                      min_size=1, max_size=25),
       shm=st.booleans())
def test_every_recorded_length_leaves_the_header_numpy_writes(tmp_path, shm_name, dtype, rows,
                                                               steps, shm):
    """Lengths that move one digit, several, or the digit count: after each
    record, the header is byte for byte the one numpy writes for that
    shape, and numpy reads that shape."""
    target = f"shm://{shm_name}" if shm else str(tmp_path / "w.npy")
    with mm.open_array(target, "w+", dtype=dtype, shape=(0, *rows), concurrent=True) as a:
        s = a._state
        n = 0
        for step in steps:
            n += step
            a.resize(n)  # recorded under the array lock, as appends are
            header = encode_header(s.dtype, (n, *rows), False, s.offset)
            assert bytes(s.buf._map()[: s.offset]) == header
            assert s.recorded_length() == n
        if not shm:
            a.flush()
            assert np.load(target, mmap_mode="r").shape == (n, *rows)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), min_size=1, max_size=16),
       start=st.sampled_from([0, 9_990, 99_000, 999_999]), shm=st.booleans())
def test_two_concurrent_handles_take_turns_byte_for_byte(tmp_path, shm_name, steps, start, shm):
    """Two concurrent handles append in turns (each picks up the other's
    length, the digit count moving past 10^4, 10^5, 10^6; batches small
    and past the pwrite threshold): after every append the header is the
    one numpy writes and the rows are every batch, in order."""
    target = f"shm://{shm_name}" if shm else str(tmp_path / "turns.npy")
    with mm.open_array(target, "w+", dtype=ROW, shape=(start,), concurrent=True) as a, \
            mm.open_array(target, "r+", concurrent=True) as b:
        n = start
        for use_b, k in steps:
            (b if use_b else a).append(numbered(n, k))
            n += k
            s = (b if use_b else a)._state
            assert bytes(s.buf._map()[: s.offset]) == encode_header(ROW, (n,), False, s.offset)
        assert a.refresh() == b.refresh() == n
        assert np.array_equal(np.asarray(a[start:])["seq"], np.arange(start, n))


# -- the array lock, tried before sleeping ---------------------------------------------


def test_holder_takes_a_free_lock_and_waits_for_a_held_one(tmp_path):
    path = str(tmp_path / "l.bin")
    with open(path, "wb") as f:
        f.write(b"x")
    mine, other = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        hold, release = _locks.holder(_locks.ARRAY), _locks.releaser(_locks.ARRAY)
        hold(mine)
        assert not _locks.try_lock(other, _locks.ARRAY)
        release(mine)
        assert _locks.try_lock(other, _locks.ARRAY)  # now the other holds it
        released = []

        def let_go() -> None:
            time.sleep(0.2)  # far longer than the tries before sleeping
            released.append(time.monotonic())
            _locks.unlock(other, _locks.ARRAY)

        t = threading.Thread(target=let_go)
        t.start()
        hold(mine)  # spins, then sleeps in the kernel until the release
        took = time.monotonic()
        t.join()
        assert released and released[0] <= took
        assert not _locks.try_lock(other, _locks.ARRAY)
        release(mine)
    finally:
        os.close(mine)
        os.close(other)


def test_holder_passes_errors_on_and_unsupported_locks_by(tmp_path, monkeypatch):
    calls = []

    def failing(code):
        def fcntl(fd, cmd, arg):
            calls.append(cmd)
            raise OSError(code, os.strerror(code))
        return fcntl

    monkeypatch.setattr(_locks.fcntl, "fcntl", failing(errno.ENOLCK))
    _locks.holder(_locks.ARRAY)(3)  # a filesystem without locks: counts as taken
    assert calls == [_locks._SETLK, _locks._SETLKW]
    calls.clear()
    monkeypatch.setattr(_locks.fcntl, "fcntl", failing(errno.EBADF))
    with pytest.raises(OSError) as e:
        _locks.holder(_locks.ARRAY, shared=True)(3)
    assert e.value.errno == errno.EBADF
    assert calls == [_locks._SETLK, _locks._SETLKW]
    calls.clear()
    monkeypatch.setattr(_locks.fcntl, "fcntl", failing(errno.EAGAIN))
    monkeypatch.setattr(_locks, "SPIN", 3)
    with pytest.raises(OSError):  # (EAGAIN from the wait itself: passed on)
        _locks.holder(_locks.ARRAY)(3)
    assert calls == [_locks._SETLK] * 3 + [_locks._SETLKW]
