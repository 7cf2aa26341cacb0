"""A drop-in for :class:`numpy.memmap`: :class:`memmap`.

Same constructor, modes, attributes and behaviour as ``numpy.memmap`` (and
a subclass of it), plus ``capacity=``, :meth:`memmap.close` and pickling by
reference.  The difference is under the hood: ``numpy.memmap`` copies its
attributes into every view with a Python ``__array_finalize__``, which is
most of the cost of slicing it.  Here views carry nothing; ``filename``,
``offset`` and ``mode`` are read from the mapping at the end of ``.base``
when asked for, so the only Python code on indexing is the ``__getitem__``
that turns fancy-index copies into plain ndarrays.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import sys
from typing import Any

import numpy as np

from ._base import as_index
from ._file import MODES as FILE_MODES
from ._file import check_enlarge, enlarge, open_any
from ._region import Map, Source, check_hint, madvise, new_map
from ._region import allocate as reserve
from ._views import ARRAY_TYPES, mapping_of, reduce_by_reference, view

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    byte_bounds = np.byte_bounds

#: numpy's long mode names.
MODE_EQUIVALENTS = {"readonly": "r", "copyonwrite": "c", "readwrite": "r+", "write": "w+"}
VALID_MODES = ("r", "c", "r+", "w+")
_MODE_OF_ACCESS = {"read": "r", "copy": "c", "write": "r+"}


class memmap(np.memmap):
    """A :class:`numpy.memmap` that can grow, close and pickle by reference.

    Parameters
    ----------
    filename : str, os.PathLike or file object
    dtype : data-type, default uint8
    mode : {"r+", "r", "w+", "c"}, default "r+"
        As for :class:`numpy.memmap` (``"readonly"``, ``"readwrite"``,
        ``"write"`` and ``"copyonwrite"`` too).
    offset : int, default 0
        Byte offset of the array in the file.
    shape : int or tuple of int, optional
        Default: 1-D over the rest of the file.
    order : {"C", "F"}
    capacity : int, optional
        Bytes: the file is enlarged (zero-filled, sparse) to at least this
        size before mapping; with ``shape=None`` the array spans it all.
    allocate : bool, default False
        Reserve real storage for the whole file before mapping
        (``posix_fallocate``): a full disk raises ``OSError`` (ENOSPC) here
        instead of SIGBUS at a later write.

    Notes
    -----
    ``mode="w+"`` on a file that live arrays still map (in this process or
    another mmarray process) puts a new file at the same path instead of
    truncating the old one under them; the old arrays keep the old bytes.

    Attributes
    ----------
    filename : str, pathlib.Path or None
        As numpy reports it: the absolute path (a resolved ``Path`` when a
        ``PathLike`` was given), None for an unnamed file object.
    offset : int
        The byte offset given to the constructor (views report the same).
    mode : str
        The mode given to the constructor (``"w+"`` comes back as ``"r+"``
        after unpickling).

    Raises
    ------
    ValueError
        As :class:`numpy.memmap` does.
    PermissionError
        For a ``capacity`` that would enlarge a file opened ``"r"``/``"c"``,
        or ``allocate=True`` with those modes.
    OSError
        ENOSPC with ``allocate=True`` when the disk cannot hold the file.

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os, pickle
    >>> path = os.path.join(tempfile.mkdtemp(), "m.dat")
    >>> m = mm.memmap(path, dtype=np.float32, mode="w+", shape=(3, 4))
    >>> m[1] = 2.0
    >>> isinstance(m, np.memmap), type(m + 1).__name__
    (True, 'ndarray')
    >>> len(pickle.dumps(m)) < 1000   # a reference, not the data
    True
    >>> m.close()
    """

    # Views run no Python code: numpy skips ndarray's own __array_finalize__.
    __array_finalize__ = np.ndarray.__array_finalize__

    def __new__(
        subtype,
        filename: Any,
        dtype: Any = np.uint8,
        mode: str = "r+",
        offset: int = 0,
        shape: Any = None,
        order: str = "C",
        *,
        capacity: int | None = None,
        allocate: bool = False,
    ):
        mode = MODE_EQUIVALENTS.get(mode, mode)
        if mode not in VALID_MODES:
            all_modes = [*VALID_MODES, *MODE_EQUIVALENTS]
            raise ValueError(f"mode must be one of {all_modes!r} (got {mode!r})")
        if mode == "w+" and shape is None and capacity is None:
            raise ValueError("shape must be given if mode == 'w+'")
        if capacity is not None:
            capacity = as_index(capacity, "capacity")
        offset = as_index(offset, "offset")
        descr = np.dtype(dtype)
        if descr.hasobject:
            raise TypeError(f"object dtypes cannot be mapped (got {descr})")
        access = FILE_MODES[mode][1]
        if allocate and access != "write":
            raise PermissionError(
                f"allocate=True reserves storage, but mode {mode!r} cannot write"
            )
        shape = _as_memmap_shape(shape)
        fd, filename_attr, path = open_any(filename, mode)
        try:
            flen = os.fstat(fd).st_size
            # Everything is checked before the file is enlarged.
            size = max(flen, capacity or 0)
            if size > flen:
                check_enlarge(flen, size, mode, "the file")
            if shape is None:
                nbytes = size - offset
                if nbytes < 0 or nbytes % descr.itemsize:
                    raise ValueError(
                        "Size of available data is not a multiple of the data-type size."
                    )
                shape = (nbytes // descr.itemsize,)
            if size > flen:
                enlarge(fd, flen, size, mode, "the file")
                flen = size
            end = offset + math.prod(shape) * descr.itemsize
            if end > sys.maxsize:
                raise ValueError(f"shape {shape} of {descr} is too large to map")
            if mode in ("w+", "r+") and flen < max(end, 1):
                os.ftruncate(fd, max(end, 1))
                flen = max(end, 1)
            if flen == 0:
                raise ValueError("cannot mmap an empty file")
            if end > flen:
                raise ValueError("mmap length is greater than file size")
            if allocate:
                reserve(fd, 0, flen)
            m = new_map(fd, flen, Source("file", path, access))
        except BaseException:
            if mode == "w+" and path:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # what "w+" made is of no use to anyone
            raise
        finally:
            os.close(fd)  # the mapping keeps a descriptor of its own
        m.memmap_attrs = (filename_attr, offset, mode)
        return view(subtype, m, descr, shape, offset, order=order)

    # -- what numpy.memmap keeps in instance attributes, derived instead -------

    def _attrs(self) -> tuple[Any, Any, Any]:
        m = mapping_of(self)
        if m is None:
            return None, None, None
        attrs = getattr(m, "memmap_attrs", None)
        if attrs is None:  # a mapping rebuilt by unpickling
            offset = self.__array_interface__["data"][0] - m.address
            attrs = (m.source.target, offset, _MODE_OF_ACCESS[m.source.access])
            m.memmap_attrs = attrs
        return attrs

    @property
    def _mmap(self) -> Map | None:
        return mapping_of(self)

    @property
    def filename(self) -> Any:
        """The file mapped (see the class Attributes)."""
        return self._attrs()[0]

    @property
    def offset(self) -> int | None:
        """The byte offset given to the constructor."""
        return self._attrs()[1]

    @property
    def mode(self) -> str | None:
        """The mode given to the constructor."""
        return self._attrs()[2]

    # -- behaviour --------------------------------------------------------------

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        arr = np.ndarray.__array_wrap__(self, arr, context)
        if self is arr or type(self) is not memmap:
            return arr
        if return_scalar:
            return arr[()]
        return arr.view(np.ndarray)

    def __getitem__(self, index):
        res = np.ndarray.__getitem__(self, index)
        # A fancy-index copy (its base a plain ndarray) is no longer a memmap.
        if type(res) is memmap and (res.base is None or type(res.base) is np.ndarray):
            return res.view(type=np.ndarray)
        return res

    def flush(self) -> None:
        """Write changes in the array to the file (msync).

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "f.dat")
        >>> m = mm.memmap(path, np.int16, "w+", shape=(4,))
        >>> m[:] = 7
        >>> m.flush()
        >>> np.fromfile(path, np.int16).tolist()
        [7, 7, 7, 7]
        """
        m = mapping_of(self)
        if m is not None and not m.closed:
            m.flush()

    def close(self) -> None:
        """Flush, and let the mapping go once this array and its views are
        garbage-collected (it cannot be unmapped while they use it).

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.dat")
        >>> m = mm.memmap(path, np.uint8, "w+", shape=(3,))
        >>> m[0] = 1
        >>> m.close()
        >>> int(m[0])               # the bytes stay valid while m lives
        1
        """
        self.flush()

    def __enter__(self) -> memmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advise(self, hint: str) -> None:
        """Tell the OS how this array's bytes will be used (``madvise``).

        Parameters
        ----------
        hint : {"normal", "random", "sequential", "willneed", "dontneed"}
            As for :meth:`MappedFile.advise`: ``"random"`` turns readahead
            off for scattered small reads of a large file, ``"sequential"``
            turns it up.  It covers the pages this array (or view) spans.

        Raises
        ------
        ValueError
            For an unknown hint.

        Examples
        --------
        >>> import mmarray as mm, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "adv.dat")
        >>> with mm.memmap(path, np.float64, "w+", shape=(1000, 8)) as m:
        ...     m.advise("random")
        ...     float(m[[3, 999, 42]].sum())
        0.0
        """
        check_hint(hint)
        m = mapping_of(self)
        if m is None or m.closed or not self.size:
            return
        lo, hi = byte_bounds(self)
        madvise(m, hint, lo - m.address, hi - lo)

    def __reduce_ex__(self, protocol):
        kind = "memmap" if type(self) is memmap else type(self)
        return reduce_by_reference(self, kind, protocol)

    def __reduce__(self):
        return self.__reduce_ex__(2)


def _as_memmap_shape(shape: Any) -> tuple[int, ...] | None:
    """numpy.memmap's shape rules: an int or a sequence of non-negative
    integers (``TypeError`` for 2.5, ``ValueError`` for -1, as numpy)."""
    if shape is None:
        return None
    if not isinstance(shape, (tuple, list)):
        with contextlib.suppress(TypeError):
            shape = [operator.index(shape)]
    try:
        dims = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of integers (got {shape!r})") from None
    if any(n < 0 for n in dims):
        raise ValueError(f"negative dimensions are not allowed (got shape {dims})")
    return dims


ARRAY_TYPES["memmap"] = memmap
