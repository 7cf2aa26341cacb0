"""Self-describing, growable arrays: :class:`MappedArray`.

A :class:`MappedArray` is a standard ``.npy`` file (or a shared block laid
out the same way) mapped through a :class:`~mmarray.MappedFile` or
:class:`~mmarray.SharedBlock` and opened by :func:`~mmarray.open_array`
(:mod:`mmarray._open`).  The header layout and the crash-safety rule are
described in :mod:`mmarray._header`; the recorded length, the writer lock
and the array lock in :mod:`mmarray._record`.  This module is the live view
(indexing, numpy protocols), growth, and the calls that follow and lock.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import threading
import time
import weakref
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import _locks
from ._base import MappedBuffer, as_index, as_timeout
from ._header import Header, can_grow, read_header
from ._lifetime import finalizer
from ._locks import Held
from ._record import _HOLD, _RELEASE, State, finish
from ._region import PREFAULT_BYTES, allocate, prefault
from ._take import take

#: Growth factor of the reserved capacity (n appends cost O(n) amortised).
GROWTH = 2
#: Smallest growth step, in bytes, so that tiny rows do not remap often.
MIN_GROWTH_BYTES = 1 << 16
#: Appends at least this big are written with pwrite rather than through the
#: mapping: measured here, 2.5x faster for fresh pages of a sparse file.
PWRITE_BYTES = 1 << 16
#: A concurrent appender faults pages in again when its end comes this close
#: to the end of the last stretch it faulted in.
AHEAD_SLACK = 1 << 16
#: wait(): the first and the longest sleep between refreshes, in seconds.
WAIT_FIRST, WAIT_MAX = 1e-4, 0.05


def _row_index(key: Any) -> tuple[np.ndarray, tuple] | None:
    """``(indices, the rest of the key)`` when ``key`` gathers rows by an
    integer array along axis 0 (``a[idx]``, ``a[idx, 2:5]``, ``a[idx, ...]``),
    else None (numpy's own indexing handles it)."""
    rest: tuple = ()
    if type(key) is tuple:
        if not key or not all(k is Ellipsis or type(k) is slice for k in key[1:]):
            return None
        key, rest = key[0], key[1:]
        if rest.count(Ellipsis) > 1:
            return None
    if isinstance(key, np.ndarray):
        idx = key
    elif type(key) is list:
        try:
            idx = np.asarray(key)
        except ValueError:
            return None
    else:
        return None
    if idx.ndim == 0 or idx.dtype.kind not in "iu":
        return None
    return idx, rest


def _cast(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``rows`` as a C-contiguous array of ``dtype``, cast as assignment casts."""
    out = np.empty(rows.shape, dtype)
    out[...] = rows
    return out


def _current_header(buf: MappedBuffer) -> tuple[Header, int]:
    """The header and the size mapped to hold what it describes: another
    writer may have grown the storage and recorded a longer length since
    ``buf`` mapped it (rows are written before the length, so mapping the
    size the storage has now finds them)."""
    while True:
        size = buf.size
        try:
            return read_header(buf._map(), size), size
        except ValueError:
            if buf.refresh() == size:  # nothing grew: the storage really is short
                raise


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, MappedArray):
        return obj._view().view(np.ndarray)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


class MappedArray(NDArrayOperatorsMixin):
    """An array whose dtype and shape live in a ``.npy`` header in the
    mapped bytes, growable along axis 0.  Made by :func:`open_array`.

    Indexing (``a[...]``) reads and writes like an ndarray and returns
    views of the mapped bytes; ``np.asarray(a)`` is a zero-copy view;
    numpy functions and operators work and return plain ndarrays.

    Attributes
    ----------
    shape, dtype, ndim, size, nbytes
        As for :class:`numpy.ndarray` (the current length).
    capacity : int
        Rows reserved along axis 0 before storage must grow.
    growable : bool
        Whether :meth:`append` and :meth:`resize` can change the length.
    mode : str
    target : str
        The absolute path, or ``"shm://NAME"``.
    closed : bool

    Raises
    ------
    ValueError
        From any method once the array is closed.

    Notes
    -----
    Other readers (``np.load``, another process calling
    :func:`open_array`) see the length recorded by the last :meth:`flush`
    or :meth:`close`.  There is one writer per array unless every appender
    opens it with ``concurrent=True``.  Pickling sends a reference: it
    unpickles as an ndarray view of the same bytes with the current shape.

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.npy")
    >>> a = mm.open_array(path, "w+", dtype=np.float32, shape=(3, 2))
    >>> a[1] = 5
    >>> float(np.sum(a)), type(a * 2).__name__, len(a)
    (10.0, 'ndarray', 3)
    >>> a.close()
    """

    mode: str
    target: str
    _state: State
    _arr: tuple[int | None, np.ndarray] | None
    _full: np.ndarray | None
    _closer: weakref.finalize

    @classmethod
    def _from_buffer(
        cls,
        buf: MappedBuffer,
        target: str,
        mode: str,
        writer: int = -1,
        concurrent: bool = False,
    ):
        head, size = _current_header(buf)
        self = object.__new__(cls)
        self.mode = mode
        self.target = target
        self._state = s = State(buf, head, target)
        s.writer_fd = writer
        s.concurrent = concurrent
        self._closer = finalizer(self, finish, s)
        self._growable = None if mode in ("r+", "a", "w+", "x+") else False
        self._header = head
        if mode == "a" and not self.growable:
            raise ValueError(
                f"cannot open {target!r} for appending: {self._why_not_growable()}"
            )
        s.cap = s.length if s.length is not None else 0
        if s.length is not None and not (s.fortran and len(head.shape) > 1) and s.row_nbytes:
            # Rows past the recorded length are reserved capacity (C order
            # only: in Fortran order the layout depends on the length).
            s.cap = (size - s.offset) // s.row_nbytes
        # Reserved rows of an existing file may hold anything (e.g. rows a
        # killed writer appended but never recorded).
        s.written = s.cap
        self._map_rows()
        if mode in ("a", "w+", "x+") or concurrent:
            s.take_writer_lock()  # from open to close
        region = buf._live()
        if mode not in ("r", "c") and not region.allocate:
            # Real storage for every row the file holds and every capacity
            # step it grows into: a full disk is ENOSPC, never SIGBUS.
            allocate(region.fd, 0, size)
            region.allocate = True
        return self

    def _reserve_at_open(self, capacity: int) -> None:
        """``open_array(..., capacity=)``: room for that many rows now."""
        if capacity > self._state.cap:
            self._check_growth("reserve capacity in")
            self._reserve(capacity, exact=True)

    @property
    def growable(self) -> bool:
        """Whether :meth:`append` and :meth:`resize` can change the length."""
        if self._growable is None:
            s, head = self._state, self._header
            self._growable = (
                s.length is not None
                and not (s.fortran and len(head.shape) > 1)
                and can_grow(head)
            )
        return self._growable

    def _why_not_growable(self) -> str:
        s = self._state
        if s.length is None:
            return "a 0-d array has no axis to grow"
        if s.fortran:
            return "it is stored in Fortran order (append grows C-order arrays along axis 0)"
        return (
            "its .npy header has no room to record a longer shape (written by an old "
            "numpy); re-save it with np.save or open_array(..., 'w+')"
        )

    # -- the live view ---------------------------------------------------------

    def _map_rows(self) -> None:
        """Forget the views of the old capacity; they are made again on use
        (opening an array maps nothing until it is indexed)."""
        self._full = self._raw = self._arr = None

    def _full_view(self) -> np.ndarray:
        """All reserved rows (the capacity) as an array."""
        full = self._full
        if full is None:
            s = self._state
            order = "F" if s.fortran else "C"
            shape = () if s.length is None else (s.cap, *s.row_shape)
            full = self._full = s.buf.array(s.dtype, shape, s.offset, order=order)
        return full

    def _raw_view(self) -> np.ndarray:
        """All reserved rows as bytes (for byte copies)."""
        raw = self._raw
        if raw is None:
            s = self._state
            raw = self._raw = s.buf.array(np.uint8, s.cap * s.row_nbytes, s.offset)
        return raw

    def _view(self) -> np.ndarray:
        # The cached view carries the length it was made for: a reader in
        # another thread never sees a length and a view that disagree
        # (reads take no lock; append sets the length last).
        cached = self._arr
        s = self._state
        length = s.length
        if cached is not None and cached[0] == length:
            return cached[1]
        if self._closer.alive is False:
            raise ValueError("operation on closed MappedArray")
        full = self._full_view()
        if length is None or length == len(full):
            arr = full
        else:
            arr = full[:length]
            if length > len(full):  # pragma: no cover - a growth raced us: no cache
                return arr
        self._arr = (length, arr)
        return arr

    # -- growth ------------------------------------------------------------------

    def _check_growth(self, what: str) -> State:
        if not self._closer.alive:
            raise ValueError("operation on closed MappedArray")
        if self.mode in ("r", "c"):
            raise PermissionError(f"cannot {what} {self.target!r}: it was opened with mode "
                                  f"{self.mode!r}")
        if not self.growable:
            raise ValueError(f"cannot {what} {self.target!r}: {self._why_not_growable()}")
        s = self._state
        if s.writer_fd < 0:
            s.take_writer_lock()  # an "r+" handle becomes the writer now...
            self._pick_up(grown=True)  # ...from the length recorded, not its own
        return s

    def _reserve(self, rows: int, exact: bool = False) -> None:
        s = self._state
        if rows <= s.cap:
            return
        wanted = rows
        if not exact:
            floor = -(-MIN_GROWTH_BYTES // max(s.row_nbytes, 1))
            rows = max(rows, s.cap * GROWTH, floor)
        needed = s.offset + rows * s.row_nbytes
        if needed > s.buf.size:
            try:
                s.buf._grow_to(needed)  # never below what the storage has now
            except OSError as e:
                if e.errno != errno.ENOSPC or exact or rows == wanted:
                    raise
                # The disk cannot take a geometric step: take just the rows asked for.
                rows, needed = wanted, s.offset + wanted * s.row_nbytes
                s.buf._grow_to(needed)
        s.cap = rows
        self._map_rows()

    def append(self, rows: Any) -> None:
        """Append rows along axis 0 (a single row is accepted too).

        Storage grows geometrically, so n appends cost O(n) amortised.
        Views taken before stay valid.  Other readers see the new length
        after :meth:`flush` or :meth:`close`.

        Parameters
        ----------
        rows : array_like
            Shape ``(k, *shape[1:])``, or one row of shape ``shape[1:]``;
            cast to the array's dtype as assignment would.

        Raises
        ------
        ValueError
            If the rows do not match the row shape, or the array cannot
            grow (0-d, Fortran order, or an old header without room).
        PermissionError
            If the array was opened read-only or copy-on-write.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ap.npy")
        >>> with mm.open_array(path, "a", dtype=np.int32, shape=(0, 2)) as a:
        ...     a.append([[1, 2], [3, 4]])
        ...     a.append([5, 6])
        ...     a.shape
        (3, 2)
        """
        s = self._state
        if not isinstance(rows, np.ndarray):
            rows = np.asarray(rows, dtype=s.dtype)
        if rows.ndim == len(s.row_shape):
            rows = rows[np.newaxis]
        if rows.shape[1:] != s.row_shape:
            raise ValueError(
                f"cannot append an array of shape {rows.shape} to rows of shape "
                f"{s.row_shape}: pass shape (k, {', '.join(map(str, s.row_shape))}) "
                f"or one row of shape {s.row_shape}"
            )
        dt = rows.dtype
        same = (dt is s.like or s.is_ours(dt)) and rows.flags.c_contiguous
        if s.concurrent:
            # Cast as assignment would, before the lock: the others wait
            # for a byte copy only.
            self._append_shared(rows if same else _cast(rows, s.dtype))
            return
        with s.lock:
            if not (s.writer_fd >= 0 and self._growable and self._closer.alive):
                self._check_growth("append to")  # (the common case is one line)
            n = s.length
            end = n + len(rows)
            if end > s.cap:
                self._reserve(end)
            at = s.offset + n * s.row_nbytes
            if not same:
                self._full_view()[n:end] = rows  # numpy casts
            elif rows.nbytes >= PWRITE_BYTES:
                # As bytes: memoryview cannot export datetime64 and friends.
                s.buf._pwrite(rows.reshape(-1).view(np.uint8), at)
            else:
                # A byte copy (numpy copies records field by field); the
                # buffer protocol exports any dtype as plain bytes.
                m, stop = s.buf._map(), at + rows.nbytes
                ahead = s.ahead
                if stop > ahead[1] or ahead[0] != m.address:
                    # Fresh pages: fault a stretch in at once, not one by one.
                    s.ahead = m.address, prefault(m, at, rows.nbytes + PREFAULT_BYTES)
                m[at:stop] = rows
            # Last: an interrupt (or a full disk) before here leaves the old length.
            s.length = end
            s.written = max(s.written, end)
            self._arr = None

    def _append_shared(self, rows: np.ndarray) -> None:
        """:meth:`append` of a ``concurrent=True`` handle (``rows`` of the
        array's dtype, C-contiguous): under the array lock, the length the
        header records is picked up, the rows are written after it and the
        new length is recorded.

        The other appenders wait for exactly what happens between taking
        the lock and releasing it, so that stretch holds the common case
        only -- the header as some appender left it, room reserved, pages
        faulted in -- and what can come before it (faulting pages in,
        casting) does.
        """
        s = self._state
        nbytes = rows.nbytes
        small = nbytes < PWRITE_BYTES
        if small:
            # Fresh pages for the copy are faulted in before the lock: the
            # others append meanwhile.  (A pwrite needs none.)
            self._fault_ahead(nbytes)
        field = s.field
        if field is None or not small or s.user_locks:
            # Big batches, an old header, or a thread inside lock().
            self._append_shared_slow(rows)
            return
        # s.hold_array() and s.release_array(), written out: every call
        # layer here shows in how long the others wait.
        tlock = s.tlock
        tlock.acquire()
        try:
            writer = s.writer_fd
            fd = writer if writer >= 0 else s.buf._live().fd
            _HOLD(fd)
        except BaseException:
            tlock.release()
            raise
        try:
            with s.lock:
                if not (self._growable and self._closer.alive):
                    self._check_growth("append to")
                region = s.buf._live()
                m = region.map
                raw = m[: field.probe]
                known, n = s.parsed
                if raw != known:
                    n = field.read(raw)  # another appender's length
                    if n is None:
                        n = s.recorded_length()  # another layout (or array: raises)
                end = n + len(rows)
                if end > s.cap:
                    self._pick_up(len(rows))  # the storage another writer grew...
                    self._reserve(end)  # ...or more of it
                    m = region.map
                at = s.offset + n * s.row_nbytes
                m[at : at + nbytes] = rows  # a byte copy, as in append()
                s.length = s.recorded = end
                s.written = s.cap  # the others may have written any row
                self._arr = None
                # Recorded before the lock goes: the others append after
                # these rows.  (State.record(), with what is at hand.)
                tail = field.tail(end)
                if os.pwrite(region.fd, tail, field.at) != len(tail):
                    s.buf._pwrite(tail, field.at)  # pragma: no cover
                s.parsed = field.head + tail, end
        finally:
            try:
                if s.writer_fd == writer:
                    _RELEASE(fd)
                # (else a thread inside lock() closed the handle meanwhile,
                # and the lock went with the descriptor)
            finally:
                tlock.release()

    def _append_shared_slow(self, rows: np.ndarray) -> None:
        """:meth:`_append_shared` of big batches (written with pwrite),
        headers without a :class:`LengthField` and threads inside
        :meth:`lock`: the same steps, through the general calls."""
        s = self._state
        took = s.hold_array()
        try:
            with s.lock:
                self._check_growth("append to")
                n = s.recorded_length()
                end = n + len(rows)
                if end > s.cap:
                    self._pick_up(len(rows))
                    self._reserve(end)
                s.buf._pwrite(rows.reshape(-1).view(np.uint8), s.offset + n * s.row_nbytes)
                s.length = end
                s.written = s.cap
                self._arr = None
                s.record()
        finally:
            s.release_array(took)

    def _fault_ahead(self, nbytes: int) -> None:
        """A concurrent appender's :func:`prefault`, made before it takes the
        array lock (the others append meanwhile), from where its last
        append ended: the others' rows since move the end by little."""
        s = self._state
        region = s.buf._region
        m = None if region is None else region.map
        if m is None or s.length is None:
            return
        at = s.offset + s.length * s.row_nbytes
        ahead = s.ahead
        if at + nbytes + AHEAD_SLACK > ahead[1] or ahead[0] != m.address:
            with contextlib.suppress(ValueError):  # unmapped meanwhile by another thread
                s.ahead = m.address, prefault(m, at, PREFAULT_BYTES)

    def resize(self, n: int) -> None:
        """Set the length along axis 0 to ``n`` rows; new rows read as zero.

        Shrinking keeps the reserved capacity (the file does not shrink).

        Parameters
        ----------
        n : int
            The new length.

        Raises
        ------
        ValueError
            If the array cannot grow (0-d, Fortran order, old header).
        PermissionError
            If the array was opened read-only or copy-on-write.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "rz.npy")
        >>> with mm.open_array(path, "w+", dtype=np.float64, shape=(2,)) as a:
        ...     a[:] = 1
        ...     a.resize(4)
        ...     a[:].tolist()
        [1.0, 1.0, 0.0, 0.0]
        """
        n = as_index(n, "n")
        s = self._state
        took = s.concurrent and s.hold_array()
        try:
            with s.lock:
                self._check_growth("resize")
                if s.concurrent:
                    self._pick_up()
                if n > s.cap:
                    self._reserve(n)
                if n > s.length:
                    # Rows never written are zero already: only rows left over
                    # from a shrink, or of unknown content, need zeros.
                    end = min(n, s.written)
                    if end > s.length:
                        self._raw_view()[s.length * s.row_nbytes : end * s.row_nbytes] = 0
                    s.written = max(s.written, n)
                s.length = n
                self._arr = None
                if s.concurrent:
                    s.record()
        finally:
            s.release_array(took)

    def _pick_up(self, more: int = 0, grown: bool = False) -> None:
        """Take the length -- and, when room for ``more`` rows past it is
        needed (or the storage may have ``grown``), the capacity -- that
        other writers left (a concurrent handle holding the array lock, or
        a handle that just became the writer)."""
        s = self._state
        n = s.recorded_length()
        if (grown or n + more > s.cap) and s.row_nbytes:
            self._cover(n)
        s.written = s.cap  # the others may have written any row
        if n != s.length:
            s.length = n
            self._arr = None
        s.recorded = n

    # -- durability and lifetime ---------------------------------------------------

    def flush(self, durable: bool = True) -> None:
        """Write the data, then the header's length, to storage.

        After it returns, ``np.load`` and other processes see the current
        length, and neither a killed process nor an OS crash can lose the
        rows written so far (data is synced before the header, then the
        header is synced).

        Parameters
        ----------
        durable : bool, default True
            False records the length in the header without waiting for the
            disk: other processes see the rows at once and a killed process
            loses nothing; only an OS crash (or power cut) can.

        Raises
        ------
        ValueError
            If the array is closed.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "fl.npy")
        >>> a = mm.open_array(path, "a", dtype=np.int64)
        >>> a.append(np.arange(5))
        >>> np.load(path).shape, a.flush(), np.load(path).shape
        ((0,), None, (5,))
        >>> a.close()
        """
        if not self._closer.alive:
            raise ValueError("operation on closed MappedArray")
        s = self._state
        if s.concurrent:
            took = s.hold_array()
            try:
                with s.lock:
                    self._pick_up()
            finally:
                s.release_array(took)
        s.flush(durable)

    def refresh(self) -> int:
        """Pick up the length that other processes recorded in the header.

        A reader calls it to see rows that a writer appended and flushed
        (or that ``concurrent=True`` appenders recorded); views taken
        before stay valid with their old shapes.  Cheap when nothing
        changed: the header's bytes are compared, not parsed, and nothing is
        mapped again.  A plain writer's own handle returns its own length.

        Returns
        -------
        int
            The length, as ``len()`` now reports it.

        Raises
        ------
        ValueError
            If the array is closed, or the target now holds a different array.
        TypeError
            For a 0-d array (it has no length).

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "rf.npy")
        >>> writer = mm.open_array(path, "a", dtype=np.int64)
        >>> reader = mm.open_array(path, "r")
        >>> writer.append(np.arange(3)); writer.flush()
        >>> len(reader), reader.refresh(), int(reader[-1])
        (0, 3, 2)
        >>> writer.close(); reader.close()
        """
        if not self._closer.alive:
            raise ValueError("operation on closed MappedArray")
        s = self._state
        if s.length is None:
            raise TypeError("a 0-d MappedArray has no length to refresh")
        if s.writer_fd >= 0 and not s.concurrent:
            return s.length  # the one writer: the length is this handle's own
        field = s.field
        if field is not None and s._probe(field.probe) == s.seen:
            return s.length  # nothing changed: no lock, no parse, no remap
        took = s.hold_array(shared=True)
        try:
            with s.lock:
                self._take_recorded()
        finally:
            s.release_array(took)
        return s.length

    def _cover(self, n: int) -> None:
        """Map the size another writer grew the storage to and take its
        capacity; ``ValueError`` if it still cannot hold ``n`` rows."""
        s = self._state
        size = s.buf.refresh()
        if s.row_nbytes:
            cap = (size - s.offset) // s.row_nbytes
            if cap != s.cap:
                s.cap = cap
                self._map_rows()
        if s.offset + n * s.row_nbytes > size:
            raise ValueError(
                f"{self.target!r} records {n} rows, but its storage ends at byte {size}"
            )

    def _take_recorded(self) -> None:
        s = self._state
        n = s.recorded_length()
        if s.offset + n * s.row_nbytes > s.buf.size:
            self._cover(n)
        if n != s.length:
            if s.fortran and s.row_shape:
                raise ValueError(
                    f"{self.target!r} was re-created with another length in Fortran "
                    "order; open it again"
                )
            s.length = s.recorded = n
            self._arr = None
        if s.field is not None:
            s.seen = s._probe(s.field.probe)

    def wait(self, length: int, timeout: float | None = None) -> int:
        """Block until the array has at least ``length`` rows.

        Polls :meth:`refresh` with a short backoff (from 0.1 ms up to
        50 ms), so a notebook can follow a running job's output.

        Parameters
        ----------
        length : int
            The number of rows to wait for.
        timeout : float, optional
            Seconds; None waits for as long as it takes.

        Returns
        -------
        int
            The length reached (``>= length``).

        Raises
        ------
        TimeoutError
            If ``timeout`` passed first.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "wt.npy")
        >>> with mm.open_array(path, "a", dtype=np.int64) as w:
        ...     w.append(np.arange(4)); w.flush()
        ...     with mm.open_array(path, "r") as r:
        ...         r.wait(4, timeout=1)
        4
        """
        length = as_index(length, "length")
        timeout = as_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = WAIT_FIRST
        while True:
            n = self.refresh()
            if n >= length:
                return n
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"{self.target!r} has {n} rows, not {length}, after {timeout} s"
                )
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, WAIT_MAX)

    def lock(self, *, shared: bool = False, timeout: float | None = None) -> Held:
        """Hold the array's lock: a context manager.

        Excludes other handles, threads and processes that call ``lock()``
        on the same array, and the appends, resizes and flushes of
        ``concurrent=True`` handles (and header writes of any writer): use
        it for read-modify-write across processes.  The kernel releases it
        if the holder dies.  Appending from inside ``with arr.lock():``
        works (the thread holds the lock already); the lock is not
        reentrant otherwise.

        Parameters
        ----------
        shared : bool, default False
            A shared (reader) lock.
        timeout : float, optional
            Seconds to wait; None waits, 0 tries once.

        Returns
        -------
        Held
            Use it with ``with``, or call its ``release()``.

        Raises
        ------
        TimeoutError
            When the lock was not free within ``timeout``.
        RuntimeError
            If this thread holds this array's lock already.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "lk.npy")
        >>> with mm.open_array(path, "w+", dtype=np.int64, shape=(1,)) as a:
        ...     with a.lock():
        ...         a[0] += 1
        ...     int(a[0])
        1
        """
        if not self._closer.alive:
            raise ValueError("operation on closed MappedArray")
        s = self._state
        ident = threading.get_ident()
        if ident in s.user_locks:
            raise RuntimeError(f"this thread already holds the lock of {self.target!r}")
        held = _locks.acquire(
            s.buf._live().fd, _locks.ARRAY, 1, shared=shared, timeout=as_timeout(timeout),
            what=repr(self.target), on_release=lambda: s.user_locks.pop(ident, None),
        )
        s.user_locks[ident] = shared
        return held

    def close(self) -> None:
        """Flush and release the mapping (idempotent).

        Views taken before stay valid until they are garbage-collected.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "cl.npy")
        >>> a = mm.open_array(path, "w+", dtype=np.uint8, shape=(4,))
        >>> v = a[:]
        >>> a.close(); a.close()
        >>> v[0] = 9                 # still valid
        >>> a.closed
        True
        """
        self._closer()  # takes the locks itself, in their order
        self._map_rows()

    def __copy__(self) -> np.ndarray:
        # An in-memory copy, like ndarray.__copy__ (pickling, not copying,
        # is what travels by reference).
        return np.array(self._view(), copy=True)

    def __deepcopy__(self, memo: dict) -> np.ndarray:
        return np.array(self._view(), copy=True)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run (or the array was collected)."""
        return not self._closer.alive

    def __enter__(self) -> MappedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ndarray-like surface ----------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self._state.shape

    @property
    def dtype(self) -> np.dtype:
        """The item type recorded in the header."""
        return self._state.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self._state.shape)

    @property
    def size(self) -> int:
        """Number of items in the current shape."""
        return math.prod(self._state.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data in the current shape (not the reserved capacity)."""
        return self.size * self._state.dtype.itemsize

    @property
    def capacity(self) -> int:
        """Rows reserved along axis 0 before the storage must grow."""
        return self._state.cap

    def __getattr__(self, name: str) -> Any:
        # ndarray methods and attributes (a.sum(), a.T, a.astype(...), ...)
        # act on the current view; only reached for names not defined here.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._view(), name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(np.ndarray)))

    def __len__(self) -> int:
        length = self._state.length
        if length is None:
            raise TypeError("len() of a 0-d MappedArray")
        return length

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (list, tuple, np.ndarray)) and self._state.length is not None:
            rows = _row_index(key)
            if rows is not None:  # a[idx] or a[idx, ...]: a gather of rows
                idx, rest = rows
                got = take(self._view(), idx, axis=0)
                return got[(slice(None),) * idx.ndim + rest] if rest else got
        return self._view()[key]

    def take(self, indices: Any, axis: int | None = None, out: Any = None,
             mode: str = "raise") -> np.ndarray:
        """:func:`mmarray.take` on the current view: ``np.take``, with the
        pages of the selected items that are not in memory requested from
        the kernel in one batch first (``a[idx]`` along axis 0 does the same).

        Parameters
        ----------
        indices : array_like of int
            The items to take.
        axis : int, optional
            The axis to take along; None takes from the flattened array.
        out : ndarray, optional
            Where to put the result.
        mode : {"raise", "wrap", "clip"}, default "raise"
            Out-of-range indices, as for ``np.take``.

        Returns
        -------
        numpy.ndarray
            A copy (it does not view the mapped bytes).

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tk.npy")
        >>> with mm.open_array(path, "w+", dtype=np.int64, shape=(5,)) as a:
        ...     a[:] = [10, 11, 12, 13, 14]
        ...     a.take([4, 0]).tolist(), a[[1, -1]].tolist()
        ([14, 10], [11, 14])
        """
        return take(self._view(), indices, axis=axis, out=out, mode=mode)

    def __setitem__(self, key: Any, value: Any) -> None:
        arr = self._view()
        try:
            arr[key] = value
        except ValueError:
            # Only on failure: assignment is a hot path.
            if not arr.flags.writeable:
                raise self._read_only() from None
            raise

    def _read_only(self) -> ValueError:
        """numpy's "assignment destination is read-only", saying why."""
        why = "the default" if self.mode == "r" else "read-only"
        return ValueError(
            f"assignment destination is read-only: {self.target!r} was opened with "
            f"mode {self.mode!r} ({why}); open it with mode 'r+' (or 'a') to write"
        )

    def advise(self, hint: str) -> None:
        """Tell the OS how the array's bytes will be used (``madvise``).

        Parameters
        ----------
        hint : {"normal", "random", "sequential", "willneed", "dontneed"}
            As for :meth:`MappedFile.advise`: ``"random"`` turns readahead
            off (scattered rows of a large file), ``"sequential"`` turns it
            up.  It covers every reserved row, and rows that :meth:`append`
            adds later.

        Raises
        ------
        ValueError
            For an unknown hint, or once the array is closed.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "adv.npy")
        >>> with mm.open_array(path, "w+", data=np.arange(10_000.0)) as a:
        ...     a.advise("random")
        ...     a[[5, 9_999]].tolist()
        [5.0, 9999.0]
        """
        if not self._closer.alive:
            raise ValueError("operation on closed MappedArray")
        s = self._state
        s.buf.advise(hint, min(s.offset, s.buf.size))

    def _repr_html_(self) -> str:
        from ._info import array_html

        return array_html(self)

    def __iter__(self):
        return iter(self._view())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self._view()
        if copy:
            return np.array(arr, dtype=dtype, copy=True)
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError("a dtype conversion needs a copy")
            return arr.astype(dtype)
        return arr

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        args = [_unwrap(x) if isinstance(x, MappedArray) else x for x in inputs]
        if out is not None:
            for o in out:
                if isinstance(o, MappedArray) and not o._view().flags.writeable:
                    raise o._read_only()
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None and len(out) == 1 and isinstance(out[0], MappedArray):
            return out[0]
        return result

    def __array_function__(self, func, types, args, kwargs):
        return func(*_unwrap(args), **_unwrap(kwargs))

    def __reduce__(self):
        # Travels as a view of the same bytes with the current shape.
        return self._view().__reduce_ex__(2)

    def __repr__(self) -> str:
        if self.closed:
            return f"<MappedArray {self.target!r} closed>"
        s = self._state
        head = (
            f"MappedArray({self.target!r}, mode={self.mode!r}, dtype={s.dtype}, "
            f"shape={s.shape}, capacity={s.cap})"
        )
        body = np.array2string(self._view(), threshold=20, edgeitems=3)
        return f"{head}\n{body}"
