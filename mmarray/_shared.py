"""Named POSIX shared-memory blocks: :class:`SharedBlock`.

The only module that touches POSIX shared memory.  Names are the plain
POSIX names (``shm_open("/NAME")``), so blocks made by C programs or by
:mod:`multiprocessing.shared_memory` open here and the other way round.

Lifetime: the handle from :meth:`SharedBlock.create` owns the name through
an :class:`_Owner` token.  The handle and every mapping made from it hold
the token; when the handle is closed (or the token is garbage-collected, or
the interpreter exits) the name is unlinked -- but only if it still names
the same block (device and inode), and only in the process that created
it.  Handles from :meth:`SharedBlock.open` hold no token and never unlink,
and nothing here registers with multiprocessing's resource tracker
(whose unlink-on-exit is cpython gh-82300).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import sys
import time

from ._base import MappedBuffer, as_index
from ._lifetime import finalizer
from ._region import Map, Region, Source, allocate, new_map
from ._views import OPENERS

_USE_POSIX = os.name == "posix"
if _USE_POSIX:
    import _posixshmem

#: Where Linux keeps POSIX shared memory (used to list blocks and stat names).
SHM_DIR = "/dev/shm"
NAME_MAX = 200
_NAME_RE = re.compile(rf"(?!sem\.)[A-Za-z0-9_\-][A-Za-z0-9._\-]{{0,{NAME_MAX - 1}}}")
_NAME_RULE = (
    f"1-{NAME_MAX} characters of [A-Za-z0-9._-], not starting with '.' or 'sem.' "
    "(the prefix of POSIX semaphores)"
)
#: How long opening waits for a block's creator to size it (the moment
#: between its shm_open and ftruncate).
SIZE_WAIT = 2.0


def check_name(name: object) -> str:
    """``name`` if it is a valid block name, else TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"block name must be a str (got {type(name).__name__})")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"block name must be {_NAME_RULE} (got {name!r})")
    return name


def _require_posix() -> None:
    if not (_USE_POSIX and sys.platform.startswith("linux")):
        raise NotImplementedError(f"SharedBlock is supported on Linux only (not {sys.platform})")


def _shm_open(name: str, flags: int, mode: int = 0o600) -> int:
    _require_posix()
    try:
        return _posixshmem.shm_open("/" + name, flags, mode)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such shared block", name) from None
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "Shared block exists", name) from None


def _create_unique() -> tuple[str, int]:
    """A new block with a fresh random name: ``(name, descriptor)``."""
    for _ in range(100):
        name = "mm-" + secrets.token_hex(8)
        try:
            return name, _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:  # pragma: no cover - 2**-64 per try
            continue
    raise FileExistsError(errno.EEXIST, "no free shared block name found")  # pragma: no cover


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _unlink_if_same(name: str, ident: tuple[int, int]) -> None:
    """Unlink ``name`` if it still names block ``ident``."""
    try:
        st = os.stat(os.path.join(SHM_DIR, name))
        if (st.st_dev, st.st_ino) == ident:
            _posixshmem.shm_unlink("/" + name)
    except OSError:
        pass


class _Owner:
    """Held by an owning handle and every mapping made from it; unlinks the
    name when the last of them is gone (or at exit)."""

    def __init__(self, name: str, ident: tuple[int, int]) -> None:
        # Only in the creating process (a forked child inherits the token),
        # also at the exit of a fork/forkserver multiprocessing worker.
        self.finalizer = finalizer(self, _unlink_if_same, name, ident)


def block_sizes() -> dict[str, int]:
    """``{name: size in bytes}`` of every POSIX shared-memory block, except
    semaphores (``sem.*``)."""
    _require_posix()
    sizes = {}
    with os.scandir(SHM_DIR) as it:
        for entry in it:
            if entry.name.startswith("sem.") or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):  # removed while we looked
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return sizes


def shared_blocks() -> list[str]:
    """Names of the POSIX shared-memory blocks that exist now.

    Lists every block, whoever made it; POSIX semaphores (``sem.*``) are
    left out.

    Returns
    -------
    list of str
        Sorted names (without the leading ``/`` of ``shm_open``).

    Raises
    ------
    NotImplementedError
        On platforms other than Linux.

    Examples
    --------
    >>> import mmarray as mm
    >>> with mm.SharedBlock.create("doc-shared-blocks", 64):
    ...     "doc-shared-blocks" in mm.shared_blocks()
    True
    """
    return sorted(block_sizes())


def remove_block(name: str) -> None:
    """Remove the name of block ``name`` (``FileNotFoundError`` if missing);
    processes that map it keep their mappings."""
    check_name(name)
    _require_posix()
    _posixshmem.shm_unlink("/" + name)


def _reopen(source: Source) -> Map:
    """Map a whole block again (for unpickling); never owns it."""
    flags = os.O_RDWR if source.access == "write" else os.O_RDONLY
    fd = _shm_open(source.target, flags)
    try:
        _wait_for_size(fd, source.target)
        return new_map(fd, os.fstat(fd).st_size, source)
    finally:
        os.close(fd)


OPENERS["shm"] = _reopen


class SharedBlock(MappedBuffer):
    """A named block of shared memory that other processes open by name.

    Make one with :meth:`create`, :meth:`open` or :meth:`create_or_open`
    (not with the constructor).  The typed-view API is the same as
    :class:`MappedFile`'s; blocks can grow but never shrink.

    Parameters
    ----------
    *args, **kwargs
        Not accepted: the constructor only raises ``TypeError``.

    Attributes
    ----------
    name : str
    size : int
    owner : bool
        True for the handle that created the block (it removes the name
        when closed, unless created with ``persist=True``).
    readonly, closed : bool

    Raises
    ------
    TypeError
        When called directly.

    Examples
    --------
    >>> import mmarray as mm, numpy as np
    >>> with mm.SharedBlock.create("doc-demo", 500) as blk:
    ...     blk.write(0, np.int32(12345))
    ...     with mm.SharedBlock.open("doc-demo") as other:
    ...         int(other.read(0, np.int32))
    12345
    """

    _kind = "shared block"
    _can_shrink = False
    _owner: _Owner | None = None
    name = ""
    owner = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "use SharedBlock.create(name, size), SharedBlock.open(name) "
            "or SharedBlock.create_or_open(name, size)"
        )

    @classmethod
    def _attach(
        cls, name: str, fd: int, mode: str, owner: _Owner | None, created: bool
    ) -> SharedBlock:
        self = object.__new__(cls)
        self.name = name
        self.mode = mode
        self.owner = created
        self._owner = owner
        access = "read" if mode == "r" else "write"
        self._region = Region(fd, Source("shm", name, access), owner, allocate=True)
        self._closed = False
        return self

    @classmethod
    def create(cls, name: str | None, size: int, *, persist: bool = False) -> SharedBlock:
        """Create a new block of ``size`` zero bytes, readable and writable
        by this user only (0600).

        Parameters
        ----------
        name : str or None
            1-200 characters of ``[A-Za-z0-9._-]``, not starting with ``.``;
            None for a fresh unique name (``mm-`` and 16 hex digits, as
            :class:`multiprocessing.shared_memory.SharedMemory` makes them):
            read it from :attr:`name`, or just pickle the block or its
            arrays -- they travel by reference.
        size : int
            Bytes, at least 1.
        persist : bool, default False
            Keep the name after this handle closes (remove it later with
            :meth:`unlink` or ``mmarray rm``).

        Returns
        -------
        SharedBlock
            The owner handle.

        Raises
        ------
        FileExistsError
            If the name exists.
        ValueError
            For a bad name or size.
        OSError
            ENOSPC when shared memory cannot hold ``size`` bytes: the pages
            are allocated now, so a full ``/dev/shm`` cannot make touching
            them fail later.

        Examples
        --------
        >>> import mmarray as mm
        >>> blk = mm.SharedBlock.create("doc-create", 4096)
        >>> blk.owner, blk.size, "doc-create" in mm.shared_blocks()
        (True, 4096, True)
        >>> blk.close()
        >>> "doc-create" in mm.shared_blocks()
        False
        >>> with mm.SharedBlock.create(None, 4096) as blk:   # a name of its own
        ...     blk.name.startswith("mm-")
        True
        """
        size = as_index(size, "size", minimum=1)
        if name is None:
            name, fd = _create_unique()
        else:
            name = check_name(name)
            fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.fchmod(fd, 0o600)  # shm_open's mode is subject to the umask
            os.ftruncate(fd, size)
            allocate(fd, 0, size)  # ENOSPC now, not SIGBUS on first touch
            owner = None if persist else _Owner(name, _identity(fd))
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink("/" + name)
            raise
        try:
            return cls._attach(name, fd, "r+", owner, created=True)
        except BaseException:
            if owner is not None:
                owner.finalizer()
            raise

    @classmethod
    def open(cls, name: str, *, readonly: bool = False) -> SharedBlock:
        """Open an existing block; this handle never removes it.

        Parameters
        ----------
        name : str
            The block's name.
        readonly : bool, default False
            Map it read-only: arrays are read-only and writes raise
            ``PermissionError``.

        Returns
        -------
        SharedBlock
            A handle that does not own the name.

        Raises
        ------
        FileNotFoundError
            If no block has that name.
        ValueError
            For a bad name, or a block of size 0.

        Examples
        --------
        >>> import mmarray as mm
        >>> with mm.SharedBlock.create("doc-open", 100) as blk:
        ...     with mm.SharedBlock.open("doc-open", readonly=True) as ro:
        ...         ro.size, ro.owner, ro.readonly
        (100, False, True)
        """
        name = check_name(name)
        fd = _shm_open(name, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            _wait_for_size(fd, name)
        except BaseException:
            os.close(fd)
            raise
        return cls._attach(name, fd, "r" if readonly else "r+", None, created=False)

    @classmethod
    def create_or_open(cls, name: str, size: int) -> SharedBlock:
        """Open the block ``name``, or create it with ``size`` bytes.

        Parameters
        ----------
        name : str
            The block's name.
        size : int
            Bytes to create it with; an existing block must have at least
            this many.

        Returns
        -------
        SharedBlock
            The owner handle if this call created the block, else a plain
            handle.

        Raises
        ------
        ValueError
            If the existing block is smaller than ``size``, or for a bad
            name or size.

        Examples
        --------
        >>> import mmarray as mm
        >>> with mm.SharedBlock.create_or_open("doc-coo", 64) as a:
        ...     with mm.SharedBlock.create_or_open("doc-coo", 32) as b:
        ...         a.owner, b.owner, b.size
        (True, False, 64)
        """
        name = check_name(name)  # (None, which create() takes, makes no sense here)
        size = as_index(size, "size", minimum=1)
        while True:
            try:
                return cls.create(name, size)
            except FileExistsError:
                pass
            try:
                blk = cls.open(name)
            except FileNotFoundError:
                continue  # removed between the two calls: try again
            if blk.size < size:
                have = blk.size
                blk.close()
                raise ValueError(
                    f"shared block {name!r} exists with {have} bytes, smaller than size={size}"
                )
            return blk

    def unlink(self) -> None:
        """Remove the name now; mappings already open stay valid.

        Examples
        --------
        >>> import mmarray as mm, numpy as np
        >>> blk = mm.SharedBlock.create("doc-unlink", 64, persist=True)
        >>> a = blk.array()
        >>> blk.unlink()
        >>> a[0] = 1                # the memory lives on until a is gone
        >>> "doc-unlink" in mm.shared_blocks()
        False
        >>> blk.close()
        """
        if self._owner is not None:
            self._owner.finalizer.detach()
        with contextlib.suppress(FileNotFoundError):
            remove_block(self.name)

    def close(self) -> None:
        """Release the handle; an owner (without ``persist``) removes the name."""
        owner, self._owner = self._owner, None
        super().close()
        if owner is not None:
            owner.finalizer()

    def _describe(self) -> str:
        return repr(self.name) + (" owner" if self.owner else "")

    def __reduce__(self):
        if self._closed:
            raise ValueError("cannot pickle a closed SharedBlock")
        return (_open_for_unpickle, (self.name, self.readonly))


def _wait_for_size(fd: int, name: str) -> None:
    """Wait (briefly) until the block's creator has sized it: another
    process may be between its ``shm_open`` and its ``ftruncate``."""
    deadline = time.monotonic() + SIZE_WAIT
    delay = 1e-5
    while os.fstat(fd).st_size == 0:
        if time.monotonic() > deadline:
            raise ValueError(
                f"shared block {name!r} has size 0: it was created but never sized "
                f"(waited {SIZE_WAIT} s)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _open_for_unpickle(name: str, readonly: bool) -> SharedBlock:
    return SharedBlock.open(name, readonly=readonly)

