"""Files mapped as typed numpy arrays: :class:`MappedFile`.

This is the only module that opens and sizes files for mapping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat
from typing import Any, Literal

from ._base import MappedBuffer, as_index
from ._region import Map, Region, Source, new_map
from ._views import OPENERS

FileMode = Literal["r", "r+", "w+", "x+", "c"]

#: mode -> (os.open flags, mapping access)
MODES: dict[str, tuple[int, str]] = {
    "r": (os.O_RDONLY, "read"),
    "r+": (os.O_RDWR, "write"),
    "w+": (os.O_RDWR | os.O_CREAT | os.O_TRUNC, "write"),
    "x+": (os.O_RDWR | os.O_CREAT | os.O_EXCL, "write"),
    "c": (os.O_RDONLY, "copy"),
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def abspath(path: Any) -> str:
    """``path`` (str or os.PathLike) as an absolute path string."""
    try:
        name = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(
            f"path must be a str or os.PathLike (got {type(path).__name__})"
        ) from None
    return os.path.abspath(name)


def open_file(
    path: str, mode: str, capacity: int | None
) -> tuple[int, str, os.stat_result | None]:
    """Open ``path`` for mapping in ``mode``, sized to at least ``capacity``.

    Returns the descriptor, the mapping access, and the file's stat when
    opening did not change it (saves a system call).  Validates the mode and
    the capacity rules of :class:`MappedFile`; closes (and for a file it
    created, removes) what it opened if anything fails.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)!r} (got {mode!r})")
    flags, access = MODES[mode]
    if capacity is not None:
        capacity = as_index(capacity, "capacity", minimum=1)
    if mode in ("w+", "x+") and capacity is None:
        raise ValueError(f"mode {mode!r} creates the file: pass capacity= (its size in bytes)")
    fd = os.open(path, flags | _CLOEXEC, 0o666)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        size = st.st_size
        if capacity is not None and capacity != size:
            if capacity < size:
                raise ValueError(
                    f"capacity {capacity} is smaller than the file ({size} bytes); "
                    "use resize() to shrink a file"
                )
            enlarge(fd, size, capacity, mode, repr(path))
            st = None
        elif size == 0:
            raise ValueError(f"{path!r} is empty: pass capacity= to give it a size")
    except BaseException:
        os.close(fd)
        if mode in ("w+", "x+"):
            _remove_quietly(path)
        raise
    return fd, access, st


def enlarge(fd: int, size: int, capacity: int, mode: str, what: str) -> None:
    """Make the file ``capacity`` bytes (> ``size``) if ``mode`` may write.

    ``ftruncate`` leaves a hole: the new bytes read as zero and take no
    space where the filesystem allows sparse files.
    """
    if MODES[mode][1] != "write":
        raise PermissionError(
            f"capacity {capacity} would enlarge {what} ({size} bytes), "
            f"but mode {mode!r} cannot write"
        )
    os.ftruncate(fd, capacity)


def open_any(filename: Any, mode: str) -> tuple[int, Any, str]:
    """Open a path or file object the way :class:`numpy.memmap` does.

    Returns a descriptor of our own, the ``filename`` numpy would report
    (an absolute str, a resolved Path for a PathLike, None for an unnamed
    file object), and the absolute path to reopen it by ("" if none).
    """
    if hasattr(filename, "read"):
        filename.seek(0, 2)  # as numpy does; it also flushes buffered writes
        fd = os.dup(filename.fileno())
        name = getattr(filename, "name", None)
        if isinstance(name, str):
            path = os.path.abspath(name)
            return fd, path, path
        return fd, None, ""
    path = abspath(filename)
    fd = os.open(path, MODES[mode][0] | _CLOEXEC, 0o666)
    if isinstance(filename, os.PathLike):
        return fd, pathlib.Path(filename).resolve(), path
    return fd, path, path


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _reopen(source: Source) -> Map:
    """Map a whole file again (for unpickling)."""
    flags = os.O_RDWR if source.access == "write" else os.O_RDONLY
    fd = os.open(source.target, flags | _CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"cannot map {source.target!r}: the file is now empty")
        return new_map(fd, size, source)
    finally:
        os.close(fd)  # mmap keeps a descriptor of its own


OPENERS["file"] = _reopen


class MappedFile(MappedBuffer):
    """A file mapped into memory, with typed numpy views at any offset.

    Parameters
    ----------
    path : str or os.PathLike
    mode : {"r", "r+", "w+", "x+", "c"}, default "r"
        ``"r"`` read-only, the file must exist; ``"r+"`` read-write, must
        exist; ``"w+"`` create or truncate; ``"x+"`` create,
        ``FileExistsError`` if it exists; ``"c"`` copy-on-write (writes stay
        in this process, the file never changes).
    capacity : int, optional
        Size in bytes.  A larger capacity enlarges the file (zero-filled,
        sparse where the filesystem allows); needed by ``"w+"``/``"x+"``
        and for an empty file.

    Attributes
    ----------
    path : pathlib.Path
        Absolute path of the file.
    mode : str
    size : int
        Bytes mapped.
    readonly, closed : bool

    Raises
    ------
    ValueError
        For an unknown mode, a capacity smaller than the file, an empty
        file without capacity, or ``"w+"``/``"x+"`` without capacity.
    PermissionError
        For a capacity that would enlarge a file opened ``"r"``/``"c"``.
    FileNotFoundError, FileExistsError
        As for :func:`open`.

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "long.bin")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(bytes(1_000_000))
    >>> with mm.MappedFile(path, mode="r+") as f:
    ...     f.write(500_000, np.uint8(77))
    ...     int(f.read(500_000, np.uint8)), int(f.array(np.uint8)[500_000])
    (77, 77)
    """

    _kind = "file"
    _can_shrink = True
    _path = ""

    def __init__(
        self, path: str | os.PathLike[str], mode: FileMode = "r", *, capacity: int | None = None
    ) -> None:
        self._path = abspath(path)
        fd, access, st = open_file(self._path, mode, capacity)
        self.mode = mode
        self._region = Region(fd, Source("file", self._path, access), st=st)
        self._closed = False

    @property
    def path(self) -> pathlib.Path:
        """The absolute path of the file."""
        return pathlib.Path(self._path)

    def _describe(self) -> str:
        return repr(self._path)

    def __reduce__(self):
        if self._closed:
            raise ValueError("cannot pickle a closed MappedFile")
        # Reopening must never truncate: creation modes come back as "r+".
        mode = "r+" if self.mode in ("w+", "x+") else self.mode
        return (type(self), (self._path, mode))
