"""What a file or shared block holds, without opening it as an array:
:func:`info`, which ``mmarray info`` prints, and the HTML tables that
notebooks show for open handles (``_repr_html_``).
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
from typing import Any

import numpy as np

from ._file import check_regular
from ._header import MAX_HEADER_SIZE, read_header
from ._open import NPY_MAGIC, SHM_PREFIX
from ._shared import SharedBlock


def human(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class Info:
    """What :func:`info` finds in a file or shared block (made by
    :func:`info`; the parameters are its attributes).

    Parameters
    ----------
    target : str
        The absolute path, or ``"shm://NAME"``.
    kind : {"file", "shared block"}
    size : int
        Bytes, as ``ls -l`` (or ``os.stat``) reports them.
    allocated : int
        Bytes really occupied on storage (``st_blocks * 512``): less than
        ``size`` for a sparse file, whose holes read as zeros.
    format : str
        ``".npy version 1.0"`` (2.0, 3.0) or ``"raw bytes"``.
    dtype, shape, fortran_order, data_offset
        From the ``.npy`` header; None for raw bytes.
    capacity : int or None
        Rows along axis 0 the storage holds (the length can grow to it
        without the file growing); None for raw bytes, 0-d and Fortran
        arrays.

    Raises
    ------
    dataclasses.FrozenInstanceError
        On assignment: it is a record of what was found, not a handle.

    Examples
    --------
    >>> import mmarray as mm, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "big.bin")
    >>> mm.MappedFile(path, "w+", capacity=1 << 30).close()    # 1 GiB, sparse
    >>> i = mm.info(path)
    >>> i.size, i.allocated < i.size, i.format
    (1073741824, True, 'raw bytes')
    """

    target: str
    kind: str
    size: int
    allocated: int
    format: str = "raw bytes"
    dtype: np.dtype | None = None
    shape: tuple[int, ...] | None = None
    fortran_order: bool | None = None
    data_offset: int | None = None
    capacity: int | None = None

    def rows(self) -> list[tuple[str, str]]:
        """What ``mmarray info`` prints.

        Returns
        -------
        list of (str, str)
            ``(label, value)`` pairs, in order.
        """
        rows = [
            ("target", self.target),
            ("kind", self.kind),
            ("size", f"{self.size} bytes ({human(self.size)})"),
            ("allocated", f"{self.allocated} bytes ({human(self.allocated)})"
                          + (", sparse" if self.allocated < self.size else "")),
            ("format", self.format),
        ]
        if self.dtype is not None:
            rows += [
                ("dtype", str(self.dtype)),
                ("shape", repr(self.shape)),
                ("order", "Fortran" if self.fortran_order else "C"),
                ("data offset", str(self.data_offset)),
            ]
            if self.capacity is not None:
                rows.append(("capacity", f"{self.capacity} rows"))
        return rows

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in rows)

    def _repr_html_(self) -> str:
        return table("mmarray.info", self.rows())


def info(target: str | os.PathLike[str]) -> Info:
    """What a file or shared block holds: size, storage really used, and
    the ``.npy`` header's dtype, shape and capacity (what ``mmarray info``
    prints).  Nothing is mapped, locked or changed.

    Parameters
    ----------
    target : str or os.PathLike
        A file path, or ``"shm://NAME"`` for a shared block.

    Returns
    -------
    Info

    Raises
    ------
    FileNotFoundError
        If there is no such file or block.
    IsADirectoryError
        For a directory.
    ValueError
        For a FIFO or device, or a corrupt ``.npy`` header.

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "i.npy")
    >>> with mm.open_array(path, "w+", dtype=np.float32, shape=(0, 3), capacity=1000):
    ...     pass
    >>> i = mm.info(path)
    >>> i.dtype, i.shape, i.capacity, i.format
    (dtype('float32'), (0, 3), 1000, '.npy version 1.0')
    """
    if isinstance(target, str) and target.startswith(SHM_PREFIX):
        with SharedBlock.open(target[len(SHM_PREFIX):], readonly=True) as blk:
            st = os.fstat(blk._live().fd)
            head = blk.read_array(0, "u1", min(blk.size, MAX_HEADER_SIZE + 64)).tobytes()
        name, kind = target, "shared block"
    else:
        name, kind = os.path.abspath(target), "file"
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = check_regular(os.fstat(fd), name)
            head = os.pread(fd, MAX_HEADER_SIZE + 64, 0)
        finally:
            os.close(fd)
    size, allocated = st.st_size, st.st_blocks * 512
    if not head.startswith(NPY_MAGIC):
        return Info(name, kind, size, allocated)
    h = read_header(head, size)
    capacity = None
    row_nbytes = math.prod(h.shape[1:]) * h.dtype.itemsize
    if h.shape and row_nbytes and not (h.fortran_order and len(h.shape) > 1):
        capacity = max((size - h.data_offset) // row_nbytes, h.shape[0])
    return Info(
        name, kind, size, allocated, f".npy version {h.version[0]}.{h.version[1]}",
        h.dtype, h.shape, h.fortran_order, h.data_offset, capacity,
    )


def table(title: str, rows: list[tuple[str, str]]) -> str:
    """A small HTML table for a notebook (every value escaped)."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table><caption>{html.escape(title)}</caption>{body}</table>"


def storage_rows(fd: int) -> list[tuple[str, str]]:
    """Size and storage really used, for a handle's HTML table."""
    st = os.fstat(fd)
    allocated = st.st_blocks * 512
    sparse = " (sparse)" if allocated < st.st_size else ""
    return [
        ("size", human(st.st_size)),
        ("on storage", human(allocated) + sparse),
    ]


def buffer_html(buf: Any) -> str:
    """``_repr_html_`` of a :class:`MappedFile` or :class:`SharedBlock`."""
    name = type(buf).__name__
    target = SHM_PREFIX + buf.name if isinstance(buf, SharedBlock) else str(buf.path)
    if buf.closed:
        return table(name, [("target", target), ("state", "closed")])
    rows = [("target", target), ("mode", buf.mode)]
    rows += storage_rows(buf._live().fd)
    if isinstance(buf, SharedBlock):
        rows.append(("owner", "yes: removes the name when closed" if buf._owner
                     else "no"))
    return table(name, rows)


def array_html(arr: Any) -> str:
    """``_repr_html_`` of a :class:`MappedArray`: where it lives, what it
    holds, how much of its capacity is used and what is flushed."""
    if arr.closed:
        return table("MappedArray", [("target", arr.target), ("state", "closed")])
    s = arr._state
    rows = [
        ("target", arr.target),
        ("mode", arr.mode + (", concurrent" if s.concurrent else "")),
        ("dtype", str(s.dtype)),
        ("shape", repr(s.shape)),
    ]
    if s.length is not None:
        used = f"{s.length:,} of {s.cap:,} rows"
        if s.cap:
            used += f" ({100 * s.length / s.cap:.0f}%)"
        rows.append(("capacity used", used))
        recorded = s.recorded if s.recorded is not None and s.recorded >= 0 else None
        if recorded == s.length:
            rows.append(("length on storage", f"{s.length:,} rows (all flushed)"))
        else:
            shown = "not flushed yet" if recorded is None else f"{recorded:,} rows"
            rows.append(("length on storage",
                         f"{shown}; {s.length:,} in memory (flush() records it)"))
    rows += storage_rows(s.buf._live().fd)
    return table("MappedArray", rows) + _preview(arr._view())


def _preview(a: np.ndarray) -> str:
    text = np.array2string(a, threshold=20, edgeitems=3)
    return f"<pre>{html.escape(text)}</pre>"
