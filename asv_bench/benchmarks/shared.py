"""Shared memory: block latency, and handing a big array to another process.

Latency compares ``mmarray.SharedBlock`` with the standard library's
``multiprocessing.shared_memory.SharedMemory`` (each makes, maps and
removes a POSIX block).  The hand-off sends one array to a worker process
(spawned in setup, so its start-up is not timed) through
``concurrent.futures``: arrays from mmarray pickle as a reference to the
mapped bytes, a plain ndarray pickles its data.  The array is
4x the data-file size (1 GiB by default).  Every block a benchmark makes
is removed in teardown, even after a failure.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import multiprocessing
import operator
import os
import pickle
import tempfile
from multiprocessing import resource_tracker, shared_memory

import numpy as np

import mmarray

from .common import FILE_BYTES, FULL_FILE_MB, Benchmark, MiB, named, scaled

BLOCK_BYTES = MiB
# Work per call in a full run (the dashboard's names quote these; see common.py).
FULL_BLOCK_OPS, FULL_HANDOFF_GIB = 200, 4 * FULL_FILE_MB / 1024
#: Blocks made or opened per call.
BLOCK_OPS = scaled(FULL_BLOCK_OPS, minimum=20)
HANDOFF_BYTES = 4 * FILE_BYTES
MMARRAY, STDLIB = "mmarray.SharedBlock", "multiprocessing.shared_memory"
BY_BLOCK = "by reference: SharedBlock array"
BY_FILE = "by reference: MappedFile array"
BY_VALUE = "by value: ndarray"
_names = itertools.count()


def _unique(tag: str) -> str:
    return f"mmarray-asv-{tag}-{os.getpid()}-{next(_names)}"


def _unlink_quietly(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shared_memory.SharedMemory(name).unlink()


class BlockLatency(Benchmark):
    """Create + close + remove, create + fill + close + remove, or open +
    close, a 1 MiB block.

    mmarray allocates a block's pages at create (``posix_fallocate``), so a
    full ``/dev/shm`` fails there instead of raising SIGBUS later; the
    standard library allocates on first touch.  "create" alone shows that
    cost, "create+fill" (writing every byte, as real use does) shows it is
    paid either way.
    """

    params = (["create", "create+fill", "open"], [MMARRAY, STDLIB])
    param_names = ["operation", "implementation"]
    number = 1

    def setup(self, op, impl):
        stack = self.resources()
        names = [_unique("lat") for _ in range(BLOCK_OPS)]
        # Remove anything a failed call left behind (no-op normally).
        stack.callback(lambda: [_unlink_quietly(n) for n in names])
        if op.startswith("create"):
            fill = op == "create+fill"
            if impl == MMARRAY:

                def run():
                    for n in names:
                        blk = mmarray.SharedBlock.create(n, BLOCK_BYTES)
                        if fill:
                            blk.array()[:] = 1
                        blk.close()  # the owner removes it

            else:
                resource_tracker.ensure_running()  # not timed: starts once per process

                def run():
                    for n in names:
                        shm = shared_memory.SharedMemory(n, create=True, size=BLOCK_BYTES)
                        if fill:
                            a = np.ndarray((BLOCK_BYTES,), np.uint8, buffer=shm.buf)
                            a[:] = 1
                            del a
                        shm.close()
                        shm.unlink()

        else:
            owner = stack.enter_context(mmarray.SharedBlock.create(names[0], BLOCK_BYTES))
            if impl == MMARRAY:

                def run():
                    for _ in range(BLOCK_OPS):
                        mmarray.SharedBlock.open(owner.name).close()

            else:
                resource_tracker.ensure_running()  # not timed: starts once per process
                # Attaching registers the name with the resource tracker
                # (cpython gh-82300); unregister so it does not unlink the block.
                stack.callback(resource_tracker.unregister, "/" + owner.name, "shared_memory")

                def run():
                    for _ in range(BLOCK_OPS):
                        shared_memory.SharedMemory(owner.name).close()

        self.run = run

    @named(
        f"Shared block latency: {FULL_BLOCK_OPS} create(+fill)+close+remove or open+close "
        "of 1 MiB"
    )
    def time_block(self, op, impl):
        """Both sides make the same system calls (shm_open, ftruncate, mmap,
        munmap, shm_unlink), and mmarray's create adds posix_fallocate."""
        self.run()


def _big_array(bench: Benchmark, how: str) -> np.ndarray:
    """HANDOFF_BYTES of float64: a shared block's, a (sparse) file's, or RAM."""
    stack = bench.resources()
    n = HANDOFF_BYTES // 8
    if how == BY_BLOCK:
        blk = stack.enter_context(mmarray.SharedBlock.create(_unique("handoff"), n * 8))
        return blk.array(np.float64)
    if how == BY_FILE:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mmarray-asv-"))
        path = os.path.join(folder, "big.bin")
        return stack.enter_context(mmarray.MappedFile(path, "w+", capacity=n * 8)).array(
            np.float64
        )
    return np.ones(n)


class HandOff(Benchmark):
    """Send one big array to a worker process, which reads its last element."""

    params = [[BY_BLOCK, BY_FILE, BY_VALUE]]
    param_names = ["sent_as"]
    number = 1
    repeat = (1, 2, 10.0)
    warmup_time = 0
    timeout = 300

    def setup(self, how):
        stack = self.resources()
        ctx = multiprocessing.get_context("spawn")
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx))
        pool.submit(int).result()  # start the worker now, not in the timed call
        self.arr, self.pool = _big_array(self, how), pool

    @named(f"Hand a {FULL_HANDOFF_GIB:g} GiB float64 array to a worker process")
    def time_handoff(self, how):
        """``pool.submit(operator.itemgetter(-1), arr).result()``: pickling,
        the pipe, and unpickling (mapping the bytes again, for a reference)."""
        self.pool.submit(operator.itemgetter(-1), self.arr).result()


class PickledSize(Benchmark):
    """What crosses the pipe when an array is handed to another process."""

    params = [[BY_BLOCK, BY_FILE, BY_VALUE]]
    param_names = ["sent_as"]

    def setup(self, how):
        self.arr = _big_array(self, how)

    @named(f"Pickled size of a {FULL_HANDOFF_GIB:g} GiB float64 array", unit="bytes")
    def track_pickled_bytes(self, how):
        """A reference is well under 4 KiB whatever the array's size."""
        return len(pickle.dumps(self.arr, protocol=pickle.HIGHEST_PROTOCOL))
