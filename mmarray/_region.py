"""The one mapping mechanism behind files and shared blocks.

A :class:`Region` owns a file descriptor and the current ``mmap`` of it.
Everything that maps memory in mmarray goes through here, so the lifecycle
rules hold everywhere:

* Arrays never hold a bare pointer into a mapping.  They are built on a
  :class:`pickle.PickleBuffer` of the mapping, which keeps a buffer export
  alive; ``mmap.close()`` then raises ``BufferError`` instead of unmapping
  pages under a live array (cpython gh-115635 describes the crash).
* Growing never touches the old mapping: the descriptor is enlarged and a
  new, larger mapping is made.  The old one is merely dropped and is
  unmapped when its last array dies.  Both are ``MAP_SHARED`` mappings of
  the same pages, so old and new arrays see the same bytes.
* Shrinking would leave old mappings pointing past the end of the file
  (SIGBUS on access), so it is refused with ``BufferError`` while any
  array made from any mapping of this region is alive, while another
  handle of this process maps the file, or -- through the truncation
  guard of :mod:`mmarray._locks`, which every mapping holds -- while
  another process maps it.
* Sizes are read from the descriptor (``fstat``) at the moment they
  matter, never trusted from the mapping: another handle or process may
  have grown the file since, and "growing" to a stale size would shrink it.
* ``resize`` and ``close`` hold the region's lock, so threads sharing a
  handle take turns.
* ``close()`` only drops references; pages stay mapped until the arrays
  that use them are garbage-collected.
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _locks

PAGE_SIZE = mmap.ALLOCATIONGRANULARITY

#: ``advise()`` hint names and the ``madvise`` constants they stand for.
ADVICE = {
    "normal": "MADV_NORMAL",
    "random": "MADV_RANDOM",
    "sequential": "MADV_SEQUENTIAL",
    "willneed": "MADV_WILLNEED",
    "dontneed": "MADV_DONTNEED",
}

def check_hint(hint: Any) -> str:
    if hint not in ADVICE:
        raise ValueError(f"hint must be one of {tuple(ADVICE)!r} (got {hint!r})")
    return hint


def _pages(m: mmap.mmap, start: int, length: int) -> tuple[int, int]:
    """``[start, start + length)`` with ``start`` rounded down to a page and
    the end clipped to ``m``, as ``(start, length)``; length <= 0 if empty."""
    pad = start % PAGE_SIZE
    return start - pad, min(length + pad, len(m) - start + pad)


def madvise(m: mmap.mmap, hint: str, start: int, length: int) -> None:
    """``madvise`` over ``[start, start + length)`` of ``m``, ``start``
    rounded down to a page.  A no-op where the OS lacks the hint, and for
    ``"dontneed"`` on a private (copy-on-write) mapping, where it would
    throw away the copied pages: a hint must never lose data."""
    flag = getattr(mmap, ADVICE[hint], None)
    if hint == "dontneed" and getattr(getattr(m, "source", None), "access", "") == "copy":
        return
    start, length = _pages(m, start, length)
    if flag is not None and length > 0:
        m.madvise(flag, start, length)


#: ``MADV_POPULATE_WRITE`` (Linux 5.14; Python 3.11's mmap lacks the name).
_POPULATE_WRITE = getattr(
    mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None
)
#: How far past an append :func:`prefault` maps pages ahead, in bytes.
PREFAULT_BYTES = 1 << 20


def prefault(m: mmap.mmap, start: int, length: int) -> int:
    """Fault the pages of ``[start, start + length)`` in for writing, in one
    call (``MADV_POPULATE_WRITE``), and return where the range ends.

    Appends through a mapping otherwise take one page fault per fresh page,
    which costs more than copying the page's rows (measured here, 9 paired
    runs: appends of 100 16-byte rows 1.05x faster, 1.04-1.23x, on ext4; a
    concurrent appender's 1.2x; single rows level).  A populate that
    would fail (no storage behind a page, an old kernel) faults nothing and
    raises nothing: the write that follows takes its own faults, exactly as
    without the hint.  Callers pass only storage that is allocated.
    """
    global _POPULATE_WRITE
    start, length = _pages(m, start, length)
    if _POPULATE_WRITE is not None and length > 0:
        try:
            m.madvise(_POPULATE_WRITE, start, length)
        except OSError as e:
            if e.errno == errno.EINVAL:  # a kernel without it: never again
                _POPULATE_WRITE = None
    return start + length


#: How each access string maps to ``mmap`` access.
_ACCESS = {"read": mmap.ACCESS_READ, "write": mmap.ACCESS_WRITE, "copy": mmap.ACCESS_COPY}


@dataclass(frozen=True)
class Source:
    """Where a mapping's bytes live: enough to map them again elsewhere.

    ``kind`` is ``"file"`` (``target`` an absolute path) or ``"shm"``
    (``target`` a block name); ``access`` is ``"read"``, ``"write"`` or
    ``"copy"``.
    """

    kind: str
    target: str
    access: str


class Map(mmap.mmap):
    """An ``mmap`` that remembers its :class:`Source` (for pickling by
    reference), its base address, and an optional owner token that must live
    as long as any array made from it (shared blocks unlink on its death)."""

    source: Source
    address: int
    owner: Any
    ident: tuple[int, int]  #: (device, inode) of what it maps


#: Every live mapping in this process, by the (device, inode) it maps: a
#: file must not shrink under a mapping made by another handle, or by
#: unpickling, in this process.
_MAPS: dict[tuple[int, int], weakref.WeakSet[Map]] = {}


def new_map(
    fd: int, size: int, source: Source, owner: Any = None, ident: tuple[int, int] | None = None
) -> Map:
    """Map ``size`` bytes of ``fd`` from offset 0; ``ident`` is the file's
    (device, inode) if the caller knows it.

    The descriptor's description takes the shared truncation guard first;
    ``mmap`` dups the descriptor, so the guard lives as long as the mapping.
    """
    _locks.hold_guard(fd)
    m = Map(fd, size, access=_ACCESS[source.access])
    m.source = source
    # The address lets a view find its offset inside the mapping.
    m.address = _address_of(m)
    m.owner = owner
    if ident is None:
        ident = identity(os.fstat(fd))
    m.ident = ident
    if len(_MAPS) > 256:
        for key in [k for k, maps in _MAPS.items() if not maps]:
            del _MAPS[key]
    _MAPS.setdefault(ident, weakref.WeakSet()).add(m)
    return m


def mapping_of(arr: np.ndarray) -> Map | None:
    """The mapping under ``arr`` if it is one of ours, else None."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, pickle.PickleBuffer):
        try:
            obj = base.raw().obj
        except (ValueError, BufferError):  # released, or not contiguous
            return None
        if isinstance(obj, Map):
            return obj
    return None


def identity(st: os.stat_result) -> tuple[int, int]:
    """What names a file or block whatever its path: (device, inode)."""
    return st.st_dev, st.st_ino


def _mapped_elsewhere(ident: tuple[int, int], mine: list[Map], size: int) -> bool:
    """Whether a live mapping of file ``ident`` other than ``mine`` reaches
    past ``size`` bytes."""
    return any(
        m not in mine and not m.closed and len(m) > size for m in list(_MAPS.get(ident, ()))
    )


def in_use(fd: int) -> bool:
    """Whether any mapping -- in this process or another mmarray process --
    still maps the file behind ``fd`` (a description that maps nothing).

    On False, ``fd``'s description holds the guard exclusively: nobody can
    map the file until it maps it itself or closes ``fd``.
    """
    maps = _MAPS.get(identity(os.fstat(fd)), ())
    if any(not m.closed for m in list(maps)):
        return True
    return not _locks.guard_exclusive(fd)


def _address_of(m: mmap.mmap) -> int:
    # numpy reads the address of read-only and writable buffers alike.
    view = np.frombuffer(m, dtype=np.uint8, count=1)
    return int(view.__array_interface__["data"][0])


def allocate(fd: int, offset: int, length: int) -> None:
    """Give ``[offset, offset+length)`` real storage now (``posix_fallocate``).

    Touching a page that the storage cannot back (a full tmpfs, e.g. a
    64 MiB ``/dev/shm`` in a container) raises SIGBUS; allocating up front
    turns that into an ``OSError`` (ENOSPC) here instead.
    """
    if length > 0 and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, offset, length)


def try_unmap(m: mmap.mmap) -> bool:
    """Unmap ``m`` now if no array uses it; return whether it is gone."""
    try:
        m.close()
    except BufferError:
        return False
    return True


class Region:
    """A descriptor and its current mapping; see the module docstring.

    Parameters
    ----------
    fd : int
        An open descriptor; the region owns it from now on.
    source : Source
    owner : object, optional
        Stored on every mapping made (see :class:`Map`).
    """

    def __init__(
        self,
        fd: int,
        source: Source,
        owner: Any = None,
        *,
        allocate: bool = False,
        st: os.stat_result | None = None,
    ) -> None:
        self.fd = fd
        # Closes the descriptor if the region is dropped without close().
        self._close_fd = weakref.finalize(self, os.close, fd)
        self.source = source
        self.owner = owner
        self.allocate = allocate
        self.map: Map | None = None
        self.lock = threading.RLock()
        # A hint given from some offset to the end, given again to every
        # new mapping (growth and refresh map anew).
        self.hint: tuple[str, int] | None = None
        # Mappings replaced by a growth that arrays may still use.
        self._retired: list[weakref.ref[Map]] = []
        try:
            st = st or os.fstat(fd)
            self.ident = identity(st)
            self.map = new_map(fd, st.st_size, source, owner, self.ident)
        except BaseException:
            self._close_fd()
            raise

    @property
    def size(self) -> int:
        assert self.map is not None
        return len(self.map)

    def storage_size(self) -> int:
        """The size the file or block has now (another handle may have
        changed it since this one mapped it)."""
        return os.fstat(self.fd).st_size

    def resize(self, size: int, *, at_least: bool = False) -> None:
        """Make the storage ``size`` bytes and map all of it.

        The comparison is with the storage's size now, not with what this
        handle mapped.  With ``at_least``, storage that is already larger
        (grown by another handle) is kept and mapped whole.
        """
        with self.lock:
            current = self.storage_size()
            if at_least:
                size = max(size, current)
            if size > current:
                self._grow(current, size)
            elif size < current:
                self._shrink(size)
                return
            assert self.map is not None
            if len(self.map) != size:
                try:
                    self._remap(size)
                except BaseException:
                    # tmpfs accepts sizes it cannot map (ENOMEM): leave the
                    # storage as it was, or nobody could open it again.
                    self._undo_grow(current, size)
                    raise

    def refresh(self) -> int:
        """Map the storage at the size it has now (another handle or process
        may have grown it); the old mapping stays valid for its arrays."""
        size = self.storage_size()
        if self.map is not None and size == len(self.map):
            return size  # nothing changed: one fstat
        with self.lock:
            size = self.storage_size()
            if self.map is not None and size and size != len(self.map):
                self._remap(size)
            return size

    def _remap(self, size: int) -> None:
        """Map ``size`` bytes now; the old mapping is retired (its arrays
        keep it until they are gone)."""
        old = self.map
        self.map = new_map(self.fd, size, self.source, self.owner, self.ident)
        if old is not None:
            self._retire(old)
        if self.hint is not None and self.hint[1] < size:
            madvise(self.map, self.hint[0], self.hint[1], size - self.hint[1])

    def advise(self, hint: str, start: int, length: int) -> None:
        """``madvise`` the range; one that runs to the end of the mapping
        is kept for the mappings that growth makes later."""
        assert self.map is not None
        with self.lock:
            madvise(self.map, hint, start, length)
            if start + length >= len(self.map) and hint not in ("willneed", "dontneed"):
                self.hint = None if hint == "normal" else (hint, start)

    def _grow(self, current: int, size: int) -> None:
        try:
            if self.allocate:
                # Real storage now (it also sets the size): ENOSPC here,
                # not SIGBUS on a later write.
                allocate(self.fd, current, size - current)
            else:
                os.ftruncate(self.fd, size)
        except BaseException:
            self._undo_grow(current, size)
            raise

    def _undo_grow(self, current: int, size: int) -> None:
        """Give back a failed growth -- unless someone grew the storage past
        ``size`` meanwhile (then it is theirs)."""
        try:
            if current < self.storage_size() <= size:
                os.ftruncate(self.fd, current)
        except OSError:
            pass

    def _shrink(self, size: int) -> None:
        self._unmap_all_or_raise(size)
        try:
            os.ftruncate(self.fd, size)
        finally:
            # Remap whatever size the descriptor has now, even on failure;
            # this also turns the exclusive guard back into a shared one.
            self.map = new_map(self.fd, self.storage_size(), self.source, self.owner, self.ident)

    def _retire(self, m: Map) -> None:
        if not try_unmap(m):
            self._retired.append(weakref.ref(m))
        self._retired = [r for r in self._retired if r() is not None]

    def _unmap_all_or_raise(self, size: int) -> None:
        maps = [m for m in (r() for r in self._retired) if m is not None]
        assert self.map is not None
        maps.append(self.map)  # last: it stays usable if an older one is busy
        if _mapped_elsewhere(self.ident, maps, size):
            raise BufferError(
                "cannot shrink: the file is also mapped by another handle or an "
                "unpickled array in this process"
            )
        if not _locks.guard_exclusive(self.fd):
            raise BufferError(
                "cannot shrink: another process (or another handle in this one) maps "
                "the file; shrinking it would crash that process"
            )
        try:
            for m in maps:
                if not try_unmap(m):
                    raise BufferError(
                        "cannot shrink while arrays made from this mapping are alive; "
                        "delete them (and their views) first"
                    )
        except BaseException:
            _locks.hold_guard(self.fd)  # back to shared: the file stays as it was
            raise
        self._retired = []

    def close(self) -> None:
        """Drop the mapping and close the descriptor (idempotent)."""
        with self.lock:
            m, self.map = self.map, None
            if m is not None:
                try_unmap(m)
            self._retired = []
            self.fd = -1
            self._close_fd()
