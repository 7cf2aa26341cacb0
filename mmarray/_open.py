"""Opening and creating growable arrays: :func:`open_array`.

Turns a target (a path, or ``"shm://NAME"``) and a mode into a
:class:`~mmarray.MappedFile` or :class:`~mmarray.SharedBlock` holding a
``.npy`` header, and hands it to :class:`~mmarray.MappedArray`.  Whatever
can be refused is checked before anything is created, and what was created
is removed again if opening fails half-way.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Literal

import numpy as np

from ._array import MappedArray
from ._base import MappedBuffer, as_dtype, as_index, as_shape
from ._file import MappedFile, abspath
from ._header import data_offset_for, encode_header
from ._record import close_writer_fd, writer_lock
from ._shared import SharedBlock

ArrayMode = Literal["r", "r+", "c", "w+", "x+", "a"]
MODES = ("r", "r+", "c", "w+", "x+", "a")
SHM_PREFIX = "shm://"
NPY_MAGIC = b"\x93NUMPY"


def _parse_target(target: Any) -> tuple[str, str]:
    """``("shm", name)`` or ``("file", absolute path)``."""
    if isinstance(target, str) and target.startswith(SHM_PREFIX):
        return "shm", target[len(SHM_PREFIX) :]
    return "file", abspath(target)


def _create(
    kind: str,
    where: str,
    mode: str,
    dtype: Any,
    shape: Any,
    capacity: int | None,
    why: str = "",
    concurrent: bool = False,
):
    if dtype is None or shape is None:
        raise ValueError(f"{why or f'mode {mode!r} creates the array'}: pass dtype= and shape=")
    dt, shp = normalize(as_dtype(dtype), as_shape(shape))
    # Everything that can be refused is checked before anything is created.
    offset = data_offset_for(dt, len(shp))
    rows = max(shp[0], capacity or 0) if shp else 1
    nbytes = max(rows * math.prod(shp[1:]) * dt.itemsize, 1)
    if offset + nbytes > sys.maxsize or math.prod(shp) * dt.itemsize > sys.maxsize:
        raise ValueError(f"shape {shp} of {dt} is too large for an array")
    name = SHM_PREFIX + where if kind == "shm" else where
    existing = False
    if kind == "file":
        buf: MappedBuffer = MappedFile(where, mode, capacity=offset + nbytes, allocate=True)
    elif mode == "w+":
        try:
            buf = SharedBlock.create(where, offset + nbytes)
        except FileExistsError:  # reinitialise an existing block, in place
            buf = SharedBlock.open(where)
            existing = True
    else:
        buf = SharedBlock.create(where, offset + nbytes)
    writer = -1
    try:
        # Before touching the bytes: a block that a writer holds is refused.
        writer = writer_lock(buf, name, concurrent=concurrent)
        if existing:
            if buf.size < offset + nbytes:
                buf.resize(offset + nbytes)
            # All of it: rows past the new shape are capacity that resize()
            # and append() hand out as zeros.
            buf.array(np.uint8, buf.size - offset, offset)[:] = 0
        buf._pwrite(encode_header(dt, shp, False, offset), 0)
    except BaseException:
        buf.close()
        close_writer_fd(writer)
        if not existing:
            _remove_created(kind, where)
        raise
    return buf, writer


def normalize(dt: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
    """A subarray dtype such as ``("<f4", (3,))`` is its base dtype with the
    extra axes at the end of the shape, as numpy stores it."""
    if dt.subdtype is not None:
        base, extra = dt.subdtype
        return base, (*shape, *extra)
    return dt, shape


def _remove_created(kind: str, where: str) -> None:
    """Leave nothing behind when creating an array failed half-way."""
    with contextlib.suppress(OSError):
        if kind == "file":
            os.unlink(where)


def _open(kind: str, where: str, mode: str):
    if kind == "file":
        return MappedFile(where, "r+" if mode == "a" else mode)
    if mode == "c":
        raise ValueError("mode 'c' (copy-on-write) is for files, not shared blocks")
    return SharedBlock.open(where, readonly=mode == "r")


def open_array(
    target: str | os.PathLike[str],
    mode: ArrayMode = "r",
    *,
    dtype: Any = None,
    shape: Any = None,
    capacity: int | None = None,
    concurrent: bool = False,
    data: Any = None,
) -> MappedArray:
    """Open (or create) a growable array stored as a ``.npy`` file or block.

    Parameters
    ----------
    target : str or os.PathLike
        A file path, or ``"shm://NAME"`` for a named shared block.
    mode : {"r", "r+", "c", "w+", "x+", "a"}, default "r"
        ``"r"`` (the default) opens an existing array read-only: writing
        into it raises ``ValueError``.  ``"r+"``/``"c"`` open one
        read-write and copy-on-write; ``"w+"`` creates or truncates (for a
        block: creates, or reinitialises an existing one); ``"x+"`` creates,
        ``FileExistsError`` if it exists; ``"a"`` opens read-write, or
        creates with ``dtype`` and ``shape`` (default ``(0,)``) when the
        target is missing or an empty file.
    dtype : data-type, optional
        Needed when creating (unless ``data`` gives it); for an existing
        array, it must match.
    shape : int or tuple of int, optional
        Needed by ``"w+"``/``"x+"`` (unless ``data`` gives it); for an
        existing array, its row shape (``shape[1:]``) must match.
    capacity : int, optional
        Rows (not bytes) along axis 0 to reserve: more rows can be appended
        before the file or block has to grow.
    concurrent : bool, default False
        Share appending with other handles and processes that pass it too
        (modes ``"r+"``, ``"a"``, ``"w+"``, ``"x+"``): every append, resize
        and flush then holds the array's lock, picks up the length the
        others recorded, writes after it and records the new length before
        letting go, so other processes see each append after their
        :meth:`MappedArray.refresh`.  Without it one handle at a time may
        change the length (the others get ``BlockingIOError``).
    data : array_like, optional
        With ``"w+"``/``"x+"``: the contents.  The array is created with
        its dtype and shape (a list is converted as ``np.asarray(data,
        dtype)`` does; ``dtype``/``shape`` given as well must agree) and
        ``data`` is written in, like h5py's ``create_dataset(data=...)``.

    Returns
    -------
    MappedArray

    Raises
    ------
    ValueError
        For a bad mode, missing ``dtype``/``shape`` when creating, a file
        with no ``.npy`` header (map raw bytes with :class:`MappedFile` or
        :class:`mmarray.memmap`), a corrupt, truncated or hostile header,
        ``data`` with a mode that does not create, or ``data`` whose dtype
        or shape disagree with ``dtype``/``shape``, or a file shorter than its
        header says; for ``"a"`` on an old ``.npy`` whose header has no room
        to record a longer shape; when an existing array's dtype or row
        shape differs from ``dtype``/``shape``.
    TypeError
        For object dtypes.
    BlockingIOError
        When another handle -- in this process or another -- is the
        array's writer (``"a"``/``"w+"``/``"x+"``, or an ``"r+"`` handle
        that appended), or a concurrent and a plain writer meet.
    OSError
        ENOSPC when the storage cannot hold the array: real storage is
        reserved for every row it can hold.
    FileNotFoundError, FileExistsError, PermissionError
        As for the underlying file or block.

    Notes
    -----
    ``"w+"`` on a file that live arrays or handles map (here or in another
    mmarray process) puts a new file at the same path; the old arrays keep
    the old bytes.  A file nobody maps is truncated in place.

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ticks.npy")
    >>> rec = np.dtype([("t", "<i8"), ("price", "<f8")])
    >>> with mm.open_array(path, mode="a", dtype=rec) as ticks:
    ...     ticks.append(np.array([(1, 99.5), (2, 99.75)], rec))
    ...     len(ticks)
    2
    >>> np.load(path)["price"].tolist()
    [99.5, 99.75]

    Created from data, then opened read-only (the default mode):

    >>> grid = os.path.join(os.path.dirname(path), "grid.npy")
    >>> mm.open_array(grid, "w+", data=np.eye(3)).close()
    >>> with mm.open_array(grid) as g:
    ...     g.shape, float(g[1, 1])
    ((3, 3), 1.0)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES!r} (got {mode!r})")
    if capacity is not None:
        capacity = as_index(capacity, "capacity")
    concurrent = bool(concurrent)
    if concurrent and mode not in ("r+", "a", "w+", "x+"):
        raise ValueError(f"concurrent=True is for modes 'r+', 'a', 'w+', 'x+' (got {mode!r})")
    if data is not None:
        data, dtype, shape = _from_data(data, dtype, shape, mode)
    kind, where = _parse_target(target)
    created = True
    writer = -1
    if mode in ("w+", "x+"):
        buf, writer = _create(kind, where, mode, dtype, shape, capacity, concurrent=concurrent)
    elif mode == "a" and kind == "file" and _is_empty_file(where):
        # An empty file holds no array yet: "a" creates one in it.
        buf, writer = _create(
            kind, where, "w+", dtype, (0,) if shape is None else shape, capacity,
            why=f"{where!r} is empty: mode 'a' creates an array in it", concurrent=concurrent,
        )
    elif mode == "a":
        try:
            buf = _open(kind, where, mode)
            created = False
        except FileNotFoundError:
            buf, writer = _create(
                kind, where, "x+", dtype, (0,) if shape is None else shape, capacity,
                why=f"{target!r} does not exist: mode 'a' creates it", concurrent=concurrent,
            )
    else:
        buf = _open(kind, where, mode)
        created = False
    name = SHM_PREFIX + where if kind == "shm" else where
    arr = None
    try:
        if not created:
            _check_npy(buf, name)
        arr = MappedArray._from_buffer(buf, name, mode, writer, concurrent)
        if data is not None and data.size:
            rows = arr._full_view()
            (rows[: len(data)] if data.ndim else rows)[...] = data
        if created:
            # The first header was written but not synced: the first flush
            # (or close) rewrites and syncs it.
            arr._state.recorded = -1
            arr._state.written = arr._state.length or 0  # the rest is fresh
        else:
            _check_matches(arr, dtype, shape)  # before anything is changed
        if capacity is not None:
            arr._reserve_at_open(capacity)
    except BaseException:
        if arr is not None:
            # Nothing to record: the array never opened.  Its writer lock
            # may be one it took itself.
            arr._closer.detach()
            writer, arr._state.writer_fd = arr._state.writer_fd, -1
        buf.close()
        close_writer_fd(writer)
        if created:
            _remove_created(kind, where)
        raise
    return arr


def _from_data(data: Any, dtype: Any, shape: Any, mode: str) -> tuple[np.ndarray, Any, Any]:
    """``data=``: the array to write, and the dtype and shape it gives."""
    if mode not in ("w+", "x+"):
        raise ValueError(f"data= is for modes 'w+' and 'x+', which create (got {mode!r})")
    if isinstance(data, MappedArray):
        data = data._view()
    if isinstance(data, np.ndarray) or dtype is None:
        arr = np.asarray(data)
    else:
        arr = np.asarray(data, dtype=as_dtype(dtype))
    if arr.dtype.hasobject:
        raise TypeError(f"data= of dtype {arr.dtype}: object arrays cannot be stored")
    if dtype is not None:
        dt, extra = normalize(as_dtype(dtype), ())
        if dt != arr.dtype or arr.shape[arr.ndim - len(extra):] != extra:
            raise ValueError(f"data= has dtype {arr.dtype} (shape {arr.shape}), "
                             f"not dtype={as_dtype(dtype)}")
    if shape is not None:
        _, want = normalize(as_dtype(dtype) if dtype is not None else arr.dtype,
                            as_shape(shape))
        if want != arr.shape:
            raise ValueError(f"data= has shape {arr.shape}, not shape={want}")
    return arr, arr.dtype, arr.shape


def _check_npy(buf: MappedBuffer, name: str) -> None:
    """An existing file or block must start with a ``.npy`` header."""
    n = min(buf.size, len(NPY_MAGIC))
    if n < len(NPY_MAGIC) or buf.read_array(0, "u1", n).tobytes() != NPY_MAGIC:
        what = "is empty" if not buf.size else "has no .npy header"
        raise ValueError(
            f"{name!r} {what}, so it holds no array for open_array: map raw bytes "
            "with mm.MappedFile(path) (or SharedBlock) or mm.memmap(path, dtype=...), "
            "or create an array with mode 'w+'"
        )


def _is_empty_file(path: str) -> bool:
    try:
        return os.stat(path).st_size == 0
    except FileNotFoundError:
        return False


def _check_matches(arr: MappedArray, dtype: Any, shape: Any) -> None:
    """An existing array must have the dtype and row shape the caller expects
    (a subarray dtype counts as its base dtype plus trailing axes)."""
    if dtype is None and shape is None:
        return
    given = arr.dtype if dtype is None else as_dtype(dtype)
    dt, extra = normalize(given, ())
    if dt != arr.dtype or (extra and arr.shape[len(arr.shape) - len(extra):] != extra):
        raise ValueError(
            f"{arr.target!r} holds {arr.dtype} (shape {arr.shape}), not the requested "
            f"dtype {given}"
        )
    if shape is not None:
        _, want = normalize(given, as_shape(shape))
        if want[1:] != arr.shape[1:] or (not want) != (not arr.shape):
            raise ValueError(
                f"{arr.target!r} holds rows of shape {arr.shape[1:]} (shape {arr.shape}), "
                f"not the requested shape {want}"
            )
