"""The bench's scratch files and the page cache they sit in.

The only module of the bench that writes its files, drops them from the
page cache or asks which of their pages are cached.  The rules:

* a scratch file is written whole (random float64 values, never holes,
  which read without any I/O) and synced, so that dropping it later has
  nothing left to write;
* :func:`evict` must run *before* the file is mapped: the pages that a live
  mapping has touched are not dropped;
* asking (:func:`resident_fraction`) maps the file without touching it, so
  it does not change the answer.

The asv suite keeps its own copies of these helpers
(``asv_bench/benchmarks/common.py``) so that it can benchmark commits older
than this package.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

from .._file import MappedFile
from .units import KiB, MiB

#: Chunk size used to write a scratch file.
WRITE_CHUNK = 8 * MiB
#: File systems whose pages live in memory: there is no cold cache to measure.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "hugetlbfs"})
#: After eviction, more than this fraction still cached means eviction failed.
MAX_RESIDENT_AFTER_EVICT = 0.5
PAGE_SIZE = mmap.PAGESIZE


def write_scratch_file(path: str, size: int, rng: np.random.Generator) -> None:
    """Fill ``path`` with ``size`` bytes of random float64 values, synced."""
    with open(path, "wb") as f:
        for start in range(0, size, WRITE_CHUNK):
            f.write(rng.random(min(WRITE_CHUNK, size - start) // 8))
        f.flush()
        os.fsync(f.fileno())


def filesystem_type(path: str) -> str | None:
    """The type of the file system holding ``path`` (Linux), else None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in lines:
        fields = line.split()
        try:
            mount = fields[4].encode().decode("unicode_escape")  # "\040" is a space
            kind = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, kind
    return fstype


def evict(path: str) -> None:
    """Write ``path``'s dirty pages and drop the file from the page cache.

    Pages that a live mapping has touched are not dropped: call this before
    mapping the file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: str) -> float | None:
    """Fraction of ``path``'s pages in the page cache (``mincore``), or None
    where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return None
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    # Mapping without touching the pages leaves the cache as it is.
    with MappedFile(path) as f:
        a = f.array(np.uint8)
        pages = -(-a.size // PAGE_SIZE)
        vec = np.zeros(pages, np.uint8)
        rc = mincore(a.ctypes.data, a.size, vec.ctypes.data)
        del a
    return float((vec & 1).mean()) if rc == 0 else None


def cold_cache_reason(path: str) -> str | None:
    """Why a cold cache cannot be staged for ``path``, or None if it can
    (then ``path`` has just been dropped from the page cache)."""
    if not hasattr(os, "posix_fadvise"):
        return f"{sys.platform} has no posix_fadvise to drop a file from the page cache"
    fstype = filesystem_type(path)
    where = os.path.dirname(path)
    if fstype in MEMORY_FILESYSTEMS:
        return f"{where} is on {fstype}, which keeps files in memory (no cold cache exists)"
    evict(path)
    left = resident_fraction(path)
    if left is not None and left > MAX_RESIDENT_AFTER_EVICT:
        return (
            f"the OS kept {left:.0%} of the file cached after POSIX_FADV_DONTNEED, "
            f"so cold reads cannot be staged on {fstype or 'this file system'}"
        )
    return None


def available_memory() -> int | None:
    """``MemAvailable`` in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError):
        pass
    return None


def in_virtual_machine() -> bool:
    """Whether the CPU says it runs under a hypervisor (cold reads may then
    come from the host's cache)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " hypervisor" in line for line in f)
    except OSError:
        return False
