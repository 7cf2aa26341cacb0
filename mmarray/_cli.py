"""The ``mmarray`` command line (also ``python -m mmarray``).

User mistakes print one line on stderr and exit non-zero; no tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._file import check_regular
from ._header import MAX_HEADER_SIZE, read_header
from ._open import SHM_PREFIX
from ._shared import SharedBlock, block_sizes, remove_block

#: Exit status for a user mistake (argparse uses 2 for bad usage).
EXIT_ERROR = 1
NPY_MAGIC = b"\x93NUMPY"


def human(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _head_and_size(target: str) -> tuple[bytes, int, str]:
    """The first bytes of a file or block, its size, and a display name."""
    if target.startswith(SHM_PREFIX):
        with SharedBlock.open(target[len(SHM_PREFIX) :], readonly=True) as blk:
            n = min(blk.size, MAX_HEADER_SIZE + 64)
            return blk.read_array(0, "u1", n).tobytes(), blk.size, target
    path = os.path.abspath(target)
    # O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = check_regular(os.fstat(fd), path)
        return os.pread(fd, MAX_HEADER_SIZE + 64, 0), st.st_size, path
    finally:
        os.close(fd)


def cmd_info(args: argparse.Namespace) -> int:
    head, size, name = _head_and_size(args.target)
    rows = [("target", name), ("size", f"{size} bytes ({human(size)})")]
    if head.startswith(NPY_MAGIC):
        h = read_header(head, size)
        row_nbytes = h.dtype.itemsize
        for n in h.shape[1:]:
            row_nbytes *= n
        rows += [
            ("format", f".npy version {h.version[0]}.{h.version[1]}"),
            ("dtype", str(h.dtype)),
            ("shape", repr(h.shape)),
            ("order", "Fortran" if h.fortran_order else "C"),
            ("data offset", str(h.data_offset)),
        ]
        if h.shape and row_nbytes:
            rows.append(("capacity", f"{(size - h.data_offset) // row_nbytes} rows"))
    else:
        rows.append(("format", "raw bytes (no .npy header)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    sizes = block_sizes()
    if not sizes:
        print("no shared blocks")
        return 0
    width = max(len(n) for n in sizes)
    print(f"{'NAME':<{width}}  {'BYTES':>12}  SIZE")
    for name in sorted(sizes):
        print(f"{name:<{width}}  {sizes[name]:>12}  {human(sizes[name])}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    status = 0
    for target in args.targets:
        if not target.startswith(SHM_PREFIX):
            raise ValueError(f"rm removes shared blocks: give shm://NAME (got {target!r})")
        name = target[len(SHM_PREFIX) :]
        try:
            remove_block(name)
        except FileNotFoundError:
            print(f"mmarray: error: no shared block named {name!r}", file=sys.stderr)
            status = EXIT_ERROR
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmarray",
        description="Memory-mapped files and shared blocks as numpy arrays.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    try:
        from ._bench import add_bench_parser
    except ImportError:  # pragma: no cover - the bench module ships with the package
        pass
    else:
        add_bench_parser(sub)
    p = sub.add_parser("info", help="size, and dtype/shape of a .npy header")
    p.add_argument("target", help="a file path or shm://NAME")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("ls", help="list shared blocks")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("rm", help="remove shared blocks")
    p.add_argument("targets", nargs="+", metavar="shm://NAME")
    p.set_defaults(func=cmd_rm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mmarray: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, OSError) and e.filename:
            message = f"{message}: {e.filename}"
        print(f"mmarray: error: {message}", file=sys.stderr)
        return EXIT_ERROR
