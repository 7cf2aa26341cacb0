"""The ``.npy`` header of growable arrays, built on :mod:`numpy.lib.format`.

Layout written by :func:`open_array` (standard ``.npy``, version 1.0 when
the header fits, else 2.0)::

    offset 0       b"\\x93NUMPY" + version (2 bytes) + header length
    offset 10/12   "{'descr': ..., 'fortran_order': ..., 'shape': (n, ...), }"
                   padded with spaces to the data offset, ending in "\\n"
    DATA_ALIGN*k   the data, C (or Fortran) order; spare capacity follows
                   the recorded rows and reads as zero

The data starts on a page boundary (:data:`DATA_ALIGN`), so items are
aligned for any dtype and the header has thousands of spare bytes: a longer
shape is always rewritten *in place*, as one ``os.pwrite`` of the whole
header (atomic with respect to a killed process; a byte-wise copy into the
mapping is not).

Crash-safety rule: the header never claims rows that are not on storage.
``MappedArray.flush`` first msyncs the data, then rewrites the header with
the new length.  A writer killed at any moment therefore leaves a file whose
header describes at most the data flushed before it.

Reading accepts any ``.npy`` that ``np.save`` writes (versions 1.0-3.0).
The header text is parsed by numpy's literal parser (nothing is executed)
and its size is bounded by :data:`MAX_HEADER_SIZE`.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npformat

#: Data offset of arrays we create: a page keeps every item aligned.
DATA_ALIGN = 4096
#: Longest header text we parse -- numpy's own default limit for ``np.load``.
MAX_HEADER_SIZE = 10_000
#: The format versions numpy writes (and we read).
VERSIONS = ((1, 0), (2, 0), (3, 0))
#: Digits any axis length can need (numpy's room for growth, 21).
GROWTH_DIGITS = npformat.GROWTH_AXIS_MAX_DIGITS


@dataclass(frozen=True)
class Header:
    """What a ``.npy`` header says, and where the data starts."""

    version: tuple[int, int]
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _numpy_format_impl():
    """numpy's format module with its private helpers (1.x and 2.x)."""
    try:
        from numpy.lib import _format_impl
    except ImportError:  # numpy < 2
        return npformat
    return _format_impl


def _parse_text(fp: io.BytesIO, version: tuple[int, int]) -> tuple:
    if version == (1, 0):
        return npformat.read_array_header_1_0(fp, max_header_size=MAX_HEADER_SIZE)
    if version == (2, 0):
        return npformat.read_array_header_2_0(fp, max_header_size=MAX_HEADER_SIZE)
    # 3.0 is 2.0 with a UTF-8 header; numpy exposes no public reader for it.
    impl = _numpy_format_impl()
    return impl._read_array_header(fp, version, max_header_size=MAX_HEADER_SIZE)


def read_header(data: bytes | memoryview, total_size: int | None = None) -> Header:
    """Parse the ``.npy`` header at the start of ``data``.

    Parameters
    ----------
    data : bytes-like
        The start of the file or block (an ``mmap`` is read without a
        copy; only the header's bytes are touched).
    total_size : int, optional
        The size of the whole file or block; when given, a header that
        claims more data than that is rejected.

    Raises
    ------
    ValueError
        For a bad magic string, an unknown version, a truncated or
        oversized header, unparsable text, bad keys or values, or data
        past ``total_size``.
    TypeError
        For object dtypes (they cannot live in mapped bytes).
    """
    view = memoryview(data)  # zero-copy: read only the bytes the header has
    try:
        magic = bytes(view[: npformat.MAGIC_LEN])
        version = npformat.read_magic(io.BytesIO(magic))
        if version not in VERSIONS:
            raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
        length_format = "<H" if version == (1, 0) else "<I"
        start = npformat.MAGIC_LEN + struct.calcsize(length_format)
        (length,) = struct.unpack(length_format, _exactly(view, npformat.MAGIC_LEN, start))
        if length > MAX_HEADER_SIZE:
            raise ValueError(f"header length {length} is larger than {MAX_HEADER_SIZE}")
        text = _exactly(view, start, start + length)
        data_offset = start + length
        # Our headers carry thousands of bytes of padding; numpy's parser
        # gives the same answer without it, several times faster.
        end = text.rfind(b"}")
        if end >= 0 and text.count(b" ", end + 1) == len(text) - end - 2 and text[-1:] == b"\n":
            text = text[: end + 1] + b"\n"
        stripped = io.BytesIO(struct.pack(length_format, len(text)) + text)
        shape, fortran_order, dtype = _parse_text(stripped, version)
    except ValueError as e:
        raise ValueError(f"not a valid .npy header: {e}") from None
    except Exception as e:  # SyntaxError, tokenize.TokenError, MemoryError, ...
        raise ValueError(f"not a valid .npy header: {type(e).__name__}: {e}") from None
    finally:
        view.release()
    if any(n < 0 for n in shape):
        raise ValueError(f"not a valid .npy header: negative shape {shape}")
    if math.prod(n for n in shape if n) * dtype.itemsize > np.iinfo(np.intp).max:
        raise ValueError(f"not a valid .npy header: shape {shape} is too large for an array")
    if dtype.hasobject:
        raise TypeError(f"object dtypes cannot be mapped (the header says {dtype})")
    header = Header(version, dtype, tuple(shape), bool(fortran_order), data_offset)
    if total_size is not None and header.data_offset + header.nbytes > total_size:
        raise ValueError(
            f"the header says {header.shape} of {dtype} ({header.nbytes} bytes from offset "
            f"{header.data_offset}), but there are only {total_size} bytes"
        )
    return header


def _exactly(view: memoryview, start: int, stop: int) -> bytes:
    data = bytes(view[start:stop])
    if len(data) != stop - start:
        raise ValueError(
            f"the header is truncated: expected {stop} bytes, the data has {len(view)}"
        )
    return data


def _text(dtype: np.dtype, shape: tuple[int, ...], fortran_order: bool) -> tuple[bytes, bool]:
    """numpy's own header dict for an array, as bytes (no magic, no padding),
    and whether it needs UTF-8 (a version 3.0 header: non-latin-1 names)."""
    d = {
        "descr": npformat.dtype_to_descr(dtype),
        "fortran_order": fortran_order,
        "shape": shape,
    }
    fp = io.BytesIO()
    try:
        npformat.write_array_header_2_0(fp, d)
        utf8 = False
    except UnicodeEncodeError:
        fp = io.BytesIO()
        _numpy_format_impl()._write_array_header(fp, d, (3, 0))
        utf8 = True
    return fp.getvalue()[12:].rstrip(b" \n"), utf8


def encode_header(
    dtype: np.dtype, shape: tuple[int, ...], fortran_order: bool, data_offset: int
) -> bytes:
    """The complete header (magic to data), exactly ``data_offset`` bytes.

    Version 1.0 when it fits, else 2.0; 3.0 when field names need UTF-8.

    Raises
    ------
    ValueError
        If the description does not fit in ``data_offset`` bytes.
    """
    text, utf8 = _text(dtype, shape, fortran_order)
    versions = (((3, 0), 12),) if utf8 else (((1, 0), 10), ((2, 0), 12))
    for version, prefix_len in versions:
        room = data_offset - prefix_len - 1  # the final newline
        if len(text) <= room and (version != (1, 0) or data_offset - prefix_len < 2**16):
            body = text + b" " * (room - len(text)) + b"\n"
            fmt = "<H" if version == (1, 0) else "<I"
            return npformat.magic(*version) + struct.pack(fmt, len(body)) + body
    raise ValueError(
        f"the .npy header for {dtype} {shape} does not fit in {data_offset} bytes"
    )


def data_offset_for(dtype: np.dtype, ndim: int) -> int:
    """Where the data of a new array starts: the first page boundary that
    leaves room for the header with any axis length."""
    widest, _ = _text(dtype, (10**GROWTH_DIGITS,) * max(ndim, 1), False)
    needed = 12 + len(widest) + 1
    offset = -(-needed // DATA_ALIGN) * DATA_ALIGN
    # The padded header is what numpy reads: it must be within its limit.
    if offset - 10 > MAX_HEADER_SIZE:
        what = f"{len(dtype.names)} fields" if dtype.names else f"{dtype.itemsize} bytes"
        raise ValueError(
            f"the dtype ({what}) is too complex: its .npy header would take {offset} bytes, "
            f"and numpy loads headers of at most {MAX_HEADER_SIZE}"
        )
    return offset


def can_grow(header: Header) -> bool:
    """Whether the header can record any length along axis 0 in place."""
    widest = (10**GROWTH_DIGITS, *header.shape[1:]) if header.shape else ()
    try:
        encode_header(header.dtype, widest, header.fortran_order, header.data_offset)
    except ValueError:
        return False
    return True


class LengthField:
    """Axis 0 of one validated header, read and rewritten without numpy's
    parser (which costs tens of microseconds; appenders that share an array
    read and write the length at every append).

    numpy writes the header keys sorted, so ``'shape'`` comes last and the
    bytes before it -- magic, dtype, order -- never change while the array
    grows: :meth:`read` checks them, then reads the digits after
    ``'shape': (``; :meth:`tail` rewrites only what follows ``'shape': ``.
    """

    KEY = b"'shape': ("

    def __init__(self, header: Header, raw: bytes) -> None:
        self.header = header
        at = raw.find(self.KEY)
        if at < 0 or not header.shape:
            raise ValueError("this header has no axis 0 to record")
        #: Everything up to the digits of axis 0: the same for any length.
        self.prefix = bytes(raw[: at + len(self.KEY)])
        #: Where the tail that :meth:`tail` writes starts.
        self.at = at + len(self.KEY) - 1
        #: The bytes before it, and so ``head + tail(n)`` the first
        #: :attr:`probe` bytes of the header that records ``n``.
        self.head = self.prefix[: self.at]
        # The digits, the row dimensions and the closing text: at most this long.
        widest = repr((10**GROWTH_DIGITS, *header.shape[1:])).encode() + b", }"
        self.probe = min(self.at + len(widest), header.data_offset)
        rows = header.shape[1:]
        rest = b"," if not rows else b"".join(b", %d" % n for n in rows)
        self._format = b"(%d" + rest + b"), }"  # repr of the shape, as numpy writes it
        if self.probe < header.data_offset:
            # Past the probe there are only padding spaces and the final
            # newline, which never change: a small pwrite covers the rest.
            self._width, self._end = self.probe - self.at, b""
        else:
            self._width, self._end = header.data_offset - self.at - 1, b"\n"

    def read(self, raw: bytes) -> int | None:
        """Axis 0 from the header's first :attr:`probe` bytes, or None if
        the header is not the one this field was made for."""
        prefix = self.prefix
        if not raw.startswith(prefix):
            return None
        # numpy writes a comma after axis 0 whatever the ndim: "(5,)", "(5, 3)".
        end = raw.find(b",", len(prefix))
        digits = raw[len(prefix) : end]
        if end < 0 or not digits.isdigit():
            return None
        return int(digits)

    def tail(self, length: int) -> bytes:
        """The bytes from :attr:`at` on that record ``length``: the shape
        text and enough padding to cover any older, longer one."""
        text = self._format % length
        if len(text) > self._width:
            shape = (length, *self.header.shape[1:])
            raise ValueError(f"the .npy header has no room to record shape {shape}")
        return text.ljust(self._width) + self._end

