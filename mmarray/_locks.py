"""Advisory locks between processes: open-file-description (OFD) locks.

The only module that calls ``fcntl``.  The rules it rests on:

* An OFD lock (``F_OFD_SETLK``) belongs to an *open file description*, not
  to a process: descriptors made by ``dup`` (and ``mmap``, which dups the
  descriptor it maps) share it, and it is released when the last of them
  is closed -- or when the process dies, SIGKILL included.  A killed
  process never leaves a lock held.
* Two descriptions conflict even inside one process, so a second handle in
  this process is refused exactly like another process is.  Locking again
  through the same description converts the lock (shared <-> exclusive)
  rather than conflicting with it.
* mmarray keeps a reserved range far past any data (:data:`RESERVED` and
  up) for its own locks; users' ``lock()`` ranges never reach it:

  - :data:`GUARD`: every mapping holds a *shared* lock on it, taken on the
    descriptor just before ``mmap`` dups it, so the lock lives exactly as
    long as the mapping (arrays outlive their handles).  Whatever would
    shrink a file first takes it *exclusively*; failing means another
    handle or process still maps the file (the truncation guard).
  - :data:`WRITER`: the one-writer rule of growable arrays, held on a
    description of its own so that it ends with the handle, not with the
    last array: exclusive for a plain writer, shared among the handles
    opened with ``concurrent=True``.
  - :data:`ARRAY`: the array's own lock: ``MappedArray.lock()``; held
    exclusively while a header's length is written (and by concurrent
    appenders from reading the length to recording the new one), shared
    while a changed header is read.

* ``lock()`` calls get a description of their own each (:func:`acquire`),
  so they exclude each other between threads of one process too; mmarray's
  own short holds use the handle's description, behind a thread lock, and
  try a few times before they sleep in the kernel (:func:`holder`).

Where the platform or the filesystem has no OFD locks, locking succeeds
without excluding anyone (the in-process checks of ``_region`` remain).
"""

from __future__ import annotations

import errno
import functools
import os
import struct
import time
from collections.abc import Callable

try:
    import fcntl

    _SETLK = fcntl.F_OFD_SETLK
    _SETLKW = fcntl.F_OFD_SETLKW
    _RDLCK, _WRLCK, _UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
except (ImportError, AttributeError):  # not Linux: no OFD locks
    fcntl = None  # type: ignore[assignment]

#: Start of the byte range mmarray reserves for its own locks (2**62: far
#: past any file, below the largest ``off_t``).
RESERVED = 1 << 62
#: Shared by every mapping, exclusive for whatever shrinks the file.
GUARD = RESERVED
#: The one-writer lock of growable arrays.
WRITER = RESERVED + 1
#: The lock of one array: its length and what ``MappedArray.lock()`` holds.
ARRAY = RESERVED + 2
#: Polling for a lock with a timeout: first and longest sleep, in seconds.
POLL_FIRST, POLL_MAX = 5e-5, 0.01
#: Tries of mmarray's own short holds before they wait in the kernel.
SPIN = 20

# struct flock on Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")
#: errnos meaning "held by someone else" (EACCES on some systems).
_BUSY = (errno.EAGAIN, errno.EACCES)
#: errnos meaning "this filesystem cannot lock": treat as unlocked.
_UNSUPPORTED = (errno.ENOLCK, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


@functools.lru_cache(maxsize=256)
def _flock(kind: int, start: int, length: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


def _fcntl(fd: int, cmd: int, kind: int, start: int, length: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.fcntl(fd, cmd, _flock(kind, start, length))
    except OSError as e:
        if e.errno in _BUSY:
            return False
        if e.errno in _UNSUPPORTED:
            return True
        raise
    return True


def try_lock(fd: int, start: int, length: int = 1, *, shared: bool = False) -> bool:
    """Lock ``[start, start+length)`` of ``fd``'s description now, or return
    False if another description holds a conflicting lock."""
    return _fcntl(fd, _SETLK, _RDLCK if shared else _WRLCK, start, length)


def lock_wait(fd: int, start: int, length: int = 1, *, shared: bool = False) -> None:
    """Lock the range, waiting for as long as a conflicting lock is held
    (``fcntl`` retries when a signal interrupts the wait, PEP 475)."""
    _fcntl(fd, _SETLKW, _RDLCK if shared else _WRLCK, start, length)


def unlock(fd: int, start: int, length: int = 1) -> None:
    """Release the range (no error if it was not locked)."""
    _fcntl(fd, _SETLK, _UNLCK, start, length)


def _one_byte(cmd: int, kind: int, start: int) -> Callable[[int], None]:
    """``fcntl(fd, cmd)`` on byte ``start`` as a function of the descriptor
    alone, its argument packed once (an appender takes the array lock 10^5
    times a second, and every call layer shows); a filesystem that cannot
    lock counts as done."""
    if fcntl is None:
        return lambda fd: None
    call, arg = fcntl.fcntl, _flock(kind, start, 1)

    def do(fd: int) -> None:
        try:
            call(fd, cmd, arg)
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise

    return do


def holder(start: int, shared: bool = False) -> Callable[[int], None]:
    """:func:`lock_wait` of one byte, as a function of the descriptor.

    It tries :data:`SPIN` times (``F_OFD_SETLK``, tens of microseconds in
    all) before it sleeps in the kernel: mmarray holds its own locks for
    microseconds, and a waiter asleep costs the holder a wake-up at every
    release and itself a trip through the scheduler (measured here, 4
    concurrent appenders on 2 cores, 4 paired runs: batches of 100
    1.03-1.20x the rows/s, single rows 1.02-1.21x).
    """
    kind = _RDLCK if shared else _WRLCK
    wait = _one_byte(_SETLKW, kind, start)
    if fcntl is None:
        return wait
    call, arg, tries = fcntl.fcntl, _flock(kind, start, 1), range(SPIN)

    def do(fd: int) -> None:
        for _ in tries:
            try:
                call(fd, _SETLK, arg)
                return
            except OSError as e:
                if e.errno not in _BUSY:
                    break  # the wait raises it, or counts the lock as taken
        wait(fd)

    return do


def releaser(start: int) -> Callable[[int], None]:
    """:func:`unlock` of one byte, as a function of the descriptor."""
    return _one_byte(_SETLK, _UNLCK, start)


def hold_guard(fd: int) -> None:
    """Mark ``fd``'s description as mapping the file (shared :data:`GUARD`).

    Waits only while another description holds the guard exclusively,
    which lasts one ``ftruncate``.
    """
    lock_wait(fd, GUARD, shared=True)


def guard_exclusive(fd: int) -> bool:
    """Take :data:`GUARD` exclusively: False if any other description (of
    this process or another) maps the file.  :func:`hold_guard` turns it
    back into a shared lock."""
    return try_lock(fd, GUARD)


def reopen(fd: int, *, write: bool = True) -> int:
    """A new open file description of the file behind ``fd``, for a lock
    that must end when a handle closes (or a ``lock()`` is released) rather
    than when its last mapping goes.  Exclusive locks need ``write``."""
    flags = os.O_RDWR if write else os.O_RDONLY
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)


class Held:
    """A lock taken by :func:`acquire`; a context manager.  Releasing it
    (or leaving ``with``) closes its description, which drops the lock."""

    def __init__(self, fd: int, what: str, on_release: Callable[[], None] | None = None):
        self._fd = fd
        self._what = what
        self._on_release = on_release

    @property
    def held(self) -> bool:
        """Whether the lock is still held."""
        return self._fd >= 0

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if self._on_release is not None:
                self._on_release()
            os.close(fd)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<lock on {self._what} {'held' if self.held else 'released'}>"


def acquire(
    fd: int,
    start: int,
    length: int,
    *,
    shared: bool,
    timeout: float | None,
    what: str,
    on_release: Callable[[], None] | None = None,
) -> Held:
    """Lock ``[start, start+length)`` of the file behind ``fd`` on a new
    description: wait for it (``timeout`` None), try once (0), or poll
    until ``timeout`` seconds have passed (then ``TimeoutError``)."""
    try:
        own = reopen(fd, write=not shared)
    except PermissionError:
        raise PermissionError(
            f"an exclusive lock on {what} needs write access to it; pass shared=True"
        ) from None
    try:
        if timeout is None:
            lock_wait(own, start, length, shared=shared)
        elif not _poll(own, start, length, shared, timeout):
            raise TimeoutError(f"could not lock {what} within {timeout} s")
    except BaseException:
        os.close(own)
        raise
    return Held(own, what, on_release)


def _poll(fd: int, start: int, length: int, shared: bool, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST
    while not try_lock(fd, start, length, shared=shared):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX)
    return True
