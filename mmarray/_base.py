"""The typed-view API shared by :class:`MappedFile` and :class:`SharedBlock`.

Subclasses open a descriptor, wrap it in a :class:`~mmarray._region.Region`
and set the few class attributes that differ (``_kind``, ``_can_shrink``);
everything users call -- views, accessors, flush, advise, resize, close,
pickling -- lives here once.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from typing import Any

import numpy as np

from . import _locks
from ._locks import Held
from ._region import PAGE_SIZE, Map, Region, check_hint
from ._views import MappedRecords, MappedView, view

ORDERS = ("C", "F")


def as_index(value: Any, name: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` that a size can be (at most
    ``sys.maxsize``), or TypeError/ValueError naming it."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer (got {value!r})")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer (got {type(value).__name__})") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {n})")
    if n > sys.maxsize:
        raise ValueError(f"{name} must be at most {sys.maxsize} (got {n})")
    return n


def as_timeout(timeout: Any) -> float | None:
    """``timeout`` as None or a number of seconds >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number)):
        raise TypeError(f"timeout must be None or a number of seconds (got {timeout!r})")
    if not timeout >= 0:  # also NaN
        raise ValueError(f"timeout must be >= 0 (got {timeout!r})")
    return float(timeout)


def as_dtype(dtype: Any) -> np.dtype:
    """A dtype that can live in mapped bytes (no Python objects, not empty)."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"object dtypes cannot be mapped (got {dt})")
    if dt.itemsize == 0:
        raise ValueError(f"dtype must have a non-zero item size (got {dt})")
    return dt


def as_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints) as a tuple of non-negative ints."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints (got {shape!r})") from None
    return tuple(as_index(n, "shape entries") for n in items)


class MappedBuffer:
    """Mapped bytes with typed views: the base of MappedFile and SharedBlock."""

    # Class-level defaults let close() and repr() work after a failed __init__.
    _region: Region | None = None
    _closed = True
    _kind = "mapping"
    _can_shrink = True
    mode = "r"

    # -- state -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    @property
    def readonly(self) -> bool:
        """True when the bytes cannot be written through this handle."""
        return self.mode == "r"

    @property
    def size(self) -> int:
        """Bytes mapped (the size of the file or block)."""
        return self._live().size

    def _live(self) -> Region:
        if self._closed or self._region is None:
            raise ValueError(f"I/O operation on closed {type(self).__name__}")
        return self._region

    def _map(self) -> Map:
        m = self._live().map
        assert m is not None
        return m

    def _check_writable(self, what: str) -> None:
        if self.readonly:
            raise PermissionError(f"cannot {what}: {self!r} is read-only")

    # -- views ---------------------------------------------------------------

    def _layout(
        self, dtype: Any, shape: Any, offset: Any
    ) -> tuple[np.dtype, tuple[int, ...], int, Map]:
        m = self._map()
        dt = as_dtype(dtype)
        offset = as_index(offset, "offset")
        size = len(m)
        if offset > size:
            raise ValueError(f"offset {offset} is past the end of the mapping ({size} bytes)")
        shape = ((size - offset) // dt.itemsize,) if shape is None else as_shape(shape)
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > sys.maxsize:
            raise ValueError(f"shape {shape} of {dt} is too large for an array")
        if offset + nbytes > size:
            raise ValueError(
                f"shape {shape} of {dt} at offset {offset} needs {offset + nbytes} bytes, "
                f"but the mapping has {size}"
            )
        return dt, shape, offset, m

    def _viewing(
        self, cls: type[np.ndarray], dtype: Any, shape: Any, offset: Any, order: str = "C"
    ) -> np.ndarray:
        """``view()`` of the current mapping.

        Another thread's growth unmaps the old mapping as soon as no array
        holds it -- which may be after this thread took it and before its
        view holds it ("mmap closed").  An error raised while the mapping
        changed is therefore tried again on the new one.
        """
        while True:
            before = self._map()
            try:
                dt, shape_, offset_, m = self._layout(dtype, shape, offset)
                return view(cls, m, dt, shape_, offset_, order=order)
            except ValueError:
                if self._map() is before:
                    raise

    def array(
        self, dtype: Any = np.uint8, shape: Any = None, offset: int = 0, order: str = "C"
    ) -> np.ndarray:
        """A numpy array viewing the mapped bytes (no copy).

        Parameters
        ----------
        dtype : data-type, default uint8
            Any numpy dtype without Python objects: scalars, structured,
            subarray fields, either byte order.
        shape : int or tuple of int, optional
            Default: 1-D, as many whole items as fit after ``offset``.
        offset : int, default 0
            Byte offset of the first item; need not be aligned.
        order : {"C", "F"}
            Memory layout of a multi-dimensional view.

        Returns
        -------
        numpy.ndarray
            A view (an ndarray subclass with no Python code on indexing),
            read-only when the mapping is.  It stays valid after
            :meth:`close` and :meth:`resize` until garbage-collected.

        Raises
        ------
        ValueError
            If the view does not fit in the mapping, or the handle is closed.
        TypeError
            For object dtypes.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin")
        >>> with mm.MappedFile(path, "w+", capacity=64) as f:
        ...     a = f.array(np.float64, shape=(2, 4))
        ...     a[1, 2] = 1.5
        ...     float(f.read(48, np.float64))
        1.5
        """
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS!r} (got {order!r})")
        return self._viewing(MappedView, dtype, shape, offset, order)

    def records(self, dtype: Any, shape: Any = None, offset: int = 0) -> np.recarray:
        """A :class:`numpy.recarray` viewing the mapped bytes.

        Parameters
        ----------
        dtype : structured data-type
        shape, offset
            As for :meth:`array`.

        Returns
        -------
        numpy.recarray
            Fields are readable as attributes (``r.price``).

        Raises
        ------
        ValueError
            If ``dtype`` is not structured or the view does not fit.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "r.bin")
        >>> rec = np.dtype([("t", "<i8"), ("v", "<f4")])
        >>> with mm.MappedFile(path, "w+", capacity=10 * rec.itemsize) as f:
        ...     r = f.records(rec)
        ...     r.v[3] = 2.5
        ...     r.shape, float(r[3].v)
        ((10,), 2.5)
        """
        dt = as_dtype(dtype)
        if dt.names is None:
            raise ValueError(f"records() needs a structured dtype (got {dt})")
        return self._viewing(MappedRecords, np.dtype((np.record, dt)), shape, offset)

    # -- scalar and array accessors ------------------------------------------

    def read(self, offset: int, dtype: Any) -> np.generic:
        """Read one item at ``offset`` as a numpy scalar.

        Parameters
        ----------
        offset : int
            Byte offset of the item; need not be aligned.
        dtype : data-type
            The item's type; a structured dtype reads one record.

        Returns
        -------
        numpy.generic
            A copy: a numpy scalar, or ``np.void`` for a structured dtype.

        Raises
        ------
        ValueError
            If the item does not fit in the mapping, or the handle is closed.
        TypeError
            For object dtypes.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "s.bin")
        >>> with mm.MappedFile(path, "w+", capacity=16) as f:
        ...     f.write(3, np.int32(-7))
        ...     int(f.read(3, np.int32))
        -7
        """
        return self._viewing(np.ndarray, dtype, (), offset).copy()[()]

    def write(self, offset: int, value: Any, dtype: Any = None) -> None:
        """Write a numpy scalar or array at ``offset``.

        Parameters
        ----------
        offset : int
        value : numpy scalar, ndarray, or anything ``dtype`` can hold
        dtype : data-type, optional
            Needed when ``value`` is a plain Python object (``1``, ``2.5``,
            a tuple for a structured record), which has no dtype of its own.

        Raises
        ------
        TypeError
            For a Python value without ``dtype``.
        PermissionError
            Through a read-only handle.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.bin")
        >>> with mm.MappedFile(path, "w+", capacity=16) as f:
        ...     f.write(0, np.float32(1.5))
        ...     f.write(4, 7, dtype="<i8")          # a Python value needs dtype=
        ...     float(f.read(0, np.float32)), int(f.read(4, "<i8"))
        (1.5, 7)
        """
        self._check_writable("write")
        if dtype is None:
            if not isinstance(value, (np.generic, np.ndarray)):
                raise TypeError(
                    f"write() needs dtype= for a value of type {type(value).__name__}; "
                    "pass a numpy scalar or array, or give dtype"
                )
            value = np.asarray(value)
        else:
            value = np.asarray(value, dtype=as_dtype(dtype))
        self._put(offset, value)

    def _put(self, offset: Any, value: np.ndarray) -> None:
        while True:  # (tried again as in _viewing)
            before = self._map()
            try:
                _, _, offset, m = self._layout(value.dtype, value.shape, offset)
                # The bytes already have the target dtype: copy them as bytes
                # (numpy copies structured items field by field, ~30x slower).
                raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                view(np.ndarray, m, np.uint8, raw.shape, offset)[...] = raw
                return
            except ValueError:
                if self._map() is before:
                    raise

    def read_array(self, offset: int, dtype: Any, count: int) -> np.ndarray:
        """Read ``count`` items of ``dtype`` starting at ``offset``.

        Parameters
        ----------
        offset : int
            Byte offset of the first item; need not be aligned.
        dtype : data-type
            The items' type.
        count : int
            How many items (0 or more).

        Returns
        -------
        numpy.ndarray
            A 1-D copy that owns its data (later writes do not change it).

        Raises
        ------
        ValueError
            If the items do not fit in the mapping, or the handle is closed.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ra.bin")
        >>> with mm.MappedFile(path, "w+", capacity=32) as f:
        ...     f.write_array(8, np.arange(3, dtype="<u2"))
        ...     f.read_array(8, "<u2", 3).tolist()
        [0, 1, 2]
        """
        count = as_index(count, "count")
        return self._viewing(np.ndarray, dtype, (count,), offset).copy()

    def write_array(self, offset: int, values: Any) -> None:
        """Write the bytes of ``values`` (in C order) starting at ``offset``.

        Parameters
        ----------
        offset : int
            Byte offset; need not be aligned.
        values : array_like
            Written with its own dtype (``np.asarray(values)``).

        Raises
        ------
        ValueError
            If the values do not fit in the mapping, or the handle is closed.
        TypeError
            For object arrays.
        PermissionError
            Through a read-only handle.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "wa.bin")
        >>> with mm.MappedFile(path, "w+", capacity=16) as f:
        ...     f.write_array(4, np.array([1.5, -2.0], dtype="<f4"))
        ...     f.array("<f4", shape=2, offset=4).tolist()
        [1.5, -2.0]
        """
        self._check_writable("write")
        values = np.asarray(values)
        as_dtype(values.dtype)
        self._put(offset, values)

    def _pwrite(self, data: Any, offset: int) -> None:
        """Write a bytes-like object through the descriptor.

        Headers go through here: one ``pwrite`` of a few KiB is never left
        half done by a killed process (a copy into the mapping can be).
        Large appends too: the kernel copies into the page cache without
        the page faults that a first write through a mapping costs.
        """
        if self.mode in ("r", "c"):
            raise PermissionError(f"cannot write the storage of {self!r}")
        fd = self._live().fd
        data = memoryview(data).cast("B")
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n

    def _sync(self) -> None:
        """Make what was written through the descriptor durable (fdatasync)."""
        if self.mode not in ("r", "c"):
            os.fdatasync(self._live().fd)

    # -- whole-mapping operations ----------------------------------------------

    def _byte_range(self, offset: Any, size: Any) -> tuple[int, int]:
        """``(start, length)`` page-aligned, covering ``[offset, offset+size)``."""
        total = self.size
        offset = as_index(offset, "offset")
        if offset > total:
            raise ValueError(f"offset {offset} is past the end of the mapping ({total} bytes)")
        size = total - offset if size is None else as_index(size, "size")
        if offset + size > total:
            raise ValueError(
                f"range [{offset}, {offset + size}) is past the end of the mapping "
                f"({total} bytes)"
            )
        start = offset - offset % PAGE_SIZE
        return start, offset + size - start

    def flush(self, offset: int = 0, size: int | None = None) -> None:
        """Write dirty pages in ``[offset, offset+size)`` to storage (msync).

        A no-op for read-only and copy-on-write mappings (and in effect for
        shared blocks, which live in memory).

        Parameters
        ----------
        offset : int, default 0
            Start of the byte range (rounded down to a page).
        size : int, optional
            Length of the range; default: to the end.

        Raises
        ------
        ValueError
            If the range is past the end, or the handle is closed.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "fl.bin")
        >>> with mm.MappedFile(path, "w+", capacity=8192) as f:
        ...     f.array()[5000] = 1
        ...     f.flush(4096, 4096)    # only the page that changed
        """
        start, length = self._byte_range(offset, size)
        if length and not self.readonly:
            with self._live().lock:  # (another thread's growth may retire the mapping)
                self._map().flush(start, length)

    def advise(self, hint: str, offset: int = 0, size: int | None = None) -> None:
        """Tell the OS how the range will be used (``madvise``).

        Parameters
        ----------
        hint : {"normal", "random", "sequential", "willneed", "dontneed"}
            ``"random"`` turns readahead off (good for scattered small
            reads), ``"sequential"`` turns it up.  A no-op where the OS
            lacks the hint.
        offset, size : int
            The byte range (default: all).  A hint that runs to the end
            (``size=None``) also covers what :meth:`resize` adds later.

        Raises
        ------
        ValueError
            For an unknown hint, a range past the end, or a closed handle.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ad.bin")
        >>> with mm.MappedFile(path, "w+", capacity=1 << 20) as f:
        ...     f.advise("random")                # scattered small reads ahead
        ...     f.advise("willneed", 0, 65536)    # prefetch the first 64 KiB
        """
        check_hint(hint)
        start, length = self._byte_range(offset, size)
        self._live().advise(hint, start, length)

    def resize(self, size: int) -> None:
        """Grow (or, for files, shrink) the storage and the mapping.

        New bytes read as zero.  Arrays made before stay valid and keep
        seeing the same bytes.

        Parameters
        ----------
        size : int
            The new size in bytes (at least 1).

        Raises
        ------
        BufferError
            When shrinking while arrays made from this handle are alive, or
            while another handle or mmarray process maps the file.
        ValueError
            For a size below 1, or shrinking a shared block.
        OSError
            ENOSPC when the storage cannot hold the new size (handles that
            reserve storage: shared blocks, ``allocate=True``, arrays).
        PermissionError
            Through a read-only or copy-on-write handle.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "rs.bin")
        >>> with mm.MappedFile(path, "w+", capacity=100) as f:
        ...     a = f.array()
        ...     f.resize(1000)          # a stays valid
        ...     a[99] = 7
        ...     f.size, int(f.read(99, np.uint8))
        (1000, 7)
        """
        size = as_index(size, "size", minimum=1)
        region = self._live()
        if self.mode in ("r", "c"):
            raise PermissionError(f"cannot resize: {self!r} was opened with mode {self.mode!r}")
        with region.lock:
            # The size the storage has now: another handle may have grown it.
            current = region.storage_size()
            if size < current and not self._can_shrink:
                raise ValueError(
                    f"a {self._kind} can only grow (size {current}, asked for {size}): "
                    "shrinking it would crash other processes that map it"
                )
            region.resize(size)

    def _grow_to(self, size: int) -> None:
        """Make the storage at least ``size`` bytes and map all of it (for
        arrays that grow: never shrinks what another handle enlarged)."""
        self._live().resize(size, at_least=True)

    def refresh(self) -> int:
        """Pick up a size that another handle or process gave the storage.

        A file or block that grew is mapped again at its new size; arrays
        made before stay valid (with their old shapes).  Cheap when nothing
        changed: one ``fstat``, no remapping.

        Returns
        -------
        int
            The size in bytes, as :attr:`size` now reports it.

        Raises
        ------
        ValueError
            If the handle is closed.

        Examples
        --------
        >>> import mmarray as mm, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "rf.bin")
        >>> with mm.MappedFile(path, "w+", capacity=4096) as f:
        ...     with mm.MappedFile(path, "r+") as g:
        ...         g.resize(8192)             # another handle grows the file
        ...     f.size, f.refresh(), f.size
        (4096, 8192, 8192)
        """
        return self._live().refresh()

    def lock(
        self,
        offset: int = 0,
        size: int | None = None,
        *,
        shared: bool = False,
        timeout: float | None = None,
    ) -> Held:
        """Take an advisory lock on a byte range; a context manager.

        Other handles, threads and processes calling ``lock()`` on an
        overlapping range wait (or time out): exclusive locks exclude
        everyone, shared ones only exclusive ones.  The locks are
        open-file-description locks: the kernel releases them if the holder
        dies, even by SIGKILL.  They do not stop plain reads and writes --
        everyone who touches the range must take the lock.

        Parameters
        ----------
        offset : int, default 0
            First byte of the range.
        size : int, optional
            Length of the range; default: to the end (the range may extend
            past the current size).
        shared : bool, default False
            A shared (reader) lock instead of an exclusive one.
        timeout : float, optional
            Seconds to wait; None waits for as long as it takes, 0 tries once.

        Returns
        -------
        Held
            Use it with ``with``, or call its ``release()``.

        Raises
        ------
        TimeoutError
            When the lock was not free within ``timeout``.
        PermissionError
            For an exclusive lock through a handle that cannot write.
        ValueError
            For a bad range or timeout, or a closed handle.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "lk.bin")
        >>> with mm.MappedFile(path, "w+", capacity=64) as f:
        ...     counter = f.array(np.int64, shape=1)
        ...     with f.lock(0, 8):          # read-modify-write, one at a time
        ...         counter[0] += 1
        ...     int(counter[0])
        1
        """
        region = self._live()
        offset = as_index(offset, "offset")
        length = _locks.RESERVED - offset if size is None else as_index(size, "size", minimum=1)
        if offset + length > _locks.RESERVED:
            raise ValueError(
                f"lock ranges must end by byte {_locks.RESERVED} (mmarray keeps the bytes "
                f"after it for its own locks; got [{offset}, {offset + length}))"
            )
        return _locks.acquire(
            region.fd, offset, length, shared=shared, timeout=as_timeout(timeout),
            what=f"{self._describe()} [{offset}, {offset + length})",
        )

    def close(self) -> None:
        """Release the handle (idempotent).

        Afterwards new views and I/O raise ``ValueError``; arrays made
        before stay valid until they are garbage-collected.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "cl.bin")
        >>> f = mm.MappedFile(path, "w+", capacity=8)
        >>> a = f.array()
        >>> f.close(); f.close()
        >>> a[0] = 1                # still valid
        >>> f.closed
        True
        """
        self._closed = True
        region, self._region = self._region, None
        if region is not None:
            region.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _describe(self) -> str:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        from ._info import buffer_html

        return buffer_html(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"mode={self.mode!r} size={self.size}"
        return f"<{type(self).__name__} {self._describe()} {state}>"
