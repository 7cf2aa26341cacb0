"""Dask arrays over mapped arrays: :func:`to_dask`.

Dask is optional (``pip install "mmarray[dask]"``): nothing here imports it
at module level, so ``import mmarray`` never does.

Each task of a :func:`to_dask` array carries a :class:`MappedSlab` -- the
target, byte offset, dtype, shape and strides of the array, a few hundred
bytes -- and maps the bytes itself in whichever process runs it.  No data
passes through the graph, the scheduler or the client.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._array import MappedArray
from ._memmap import memmap
from ._open import open_array
from ._region import Source
from ._views import MappedRecords, MappedView, mapping_of, rebuild, reference

if TYPE_CHECKING:
    import dask.array

INSTALL_HINT = 'to_dask needs Dask, an optional extra: pip install "mmarray[dask]"'

#: Our ndarray types; they pickle by reference unless copy-on-write.
MAPPED_TYPES = (MappedView, MappedRecords, memmap)


@dataclass(frozen=True)
class MappedSlab:
    """What a task needs to read a mapped array in its own process.

    Array-like enough for :func:`dask.array.from_array` (``shape``,
    ``dtype``, ``ndim``, ``__getitem__``) and no more: it is not a numpy
    duck array, so Dask neither copies it nor hashes its data.  Indexing
    maps the bytes read-only and returns a plain ndarray (a read-only view
    of the mapping for basic slices), which travels by value if a result
    has to move between processes.
    """

    source: Source
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    #: The array it was made from, kept alive in this process only (as a
    #: view keeps its base alive): an owned shared block must not vanish
    #: while a Dask array needs it.  Not pickled, compared or hashed.
    keepalive: Any = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple:
        return (type(self), (self.source, self.offset, self.dtype, self.shape, self.strides))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> Any:
        where = f"{'file' if self.source.kind == 'file' else 'shared block'} " + repr(
            self.source.target
        )
        try:
            arr = rebuild("view", self.source, self.offset, self.dtype, self.shape, self.strides)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                e.errno,
                f"cannot map {where} in this process; workers must see files at the same "
                "path, and shared blocks only exist on the machine that made them",
            ) from e
        except (TypeError, ValueError) as e:  # numpy: the buffer is too small
            raise ValueError(
                f"{where} no longer holds the array given to to_dask (truncated or "
                f"re-created since?): {e}"
            ) from e
        out = arr[key]
        return out.view(np.ndarray) if isinstance(out, np.ndarray) else out

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.source, self.offset, self.dtype, self.shape,
                self.strides)


def _slab(source: Any) -> MappedSlab:
    """The :class:`MappedSlab` for any source :func:`to_dask` accepts."""
    if isinstance(source, (str, bytes, os.PathLike)):
        try:
            arr = open_array(source, "r")
        except ValueError as e:
            raise ValueError(
                f"cannot read {source!r} as a .npy array ({e}); for raw binary data pass "
                "mmarray.memmap(path, dtype=..., shape=..., mode='r') instead"
            ) from e
        with arr:
            return _slab(arr)
    keep = source
    if isinstance(source, MappedArray):
        source = np.asarray(source)
    m = mapping_of(source) if isinstance(source, np.ndarray) else None
    if m is None:
        kind = f"{type(source).__module__}.{type(source).__qualname__}"
        hint = ""
        if isinstance(source, np.memmap) and not isinstance(source, memmap):
            hint = "; numpy.memmap pickles its data: open the file with mmarray.memmap instead"
        elif isinstance(source, np.ndarray):
            hint = (
                "; this array holds no mapped bytes (a copy, such as a fancy-indexing or "
                "ufunc result?): for in-memory arrays use dask.array.from_array"
            )
        raise TypeError(
            "source must be a MappedArray, an mmarray.memmap, an array from "
            "MappedFile/SharedBlock, or a path or 'shm://NAME' of a .npy array "
            f"(got {kind}){hint}"
        )
    ref = reference(source)
    if ref is None:
        if m.source.access == "copy":
            why = "a copy-on-write array (mode 'c') lives in this process only"
            fix = "open the file with mode 'r'"
        else:
            why = "this array's file has no name to reopen it by"
            fix = "open the file by its path"
        raise ValueError(f"{why}, so workers cannot map it; {fix} instead")
    src, offset, dtype, shape, strides = ref[:5]
    # Tasks only read: map read-only in the workers whatever the source's mode.
    return MappedSlab(Source(src.kind, src.target, "read"), offset, dtype, shape, strides, keep)


def _auto_chunks(slab: MappedSlab) -> Any:
    """``"auto"`` that cuts along the slowest-varying axis only, so each
    chunk is one contiguous byte range of the file (read sequentially)."""
    import dask.config
    from dask.utils import parse_bytes

    if slab.ndim < 2:
        return "auto"
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    axis = max(range(slab.ndim), key=lambda i: (abs(slab.strides[i]), -i))
    row_nbytes = math.prod(n for i, n in enumerate(slab.shape) if i != axis)
    if row_nbytes * slab.dtype.itemsize > limit:
        return "auto"
    return tuple("auto" if i == axis else -1 for i in range(slab.ndim))


def to_dask(source: Any, chunks: Any = "auto") -> dask.array.Array:
    """A Dask array over a mapped array whose tasks carry references, not data.

    Each task maps the bytes itself, read-only, in the process that runs it
    and slices its chunk out: nothing is copied through the task graph, the
    scheduler or the client, and the pickled graph of a 1 GiB array is a
    few KiB.  Workers must see the same bytes: files at the same path (on a
    cluster, a shared filesystem), shared blocks on the same machine.

    Parameters
    ----------
    source : MappedArray, mmarray.memmap, ndarray, str or os.PathLike
        A :class:`MappedArray`; an :class:`mmarray.memmap`; an array from
        :meth:`MappedFile.array`, :meth:`SharedBlock.array` or their
        ``records`` (or a basic-slice view of any of these); or a target
        that :func:`open_array` opens -- a ``.npy`` path or ``"shm://NAME"``
        -- read for its dtype and shape now.
    chunks : int, tuple, dict or "auto", default "auto"
        As for :func:`dask.array.from_array`.  ``"auto"`` cuts along the
        slowest-varying axis only (axis 0 for C order), so every chunk is
        one contiguous byte range of up to Dask's ``array.chunk-size``
        (128 MiB by default).

    Returns
    -------
    dask.array.Array
        Of the source's dtype and its shape at the time of the call (rows
        appended later are not included).  Chunks computed in the workers
        are plain ndarrays: read-only views of the mapping for basic
        slices, copies for fancy indexing; they pickle by value if they
        have to move.

    Raises
    ------
    ImportError
        If Dask is not installed.
    TypeError
        If ``source`` is not mapped by mmarray: a plain ndarray (including
        copies of mapped arrays, such as fancy-indexing results) or a
        :class:`numpy.memmap`, both of which would travel by value -- use
        :func:`dask.array.from_array` for in-memory arrays.
    ValueError
        If ``source`` is copy-on-write (mode ``"c"``: its bytes exist in
        this process only), a closed :class:`MappedArray`, or a target
        that is not a valid ``.npy`` array.
    FileNotFoundError
        If a target does not exist.

    See Also
    --------
    dask.array.store : Write a Dask array into a writable
        :class:`MappedArray` or :class:`mmarray.memmap` (docs: "Scaling out").

    Examples
    --------
    >>> import mmarray as mm, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> with mm.open_array(path, "w+", dtype=np.float64, shape=(1000, 3)) as a:
    ...     a[:] = np.arange(3000.0).reshape(1000, 3)
    >>> x = mm.to_dask(path, chunks=250)
    >>> x.chunks
    ((250, 250, 250, 250), (3,))
    >>> float(x.sum().compute())
    4498500.0

    Writing back: create the target with the result's dtype and shape, and
    store without a lock (each chunk writes its own bytes).

    >>> import dask.array as da
    >>> out = mm.open_array(os.path.join(tempfile.mkdtemp(), "y.npy"), "w+",
    ...                     dtype=x.dtype, shape=x.shape)
    >>> da.store(2 * x, out, lock=False)
    >>> float(out[999, 2])
    5998.0
    >>> out.close()

    On a cluster the same calls run with a :class:`distributed.Client`
    (files must be on a filesystem every worker sees at the same path):

    >>> from dask.distributed import Client  # doctest: +SKIP
    >>> client = Client("scheduler-address:8786")  # doctest: +SKIP
    >>> mm.to_dask("/shared/x.npy").mean().compute()  # doctest: +SKIP
    """
    try:
        import dask.array as da
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    from dask.base import tokenize

    register_with_dask()
    slab = _slab(source)
    if isinstance(chunks, str) and chunks == "auto":
        chunks = _auto_chunks(slab)
    chunks = da.core.normalize_chunks(chunks, slab.shape, dtype=slab.dtype)
    return da.from_array(
        slab,
        chunks=chunks,
        name="mmarray-" + tokenize(slab, chunks),
        lock=False,
        # Every task carries the (tiny) slab: no single key that all tasks
        # depend on, so the scheduler spreads them over the workers.
        inline_array=True,
        meta=np.empty((0,) * slab.ndim, slab.dtype),
    )


# -- telling Dask that mapped arrays travel by reference ----------------------
#
# Dask treats any ndarray subclass as data: it sizes a mapped array by its
# nbytes, hashes every byte to tokenize it, and distributed ships it between
# processes with its ndarray serializer, by value.  A store target shipped
# that way is a copy and the chunks written into it are silently lost: a
# memmap target over 1 MB "is large", so dask.array.store puts it in a task
# of its own, and the workers that fetch it get copies.  Registered here,
# mapped arrays are sized as the few hundred bytes they pickle to (so store
# inlines them in every task), tokenized without reading them, and left to
# pickle.
#
# Where this runs: the ``dask.sizeof`` entry point (every process that loads
# Dask, whatever the import order), the import of this module when Dask is
# already loaded, and every to_dask call.  Dask and distributed are only
# fully imported by the first sizeof call, so the rest is done there.


def _sizeof(x: np.ndarray) -> int:
    if len(_registered) < 2:
        register_with_dask()
    # What moves is the reference; the bytes belong to the page cache.
    return sys.getsizeof(x) if reference(x) is not None else int(x.nbytes)


def _token(x: np.ndarray) -> Any:
    from dask.base import normalize_token

    if reference(x) is None:  # travels by value: hash the data as Dask would
        return normalize_token(x.view(np.ndarray))
    # Hashing the content would read every byte in the client (a store
    # target may be larger than RAM).  A token made of the reference would
    # let a graph built later reuse results persisted for the same reference
    # before its bytes changed.  A fresh token does neither; it is what Dask
    # uses for objects it cannot hash.  (to_dask names its arrays by
    # reference: their tasks read the bytes when they run.)
    return ("mmarray", uuid.uuid4().hex)


def _not_by_dask_serializer(x: np.ndarray, context: Any = None) -> Any:
    # distributed then falls back to pickle, which honours __reduce_ex__.
    raise NotImplementedError("mapped arrays pickle by reference")


_registered: set[str] = set()


def _register_sizeof(sizeof: Any) -> None:
    """The ``dask.sizeof`` entry point: runs while Dask is being imported."""
    sizeof.register(MAPPED_TYPES)(_sizeof)


def register_with_dask() -> None:
    """Register :data:`MAPPED_TYPES` with the parts of Dask that are fully
    imported in this process (idempotent; never imports Dask itself)."""
    dask_base = sys.modules.get("dask.base")
    dask_sizeof = sys.modules.get("dask.sizeof")
    # hasattr: a module that is still being imported lacks its late names.
    if "dask" not in _registered and hasattr(dask_base, "normalize_token") and hasattr(
        dask_sizeof, "sizeof"
    ):
        _register_sizeof(dask_sizeof.sizeof)
        dask_base.normalize_token.register(MAPPED_TYPES)(_token)
        _registered.add("dask")
    protocol = sys.modules.get("distributed.protocol")
    if "distributed" not in _registered and hasattr(protocol, "dask_serialize"):
        protocol.dask_serialize.register(MAPPED_TYPES)(_not_by_dask_serializer)
        _registered.add("distributed")


# A Dask API change must never break `import mmarray`.
with contextlib.suppress(Exception):
    register_with_dask()
