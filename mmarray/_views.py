"""Arrays over mappings, and pickling them by reference.

Every array mmarray hands out is built by :func:`view` on a
:class:`pickle.PickleBuffer` of a :class:`~mmarray._region.Map`.  The
buffer keeps an export on the ``mmap`` (so it can never be unmapped under
the array) and its ``raw().obj`` leads back to the mapping, which knows its
:class:`~mmarray._region.Source` and base address.  That is all a pickle
needs: target, byte offset, dtype, shape and strides.

:class:`MappedView` adds no Python code to indexing or slicing: it only
overrides ``__array_wrap__`` (so ufunc results are plain ndarrays) and
``__reduce_ex__`` (pickling).  Subclasses of other array types
(:class:`MappedRecords`, ``mmarray.memmap``) reuse :func:`reduce_by_reference`.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from ._region import Map, Source

#: How to map a source again in another process: ``kind -> opener``.
#: ``_file`` and ``_shared`` register themselves here.
OPENERS: dict[str, Callable[[Source], Map]] = {}


def view(
    cls: type[np.ndarray],
    m: Map,
    dtype: Any,
    shape: tuple[int, ...],
    offset: int = 0,
    strides: tuple[int, ...] | None = None,
    order: str = "C",
) -> np.ndarray:
    """An array of type ``cls`` viewing ``m`` (no copy)."""
    return np.ndarray.__new__(
        cls, shape, dtype, buffer=pickle.PickleBuffer(m), offset=offset, strides=strides,
        order=order,
    )


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


def reference(arr: np.ndarray) -> tuple | None:
    """What :func:`rebuild` needs to map ``arr`` again, or None when ``arr``
    must travel by value (not ours, or a private copy-on-write mapping)."""
    m = mapping_of(arr)
    if m is None or m.source.access == "copy" or not m.source.target or m.closed:
        return None
    offset = arr.__array_interface__["data"][0] - m.address
    return (m.source, offset, arr.dtype, arr.shape, arr.strides)


def reduce_by_reference(
    arr: np.ndarray, kind: str, protocol: int, value_type: type[np.ndarray] = np.ndarray
) -> tuple:
    """``__reduce_ex__`` for our array types; ``kind`` names the type.

    Arrays that cannot travel by reference go by value as ``value_type``.
    """
    ref = reference(arr)
    if ref is None:
        return arr.view(value_type).__reduce_ex__(protocol)
    return (rebuild, (kind, *ref))


def rebuild(
    kind: str,
    source: Source,
    offset: int,
    dtype: np.dtype,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
) -> np.ndarray:
    """Unpickle: map ``source`` in this process and view the same bytes."""
    try:
        opener = OPENERS[source.kind]
    except KeyError:
        raise ValueError(f"cannot reopen a mapping of kind {source.kind!r}") from None
    m = opener(source)
    return view(ARRAY_TYPES[kind], m, dtype, shape, offset, strides)


class MappedView(np.ndarray):
    """An ndarray over mapped bytes.

    Indexing and slicing run numpy's C code only; ufunc results are plain
    ndarrays; pickling sends a reference to the mapped bytes, not the data.
    The mapping is reachable through ``.base``.
    """

    __slots__ = ()

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        if arr is self:
            return arr
        if return_scalar:
            return arr[()]
        return arr.view(np.ndarray)

    def __reduce_ex__(self, protocol):
        return reduce_by_reference(self, "view", protocol)

    def __reduce__(self):
        return self.__reduce_ex__(2)


class MappedRecords(np.recarray):
    """A :class:`numpy.recarray` over mapped bytes that pickles by reference."""

    def __reduce_ex__(self, protocol):
        return reduce_by_reference(self, "records", protocol, np.recarray)

    def __reduce__(self):
        return self.__reduce_ex__(2)


#: Array types that :func:`rebuild` can make, by the kind names pickles use.
ARRAY_TYPES: dict[str, type[np.ndarray]] = {"view": MappedView, "records": MappedRecords}
