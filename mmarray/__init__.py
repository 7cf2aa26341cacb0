"""mmarray: files and named shared memory as typed numpy arrays.

See the README and ``docs/`` for the guide.
"""

from ._file import MappedFile
from ._shared import SharedBlock, shared_blocks

__version__ = "0.1.0"

__all__ = sorted(["MappedFile", "SharedBlock", "__version__", "shared_blocks"])
