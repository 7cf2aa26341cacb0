"""Reading many items of data that is not in memory: :func:`take`.

The only module that asks the kernel about page residency and prefetching.
A gather through a mapping of data that is not in the page cache faults in
one page at a time -- the storage serves one request at a time (queue depth
1), and without a hint the kernel's readahead also drags in pages nobody
asked for (numpy#13172).  :func:`take` tells the kernel about a whole batch
of pages first (``MADV_WILLNEED``: the reads are queued together and the
device serves them in parallel), then copies with ``np.take``.  The rules:

* **Same answer as np.take**, for every array, dtype, axis, mode and
  ``out=``; the prefetch is only a hint, and anything it cannot plan (not
  our mapping, out-of-range indices under ``mode="raise"``, items that span
  many pages, non-integer indices) goes straight to ``np.take``.
* **Cheap when resident**: a few pages of each call are checked with
  ``mincore`` (about 2.5 us a page here, whatever the page) before
  anything is planned.  Once :data:`WARM_STREAK` calls in a row on one
  mapping (any view of it) found them all resident, one page is checked
  at most every :data:`WARM_RECHECK` seconds, and the calls between go
  straight to ``ndarray.take``, which costs less than ``np.take``'s own
  dispatch.  Data that leaves memory is noticed by the first call after
  that interval; the calls before it run at page-fault speed, as
  ``np.take`` would.
* **Pipelined and bounded**: indices are handled in slices of
  :data:`BATCH`; the pages of the next :data:`AHEAD` slices are requested
  before the current one is copied, so the device always has requests
  queued while the CPU copies (and maps) the pages that have arrived.  A
  request blocks once the device's queue is full (``nr_requests``), so
  asking for much more than a queue's worth ahead leaves the device idle
  during the copy instead of overlapping with it.  At most ``AHEAD + 1``
  slices' pages are in flight, whatever the number of indices.
* **Exact pages**: only the pages the selected items touch are requested
  (``process_madvise`` with one iovec per run of pages, up to
  :data:`IOV_MAX` per call, or ``madvise`` per run where it is missing); a
  hint that fails is ignored.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import operator
import os
import time
import weakref
from typing import Any

import numpy as np

from ._region import PAGE_SIZE, mapping_of

#: Array types whose ``take`` is this function (``_views`` fills it in): for
#: them ``np.take`` would come back here, so their copies take a plain view.
OUR_TYPES: set[type] = set()
#: Indices per slice of the pipelined copy.  Small enough that copying a
#: slice (~1 ms of page faults for 4 KiB rows) is shorter than what the
#: device has queued meanwhile; 4,096 left the device idle for most of each
#: copy (0.7x the speed, measured on virtio-blk, nr_requests=256).
BATCH = 256
#: Slices whose pages are requested before the current one is copied.
AHEAD = 2
#: Pages checked with mincore per slice before anything is asked of the kernel
#: (a mincore call costs 2-5 us here: a handful is what warm data can afford).
SAMPLE = 8
#: Items whose pages are checked before a whole call is planned.
SAMPLE_ITEMS = 4
#: Calls in a row that found every sampled page resident, after which the
#: mapping counts as warm (0.9 of a file cached passes 8 calls of 4 samples
#: with a chance of 3%).
WARM_STREAK = 8
#: Seconds a warm mapping goes without a check: one check (~8 us) per this
#: interval costs under 1% of any loop of calls, and bounds the time spent
#: at page-fault speed after the data left memory to about one interval
#: plus one call.  (Counting calls instead made small calls pay ~1.4 us each.)
WARM_RECHECK = 0.001
#: Items larger than this are not "rows" read at random (e.g. a column of a
#: C-order array): their pages are left to the kernel's own readahead.
MAX_ITEM_BYTES = 1 << 20
#: iovecs one process_madvise call takes (UIO_MAXIOV).
IOV_MAX = 1024
_SYS_PROCESS_MADVISE = 440  # the same number on every Linux architecture
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _mincore = _libc.mincore
    _mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _mincore = _syscall = None


class _Kernel:
    """What this process knows about the kernel's prefetching calls."""

    pidfd = -1
    has_process_madvise = hasattr(os, "pidfd_open") and _syscall is not None


def _forget_pidfd() -> None:
    _Kernel.pidfd = -1  # a forked child must open its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pidfd)


def take(a: Any, indices: Any, axis: int | None = None, out: Any = None, mode: str = "raise"):
    """``np.take`` that reads data that is not in memory in one batch.

    Returns exactly what ``np.take(a, indices, axis, out, mode)`` returns
    (a plain ``np.ndarray``, or ``out``).  When ``a`` views a mapping made
    by mmarray (an array from :class:`MappedFile`, :class:`SharedBlock`,
    :func:`open_array` or :class:`memmap`), the pages the selected items
    touch and that are not resident are first requested from the kernel
    all at once, so the storage reads them in parallel instead of one page
    fault at a time; on resident data it costs little more than
    ``np.take``.

    Parameters
    ----------
    a : array_like
        The source array.
    indices : array_like of int
        Indices of the items to take (any shape; negative ones count from
        the end).
    axis : int, optional
        The axis to take along; None takes from the flattened array.
    out : ndarray, optional
        Where to put the result, as for ``np.take``.
    mode : {"raise", "wrap", "clip"}, default "raise"
        Out-of-range indices, as for ``np.take``.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    IndexError, ValueError, TypeError
        As ``np.take`` raises them.

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.npy")
    >>> with mm.open_array(path, "w+", dtype=np.float32, shape=(1000, 4)) as a:
    ...     a[:] = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    ...     rows = mm.take(a, [999, 0, 500], axis=0)
    ...     type(rows).__name__, rows[:, 0].tolist()
    ('ndarray', [3996.0, 0.0, 2000.0])
    """
    arr = a if isinstance(a, np.ndarray) else np.asarray(a)
    if mode in ("wrap", "clip") and _into_empty_axis(arr, indices, axis):
        # numpy loops forever there when the result is empty as well.
        raise IndexError("cannot do a non-empty take from an empty axes.")
    m = mapping_of(arr)
    if m is None and type(arr) not in OUR_TYPES:
        # Not ours: numpy's own answer, subclass (masked, matrix, ...) and all.
        return np.take(a, indices, axis=axis, out=out, mode=mode)
    # The copy runs on a plain view: our types' take would come back here.
    plain = arr.view(np.recarray if isinstance(arr, np.recarray) else np.ndarray)
    if m is None or getattr(m, "warm_until", 0.0) > time.monotonic():
        return _copy(plain, indices, axis, out, mode)  # warm: see WARM_RECHECK
    if m.closed or _WILLNEED is None:
        return _copy(plain, indices, axis, out, mode)
    streak = getattr(m, "warm_streak", 0)
    geometry = _cached_geometry(arr, m, axis)
    idx = np.asarray(indices) if geometry is not None else None
    if (
        geometry is None
        or idx.dtype.kind not in "iu"
        or idx.size == 0
        or mode not in ("raise", "wrap", "clip")
        or _sample_resident(m, geometry, idx, mode, streak)
    ):
        return _copy(plain, indices, axis, out, mode)
    starts = _starts(geometry, idx, mode)
    if starts is None:  # out of range: np.take raises its own IndexError
        return _copy(plain, indices, axis, out, mode)
    extent = geometry[3]
    target = _target(plain, idx, axis, out) if len(starts) > BATCH else None
    if target is None:
        for lo in range(0, len(starts), BATCH):
            _prefetch(m, starts[lo : lo + BATCH], extent)
        return _copy(plain, indices, axis, out, mode)
    result, flat_out = target
    # The indices are in range now: "wrap" gives "raise"'s answer without
    # numpy copying ``out`` first (it does under "raise", to undo on error).
    _pipelined(plain, m, idx.reshape(-1), axis, "wrap" if mode == "raise" else mode,
               starts, extent, flat_out)
    return result


def _copy(plain: np.ndarray, indices: Any, axis: Any, out: Any, mode: str):
    """``np.take(plain, ...)``; without ``out``, the method itself, which
    skips np.take's dispatch (1.5 us here, more than the rest of take)."""
    if out is None:
        return plain.take(indices, axis, None, mode)
    return np.take(plain, indices, axis=axis, out=out, mode=mode)


def _into_empty_axis(arr: np.ndarray, indices: Any, axis: Any) -> bool:
    """Whether a non-empty ``indices`` wraps or clips into an axis of length 0."""
    if axis is None:
        n = arr.size
    else:
        try:
            n = arr.shape[operator.index(axis)]
        except (TypeError, IndexError):
            return False  # np.take raises its own error
    return n == 0 and np.size(indices) > 0


def _target(plain: np.ndarray, idx: np.ndarray, axis: Any, out: Any):
    """``(what take returns, the same memory with the indices flattened)``
    for a copy slice by slice, or None when ``out`` cannot be filled so
    (numpy then takes, and checks ``out``, in one call)."""
    ax = 0 if axis is None else operator.index(axis) % plain.ndim
    outer = () if axis is None else plain.shape[:ax]
    inner = () if axis is None else plain.shape[ax + 1 :]
    flat_shape = (*outer, idx.size, *inner)
    if out is None:
        # np.take's result exactly: the array's dtype (byte order, padding and
        # all) and type, owning its memory.
        result = np.ndarray.__new__(type(plain), (*outer, *idx.shape, *inner), plain.dtype)
        return result, result.reshape(flat_shape)
    if (
        type(out) is not np.ndarray
        or idx.ndim != 1
        or out.shape != flat_shape
        or np.may_share_memory(out, plain)  # numpy buffers overlapping out= itself
    ):
        return None
    return out, out


def _pipelined(plain, m, flat, axis, mode, starts, extent, flat_out) -> None:
    """Copy slice k into ``flat_out`` once the pages of slices up to k + AHEAD
    have been requested."""
    ax = 0 if axis is None else operator.index(axis) % plain.ndim
    lead = (slice(None),) * ax
    asked = 0  # indices whose pages have been requested
    for lo in range(0, len(flat), BATCH):
        while asked < min(len(flat), lo + (AHEAD + 1) * BATCH):
            _prefetch(m, starts[asked : asked + BATCH], extent)
            asked += BATCH
        hi = lo + BATCH
        plain.take(flat[lo:hi], axis, flat_out[(*lead, slice(lo, hi))], mode)


#: The last array's geometry: loops take from the same array again and again.
_last: tuple[Any, Any, Any] = (None, None, None)


def _cached_geometry(arr: np.ndarray, m: Any, axis: Any):
    global _last
    ref, key, geometry = _last
    # (shape and strides can be assigned in place: they are part of the key)
    now = (axis, arr.shape, arr.strides) if axis is None or type(axis) is int else None
    if ref is not None and now is not None and key == now and ref() is arr:
        return geometry
    geometry = _geometry(arr, m, axis)
    if now is not None:
        _last = (weakref.ref(arr), now, geometry)
    return geometry


def _geometry(arr: np.ndarray, m: Any, axis: Any) -> tuple[int, int, int, int] | None:
    """``(byte offset in the mapping of item 0's first byte, number of items,
    bytes from one item to the next, bytes one item spans)`` along ``axis``,
    or None when the prefetch should stay out of the way."""
    if axis is None:
        if not arr.flags.c_contiguous:
            return None  # np.take ravels it first (a copy): nothing to prefetch
        n, step, lo_off, extent = arr.size, arr.itemsize, 0, arr.itemsize
    else:
        try:
            axis = operator.index(axis)
        except TypeError:
            return None
        if not -arr.ndim <= axis < arr.ndim:
            return None  # np.take raises its own AxisError
        axis %= arr.ndim
        n, step = arr.shape[axis], arr.strides[axis]
        lo_off = hi_off = 0
        for d, (size, stride) in enumerate(zip(arr.shape, arr.strides, strict=True)):
            if d != axis:
                if size == 0:
                    return None  # items of no bytes
                lo_off += min(0, (size - 1) * stride)
                hi_off += max(0, (size - 1) * stride)
        extent = hi_off - lo_off + arr.itemsize
    if n == 0 or extent > MAX_ITEM_BYTES:
        return None
    base = arr.__array_interface__["data"][0] - m.address + lo_off
    return base, n, step, extent


def _starts(geometry: tuple[int, int, int, int], idx: np.ndarray, mode: str):
    """Byte offsets of the selected items, or None for an index out of range
    under ``mode="raise"``."""
    base, n, step, _ = geometry
    flat = idx.reshape(-1).astype(np.int64, copy=False)
    if mode == "raise":
        if flat.min() < -n or flat.max() >= n:
            return None
        flat = np.where(flat < 0, flat + n, flat)
    elif mode == "wrap":
        flat = flat % n
    else:
        flat = np.clip(flat, 0, n - 1)
    return base + flat * step


def _sample_resident(m: Any, geometry: tuple[int, int, int, int], idx: np.ndarray, mode: str,
                     streak: int) -> bool:
    """Whether a few of the selected items are in memory: then the whole
    batch is taken to be (the cheap check of warm data).  Keeps the
    mapping's warm streak and the time until its next check."""
    base, n, step, _ = geometry
    flat = idx.reshape(-1)
    # Small batches sample fewer items; a streak of warm calls, one.
    count = 1 if streak >= WARM_STREAK else min(SAMPLE_ITEMS, max(1, len(flat) // 256))
    picks = range(0, len(flat), max(1, -(-len(flat) // count)))
    pages = []
    for p in picks:
        i = int(flat[p])
        if mode == "wrap":
            i %= n
        elif mode == "clip":
            i = min(max(i, 0), n - 1)
        elif i < 0:
            i += n
        if 0 <= i < n:
            pages.append((base + i * step) // PAGE_SIZE)
    warm = _resident(m, pages)
    m.warm_streak = streak + 1 if warm else 0
    m.warm_until = time.monotonic() + WARM_RECHECK if warm and streak + 1 >= WARM_STREAK else 0.0
    return warm


def _runs(starts: np.ndarray, extent: int) -> tuple[np.ndarray, np.ndarray]:
    """The pages the items at ``starts`` touch, as sorted runs
    ``(first page, number of pages)`` that do not overlap."""
    first = starts // PAGE_SIZE
    last = (starts + extent - 1) // PAGE_SIZE
    order = np.argsort(first, kind="stable")
    first, last = first[order], np.maximum.accumulate(last[order])
    # A run starts where a page is past the end of everything before it.
    new = np.empty(len(first), dtype=bool)
    new[0] = True
    new[1:] = first[1:] > last[:-1] + 1
    heads = np.flatnonzero(new)
    run_first = first[heads]
    run_last = np.append(last[heads[1:] - 1], last[-1])
    return run_first, run_last - run_first + 1


def _resident(m: Any, pages: list[int]) -> bool:
    """Whether the pages are all in memory (True if unknown)."""
    if _mincore is None:
        return True
    vec = ctypes.c_ubyte()
    for page in pages:
        if _mincore(m.address + page * PAGE_SIZE, PAGE_SIZE, ctypes.byref(vec)) != 0:
            return True  # cannot tell: do not second-guess the kernel
        if not vec.value & 1:
            return False
    return True


def _prefetch(m: Any, starts: np.ndarray, extent: int) -> None:
    """Ask for the pages of the items at ``starts`` unless they are resident."""
    if len(starts) == 0 or m.closed:
        return
    first, count = _runs(starts, extent)
    sample = first[np.linspace(0, len(first) - 1, min(SAMPLE, len(first))).astype(np.intp)]
    if _resident(m, sample.tolist()):
        return
    if _Kernel.has_process_madvise and _process_madvise(m, first, count):
        return
    for page, n in zip(first.tolist(), count.tolist(), strict=True):
        try:
            m.madvise(_WILLNEED, page * PAGE_SIZE, n * PAGE_SIZE)
        except (OSError, ValueError):
            return  # a hint: never an error


def _process_madvise(m: Any, first: np.ndarray, count: np.ndarray) -> bool:
    """One system call per IOV_MAX runs; False if the kernel lacks it."""
    if _Kernel.pidfd < 0:
        try:
            _Kernel.pidfd = os.pidfd_open(os.getpid())
        except OSError:
            _Kernel.has_process_madvise = False
            return False
    iov = np.empty((len(first), 2), dtype=np.uint64)
    iov[:, 0] = m.address + first.astype(np.uint64) * PAGE_SIZE
    iov[:, 1] = count.astype(np.uint64) * PAGE_SIZE
    for lo in range(0, len(iov), IOV_MAX):
        part = iov[lo : lo + IOV_MAX]
        done = _syscall(
            ctypes.c_long(_SYS_PROCESS_MADVISE), ctypes.c_int(_Kernel.pidfd),
            ctypes.c_void_p(part.ctypes.data), ctypes.c_size_t(len(part)),
            ctypes.c_int(_WILLNEED), ctypes.c_uint(0),
        )
        if done < 0 and lo == 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            _Kernel.has_process_madvise = False  # too old a kernel, or not allowed
            return False
        # Any other failure of a hint (e.g. ENOMEM for a range gone) is ignored.
    return True
