"""Files mapped as typed numpy arrays: :class:`MappedFile`.

This is the only module that opens and sizes files for mapping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat
import tempfile
from typing import Any, Literal

from ._base import MappedBuffer, as_index
from ._region import Map, Region, Source, in_use, new_map
from ._region import allocate as reserve
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


def open_fd(path: str, mode: str) -> int:
    """Open ``path`` for mapping in ``mode`` (the flags of :data:`MODES`).

    ``"w+"`` never truncates a file that is mapped -- by a live array or
    handle of this process, or by another mmarray process (the truncation
    guard): such a file is *replaced* by a new, empty one at the same path,
    and whoever mapped the old one keeps its bytes.  A file that nobody
    maps is truncated in place (same inode, links and permissions).
    Anything but a regular file is refused (a FIFO would block forever).
    """
    flags = MODES[mode][0]
    if mode == "w+":
        flags &= ~os.O_TRUNC
    fd = os.open(path, flags | _CLOEXEC | os.O_NONBLOCK, 0o666)
    try:
        st = check_regular(os.fstat(fd), path)
        os.set_blocking(fd, True)
        if mode == "w+" and st.st_size:
            if in_use(fd):
                new = _replace(path, st)
                os.close(fd)
                fd = new
            else:  # nobody maps it: we hold the guard exclusively
                os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(st: os.stat_result, path: str) -> os.stat_result:
    """``st`` if it is a regular file's; ``IsADirectoryError`` or
    ``ValueError`` otherwise (a FIFO or a device cannot be mapped)."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path!r} is not a regular file: only files can be mapped")
    return st


def _replace(path: str, st: os.stat_result) -> int:
    """Put a new empty file at ``path`` (atomically, by rename) with the old
    one's permissions; return its descriptor.  The old inode lives on for
    those who map it."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".mmarray-")
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(OSError):
            os.fchown(fd, st.st_uid, st.st_gid)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    return fd


def open_file(
    path: str, mode: str, capacity: int | None, allocate: bool = False
) -> tuple[int, str, os.stat_result | None]:
    """Open ``path`` for mapping in ``mode``, sized to at least ``capacity``.

    Returns the descriptor, the mapping access, and the file's stat when
    opening did not change it (saves a system call).  Validates the mode and
    the capacity rules of :class:`MappedFile`; closes (and for a file it
    created, removes) what it opened if anything fails.  ``allocate``
    reserves real storage for the whole file (ENOSPC now, not SIGBUS later).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)!r} (got {mode!r})")
    access = MODES[mode][1]
    if capacity is not None:
        capacity = as_index(capacity, "capacity", minimum=1)
    if mode in ("w+", "x+") and capacity is None:
        raise ValueError(f"mode {mode!r} creates the file: pass capacity= (its size in bytes)")
    if allocate and access != "write":
        raise PermissionError(f"allocate=True reserves storage, but mode {mode!r} cannot write")
    fd = open_fd(path, mode)
    try:
        st = os.fstat(fd)
        size = st.st_size
        if capacity is not None and capacity != size:
            if capacity < size:
                raise ValueError(
                    f"capacity {capacity} is smaller than the file ({size} bytes); "
                    "use resize() to shrink a file"
                )
            enlarge(fd, size, capacity, mode, repr(path), allocate)
            st = None
        elif size == 0:
            raise ValueError(f"{path!r} is empty: pass capacity= to give it a size")
        elif allocate:
            reserve(fd, 0, size)
    except BaseException:
        os.close(fd)
        if mode in ("w+", "x+"):
            _remove_quietly(path)
        raise
    return fd, access, st


def enlarge(
    fd: int, size: int, capacity: int, mode: str, what: str, allocate: bool = False
) -> None:
    """Make the file ``capacity`` bytes (> ``size``) if ``mode`` may write.

    ``ftruncate`` leaves a hole: the new bytes read as zero and take no
    space where the filesystem allows sparse files.  With ``allocate`` the
    whole file gets real storage instead, or -- on ENOSPC -- keeps its size.
    """
    check_enlarge(size, capacity, mode, what)
    if not allocate:
        os.ftruncate(fd, capacity)
        return
    try:
        reserve(fd, 0, capacity)  # sets the size too
    except BaseException:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
        raise


def check_enlarge(size: int, capacity: int, mode: str, what: str) -> None:
    """``PermissionError`` unless ``mode`` may enlarge the file."""
    if MODES[mode][1] != "write":
        raise PermissionError(
            f"capacity {capacity} would enlarge {what} ({size} bytes), "
            f"but mode {mode!r} cannot write"
        )


def _real_path(fd: int) -> str:
    """The absolute path that names the file behind ``fd`` now ("" if it has
    none): the kernel's answer, not a relative name that a chdir changed."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
    return path if path.startswith("/") and not path.endswith(" (deleted)") else ""


def open_any(filename: Any, mode: str) -> tuple[int, Any, str]:
    """Open a path or file object the way :class:`numpy.memmap` does.

    Returns a descriptor of our own, the ``filename`` numpy would report
    (an absolute str, a resolved Path for a PathLike, None for an unnamed
    file object), and the absolute path to reopen it by ("" if none).
    ``"w+"`` on a path follows :func:`open_fd` (a mapped file is replaced,
    never truncated under its mappings).
    """
    if hasattr(filename, "read"):
        filename.seek(0, 2)  # as numpy does; it also flushes buffered writes
        fd = os.dup(filename.fileno())
        name = getattr(filename, "name", None)
        if isinstance(name, str):
            path = _real_path(fd) or os.path.abspath(name)
            return fd, path, path
        return fd, None, ""
    path = abspath(filename)
    fd = open_fd(path, mode)
    if isinstance(filename, os.PathLike):
        return fd, pathlib.Path(filename).resolve(), path
    return fd, path, path


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _reopen(source: Source) -> Map:
    """Map a whole file again (for unpickling)."""
    flags = os.O_RDWR if source.access == "write" else os.O_RDONLY
    fd = os.open(source.target, flags | _CLOEXEC | os.O_NONBLOCK)
    try:
        size = check_regular(os.fstat(fd), source.target).st_size
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
    allocate : bool, default False
        Reserve real storage for the whole file now (``posix_fallocate``),
        and for what :meth:`resize` adds later, so that a full disk raises
        ``OSError`` (ENOSPC) here instead of killing the process with
        SIGBUS at a later write into a sparse page.

    Notes
    -----
    ``"w+"`` on a file that live arrays or handles still map -- in this
    process or another mmarray process -- does not truncate it under them:
    it puts a new, empty file at the same path, and the old arrays keep the
    old bytes (re-running a notebook cell is safe).  A file that nothing
    maps is truncated in place.

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
    OSError
        ENOSPC with ``allocate=True`` when the storage cannot hold the file.
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
        self,
        path: str | os.PathLike[str],
        mode: FileMode = "r",
        *,
        capacity: int | None = None,
        allocate: bool = False,
    ) -> None:
        self._path = abspath(path)
        fd, access, st = open_file(self._path, mode, capacity, allocate)
        self.mode = mode
        source = Source("file", self._path, access)
        self._region = Region(fd, source, allocate=allocate, st=st)
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
