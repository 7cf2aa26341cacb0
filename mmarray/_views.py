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

from ._region import Map, Source, mapping_of
from ._take import OUR_TYPES, take

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


def reference(arr: np.ndarray) -> tuple | None:
    """What :func:`rebuild` needs to map ``arr`` again, or None when ``arr``
    must travel by value (not ours, or a private copy-on-write mapping)."""
    m = mapping_of(arr)
    if m is None or m.source.access == "copy" or not m.source.target or m.closed:
        return None
    offset = arr.__array_interface__["data"][0] - m.address
    # A view made read-only (arr.flags.writeable = False) stays read-only;
    # the inode tells a replaced file (or re-created block) from the one pickled.
    return (
        m.source, offset, arr.dtype, arr.shape, arr.strides, arr.flags.writeable, m.ident
    )


def reduce_by_reference(
    arr: np.ndarray,
    kind: str | type[np.ndarray],
    protocol: int,
    value_type: type[np.ndarray] = np.ndarray,
) -> tuple:
    """``__reduce_ex__`` for our array types; ``kind`` names the type (or
    is the type itself, for user subclasses, which pickle by name).

    Arrays that cannot travel by reference go by value as ``value_type``.
    """
    ref = reference(arr)
    if ref is None:
        return arr.view(value_type).__reduce_ex__(protocol)
    return (rebuild, (kind, *ref))


def rebuild(
    kind: str | type[np.ndarray],
    source: Source,
    offset: int,
    dtype: np.dtype,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    writeable: bool = True,
    ident: tuple[int, int] | None = None,
) -> np.ndarray:
    """Unpickle: map ``source`` in this process and view the same bytes --
    never other bytes that took the same name since (``ValueError``)."""
    try:
        opener = OPENERS[source.kind]
    except KeyError:
        raise ValueError(f"cannot reopen a mapping of kind {source.kind!r}") from None
    m = opener(source)
    if ident is not None and m.ident != tuple(ident):
        what = "file" if source.kind == "file" else "shared block"
        raise ValueError(
            f"cannot unpickle: {source.target!r} is another {what} now (it was replaced "
            "or re-created since the array was pickled)"
        )
    if 0 in shape:  # no bytes: any offset within the mapping will do
        offset = min(offset, len(m))
    lo, hi = extent(offset, dtype.itemsize, shape, strides)
    if lo < 0 or hi > len(m):
        raise ValueError(
            f"cannot unpickle: the array needs bytes [{lo}, {hi}) of {source.target!r}, "
            f"which now has {len(m)}"
        )
    cls = ARRAY_TYPES[kind] if isinstance(kind, str) else kind
    arr = view(cls, m, dtype, shape, offset, strides)
    if not writeable:
        arr.flags.writeable = False
    return arr


def extent(
    offset: int, itemsize: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[int, int]:
    """The byte range ``[lo, hi)`` an array with these strides touches."""
    if 0 in shape:
        return offset, offset
    lo = hi = offset
    for n, step in zip(shape, strides, strict=True):
        if step < 0:
            lo += (n - 1) * step
        else:
            hi += (n - 1) * step
    return lo, hi + itemsize


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

    def take(self, indices, axis=None, out=None, mode="raise"):
        """:func:`mmarray.take`: ``np.take`` that first asks the kernel for
        the pages of all the selected items that are not in memory.
        (``np.take(view, ...)`` comes here too; indexing stays pure C.)"""
        return take(self, indices, axis=axis, out=out, mode=mode)

    def __reduce_ex__(self, protocol):
        return reduce_by_reference(self, "view", protocol)

    def __reduce__(self):
        return self.__reduce_ex__(2)


class MappedRecords(np.recarray):
    """A :class:`numpy.recarray` over mapped bytes that pickles by reference.

    Field views (``r.price``, ``r["price"]``), which recarray hands out as
    plain ndarrays, come back as :class:`MappedView` so that they pickle by
    reference too.  (recarray already runs Python code on attribute access
    and indexing; this adds one type check.)
    """

    def __getattribute__(self, attr):
        res = super().__getattribute__(attr)
        if type(res) is np.ndarray and mapping_of(res) is not None:
            return res.view(MappedView)
        return res

    def __getitem__(self, index):
        res = super().__getitem__(index)
        if type(res) is np.ndarray and mapping_of(res) is not None:
            return res.view(MappedView)
        return res

    take = MappedView.take

    def __reduce_ex__(self, protocol):
        return reduce_by_reference(self, "records", protocol, np.recarray)

    def __reduce__(self):
        return self.__reduce_ex__(2)


OUR_TYPES.update((MappedView, MappedRecords))

#: Array types that :func:`rebuild` can make, by the kind names pickles use.
ARRAY_TYPES: dict[str, type[np.ndarray]] = {"view": MappedView, "records": MappedRecords}
