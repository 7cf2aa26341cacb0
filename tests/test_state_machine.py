"""A stateful model test of every handle type on a few shared targets (issue 11, item 4).

A hypothesis ``RuleBasedStateMachine`` drives ``MappedFile``, ``SharedBlock``,
``open_array`` and ``memmap`` together on two file paths (in a scratch
directory) and one shared-block name, so that operations collide: it opens
in every mode (``"r" "r+" "w+" "x+" "c"``, and ``"a"`` for arrays), takes
typed views and records at any offset, basic slices of them (negative steps
too), writes and reads through views and through ``write``/``read``/
``write_array``/``read_array``, grows and shrinks with ``resize``, appends
to, resizes, flushes and closes ``MappedArray`` handles, closes raw handles
(twice), unlinks paths and block names, reopens a path with ``"w+"`` while
old arrays and handles still map it, and pickles arrays and
``MappedArray`` handles (``pickle.loads(pickle.dumps(a))``).  Old arrays are
kept alive through all of it and read after every step.

The model is plain numpy: one byte array per *generation* of a file or
block (an inode; the path or name points to the newest), a page-granular
private copy for each copy-on-write mapping, and for every live array the
byte positions it views.  After every step each array, each open handle and
each ``MappedArray`` must read exactly the modelled bytes, every file must
have the modelled size on storage (checked through a descriptor of the
model's own, so replaced files are checked too), and each path must name
the modelled inode.  Every new view is also checked in ``/proc/self/maps`` to
map the modelled inode.  The contract modelled:

* ``"w+"`` on a path that live arrays or handles of this process map
  replaces the file with a new one (a new inode): old arrays and handles
  keep the old bytes and no longer see the new file, nor it theirs.  If
  nothing maps it, ``"w+"`` may truncate it in place.
* ``resize`` to a smaller size while any array of the file is alive, or
  another handle maps the file, raises ``BufferError`` and changes nothing;
  shared blocks never shrink (``ValueError``).  Growing keeps old arrays
  valid, and new bytes read zero.
* ``close()`` is idempotent; arrays made before stay valid; handle methods
  raise ``ValueError`` afterwards.
* ``open_array`` targets are ``.npy``: ``np.load`` sees the length recorded
  at the last ``flush()``/``close()``; new rows from ``resize`` read zero.
  An ``"r+"`` handle growing for the first time may grow from its own
  length or from the one the header records (either, but consistently).
* a ``MappedArray`` opened ``"a"``/``"w+"``/``"x+"`` holds the writer lock of
  its file or block; a second such handle (or an ``"r+"`` handle's first
  ``append``/``resize``) gets ``BlockingIOError`` while the first is open.
* arrays pickle by reference and unpickle as views of the same bytes
  (copy-on-write arrays travel by value).
* documented exceptions are accepted only where the contract names them,
  and an operation that raised must have changed nothing.

Crash isolation: the pytest test runs the machine in a child process
(``python tests/test_state_machine.py`` with ``PYTHONPATH`` set to the
repository and faulthandler on), so a SIGBUS or segfault is a failing test,
not a dead test run.  Before touching an array the machine checks that its
bytes are still on storage (a file shrunk under a live mapping fails as an
ordinary, shrinkable assertion instead of SIGBUS).  The child logs every
step of the example it is running to a file; when it fails, the test prints
its stderr (with hypothesis's minimal failing steps) and that log (the steps
of the last example, with what each returned; after a crash, the steps up
to it).

Running it: the default run takes about 30 seconds on a small, busy machine
when nothing fails (hypothesis then spends a minute or two shrinking what
failed)::

    python -m pytest tests/test_state_machine.py -x -q -p no:cacheprovider

``MMARRAY_STATEFUL_SECONDS=N`` makes it run the machine again and again with
fresh seeds for N seconds; add ``-s`` to see the number of steps that ran
clean (the child prints ``steps: N`` as its last line)::

    MMARRAY_STATEFUL_SECONDS=1800 python -m pytest -s tests/test_state_machine.py

``MMARRAY_STATEFUL_LAX`` (a comma-separated list) makes the machine avoid
the operations behind a known failure, to look for others meanwhile:

* ``replace``: ``"w+"`` on a path that something maps;
* ``writer-lock``: a second writer on one array;
* ``stale-pickle``: pickling an array whose file or block was replaced or
  removed (its path or name now leads to other bytes, or none);
* ``empty-pickle``: pickling empty arrays (an empty slice's data pointer may
  lie past the end of the mapping);
* ``grow-then-raise``: opens with ``capacity=`` that must fail (the file
  must not have grown when they raise);
* ``stale-length``: the first ``append``/``resize`` of an ``"r+"`` handle
  whose length differs from the one the header records.

The child also runs alone: ``PYTHONPATH=. python tests/test_state_machine.py``
(with the same variables).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import math
import mmap
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from numpy.lib import format as npformat

import mmarray as mm

REPO = pathlib.Path(__file__).resolve().parents[1]
SECONDS_ENV = "MMARRAY_STATEFUL_SECONDS"
LAX_ENV = "MMARRAY_STATEFUL_LAX"
DIR_ENV = "MMARRAY_STATEFUL_DIR"
PREFIX_ENV = "MMARRAY_STATEFUL_SHM_PREFIX"
LOG_ENV = "MMARRAY_STATEFUL_LOG"
SHM_DIR = "/dev/shm"
PAGE = mmap.PAGESIZE
LAX = frozenset(filter(None, os.environ.get(LAX_ENV, "").split(",")))

#: Exceptions an operation may raise as an outcome; which one, and when, is
#: decided by the model.  Anything else is a failure as it stands.
OUTCOMES = (ValueError, TypeError, BufferError, OSError)

# One hypothesis run: about 30 s on a small, busy machine when nothing fails
# (shrinking failures takes longer).
DEFAULT_SETTINGS = settings(
    max_examples=700,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no slow "explain" tracing
)
# Long runs: short hypothesis runs with fresh seeds until the time is up.
BATCH_SETTINGS = settings(DEFAULT_SETTINGS, max_examples=25)

REC = np.dtype([("a", "u1"), ("b", ">u4")])  # 5 bytes: unaligned, mixed byte order
DTYPES = {
    "u1": np.dtype("u1"),
    "<u2": np.dtype("<u2"),
    ">i4": np.dtype(">i4"),
    "<u8": np.dtype("<u8"),
    "rec": REC,
}
MAX_RECS = 14
MAX_OPEN = 9

# -- strategies ----------------------------------------------------------------

# Few values each: shrinking (at most 500 successful steps) must reach the filler steps.
IDX = st.integers(0, 63)
SEED = st.integers(0, 255)
PATH = st.integers(0, 1)
TARGET = st.integers(0, 2)  # path 0, path 1, the shared block
SIZE = st.one_of(
    st.sampled_from([1, 100, 4095, 4096, 4097, 8192, 12288]), st.integers(1, 13000)
)
OFFSET = st.one_of(st.sampled_from([0, 1, 4095, 4096, 4097]), st.integers(0, 13000))
DT = st.sampled_from(sorted(DTYPES))
SHAPE = st.one_of(
    st.none(), st.integers(0, 24), st.tuples(st.integers(0, 6), st.integers(0, 6))
)
ORDER = st.sampled_from("CF")
SLICE = st.tuples(
    st.one_of(st.none(), st.integers(-8, 8)),
    st.one_of(st.none(), st.integers(-8, 8)),
    st.sampled_from([None, 1, 2, 3, -1, -2]),
)
INDEX = st.lists(st.one_of(SLICE, st.integers(-3, 3)), max_size=2)
ROWS = st.sampled_from([0, 1, 2, 5, 9, 40, 1500])
ARRAY_MODE = st.sampled_from(["r", "r+", "c", "w+", "x+", "a", "a", "r+", "w+"])
ARRAY_DT = st.sampled_from(["u1", "<u2", ">i4", "rec"])
ROW = st.sampled_from([(), (3,)])


# -- the child's step log and counter --------------------------------------------


class Log:
    """Each step of the example being run, written straight to a file (no
    buffer), so the steps before a crash survive it."""

    fd = 2
    steps = 0  # steps whose rule and invariant passed, over all examples

    @classmethod
    def open(cls, path: str) -> None:
        cls.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    @classmethod
    def reset(cls) -> None:
        if cls.fd != 2:
            os.ftruncate(cls.fd, 0)

    @classmethod
    def write(cls, line: str) -> None:
        os.write(cls.fd, (line + "\n").encode("utf-8", "replace"))


def step(f):
    """Log a rule call (with its arguments) before running it."""

    @functools.wraps(f)
    def run(self, **kwargs):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
        Log.write(f"{f.__name__}({args})")
        self.pending += 1
        return f(self, **kwargs)

    return run


# -- the model ---------------------------------------------------------------------


class Npy:
    """What a generation's ``.npy`` header says, as far as the model knows."""

    def __init__(self, dtype: np.dtype, row_shape: tuple, offset: int, length: int) -> None:
        self.dtype, self.row_shape, self.offset = dtype, row_shape, offset
        self.recorded = {length}  # lengths the header may hold now

    @property
    def layout(self) -> tuple:
        return self.dtype, self.row_shape, self.offset

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize

    def needs(self, length: int) -> int:
        return self.offset + length * self.row_nbytes


class Gen:
    """One generation of a file or block (an inode) and the model of its bytes.

    The model keeps a descriptor of its own, so it can check the size on
    storage of generations that no path names any more.
    """

    def __init__(self, kind: str, where: str, ospath: str, label: str) -> None:
        self.kind, self.where, self.label = kind, where, label
        self.fd = os.open(ospath, os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(self.fd)
        self.ino = info.st_ino
        self.data = np.zeros(info.st_size, np.uint8)
        self.known = np.ones(info.st_size, bool)  # bytes whose value the model knows
        self.npy: Npy | None = None
        self.hwm = 0  # end of the rows any MappedArray ever had (raw writes stay below)
        self.writers: list[Arr] = []
        self.shared = Domain(self)

    @property
    def size(self) -> int:
        return len(self.data)

    def fsize(self) -> int:
        return os.fstat(self.fd).st_size

    def resize(self, n: int) -> None:
        if n > self.size:
            grow = n - self.size
            self.data = np.concatenate([self.data, np.zeros(grow, np.uint8)])
            self.known = np.concatenate([self.known, np.ones(grow, bool)])
        else:
            self.data, self.known = self.data[:n].copy(), self.known[:n].copy()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Domain:
    """Where an array's bytes live: a generation's shared bytes, a private
    (copy-on-write) mapping of one, or a copy of its own."""

    def __init__(
        self, gen: Gen | None, private_size: int | None = None, copy: tuple | None = None
    ) -> None:
        self.gen = gen
        self.private = private_size is not None
        if self.private:
            self.priv = np.zeros(private_size, np.uint8)
            self.priv_known = np.zeros(private_size, bool)
            self.touched = np.zeros(-(-private_size // PAGE), bool)
        if copy is not None:
            self.data, self.mask = copy

    def read(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.gen is None:
            return self.data[pos], self.mask[pos]
        vals, known = self.gen.data[pos], self.gen.known[pos]
        if self.private:
            # Linux: pages this mapping never wrote still show the file.
            mine = self.touched[pos // PAGE]
            vals = np.where(mine, self.priv[pos], vals)
            known = np.where(mine, self.priv_known[pos], known)
        return vals, known

    def write(self, pos: np.ndarray, values: np.ndarray) -> None:
        if self.gen is None:
            self.data[pos], self.mask[pos] = values, True
        elif self.private:
            for page in np.unique(pos // PAGE):
                if not self.touched[page]:  # copied on the first write to the page
                    lo, hi = page * PAGE, min((page + 1) * PAGE, len(self.priv))
                    self.priv[lo:hi] = self.gen.data[lo:hi]
                    self.priv_known[lo:hi] = self.gen.known[lo:hi]
                    self.touched[page] = True
            self.priv[pos], self.priv_known[pos] = values, True
        else:
            self.gen.data[pos], self.gen.known[pos] = values, True


class Rec:
    """A live array and the byte positions (in its domain) it views."""

    def __init__(self, obj: Any, dom: Domain, pos: np.ndarray, writable: bool, label: str):
        self.obj, self.dom, self.pos, self.writable, self.label = obj, dom, pos, writable, label
        self.hi = int(pos.max()) + 1 if pos.size else 0


class Raw:
    """A MappedFile or SharedBlock handle."""

    def __init__(self, obj: Any, kind: str, gen: Gen, mode: str, dom: Domain, label: str):
        self.obj, self.kind, self.gen, self.mode, self.dom = obj, kind, gen, mode, dom
        self.label = label
        self.msize = obj.size
        self.closed = False
        self.unlinks = False  # an owner without persist: closing removes the name

    @property
    def readonly(self) -> bool:
        return self.mode == "r"


class Arr:
    """A MappedArray handle."""

    def __init__(self, obj, kind, gen, mode, dom, layout, length, label) -> None:
        self.obj, self.kind, self.gen, self.mode, self.dom = obj, kind, gen, mode, dom
        self.dtype, self.row_shape, self.offset = layout
        self.length = self.recorded = length
        self.label = label
        self.closed = self.writer = self.owner = False

    @property
    def layout(self) -> tuple:
        return self.dtype, self.row_shape, self.offset

    @property
    def rn(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize

    def pos(self) -> np.ndarray:
        flat = self.offset + np.arange(self.length * self.rn, dtype=np.int64)
        return flat.reshape(self.length, *self.row_shape, self.dtype.itemsize)

    def shape(self) -> tuple:
        return (self.length, *self.row_shape)


# -- helpers -------------------------------------------------------------------------


def layout_pos(offset: int, itemsize: int, shape: tuple, order: str = "C") -> np.ndarray:
    """Byte positions of an array of ``shape`` at ``offset``: shape + (itemsize,)."""
    elem = np.arange(math.prod(shape), dtype=np.int64).reshape(shape, order=order) * itemsize
    return offset + elem[..., None] + np.arange(itemsize)


def random_values(seed: int, dtype: np.dtype, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    raw = np.random.default_rng(seed).integers(0, 256, math.prod(shape) * dtype.itemsize,
                                               dtype=np.uint8)
    return np.frombuffer(raw.tobytes(), dtype).reshape(shape), raw


def make_index(spec: list, shape: tuple) -> tuple:
    """A basic index from ``spec`` that keeps at least one axis and never
    raises IndexError."""
    index: list[Any] = []
    for k, item in enumerate(spec[: len(shape)]):
        if isinstance(item, int):
            if k == len(shape) - 1 or shape[k] == 0:
                index.append(slice(None))
            else:
                index.append(item % shape[k])
        else:
            index.append(slice(*item))
    return tuple(index)


def read_npy_header(ospath: str) -> tuple[int, tuple, bool, np.dtype]:
    with open(ospath, "rb") as fh:
        version = npformat.read_magic(fh)
        reader = npformat.read_array_header_1_0 if version == (1, 0) else (
            npformat.read_array_header_2_0
        )
        shape, fortran, dtype = reader(fh)
        return fh.tell(), shape, fortran, dtype


def mapped_inode(arr: Any) -> int | None:
    """The inode that the memory under ``arr`` maps (0 for anonymous memory)."""
    addr = np.asarray(arr).__array_interface__["data"][0]
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return int(parts[4])
    return None


def pick(items: list, i: int) -> Any:
    return items[i % len(items)]


def pick_open(items: list, i: int) -> Any:
    """Mostly an open handle; one time in eight, any."""
    live = [x for x in items if not x.closed]
    return pick(live, i // 8) if live and i % 8 else pick(items, i)


def near(offset: int, size: int) -> int:
    """``offset`` folded to at most 15 bytes past ``size``."""
    return offset % (size + 16)


def names(types: tuple) -> str:
    return " or ".join(t.__name__ for t in types)


# -- the machine ------------------------------------------------------------------------


class MappingMachine(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        Log.reset()
        base = os.environ.get(DIR_ENV) or tempfile.gettempdir()
        self.root = tempfile.mkdtemp(prefix="example-", dir=base)
        self.paths = [os.path.join(self.root, "f0.bin"), os.path.join(self.root, "f1.npy")]
        self.shm = os.environ.get(PREFIX_ENV, "mmstate-") + uuid.uuid4().hex[:12]
        self.at: dict[str, Gen | None] = {w: None for w in [*self.paths, self.shm]}
        self.gens: list[Gen] = []
        self.raws: list[Raw] = []
        self.arrs: list[Arr] = []
        self.recs: list[Rec] = []
        self.serial = 0
        self.pending = 0
        Log.write(f"# new example: files in {self.root}, block {self.shm}")

    # -- bookkeeping -------------------------------------------------------------

    def where(self, t: int) -> str:
        return self.paths[t] if t < 2 else self.shm

    def ospath(self, where: str) -> str:
        return os.path.join(SHM_DIR, where) if where == self.shm else where

    def short(self, where: str) -> str:
        return "shm://" + where if where == self.shm else os.path.basename(where)

    def label(self, kind: str) -> str:
        self.serial += 1
        return f"{kind}{self.serial}"

    def log(self, line: str) -> None:
        Log.write("    " + line)

    def open_handles(self) -> int:
        return sum(not h.closed for h in self.raws) + sum(not a.closed for a in self.arrs)

    def mapped(self, gen: Gen, but: Any = None) -> bool:
        """Whether a live array, or an open handle other than ``but``, maps ``gen``."""
        return (
            any(h.gen is gen and not h.closed and h is not but for h in self.raws)
            or any(a.gen is gen and not a.closed and a is not but for a in self.arrs)
            or any(r.dom.gen is gen for r in self.recs)
        )

    def call(self, what: str, fn, expected: tuple = (), allowed: tuple = (), discard=None):
        """Run ``fn``; ``(True, result)``, or ``(False, None)`` after an
        exception of ``expected`` or ``allowed``.  With ``expected`` the
        call must raise."""
        self.log(what)
        try:
            result = fn()
        except OUTCOMES as exc:
            if isinstance(exc, (*expected, *allowed)):
                self.log(f"  -> {type(exc).__name__}: {exc}")
                return False, None
            raise AssertionError(f"{what}: unexpected {type(exc).__name__}: {exc}") from exc
        if expected:
            if discard is not None:
                with contextlib.suppress(Exception):
                    discard(result)
            raise AssertionError(f"{what}: expected {names(expected)}, but it succeeded")
        self.log("  -> ok")
        return True, result

    def new_gen(self, where: str, kind: str, cur: Gen | None, what: str, obj: Any) -> Gen:
        """The generation a creating open made at ``where`` (``cur`` was there)."""
        ospath = self.ospath(where)
        ino = os.stat(ospath).st_ino
        if cur is not None and ino == cur.ino:
            if self.mapped(cur):
                with contextlib.suppress(Exception):
                    obj.close()
                raise AssertionError(
                    f"{what} truncated {cur.label} in place while live arrays or handles "
                    "map it (it must replace the file with a new one)"
                )
            self.drop_gen(cur)
        gen = Gen(kind, where, ospath, f"{self.short(where)}#{self.label('gen')}")
        if gen.ino != ino:
            raise AssertionError(f"{where} changed while it was being opened")
        self.at[where] = gen
        self.gens.append(gen)
        self.log(f"  -> new generation {gen.label} (inode {gen.ino}, {gen.size} bytes)")
        return gen

    def same_gen(self, where: str, cur: Gen, what: str, obj: Any) -> None:
        if os.stat(self.ospath(where)).st_ino != cur.ino:
            with contextlib.suppress(Exception):
                obj.close()
            raise AssertionError(f"{what} changed the inode of {cur.label}")

    def drop_gen(self, gen: Gen) -> None:
        gen.close()
        self.gens.remove(gen)

    def retire(self) -> None:
        """Forget generations that no path names and nothing maps."""
        for gen in list(self.gens):
            if self.at[gen.where] is not gen and not self.mapped(gen):
                self.drop_gen(gen)

    def observe(self, gen: Gen, what: str) -> None:
        """Take the size on storage after an operation that may grow ``gen``."""
        fs = gen.fsize()
        if fs < gen.size:
            reach = max([r.hi for r in self.recs if r.dom.gen is gen] + [0])
            handles = [h.msize for h in self.raws if h.gen is gen and not h.closed]
            handles += [a.offset + a.obj.capacity * a.rn for a in self.arrs
                        if a.gen is gen and not a.closed]
            if fs < max([reach, *handles]):
                raise AssertionError(
                    f"{what} shrank {gen.label} from {gen.size} to {fs} bytes under live "
                    "mappings"
                )
        gen.resize(fs)

    def guard(self, what: str, gen: Gen | None, hi: int) -> None:
        """Fail, rather than SIGBUS, if bytes below ``hi`` are no longer on storage."""
        if gen is not None and hi:
            fs = gen.fsize()
            if hi > fs:
                raise AssertionError(
                    f"{what} reaches byte {hi} of {gen.label}, which has {fs} bytes on "
                    "storage now: it shrank under a live mapping (touching it would SIGBUS)"
                )

    def guard_arr(self, a: Arr) -> None:
        self.guard(a.label, a.gen, a.offset + max(a.length, a.obj.capacity) * a.rn)

    def compare(self, what: str, actual: Any, dom: Domain, pos: np.ndarray) -> None:
        got = np.frombuffer(np.asarray(actual).tobytes(), np.uint8)
        flat = pos.reshape(-1)
        if got.size != flat.size:
            raise AssertionError(f"{what}: {got.size} bytes, the model has {flat.size}")
        want, known = dom.read(flat)
        bad = np.flatnonzero(known & (got != want))
        if bad.size:
            j = bad[0]
            where = dom.gen.label if dom.gen is not None else "its own copy"
            raise AssertionError(
                f"{what}: byte {flat[j]} of {where} reads {got[j]}, the model says "
                f"{want[j]} ({bad.size} of {flat.size} bytes differ)"
            )

    def add_rec(self, obj: Any, dom: Domain, pos: np.ndarray, writable: bool, what: str):
        label = self.label("arr")
        rec = Rec(obj, dom, pos, writable, label)
        self.log(f"  -> {label}: shape {obj.shape}, {obj.dtype}, bytes [{pos.min(initial=0)}, "
                 f"{rec.hi}) of {dom.gen.label if dom.gen else 'its own copy'}")
        if tuple(obj.shape) != pos.shape[:-1] or obj.dtype.itemsize != pos.shape[-1]:
            raise AssertionError(f"{what}: shape {obj.shape} of {obj.dtype}, expected "
                                 f"{pos.shape[:-1]} of itemsize {pos.shape[-1]}")
        if bool(obj.flags.writeable) != writable:
            raise AssertionError(f"{what}: writeable is {obj.flags.writeable}, expected "
                                 f"{writable}")
        if obj.size:
            ino = mapped_inode(obj)
            if dom.gen is not None and ino != dom.gen.ino:
                raise AssertionError(f"{what}: maps inode {ino}, not {dom.gen.label} "
                                     f"(inode {dom.gen.ino})")
        self.guard(what, dom.gen, rec.hi)
        self.compare(what, obj, dom, pos)
        self.recs.append(rec)
        return rec

    def raw_writable(self, dom: Domain, pos: np.ndarray) -> bool:
        """Raw writes never touch bytes the model does not know (headers), nor
        the spare rows of a .npy (their zeros are MappedArray's business)."""
        gen = dom.gen
        if gen is None or dom.private or not pos.size:
            return True
        if not gen.known[pos].all():
            return False
        return gen.npy is None or (pos.min() >= gen.npy.offset and pos.max() < gen.hwm)

    def too_short(self, gen: Gen) -> bool | None:
        """Whether ``gen`` is shorter than its header says (None: depends on
        which recorded length the header holds)."""
        assert gen.npy is not None
        answers = {gen.size < gen.npy.needs(n) for n in gen.npy.recorded}
        return answers.pop() if len(answers) == 1 else None

    def take_lock(self, a: Arr) -> None:
        if not a.writer:
            a.writer = True
            a.gen.writers.append(a)

    def release(self, a: Arr) -> None:
        if a.writer:
            a.writer = False
            a.gen.writers.remove(a)

    def conflict(self, a: Arr) -> bool:
        return a.mode == "r+" and not a.writer and any(w is not a for w in a.gen.writers)

    def rows_grown(self, a: Arr) -> None:
        a.gen.hwm = max(a.gen.hwm, a.offset + a.length * a.rn)

    def record(self, a: Arr) -> None:
        """What a flush or close of ``a`` leaves in the header."""
        if a.mode in ("r", "c"):
            return
        gen, npy = a.gen, a.gen.npy
        if a.length != a.recorded:
            if npy is None or npy.layout != a.layout:  # rewrites a reinitialised block
                gen.npy = npy = Npy(a.dtype, a.row_shape, a.offset, a.length)
                gen.known[: a.offset] = False
            npy.recorded = {a.length}
        elif npy is not None and npy.layout == a.layout:
            npy.recorded.add(a.length)  # the header may say either
        a.recorded = a.length

    # -- raw handles: MappedFile and SharedBlock ------------------------------------

    def add_raw(self, obj, kind, gen, mode, what) -> Raw:
        dom = Domain(gen, private_size=obj.size) if mode == "c" else gen.shared
        h = Raw(obj, kind, gen, mode, dom, self.label("file" if kind == "file" else "blk"))
        self.raws.append(h)
        self.log(f"  -> {h.label} on {gen.label}, {h.msize} bytes")
        if h.msize != gen.size:
            raise AssertionError(f"{what}: size {h.msize}, the model says {gen.size}")
        return h

    @precondition(lambda self: self.open_handles() < MAX_OPEN)
    @rule(p=PATH, mode=st.sampled_from(["r", "r+", "w+", "x+", "c"]),
          capacity=st.one_of(st.none(), SIZE))
    @step
    def open_file(self, p, mode, capacity):
        path = self.paths[p]
        cur = self.at[path]
        if mode in ("w+", "x+") and capacity is None:
            capacity = 4096
        if mode == "w+" and cur is not None and "replace" in LAX and self.mapped(cur):
            return self.log("skipped: 'w+' on a mapped path (lax)")
        what = f"MappedFile({self.short(path)}, {mode!r}, capacity={capacity})"
        expected: tuple = ()
        if mode in ("r", "r+", "c"):
            if cur is None:
                expected = (FileNotFoundError,)
            elif capacity is not None and capacity < cur.size:
                expected = (ValueError,)
            elif capacity is not None and capacity > cur.size and mode != "r+":
                expected = (PermissionError,)
        elif mode == "x+" and cur is not None:
            expected = (FileExistsError,)
        ok, f = self.call(what, lambda: mm.MappedFile(path, mode, capacity=capacity), expected,
                          discard=lambda f: f.close())
        if not ok:
            return
        if mode in ("w+", "x+"):
            gen = self.new_gen(path, "file", cur, what, f)
        else:
            gen = cur
            self.same_gen(path, gen, what, f)
            if capacity is not None and capacity > gen.size:
                gen.resize(capacity)
        self.add_raw(f, "file", gen, mode, what)

    @precondition(lambda self: self.open_handles() < MAX_OPEN)
    @rule(size=SIZE, persist=st.booleans())
    @step
    def shm_create(self, size, persist):
        cur = self.at[self.shm]
        what = f"SharedBlock.create({self.short(self.shm)}, {size}, persist={persist})"
        expected = (FileExistsError,) if cur is not None else ()
        ok, b = self.call(what, lambda: mm.SharedBlock.create(self.shm, size, persist=persist),
                          expected, discard=lambda b: b.close())
        if ok:
            gen = self.new_gen(self.shm, "shm", cur, what, b)
            self.add_raw(b, "shm", gen, "r+", what).unlinks = not persist

    @precondition(lambda self: self.open_handles() < MAX_OPEN)
    @rule(readonly=st.booleans())
    @step
    def shm_open(self, readonly):
        cur = self.at[self.shm]
        what = f"SharedBlock.open({self.short(self.shm)}, readonly={readonly})"
        expected = (FileNotFoundError,) if cur is None else ()
        ok, b = self.call(what, lambda: mm.SharedBlock.open(self.shm, readonly=readonly),
                          expected, discard=lambda b: b.close())
        if ok:
            self.same_gen(self.shm, cur, what, b)
            self.add_raw(b, "shm", cur, "r" if readonly else "r+", what)

    @precondition(lambda self: self.open_handles() < MAX_OPEN)
    @rule(size=SIZE)
    @step
    def shm_create_or_open(self, size):
        cur = self.at[self.shm]
        what = f"SharedBlock.create_or_open({self.short(self.shm)}, {size})"
        expected = (ValueError,) if cur is not None and cur.size < size else ()
        ok, b = self.call(what, lambda: mm.SharedBlock.create_or_open(self.shm, size),
                          expected, discard=lambda b: b.close())
        if not ok:
            return
        if cur is None:
            gen = self.new_gen(self.shm, "shm", None, what, b)
            self.add_raw(b, "shm", gen, "r+", what).unlinks = True
        else:
            self.same_gen(self.shm, cur, what, b)
            self.add_raw(b, "shm", cur, "r+", what)

    @precondition(lambda self: any(h.kind == "shm" and not h.closed for h in self.raws))
    @rule(i=IDX)
    @step
    def shm_unlink(self, i):
        h = pick([h for h in self.raws if h.kind == "shm" and not h.closed], i)
        self.call(f"{h.label}.unlink()", h.obj.unlink)
        h.unlinks = False
        cur = self.at[self.shm]
        exists = os.path.exists(self.ospath(self.shm))
        if cur is h.gen and exists:
            raise AssertionError(f"{h.label}.unlink() left the name of its block")
        if not exists:
            self.at[self.shm] = None

    @precondition(lambda self: self.raws)
    @rule(i=IDX, dt=DT, offset=OFFSET, shape=SHAPE, order=ORDER, records=st.booleans())
    @step
    def take_view(self, i, dt, offset, shape, order, records):
        h = pick_open(self.raws, i)
        dtype = DTYPES[dt]
        records = records and dt == "rec"
        offset = near(offset, h.msize)
        what = (f"{h.label}.records({dt}, {shape}, {offset})" if records
                else f"{h.label}.array({dt}, {shape}, {offset}, {order!r})")
        if len(self.recs) >= MAX_RECS:
            return
        expected: tuple = ()
        shp: tuple = ()
        if h.closed or offset > h.msize:
            expected = (ValueError,)
        else:
            if shape is None:
                shp = ((h.msize - offset) // dtype.itemsize,)
            else:
                shp = (shape,) if isinstance(shape, int) else shape
            if offset + math.prod(shp) * dtype.itemsize > h.msize:
                expected = (ValueError,)

        def view():
            if records:
                return h.obj.records(dtype, shape, offset)
            return h.obj.array(dtype, shape, offset, order)

        ok, arr = self.call(what, view, expected)
        if ok:
            pos = layout_pos(offset, dtype.itemsize, shp, "C" if records else order)
            self.add_rec(arr, h.dom, pos, not h.readonly, what)

    @precondition(lambda self: self.raws)
    @rule(i=IDX, offset=OFFSET, dt=DT, count=st.integers(0, 9), seed=SEED)
    @step
    def raw_write(self, i, offset, dt, count, seed):
        h = pick_open(self.raws, i)
        dtype = DTYPES[dt]
        offset = near(offset, h.msize)
        values, raw = random_values(seed, dtype, (count,))
        if count == 1:
            what = f"{h.label}.write({offset}, <{dt} scalar>)"

            def fn():  # a scalar of a '>i4' array is native-endian: say the dtype
                return h.obj.write(offset, values[0], dtype=dtype)
        else:
            what = f"{h.label}.write_array({offset}, <{count} x {dt}>)"

            def fn():
                return h.obj.write_array(offset, values)
        pos = offset + np.arange(raw.size, dtype=np.int64)
        expected: tuple = ()
        if h.readonly:
            expected = (PermissionError, ValueError) if h.closed else (PermissionError,)
        elif h.closed or offset + raw.size > h.msize:
            expected = (ValueError,)
        elif not self.raw_writable(h.dom, pos):
            self.log(f"{what}: skipped (it would write bytes the model does not know)")
            return
        else:
            self.guard(what, h.gen, offset + raw.size)
        ok, _ = self.call(what, fn, expected)
        if ok:
            h.dom.write(pos, raw)

    @precondition(lambda self: self.raws)
    @rule(i=IDX, offset=OFFSET, dt=DT, count=st.integers(0, 9))
    @step
    def raw_read(self, i, offset, dt, count):
        h = pick_open(self.raws, i)
        dtype = DTYPES[dt]
        offset = near(offset, h.msize)
        nbytes = count * dtype.itemsize
        if count == 1:
            what = f"{h.label}.read({offset}, {dt})"

            def fn():
                return h.obj.read(offset, dtype)
        else:
            what = f"{h.label}.read_array({offset}, {dt}, {count})"

            def fn():
                return h.obj.read_array(offset, dtype, count)
        bad = h.closed or offset + nbytes > h.msize
        if not bad:
            self.guard(what, h.gen, offset + nbytes)
        ok, got = self.call(what, fn, (ValueError,) if bad else ())
        if ok:
            pos = offset + np.arange(nbytes, dtype=np.int64)
            self.compare(what, np.asarray(got, dtype=dtype), h.dom, pos)

    @precondition(lambda self: self.raws)
    @rule(i=IDX, size=SIZE)
    @step
    def raw_resize(self, i, size):
        h = pick_open(self.raws, i)
        gen = h.gen
        what = f"{h.label}.resize({size})"
        expected: tuple = ()
        allowed: tuple = ()
        shrinks = False
        if h.closed:
            expected = (ValueError,)
        elif h.mode in ("r", "c"):
            expected = (PermissionError,)
        elif h.kind == "shm":
            if size < h.msize:
                expected = (ValueError,)
            elif size < gen.size:  # another handle grew the block: it must not shrink
                allowed = (ValueError,)
        elif size < gen.size:
            if self.mapped(gen, but=h):
                if size < h.msize:
                    expected = (BufferError,)
                else:  # a stale handle size: refuse, or grow without shrinking the file
                    allowed = (BufferError,)
            else:
                shrinks = True
        ok, _ = self.call(what, lambda: h.obj.resize(size), expected, allowed)
        if not ok:
            return
        fs = gen.fsize()
        if shrinks:
            if fs != size:
                raise AssertionError(f"{what}: the file has {fs} bytes, not {size}")
            gen.resize(size)
            if gen.npy is not None and size < gen.npy.offset:
                gen.npy = None  # the header was cut: no longer a .npy
        elif fs < max(gen.size, size):
            raise AssertionError(
                f"{what}: {gen.label} has {fs} bytes on storage, expected at least "
                f"{max(gen.size, size)} (it must never shrink under other mappings)"
            )
        else:
            gen.resize(fs)
        h.msize = h.obj.size
        if h.msize < size or h.msize > gen.size:
            raise AssertionError(f"{what}: the handle maps {h.msize} bytes")

    @precondition(lambda self: self.raws)
    @rule(i=IDX)
    @step
    def raw_flush(self, i):
        h = pick_open(self.raws, i)
        self.call(f"{h.label}.flush()", h.obj.flush, (ValueError,) if h.closed else ())

    @precondition(lambda self: self.raws)
    @rule(i=IDX, probe=st.sampled_from(["array", "read", "flush", "size", "write", "resize"]))
    @step
    def raw_close(self, i, probe):
        h = pick_open(self.raws, i)
        self.call(f"{h.label}.close()", h.obj.close)
        if not h.closed:
            h.closed = True
            if h.unlinks and self.at[self.shm] is h.gen:
                self.at[self.shm] = None
        if not h.obj.closed:
            raise AssertionError(f"{h.label}.closed is False after close()")
        probes = {
            "array": lambda: h.obj.array(),
            "read": lambda: h.obj.read(0, np.uint8),
            "flush": lambda: h.obj.flush(),
            "size": lambda: h.obj.size,
            "write": lambda: h.obj.write(0, np.uint8(1)),
            "resize": lambda: h.obj.resize(h.msize + 1),
        }
        allowed = (PermissionError,) if probe == "write" and h.readonly else ()
        self.call(f"{h.label}.{probe} after close", probes[probe], (ValueError,), allowed)

    # -- arrays --------------------------------------------------------------------

    @precondition(lambda self: self.recs)
    @rule(i=IDX, spec=INDEX)
    @step
    def slice_rec(self, i, spec):
        r = pick(self.recs, i)
        if len(self.recs) >= MAX_RECS or r.obj.ndim == 0:
            return
        index = make_index(spec, r.obj.shape)
        what = f"{r.label}[{index}]"
        self.guard(what, r.dom.gen, r.hi)
        ok, sub = self.call(what, lambda: r.obj[index])
        if ok:
            self.add_rec(sub, r.dom, r.pos[index], r.writable, what)

    @precondition(lambda self: self.recs)
    @rule(i=IDX, spec=INDEX, seed=SEED)
    @step
    def write_rec(self, i, spec, seed):
        r = pick(self.recs, i)
        index = make_index(spec, r.obj.shape) if r.obj.ndim else ()
        pos = r.pos[index]
        values, raw = random_values(seed, r.obj.dtype, pos.shape[:-1])
        what = f"{r.label}[{index}] = <{values.size} values>"
        if not self.raw_writable(r.dom, pos):
            self.log(f"{what}: skipped (it would write bytes the model does not know)")
            return
        self.guard(what, r.dom.gen, r.hi)

        def assign():
            r.obj[index] = values

        ok, _ = self.call(what, assign, () if r.writable else (ValueError,))
        if ok:
            r.dom.write(pos.reshape(-1), raw)

    @precondition(lambda self: self.recs)
    @rule(i=IDX)
    @step
    def drop_rec(self, i):
        r = self.recs.pop(i % len(self.recs))
        Log.write(f"    del {r.label}")

    @precondition(lambda self: any(isinstance(r.obj, mm.memmap) for r in self.recs))
    @rule(i=IDX)
    @step
    def memmap_close(self, i):
        r = pick([r for r in self.recs if isinstance(r.obj, mm.memmap)], i)
        self.call(f"{r.label}.close()", r.obj.close)

    def unpickle(self, what: str, obj: Any, dom: Domain, pos: np.ndarray, writable: bool):
        gen = dom.gen
        stale = gen is not None and not dom.private and self.at[gen.where] is not gen
        if len(self.recs) >= MAX_RECS:
            return self.log("skipped: too many arrays")
        if (stale and "stale-pickle" in LAX) or (not pos.size and "empty-pickle" in LAX):
            return self.log("skipped: the array's file was replaced, or it is empty (lax)")
        allowed: tuple = ()
        if stale:  # the path or name no longer leads to these bytes: refusing is fine
            allowed = (ValueError, FileNotFoundError, PermissionError, BufferError)

        def roundtrip():
            blob = pickle.dumps(obj)
            return blob, pickle.loads(blob)

        ok, res = self.call(what, roundtrip, (), allowed)
        if not ok:
            return
        blob, new = res
        if gen is None or dom.private:  # travels by value
            flat = pos.reshape(-1)
            vals, known = dom.read(flat)
            own = Domain(None, copy=(vals.copy(), known.copy()))
            if new.size and gen is not None and mapped_inode(new) == gen.ino:
                raise AssertionError(f"{what}: a copy-on-write array unpickled as a mapping "
                                     "of the file (it must travel by value)")
            if new.dtype != obj.dtype:
                # numpy's own by-value pickles may come back in native byte order.
                if not np.can_cast(obj.dtype, new.dtype, "equiv"):
                    raise AssertionError(f"{what}: dtype {new.dtype}, not {obj.dtype}")
                self.log(f"  -> a copy in {new.dtype} (numpy pickles {obj.dtype} so)")
                new = new.astype(obj.dtype)
            newpos = np.arange(flat.size, dtype=np.int64).reshape(pos.shape)
            self.add_rec(new, own, newpos, True, what)
            return
        if len(blob) > 4096:
            raise AssertionError(f"{what}: pickled to {len(blob)} bytes (not by reference)")
        if stale and not new.size:  # no address to tell which file it maps: let it go
            return self.log("  -> empty: dropped (which file it maps cannot be told)")
        if stale and mapped_inode(new) != gen.ino:
            raise AssertionError(
                f"{what}: {gen.label} was replaced or removed, and the unpickled array maps "
                f"inode {mapped_inode(new)} instead: other bytes than the pickled array's"
            )
        self.add_rec(new, dom, pos, writable, what)

    @precondition(lambda self: self.recs)
    @rule(i=IDX)
    @step
    def pickle_rec(self, i):
        r = pick(self.recs, i)
        self.guard(r.label, r.dom.gen, r.hi)
        self.unpickle(f"pickle.loads(pickle.dumps({r.label}))", r.obj, r.dom, r.pos,
                      r.writable)

    @precondition(lambda self: self.open_handles() < MAX_OPEN and len(self.recs) < MAX_RECS)
    @rule(p=PATH, mode=st.sampled_from(["r", "r+", "w+", "c"]), dt=DT,
          offset=OFFSET,
          shape=SHAPE, order=ORDER, capacity=st.one_of(st.none(), SIZE))
    @step
    def open_memmap(self, p, mode, dt, offset, shape, order, capacity):
        path = self.paths[p]
        cur = self.at[path]
        dtype = DTYPES[dt]
        if mode == "w+" and shape is None:
            shape = 16
        if mode == "w+" and cur is not None and "replace" in LAX and self.mapped(cur):
            return self.log("skipped: 'w+' on a mapped path (lax)")
        what = (f"memmap({self.short(path)}, {dt}, {mode!r}, offset={offset}, shape={shape}, "
                f"order={order!r}, capacity={capacity})")
        expected: tuple = ()
        flen = 0 if mode == "w+" or cur is None else cur.size
        offset = near(offset, flen)
        shp: tuple = ()
        if mode != "w+" and cur is None:
            expected = (FileNotFoundError,)
        elif capacity is not None and capacity > flen and mode in ("r", "c"):
            expected = (PermissionError,)
        else:
            if capacity is not None:
                flen = max(flen, capacity)
            if shape is None:
                nbytes = flen - offset
                if nbytes < 0 or nbytes % dtype.itemsize:
                    expected = (ValueError,)
                shp = (max(nbytes, 0) // dtype.itemsize,)
            else:
                shp = (shape,) if isinstance(shape, int) else shape
            end = offset + math.prod(shp) * dtype.itemsize
            if mode in ("r+", "w+"):
                flen = max(flen, end, 1)
            elif end > flen:
                expected = (ValueError,)

        def fn():
            return mm.memmap(path, dtype, mode, offset, shape, order, capacity=capacity)

        if expected and capacity is not None and "grow-then-raise" in LAX:
            return self.log("skipped: a failing open with capacity= (lax)")

        ok, m = self.call(what, fn, expected)
        if not ok:
            return
        if mode == "w+":
            gen = self.new_gen(path, "file", cur, what, m)
        else:
            gen = cur
            self.same_gen(path, gen, what, m)
            gen.resize(max(gen.size, flen))
        if gen.size != flen:
            raise AssertionError(f"{what}: the file has {gen.size} bytes, expected {flen}")
        if not isinstance(m, np.memmap) or m.offset != offset or m.mode != mode:
            raise AssertionError(f"{what}: not a numpy.memmap with offset {offset}, mode "
                                 f"{mode!r} ({type(m).__name__}, {m.offset}, {m.mode!r})")
        dom = Domain(gen, private_size=flen) if mode == "c" else gen.shared
        self.add_rec(m, dom, layout_pos(offset, dtype.itemsize, shp, order), mode != "r", what)

    # -- MappedArray -------------------------------------------------------------------

    @precondition(lambda self: self.open_handles() < MAX_OPEN)
    @rule(t=TARGET, mode=ARRAY_MODE, dt=ARRAY_DT, row=ROW, n=st.integers(0, 6),
          capacity=st.one_of(st.none(), st.integers(0, 40)),
          data=st.one_of(st.none(), SEED))
    @step
    def open_arr(self, t, mode, dt, row, n, capacity, data):
        self.open_array(t, mode, dt, row, n, capacity, data)

    @precondition(lambda self: self.open_handles() < MAX_OPEN)
    @rule(t=TARGET, mode=ARRAY_MODE, dt=ARRAY_DT, row=ROW, n=st.integers(0, 6),
          capacity=st.one_of(st.none(), st.integers(0, 40)),
          data=st.one_of(st.none(), SEED))
    @step
    def open_arr_again(self, t, mode, dt, row, n, capacity, data):
        self.open_array(t, mode, dt, row, n, capacity, data)

    def open_array(self, t, mode, dt, row, n, capacity, data=None):
        where = self.where(t)
        kind = "shm" if t == 2 else "file"
        target = "shm://" + where if kind == "shm" else where
        cur = self.at[where]
        dtype = DTYPES[dt]
        reinit = mode == "w+" and kind == "shm" and cur is not None
        creates = not reinit and (mode in ("w+", "x+") or (mode == "a" and cur is None))
        kwargs: dict[str, Any] = {}
        if mode in ("w+", "x+", "a"):
            kwargs = {"dtype": dtype, "shape": (n, *row)}
        raw = None
        if mode in ("w+", "x+") and data is not None:  # contents given: data=
            values, raw = random_values(data, dtype, (n, *row))
            kwargs = {"data": values}
        if mode in ("w+", "x+", "a"):
            kwargs["capacity"] = capacity
        what = f"open_array({self.short(where)}, {mode!r}, {kwargs})"
        if raw is not None:
            what = what.replace(repr(values), f"<random rows, seed {data}>")
        if mode == "w+" and kind == "file" and cur is not None and self.mapped(cur) and (
            "replace" in LAX
        ):
            return self.log("skipped: 'w+' on a mapped path (lax)")
        expected: tuple = ()
        allowed: tuple = ()
        if mode == "c" and kind == "shm":
            expected = (ValueError,)
        elif mode == "x+" and cur is not None:
            expected = (FileExistsError,)
        elif mode in ("r", "r+", "c") and cur is None:
            expected = (FileNotFoundError,)
        elif reinit:
            if cur.writers:
                if "writer-lock" in LAX:
                    return self.log("skipped: a second writer (lax)")
                expected = (BlockingIOError,)
        elif mode in ("r", "r+", "c", "a") and cur is not None:
            if cur.npy is None:
                expected = (ValueError,)
            else:
                wrong = mode == "a" and (dtype, row) != (cur.npy.dtype, cur.npy.row_shape)
                short = self.too_short(cur)
                if mode == "a" and cur.writers:
                    if "writer-lock" in LAX:
                        return self.log("skipped: a second writer (lax)")
                    expected = (BlockingIOError, ValueError) if wrong or short else (
                        BlockingIOError,)
                elif wrong or short:
                    expected = (ValueError,)
                elif short is None:
                    allowed = (ValueError,)
        if expected and kwargs.get("capacity") is not None and "grow-then-raise" in LAX:
            return self.log("skipped: a failing open with capacity= (lax)")
        ok, a = self.call(what, lambda: mm.open_array(target, mode, **kwargs), expected,
                          allowed, discard=lambda a: a.close())
        if not ok:
            return
        ospath = self.ospath(where)
        if creates or reinit:
            if reinit:
                gen = cur
                self.same_gen(where, gen, what, a)
                self.observe(gen, what)
            else:
                gen = self.new_gen(where, kind, cur, what, a)
            offset, shape, fortran, hdtype = read_npy_header(ospath)
            if (shape, fortran, hdtype) != ((n, *row), False, dtype):
                a.close()
                raise AssertionError(f"{what}: the header says {shape}, {hdtype}, "
                                     f"fortran={fortran}")
            rn = math.prod(row) * dtype.itemsize
            nbytes = max(max(n, capacity or 0) * rn, 1)
            if reinit:  # the rows are zeroed; what lies past them is the block's business
                gen.data[offset : offset + nbytes] = 0
                gen.known[offset : offset + nbytes] = True
                gen.known[offset + nbytes :] = False
            gen.known[:offset] = False
            if raw is not None:
                gen.data[offset : offset + raw.size] = raw
                gen.known[offset : offset + raw.size] = True
            gen.npy = Npy(dtype, row, offset, n)
            gen.hwm = offset + n * rn
            length = n
        else:
            gen = cur
            self.same_gen(where, gen, what, a)
            npy = gen.npy
            assert npy is not None
            length = len(a)
            if length not in npy.recorded:
                a.close()
                raise AssertionError(f"{what}: length {length}, but the header should say "
                                     f"one of {sorted(npy.recorded)}")
            npy.recorded = {length}
            if a.dtype != npy.dtype or a.shape[1:] != npy.row_shape:
                a.close()
                raise AssertionError(f"{what}: {a.dtype}, rows {a.shape[1:]}")
            self.observe(gen, what)  # capacity= may reserve rows
        layout = (gen.npy.dtype, gen.npy.row_shape, gen.npy.offset)
        dom = Domain(gen, private_size=gen.size) if mode == "c" else gen.shared
        arr = Arr(a, kind, gen, mode, dom, layout, length, self.label("ma"))
        arr.owner = kind == "shm" and creates
        self.arrs.append(arr)
        if mode in ("a", "w+", "x+"):
            self.take_lock(arr)
        self.rows_grown(arr)
        self.log(f"  -> {arr.label} on {gen.label}: shape {arr.shape()}, data at {arr.offset}")
        if a.shape != arr.shape() or a.mode != mode:
            raise AssertionError(f"{what}: shape {a.shape}, mode {a.mode!r}")
        self.guard_arr(arr)
        self.compare(what, a, dom, arr.pos())

    def bases(self, a: Arr) -> list[int]:
        """Lengths ``a`` may grow from.  An ``"r+"`` handle taking the writer
        lock now may keep its own length or pick up the one the header
        records (the contract allows either); any other handle keeps its own."""
        npy = a.gen.npy
        if a.mode != "r+" or a.writer or npy is None or npy.layout != a.layout:
            return [a.length]
        return [a.length, *sorted(npy.recorded - {a.length})]

    def growth_outcome(self, a: Arr) -> tuple | None:
        """The exceptions ``append``/``resize`` of ``a`` must raise (None: skip)."""
        if a.closed:
            return (ValueError,)
        if a.mode in ("r", "c"):
            return (PermissionError,)
        if self.conflict(a):
            return None if "writer-lock" in LAX else (BlockingIOError,)
        if len(self.bases(a)) > 1 and "stale-length" in LAX:
            return None
        self.guard_arr(a)
        return ()

    @precondition(lambda self: self.arrs)
    @rule(i=IDX, k=st.integers(0, 4), single=st.booleans(), seed=SEED)
    @step
    def ma_append(self, i, k, single, seed):
        a = pick_open(self.arrs, i)
        values, raw = random_values(seed, a.dtype, (k, *a.row_shape))
        rows = values[0] if single and k == 1 else values
        expected = self.growth_outcome(a)
        if expected is None:
            return self.log("skipped: a second writer, or a stale length (lax)")
        ok, _ = self.call(f"{a.label}.append(<{k} rows>)", lambda: a.obj.append(rows),
                          expected)
        if not ok:
            return
        bases = self.bases(a)
        self.take_lock(a)
        self.observe(a.gen, f"{a.label}.append")
        if len(a.obj) - k not in bases:
            raise AssertionError(f"{a.label}.append(<{k} rows>): length {len(a.obj)}, "
                                 f"expected {' or '.join(str(b + k) for b in bases)}")
        a.length = len(a.obj) - k
        start = a.offset + a.length * a.rn
        a.dom.write(start + np.arange(raw.size, dtype=np.int64), raw)
        a.length += k
        self.rows_grown(a)

    @precondition(lambda self: self.arrs)
    @rule(i=IDX, n=ROWS)
    @step
    def ma_resize(self, i, n):
        a = pick_open(self.arrs, i)
        expected = self.growth_outcome(a)
        if expected is None:
            return self.log("skipped: a second writer, or a stale length (lax)")
        ok, _ = self.call(f"{a.label}.resize({n})", lambda: a.obj.resize(n), expected)
        if not ok:
            return
        bases = self.bases(a)
        self.take_lock(a)
        self.observe(a.gen, f"{a.label}.resize")
        base = self.resize_base(a, bases, n) if len(bases) > 1 else a.length
        if n > base:  # new rows read as zero
            start = a.offset + base * a.rn
            count = (n - base) * a.rn
            a.dom.write(start + np.arange(count, dtype=np.int64), np.zeros(count, np.uint8))
        a.length = n
        self.rows_grown(a)

    def resize_base(self, a: Arr, bases: list[int], n: int) -> int:
        """Which length ``a.resize(n)`` grew from, told by the rows it left:
        every row from the base up to ``n`` reads zero, the rows below keep
        their bytes."""
        lo = min(*bases, n)
        pos = a.offset + np.arange(lo * a.rn, n * a.rn, dtype=np.int64)
        self.guard(a.label, a.gen, a.offset + n * a.rn)
        got = np.frombuffer(np.asarray(a.obj)[lo:n].tobytes(), np.uint8)
        want, known = a.dom.read(pos)
        for base in bases:
            expect = want.copy()
            expect[max(base - lo, 0) * a.rn :] = 0
            if not (known & (got != expect)).any():
                return base
        raise AssertionError(
            f"{a.label}.resize({n}): rows [{lo}, {n}) are neither zero from its length "
            f"{a.length} on, nor kept up to the length the header records "
            f"({' or '.join(map(str, bases[1:]))}) and zero after"
        )

    @precondition(lambda self: self.arrs)
    @rule(i=IDX)
    @step
    def ma_flush(self, i):
        a = pick_open(self.arrs, i)
        if not a.closed:
            self.guard_arr(a)
        ok, _ = self.call(f"{a.label}.flush()", a.obj.flush, (ValueError,) if a.closed else ())
        if ok:
            self.record(a)

    @precondition(lambda self: self.arrs)
    @rule(i=IDX, probe=st.sampled_from(["append", "resize", "flush", "getitem", "setitem"]))
    @step
    def ma_close(self, i, probe):
        a = pick_open(self.arrs, i)
        if not a.closed:
            self.guard_arr(a)
        self.call(f"{a.label}.close()", a.obj.close)
        if not a.closed:
            self.record(a)
            a.closed = True
            self.release(a)
            if a.owner and self.at[self.shm] is a.gen:
                self.at[self.shm] = None
        if not a.obj.closed:
            raise AssertionError(f"{a.label}.closed is False after close()")
        zero = np.zeros(a.row_shape, a.dtype)
        probes = {
            "append": lambda: a.obj.append(zero),
            "resize": lambda: a.obj.resize(a.length + 1),
            "flush": a.obj.flush,
            "getitem": lambda: a.obj[:1],
            "setitem": lambda: a.obj.__setitem__(slice(0, 0), zero),
        }
        # append/resize on a read-only handle may say PermissionError first.
        allowed = (PermissionError,) if a.mode in ("r", "c") else ()
        self.call(f"{a.label}.{probe} after close", probes[probe], (ValueError,), allowed)

    @precondition(lambda self: self.arrs)
    @rule(i=IDX, spec=INDEX)
    @step
    def ma_view(self, i, spec):
        a = pick_open(self.arrs, i)
        if len(self.recs) >= MAX_RECS:
            return
        index = make_index(spec, a.shape())
        what = f"{a.label}[{index}]"
        if not a.closed:
            self.guard_arr(a)
        ok, v = self.call(what, lambda: a.obj[index], (ValueError,) if a.closed else ())
        if ok:
            self.add_rec(v, a.dom, a.pos()[index], a.mode != "r", what)

    @precondition(lambda self: self.arrs)
    @rule(i=IDX, spec=INDEX, seed=SEED)
    @step
    def ma_write(self, i, spec, seed):
        a = pick_open(self.arrs, i)
        index = make_index(spec, a.shape())
        pos = a.pos()[index]
        values, raw = random_values(seed, a.dtype, pos.shape[:-1])
        expected: tuple = ()
        if a.closed or a.mode == "r":
            expected = (ValueError,)
        else:
            self.guard_arr(a)

        def assign():
            a.obj[index] = values

        ok, _ = self.call(f"{a.label}[{index}] = <{values.size} values>", assign, expected)
        if ok:
            a.dom.write(pos.reshape(-1), raw)

    @precondition(lambda self: self.arrs)
    @rule(i=IDX)
    @step
    def pickle_arr(self, i):
        a = pick_open(self.arrs, i)
        what = f"pickle.loads(pickle.dumps({a.label}))"
        if a.closed:
            self.call(what, lambda: pickle.dumps(a.obj), (ValueError,))
            return
        self.guard_arr(a)
        self.unpickle(what, a.obj, a.dom, a.pos(), a.mode != "r")

    @rule(t=TARGET)
    @step
    def np_load(self, t):
        where = self.where(t)
        gen = self.at[where]
        if gen is None or gen.npy is None:
            return
        npy = gen.npy
        short = self.too_short(gen)
        what = f"np.load({self.short(where)})"
        ok, loaded = self.call(what, lambda: np.load(self.ospath(where)),
                               (ValueError,) if short else (),
                               (ValueError,) if short is None else ())
        if not ok:
            return
        length = loaded.shape[0]
        if loaded.dtype != npy.dtype or loaded.shape[1:] != npy.row_shape or (
            length not in npy.recorded
        ):
            raise AssertionError(
                f"{what}: {loaded.dtype} {loaded.shape}, expected {npy.dtype} with rows "
                f"{npy.row_shape} and a length in {sorted(npy.recorded)}"
            )
        npy.recorded = {length}
        flat = npy.offset + np.arange(length * npy.row_nbytes, dtype=np.int64)
        self.compare(what, loaded, gen.shared, flat)

    # -- removing names ------------------------------------------------------------------

    @rule(t=TARGET)
    @step
    def unlink_name(self, t):
        """``os.unlink`` a path, or ``mmarray rm`` the block (name only)."""
        where = self.where(t)
        if self.at[where] is None:
            return
        self.log(f"os.unlink({self.ospath(where)})")
        os.unlink(self.ospath(where))
        self.at[where] = None

    # -- the check after every step ----------------------------------------------------

    @invariant()
    def agrees_with_the_model(self):
        self.retire()
        for where, gen in self.at.items():
            try:
                ino = os.stat(self.ospath(where)).st_ino
            except FileNotFoundError:
                ino = None
            if ino != (gen.ino if gen is not None else None):
                raise AssertionError(
                    f"{self.short(where)}: inode {ino} on storage, the model says "
                    f"{gen.label + ' (inode ' + str(gen.ino) + ')' if gen else 'no file'}"
                )
        for gen in self.gens:
            fs = gen.fsize()
            if fs != gen.size:
                raise AssertionError(f"{gen.label}: {fs} bytes on storage, the model says "
                                     f"{gen.size}")
        for h in self.raws:
            if h.obj.closed != h.closed:
                raise AssertionError(f"{h.label}.closed is {h.obj.closed}")
            if not h.closed and h.obj.size != h.msize:
                raise AssertionError(f"{h.label}.size is {h.obj.size}, the model says "
                                     f"{h.msize}")
        for a in self.arrs:
            if a.obj.closed != a.closed:
                raise AssertionError(f"{a.label}.closed is {a.obj.closed}")
            if a.closed:
                continue
            if a.obj.shape != a.shape():
                raise AssertionError(f"{a.label}.shape is {a.obj.shape}, the model says "
                                     f"{a.shape()}")
            self.guard_arr(a)
            self.compare(a.label, a.obj, a.dom, a.pos())
        for r in self.recs:
            self.guard(r.label, r.dom.gen, r.hi)
            self.compare(r.label, r.obj, r.dom, r.pos)
        Log.steps += self.pending
        self.pending = 0

    def teardown(self):
        for a in self.arrs:
            with contextlib.suppress(Exception):
                a.obj.close()
        for h in self.raws:
            with contextlib.suppress(Exception):
                h.obj.close()
        self.recs.clear()
        self.arrs.clear()
        self.raws.clear()
        for gen in self.gens:
            gen.close()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ospath(self.shm))


# -- the child -----------------------------------------------------------------------------


def main() -> int:
    """Run the machine (in the child process); print ``steps: N`` last."""
    faulthandler.enable()
    seconds = float(os.environ.get(SECONDS_ENV) or 0)
    base = os.environ.get(DIR_ENV) or tempfile.gettempdir()
    log = os.environ.get(LOG_ENV) or os.path.join(base, "mmarray-stateful-steps.log")
    Log.open(log)
    start = time.monotonic()
    runs = 0
    try:
        if seconds:
            while time.monotonic() - start < seconds:
                run_state_machine_as_test(MappingMachine, settings=BATCH_SETTINGS)
                runs += 1
        else:
            run_state_machine_as_test(MappingMachine, settings=DEFAULT_SETTINGS)
            runs = 1
    except BaseException:
        traceback.print_exc()
        sys.stderr.write(f"\nsteps of the last example run (from {log}):\n")
        with open(log, encoding="utf-8", errors="replace") as fh:
            sys.stderr.write(fh.read())
        sys.stderr.flush()
        print(f"steps: {Log.steps}", flush=True)
        return 1
    print(f"{runs} run(s) in {time.monotonic() - start:.1f} s", flush=True)
    print(f"steps: {Log.steps}", flush=True)
    return 0


# -- the test --------------------------------------------------------------------------------


def remove_blocks(prefix: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(SHM_DIR):
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM_DIR, name))


def test_state_machine() -> None:
    seconds = float(os.environ.get(SECONDS_ENV) or 0)
    base = tempfile.mkdtemp(prefix="mmarray-stateful-")
    prefix = f"mmstate-{uuid.uuid4().hex[:8]}-"
    log = os.path.join(base, "steps.log")
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONFAULTHANDLER="1",
               **{DIR_ENV: base, PREFIX_ENV: prefix, LOG_ENV: log})
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, __file__], cwd=base, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(timeout=seconds + 600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(killed: the child ran past its time)"
        elapsed = time.monotonic() - start
        lines = out.strip().splitlines()
        steps = lines[-1] if lines and lines[-1].startswith("steps: ") else "steps: ?"
        print(f"\nstate machine: {steps} ran clean in {elapsed:.1f} s")
        if proc.returncode != 0:
            if proc.returncode < 0:
                why = f"the child died of {signal.Signals(-proc.returncode).name}"
                with contextlib.suppress(OSError), open(log, errors="replace") as fh:
                    err += f"\nsteps of the example that crashed:\n{fh.read()}"
            else:
                why = f"the child failed (exit status {proc.returncode})"
            raise AssertionError(f"{why}; {steps}\n\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        remove_blocks(prefix)


if __name__ == "__main__":
    sys.exit(main())
