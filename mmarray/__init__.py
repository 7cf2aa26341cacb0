"""mmarray: files and named shared memory as typed numpy arrays.

See the README and ``docs/`` for the guide.
"""

from ._array import MappedArray
from ._dask import to_dask
from ._file import MappedFile
from ._info import Info, info
from ._memmap import memmap
from ._open import open_array
from ._shared import SharedBlock, shared_blocks
from ._take import take

__version__ = "0.1.0"

__all__ = [
    "Info",
    "MappedArray",
    "MappedFile",
    "SharedBlock",
    "__version__",
    "info",
    "memmap",
    "open_array",
    "shared_blocks",
    "take",
    "to_dask",
]
