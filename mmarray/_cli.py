"""The ``mmarray`` command line (also ``python -m mmarray``).

User mistakes print one line on stderr and exit non-zero; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from ._info import SHM_PREFIX, human, info
from ._shared import block_sizes, remove_block

#: Exit status for a user mistake (argparse uses 2 for bad usage).
EXIT_ERROR = 1


def cmd_info(args: argparse.Namespace) -> int:
    print(info(args.target))
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
    parser.add_argument("--version", action="version", version=f"mmarray {__version__}")
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
