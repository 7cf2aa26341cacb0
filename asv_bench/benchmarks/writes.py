"""Writes: through a mapping (mmarray) against buffered writes and os.pwrite.

The target is a separate file of the same size as the data file, written
once per run.  Setup syncs it (so no earlier dirty pages are pending),
reads it into the page cache, and opens a fresh handle before every call.
``flush`` makes each call durable: ``MappedFile.flush()`` (msync) for
mmarray, ``os.fdatasync`` for the file APIs (after ``f.flush()``, which
every buffered writer needs anyway to hand Python's buffer to the OS).
"""

from __future__ import annotations

import os

import numpy as np

import mmarray

from .common import (
    FILE_BYTES,
    FULL_FILE_MB,
    IO_REPEAT,
    Benchmark,
    MiB,
    named,
    random_index,
    ratio_of,
    record_dtype,
    scaled,
    warm,
    write_random_file,
)

# Work per call in a full run (the dashboard's names quote these; see common.py).
FULL_WRITES, FULL_SEQ_MIB = 10_000, FULL_FILE_MB // 4
#: Random writes per call.
WRITES = scaled(FULL_WRITES)
#: Bytes per sequential-write call (a quarter of the data file).
SEQ_BYTES = FILE_BYTES // 4
FLUSH = ["no flush", "flush"]
MM_SCATTER, MM_LOOP = "mmarray a[idx] = v", "mmarray a[i] = v loop"
BUFFERED, PWRITE = "f.seek+f.write", "os.pwrite"
MM_SEQ, BUFFERED_SEQ, TOFILE = "mmarray a[:] = data", "f.write 1 MiB chunks", "ndarray.tofile"


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class _Target(Benchmark):
    """Writes go to their own file; asv keys this ``setup_cache`` to this module."""

    number = 1
    repeat = IO_REPEAT
    warmup_time = 0

    def setup_cache(self) -> str:
        return write_random_file("mmarray-asv-target.bin", FILE_BYTES)

    setup_cache.timeout = 300

    def _reset(self, path: str) -> None:
        _sync(path)
        warm(path)


def _payload(record: int, count: int) -> tuple[np.ndarray, list, list[bytes]]:
    """``count`` records to write: an array (for a[idx] = v), Python objects
    (for a[i] = v) and bytes (for the file APIs), all made before timing."""
    values = np.random.default_rng(1).random(count * record // 8).view(record_dtype(record))
    blobs = [values[i : i + 1].tobytes() for i in range(count)]
    items = values.tolist() if record == 8 else blobs
    return values, items, blobs


class RandomWrites(_Target):
    """Records written at random offsets, warm cache."""

    params = ([8, 4096], [MM_SCATTER, MM_LOOP, BUFFERED, PWRITE], FLUSH)
    param_names = ["record_bytes", "method", "flush"]

    def setup(self, path, record, method, flush):
        self._reset(path)
        index = random_index(FILE_BYTES // record, WRITES, seed=7)
        values, items, blobs = _payload(record, WRITES)
        keys, offsets = index.tolist(), (index * record).tolist()
        durable = flush == "flush"
        stack = self.resources()
        if method in (MM_SCATTER, MM_LOOP):
            f = stack.enter_context(mmarray.MappedFile(path, "r+"))
            a = f.array(values.dtype)

            def run():
                if method == MM_SCATTER:
                    a[index] = values
                else:
                    for i, v in zip(keys, items, strict=True):
                        a[i] = v
                if durable:
                    f.flush()

        elif method == BUFFERED:
            fh = stack.enter_context(open(path, "r+b"))  # noqa: SIM115 -- closed in teardown

            def run():
                for offset, blob in zip(offsets, blobs, strict=True):
                    fh.seek(offset)
                    fh.write(blob)
                fh.flush()
                if durable:
                    os.fdatasync(fh.fileno())

        else:
            fd = os.open(path, os.O_RDWR)
            stack.callback(os.close, fd)

            def run():
                for offset, blob in zip(offsets, blobs, strict=True):
                    os.pwrite(fd, blob, offset)
                if durable:
                    os.fdatasync(fd)

        self.run = run

    @named(f"Random writes: {FULL_WRITES:,} records at random offsets, optionally made durable")
    def time_write(self, path, record, method, flush):
        """Through a mapping the first write to each clean page costs a page
        fault; with ``flush`` the dirty pages go to the device."""
        self.run()


class SequentialWrites(_Target):
    """Overwrite the first quarter of the target file front to back."""

    params = ([MM_SEQ, BUFFERED_SEQ, TOFILE], FLUSH)
    param_names = ["method", "flush"]

    def setup(self, path, method, flush):
        self._reset(path)
        data = np.ones(SEQ_BYTES // 8)
        durable = flush == "flush"
        stack = self.resources()
        if method == MM_SEQ:
            f = stack.enter_context(mmarray.MappedFile(path, "r+"))
            a = f.array(np.float64, shape=data.shape)

            def run():
                a[:] = data
                if durable:
                    f.flush(0, SEQ_BYTES)

        else:
            fh = stack.enter_context(open(path, "r+b"))  # noqa: SIM115 -- closed in teardown
            raw = memoryview(data).cast("B")

            def run():
                fh.seek(0)
                if method == TOFILE:
                    data.tofile(fh)
                else:
                    for start in range(0, SEQ_BYTES, MiB):
                        fh.write(raw[start : start + MiB])
                fh.flush()
                if durable:
                    os.fdatasync(fh.fileno())

        self.run = run

    @named(f"Sequential writes: overwrite {FULL_SEQ_MIB} MiB, optionally made durable")
    def time_write(self, path, method, flush):
        """The buffered writers copy into the page cache; the mapping writes
        into it directly (after one page fault per clean page)."""
        self.run()


class WriteRatios(_Target):
    """Headline write ratios (lower is better): mmarray against buffered, same work."""

    params = [FLUSH]
    param_names = ["flush"]
    repeat = 1

    def setup(self, path, flush):
        self._reset(path)
        self.path, self.durable = path, flush == "flush"

    @named("Ratio, random 8 B writes: mmarray a[idx] = v / f.seek+f.write loop",
           unit="time(mmarray)/time(buffered)")
    def track_random_write_vs_buffered(self, path, flush):
        """Opening the handle is part of each run; so is the flush when asked."""
        index = random_index(FILE_BYTES // 8, WRITES, seed=7)
        values, _, blobs = _payload(8, WRITES)
        offsets = (index * 8).tolist()

        def mapped():
            with mmarray.MappedFile(path, "r+") as f:
                f.array(np.float64)[index] = values
                if self.durable:
                    f.flush()

        def buffered():
            with open(path, "r+b") as fh:
                for offset, blob in zip(offsets, blobs, strict=True):
                    fh.seek(offset)
                    fh.write(blob)
                fh.flush()
                if self.durable:
                    os.fdatasync(fh.fileno())

        return ratio_of(mapped, buffered, rounds=3, before=lambda: _sync(path))

    @named(f"Ratio, sequential writes of {FULL_SEQ_MIB} MiB: mmarray / f.write 1 MiB chunks",
           unit="time(mmarray)/time(buffered)")
    def track_sequential_write_vs_buffered(self, path, flush):
        """Same bytes on both sides; the flush is msync against fdatasync."""
        data = np.ones(SEQ_BYTES // 8)
        raw = memoryview(data).cast("B")

        def mapped():
            with mmarray.MappedFile(path, "r+") as f:
                f.array(np.float64, shape=data.shape)[:] = data
                if self.durable:
                    f.flush(0, SEQ_BYTES)

        def buffered():
            with open(path, "r+b") as fh:
                for start in range(0, SEQ_BYTES, MiB):
                    fh.write(raw[start : start + MiB])
                fh.flush()
                if self.durable:
                    os.fdatasync(fh.fileno())

        return ratio_of(mapped, buffered, rounds=3, before=lambda: _sync(path))
