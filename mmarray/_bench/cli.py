"""``mmarray bench`` on the command line: its options and its exit codes.

``mmarray._cli`` registers the sub-command with :func:`add_bench_parser`.
Mistakes print one line on stderr: bad options exit 2 (argparse), a missing
or full directory 1, Ctrl-C 130 (the scratch files are removed first).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

from .report import format_table, matplotlib_missing, plot_report, to_json
from .runner import MIN_SIZE, run_bench
from .units import format_size, parse_size


def _size_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"size must be at least {format_size(MIN_SIZE)} (got {text!r})"
        )
    return size


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on an argparse ``subparsers`` object (``_cli`` calls this).

    The parser's ``func`` default is :func:`main`, which returns an exit code.
    """
    p = subparsers.add_parser(
        "bench",
        help="time mapped against buffered file reads on this machine",
        description=(
            "Write a scratch file (random float64 values), time random reads of 8 B, 64 B "
            "and 4 KiB records and a sequential sum through mmarray, buffered reads and "
            "os.pread, with a warm and (where the file system allows) a cold page cache, "
            "print a table of speed-ups and a verdict, and remove the file. Cold random "
            "reads, where mmarray.take and numpy.memmap join in, use a second file "
            "(--cold-size)."
        ),
    )
    p.add_argument(
        "--size", type=_size_arg, default=None, metavar="BYTES",
        help="scratch file size, e.g. 64M or 1G (default 256M; 32M with --quick)",
    )
    p.add_argument(
        "--cold-size", type=_size_arg, default=None, metavar="BYTES",
        help="size of the file for the cold random reads, large enough for readahead's "
             "cost to show (default 1G; 64M with --quick); skipped with a note if it "
             "does not fit",
    )
    p.add_argument("--quick", action="store_true",
                   help="a run of a few seconds: smaller files, fewer reads and repeats")
    p.add_argument("--json", action="store_true",
                   help="print machine-readable results instead of the table")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also save a bar chart of the speed-ups (needs matplotlib)")
    p.add_argument("--dir", metavar="DIR", default=None, dest="directory",
                   help="where to put the scratch files (default: the temp dir, "
                        f"now {tempfile.gettempdir()})")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``mmarray bench`` with parsed ``args``; return the exit code."""
    plot = getattr(args, "plot", None)
    if plot:
        missing = matplotlib_missing()
        if missing:
            print(f"mmarray bench: error: {missing}", file=sys.stderr)
            return 2
    try:
        report = run_bench(
            size=getattr(args, "size", None),
            cold_size=getattr(args, "cold_size", None),
            quick=getattr(args, "quick", False),
            directory=getattr(args, "directory", None),
        )
    except KeyboardInterrupt:
        print("mmarray bench: interrupted; scratch files removed", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        print(f"mmarray bench: error: {exc}", file=sys.stderr)
        return 1
    print(to_json(report) if getattr(args, "json", False) else format_table(report))
    if plot:
        try:
            plot_report(report, plot)
        except (OSError, ValueError) as exc:
            print(f"mmarray bench: error: cannot save {plot}: {exc}", file=sys.stderr)
            return 1
        print(f"mmarray bench: chart saved to {plot}", file=sys.stderr)
    return 0
