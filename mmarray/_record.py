"""The length a growable array records, and who may change it.

The state of a :class:`~mmarray.MappedArray` that outlives its Python
object (its finalizer holds it) and everything about recording its length
in the ``.npy`` header lives here; :mod:`mmarray._array` builds the
ndarray-like surface on top.  The rules:

* **Data before length.**  Rows are written first; the header's new length
  follows in one ``pwrite`` (see :mod:`mmarray._header`).  A durable flush
  syncs the data, then the header.
* **One writer unless asked** (``_locks.WRITER``): a plain writer holds the
  writer lock exclusively from its first change to its close; handles
  opened with ``concurrent=True`` hold it shared, so they exclude plain
  writers but not each other.
* **The array lock** (``_locks.ARRAY``) is held exclusively while a length
  is written -- by concurrent appenders from reading the others' length to
  recording their own -- and shared while a changed header is read, so no
  reader parses a header half rewritten.  ``MappedArray.lock()`` is the same
  lock, on a description of its own.
* **Lock order**, to never deadlock between threads of one handle: the
  array lock (thread lock, then ``fcntl``) first, then :attr:`State.lock`.
  A thread that holds the array through ``MappedArray.lock()`` skips the
  first step.
* **Only the opening process acts.**  The finalizer (close, garbage
  collection, interpreter or worker exit) runs in the process that opened
  the array; a forked child closes its copies of writer-lock descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import threading

import numpy as np

from . import _locks
from ._base import MappedBuffer
from ._header import Header, LengthField, encode_header, read_header

#: Descriptors holding writer locks in this process: a forked child closes
#: its copies, so that only the parent holds the lock (a child that lived
#: on would otherwise keep the array locked after the parent closed it).
_WRITER_FDS: set[int] = set()


def _forget_writer_locks() -> None:
    for fd in _WRITER_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _WRITER_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer_locks)


#: Taking and dropping the array lock (on a handle's descriptor).
_HOLD, _HOLD_SHARED = _locks.holder(_locks.ARRAY), _locks.holder(_locks.ARRAY, shared=True)
_RELEASE = _locks.releaser(_locks.ARRAY)


def writer_lock(buf: MappedBuffer, target: str, *, concurrent: bool = False) -> int:
    """The writer lock of the array in ``buf``, on a description of its own
    (so that it ends with the handle, not with the last view): its
    descriptor, or ``BlockingIOError`` if a handle that excludes us holds it."""
    fd = _locks.reopen(buf._live().fd)
    if not _locks.try_lock(fd, _locks.WRITER, shared=concurrent):
        os.close(fd)
        if concurrent:
            why = "is open for appending by a handle without concurrent=True"
        else:
            why = "is open for appending by another handle (in this process or another)"
        raise BlockingIOError(
            errno.EAGAIN,
            f"{target!r} {why}; one writer per array: close that handle, open this one "
            "with mode 'r', or pass concurrent=True to every appender",
        )
    _WRITER_FDS.add(fd)
    return fd


def close_writer_fd(fd: int) -> None:
    if fd >= 0:
        _WRITER_FDS.discard(fd)
        os.close(fd)


class State:
    """The mutable part of a MappedArray, shared with its finalizer.

    ``lock`` serialises whatever changes the length or the mapping
    (append, resize, flush, close, refresh) between threads.
    """

    __slots__ = (
        "ahead",
        "buf",
        "cap",
        "concurrent",
        "dtype",
        "field",
        "fortran",
        "length",
        "like",
        "lock",
        "offset",
        "parsed",
        "recorded",
        "row_nbytes",
        "row_shape",
        "seen",
        "target",
        "tlock",
        "user_locks",
        "writer_fd",
        "written",
    )

    def __init__(self, buf: MappedBuffer, header: Header, target: str) -> None:
        self.buf = buf
        self.target = target
        self.lock = threading.RLock()
        self.tlock = threading.Lock()  # this handle's turn at the array lock
        self.user_locks: dict[int, bool] = {}  # thread -> shared, for lock()
        self.writer_fd = -1  # a description of our own holding the writer lock
        self.concurrent = False
        self.dtype: np.dtype = header.dtype
        self.like = self.dtype  # the last dtype object found equal to it
        self.fortran: bool = header.fortran_order
        self.offset: int = header.data_offset
        self.row_shape: tuple[int, ...] = header.shape[1:]
        self.row_nbytes = math.prod(self.row_shape) * self.dtype.itemsize
        self.length: int | None = header.shape[0] if header.shape else None
        self.recorded = self.length  # the length the header on storage says
        # Rows at and past this index are known to be zero (never written).
        self.written = 0
        self.cap = 0
        # (mapping address, byte): appends faulted the pages before it in.
        self.ahead = (0, 0)
        self.field: LengthField | None = None
        self.seen = b""  # the header bytes refresh() last looked at
        # A header's first ``field.probe`` bytes and the length they record:
        # the last ones read or written here.
        self.parsed: tuple[bytes, int] = (b"", 0)
        if header.shape:
            with contextlib.suppress(ValueError):
                self.field = LengthField(header, self._probe(header.data_offset))
        if self.field is not None:
            self.seen = self._probe(self.field.probe)

    @property
    def shape(self) -> tuple[int, ...]:
        """The current shape; axis 0 is the length."""
        return () if self.length is None else (self.length, *self.row_shape)

    def is_ours(self, dtype: np.dtype) -> bool:
        """Whether ``dtype`` equals the array's, remembering the object if so:
        comparing structured dtypes costs more than copying 100 rows, and
        the batches an appender passes mostly share one dtype object."""
        if dtype == self.dtype:
            self.like = dtype
            return True
        return False

    def _probe(self, n: int) -> bytes:
        region = self.buf._region
        if region is None or region.map is None:
            self.buf._live()  # raises: closed
        return region.map[:n]  # (slicing past the end stops at the end)

    # -- the array lock ------------------------------------------------------

    def hold_array(self, *, shared: bool = False) -> bool:
        """Take the array lock for a short change (see the module rules);
        False when this thread already holds it through ``lock()``."""
        if self.user_locks:  # (empty unless some thread called lock())
            held = self.user_locks.get(threading.get_ident())
            if held is not None:
                if held and not shared:
                    raise RuntimeError(
                        f"cannot change {self.target!r} while this thread holds a shared "
                        "lock() on it"
                    )
                return False
        self.tlock.acquire()
        try:
            fd = self.writer_fd
            (_HOLD_SHARED if shared else _HOLD)(fd if fd >= 0 else self.buf._live().fd)
        except BaseException:
            self.tlock.release()
            raise
        return True

    def release_array(self, took: bool) -> None:
        if took:
            try:
                fd = self.writer_fd
                _RELEASE(fd if fd >= 0 else self.buf._live().fd)
            finally:
                self.tlock.release()

    # -- the recorded length ---------------------------------------------------

    def recorded_length(self) -> int:
        """The length the header on storage records now (a fast read of our
        own header layout; numpy's parser for anything else)."""
        field = self.field
        if field is not None:
            raw = self._probe(field.probe)
            known, n = self.parsed
            if raw == known:
                # The bytes of the last length read or written here: no parse
                # (an appender mostly finds the header as it left it).
                return n
            n = field.read(raw)
            if n is not None:
                self.parsed = raw, n
                return n
        head = read_header(self.buf._map(), self.buf.size)
        if (head.dtype, head.shape[1:], head.fortran_order, head.data_offset) != (
            self.dtype, self.row_shape, self.fortran, self.offset
        ) or not head.shape:
            raise ValueError(
                f"{self.target!r} now holds a different array ({head.dtype}, shape "
                f"{head.shape}); open it again"
            )
        return head.shape[0]

    def record(self) -> None:
        """Write the current length into the header (caller holds the array
        lock); one pwrite of the bytes after ``'shape': ``."""
        field, length = self.field, self.length
        if field is not None and length is not None:
            tail = field.tail(length)
            region = self.buf._live()
            # One small pwrite into storage already allocated: all or nothing.
            if os.pwrite(region.fd, tail, field.at) != len(tail):
                self.buf._pwrite(tail, field.at)  # pragma: no cover
            self.parsed = field.head + tail, length
        else:
            self.buf._pwrite(encode_header(self.dtype, self.shape, self.fortran, self.offset), 0)
        self.recorded = self.length

    def flush(self, durable: bool = True) -> None:
        """Data first, then the header's new length (see ``_header``)."""
        buf = self.buf
        if buf.closed or buf.mode in ("r", "c"):
            return
        took = self.hold_array()
        try:
            with self.lock:
                if buf.closed:
                    return
                if self.concurrent and self.length is not None:
                    # The others' appends are recorded already: never write
                    # this handle's older length over theirs.
                    self.length = self.recorded = self.recorded_length()
                    if self.offset + self.length * self.row_nbytes > buf.size:
                        buf.refresh()  # another writer grew the storage
                if durable:
                    nbytes = math.prod(self.shape) * self.dtype.itemsize
                    buf.flush(self.offset, nbytes)
                changed = self.length != self.recorded
                if changed:
                    self.record()
                if durable and (changed or self.concurrent):
                    # The length is durable too, not only the rows (for a
                    # concurrent handle: the length the others recorded).
                    buf._sync()
        finally:
            self.release_array(took)

    # -- the writer lock ---------------------------------------------------------

    def take_writer_lock(self) -> None:
        """Become the array's writer (shared with other concurrent handles),
        or ``BlockingIOError``."""
        if self.writer_fd < 0:
            self.writer_fd = writer_lock(self.buf, self.target, concurrent=self.concurrent)

    def release_writer_lock(self) -> None:
        fd, self.writer_fd = self.writer_fd, -1
        close_writer_fd(fd)


def finish(state: State) -> None:
    """Record the length and release the mapping and the writer lock (close,
    gc or exit; only ever in the process that opened the array)."""
    try:
        state.flush()
    finally:
        # Behind the array's thread lock too, so that no other thread is
        # between taking the array lock on a descriptor and releasing it
        # when the descriptors close -- unless this thread holds lock():
        # a thread waiting for that lock may hold the thread lock.
        mine = threading.get_ident() in state.user_locks
        with contextlib.nullcontext() if mine else state.tlock, state.lock:
            state.buf.close()
            state.release_writer_lock()

