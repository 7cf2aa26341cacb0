"""Clean-up that runs once, in the process that set it up, however it ends.

The only module that registers finalizers.  ``weakref.finalize`` runs when
an object is garbage-collected and at interpreter exit -- but not in
``multiprocessing`` workers started with ``fork`` or ``forkserver``, which
end with ``os._exit`` after running multiprocessing's own finalizers.  And a
forked child inherits every finalizer of its parent, so without a check it
would act on state (a length, a name) that belongs to the parent.

:func:`finalizer` covers both: the callback runs at garbage collection, at
interpreter exit and at a multiprocessing worker's exit, at most once, and
only in the process that created it.  What nothing can cover: SIGKILL,
``os._exit`` called directly, and a pool's ``terminate()`` (SIGTERM).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from multiprocessing import util as _mp_util
from typing import Any

#: multiprocessing runs finalizers with a priority at a worker's exit
#: (higher first); ours flush data, so they run before the default ones.
EXIT_PRIORITY = 10


def _in_process(pid: int, fn: Callable[..., Any], args: tuple) -> None:
    if os.getpid() == pid:
        fn(*args)


def finalizer(obj: object, fn: Callable[..., Any], *args: Any) -> weakref.finalize:
    """``weakref.finalize(obj, fn, *args)`` that acts only in this process
    and also runs when a multiprocessing worker exits (see the module
    docstring).  Calling it runs ``fn`` now (once)."""
    done = weakref.finalize(obj, _in_process, os.getpid(), fn, args)
    # Its own weak reference to obj drops the entry when obj dies.
    _mp_util.Finalize(obj, done, exitpriority=EXIT_PRIORITY)
    return done
