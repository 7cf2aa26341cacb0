"""``mmarray bench``: mapping against buffered file reads, measured here.

A small package whose imports flow one way::

    units -> cache -> workloads -> runner -> report -> cli
             (results: the plain data that runner fills and report reads)

* :mod:`.units` -- byte sizes (``64M``, ``1 GiB``);
* :mod:`.cache` -- the scratch files and the page cache: writing, evicting,
  asking ``mincore``, whether a cold cache can be staged;
* :mod:`.workloads` -- what is timed: the methods and the sections that
  group them.  **A new benchmark goes there**, in :data:`SECTIONS`;
* :mod:`.results` -- :class:`Measurement`, :class:`Comparison` (the rule for
  "faster", "slower" and "level") and :class:`Report`;
* :mod:`.runner` -- :class:`Plan`, the run loop, :func:`run_bench`;
* :mod:`.report` -- the table, the verdict, JSON and the chart;
* :mod:`.cli` -- the ``bench`` sub-command (:func:`add_bench_parser`, :func:`main`).

The asv suite in ``asv_bench/`` measures the same things and more for the
dashboard, with its own copies of the cache helpers so that it can
benchmark commits older than this package.
"""

from .cache import evict, filesystem_type, resident_fraction
from .cli import add_bench_parser, main
from .report import (
    bar_chart,
    format_ratio,
    format_table,
    format_time,
    matplotlib_missing,
    plot_report,
    to_json,
    verdict,
)
from .results import Comparison, Measurement, Report
from .runner import Plan, run_bench
from .units import format_size, parse_size
from .workloads import SECTIONS, Method, Section, Workload

__all__ = [
    "SECTIONS",
    "Comparison",
    "Measurement",
    "Method",
    "Plan",
    "Report",
    "Section",
    "Workload",
    "add_bench_parser",
    "bar_chart",
    "evict",
    "filesystem_type",
    "format_ratio",
    "format_size",
    "format_table",
    "format_time",
    "main",
    "matplotlib_missing",
    "parse_size",
    "plot_report",
    "resident_fraction",
    "run_bench",
    "to_json",
    "verdict",
]
