"""Presenting ``mmarray bench`` results: the table, the verdict, JSON, the chart.

Everything here reads a :class:`~mmarray._bench.results.Report` and measures
nothing.  ``asv_bench/plot_results.py`` draws the dashboard's static chart
with :func:`bar_chart` too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from .results import Measurement, Report
from .units import format_size
from .workloads import RECORD_SIZES

#: The most that take may cost beside a gather on resident pages (issue 12).
WARM_TAKE_GOAL = 1.3


def format_time(seconds: float) -> str:
    """``1.6e-06`` -> ``"1.60 us"``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(speedup: float) -> str:
    """``168.2`` -> ``"168x faster"``, ``0.5`` -> ``"2.0x slower"``."""
    if math.isnan(speedup):
        return "n/a"
    return _compare(speedup, f"{speedup:.2f}x (same)", "")


def _compare(speedup: float, same: str, than: str) -> str:
    """``same`` within 5 %, else "Nx faster/slower" followed by ``than``."""
    if 0.95 <= speedup <= 1.05:
        return same
    if speedup > 1:
        return f"{_num(speedup)}x faster{than}"
    return f"{_num(1 / speedup)}x slower{than}"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def _section_title(test: str, cache: str, record: int | None, report: Report) -> str:
    plan = report.info["plan"]
    if test == "random":
        reads = plan["cold_reads"] if cache == "cold" else plan["reads"]
        title = (f"Random reads of {format_size(record or 0)} records, {cache} cache "
                 f"({reads:,} reads at random offsets per run")
        cold_file = report.info.get("cold_file")
        if cache == "cold" and cold_file:
            title += f" of a {format_size(cold_file['size'])} file"
        title += ")"
    else:
        title = (f"Sequential sum of the whole file ({format_size(report.info['file']['size'])}),"
                 f" {cache} cache")
    if cache == "cold":
        title += "; file dropped from the page cache before each run"
    return title


def _pages(k: float) -> str:
    return f"{k:.1f}" if k < 10 else f"{k:,.0f}"


def format_table(report: Report) -> str:
    """The aligned table that ``mmarray bench`` prints."""
    info = report.info
    f, plan = info["file"], info["plan"]
    lines = [
        f"mmarray bench: {format_size(f['size'])} scratch file in {f['directory']}"
        f" ({f['filesystem'] or 'unknown file system'})",
        f"mmarray {info['mmarray']}, Python {info['python']}, numpy {info['numpy']}, "
        f"{info['platform']}, {info['cpus']} CPUs; {info['date']}",
        f"Best of {plan['repeat']} runs for random reads, {plan['scan_repeat']} for sums, "
        f"{plan['cold_repeat']} when cold; methods take turns, and each run opens its own "
        "handle.",
        '"vs buffered" = time(buffered) / time(method): above 1 means faster than buffered.',
    ]
    if any(m.pages_per_read is not None for m in report.measurements):
        lines.append('"pages/read" = pages a cold run added to the page cache, per read asked '
                     "for.")
    sections: dict[tuple, list[Measurement]] = {}
    for m in report.measurements:
        sections.setdefault(m.section, []).append(m)
    width = max([len(m.label) for m in report.measurements] + [6])
    for (test, cache, record), rows in sections.items():
        lines += ["", _section_title(test, cache, record, report)]
        cold = cache == "cold"
        head = "per read" if test == "random" else "speed"
        header = f"  {'method':<{width}}  {head:>10}  {'vs buffered':<14}"
        if cold:
            header += "  page cache after"
            if any(m.pages_per_read is not None for m in rows):
                header += "  pages/read"
        lines.append(header.rstrip())
        for m in rows:
            value = format_time(m.per_read) if test == "random" else f"{m.gb_per_s:.2f} GB/s"
            ratio = "baseline" if m.baseline else format_ratio(m.speedup)
            row = f"  {m.label:<{width}}  {value:>10}  {ratio:<14}"
            if cold and m.cached_after is not None:
                row += f"  {f'{m.cached_after:>6.1%} of file':<16}"
                if m.pages_per_read is not None:
                    row += f"  {_pages(m.pages_per_read):>10}"
            lines.append(row.rstrip())
    if report.cold_reason:
        lines += ["", f"Cold cache not measured: {report.cold_reason}."]
    elif report.cold_random_reason:
        lines += ["", f"Cold random reads not measured: {report.cold_random_reason}."]
    if not info.get("in_ram_measured", True):
        lines += ["", "In-RAM ceiling not measured: the file is over half the free memory."]
    lines += ["", _wrap("Verdict: " + verdict(report))]
    return "\n".join(lines)


def _wrap(text: str, width: int = 88) -> str:
    # Paths in skip reasons stay whole, so that they can be copied.
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def _vs(speedup: float | None, what: str) -> str:
    if speedup is None:
        return f"(not measured against {what})"
    return _compare(speedup, f"about as fast as {what}", f" than {what}")


def verdict(report: Report) -> str:
    """One paragraph in plain words, computed from the measured numbers."""
    parts = [
        text for text in (
            _warm_random(report), _warm_take(report), _warm_sequential(report),
        ) if text
    ]
    if report.cold_reason is not None:
        parts.append(f"The cold cache was not measured: {report.cold_reason}.")
    else:
        if report.cold_random_reason is not None:
            parts.append(f"Cold random reads were not measured: {report.cold_random_reason}.")
        parts += [text for text in (
            _cold_take(report), _cold_gather(report), _cold_sequential(report),
        ) if text]
        if report.info.get("virtual_machine"):
            parts.append("This is a virtual machine: cold reads may come from the host's cache.")
    if not parts:
        return "nothing was measured."
    return " ".join(parts)


def _warm_random(r: Report) -> str | None:
    g8 = r.speedup("random", "warm", 8, "mmarray-gather")
    if g8 is None:
        return None
    g8m = r.speedup("random", "warm", 8, "mmarray-gather-mapped")
    l8 = r.speedup("random", "warm", 8, "mmarray-loop")
    g4 = r.speedup("random", "warm", 4096, "mmarray-gather")
    l4 = r.speedup("random", "warm", 4096, "mmarray-loop")
    p8 = r.speedup("random", "warm", 8, "pread")
    text = (
        f"With the file in the page cache, a vectorised gather of 8 B records through "
        f"mmarray was {_vs(g8, 'a buffered seek+read loop')}"
    )
    if g8m is not None:
        text += f" ({_num(g8m)}x once its pages were mapped)"
    text += (
        f", and even a Python loop of a[i] was {_vs(l8, 'it')}: a mapped read is a "
        f"memory access, not a system call (os.pread was {_vs(p8, 'buffered')})."
    )
    if g4 is not None:
        text += (
            f" The lead shrinks as records grow: for 4 KiB records the gather was "
            f"{_vs(g4, 'buffered')} and the loop {_vs(l4, 'buffered')}."
        )
    return text


def _warm_take(r: Report) -> str | None:
    """take against the gather on the same warm pages: the price of its checks."""
    found = [(rec, r.ratio("random", "warm", rec, "mmarray-take", "mmarray-gather"))
             for rec in RECORD_SIZES]
    found = [(rec, x) for rec, x in found if x is not None]
    if not found:
        return None
    each = [f"{_ratio_words(x)} for {format_size(rec)}" for rec, x in found]
    listed = each[0] if len(each) == 1 else ", ".join(each[:-1]) + " and " + each[-1]
    text = (f"On cached pages, mmarray.take, against the gather a[idx] it replaces, was "
            f"{listed} records")
    if min(x for _, x in found) >= 1 / WARM_TAKE_GOAL:
        return text + ": when a few sampled pages are resident it asks the kernel for nothing."
    return (text + f", more than the {WARM_TAKE_GOAL}x its residency check is meant to "
            "cost at most.")


def _warm_sequential(r: Report) -> str | None:
    seq = r.find("sequential", "warm", None, "mmarray-sum")
    if seq is None:
        return None
    ram = r.find("sequential", "warm", None, "in-ram")
    text = (
        f"A sequential sum of the whole file through mmarray ran at {seq.gb_per_s:.1f} GB/s, "
        f"{_vs(seq.speedup, 'readinto of 1 MiB chunks')}"
    )
    if ram is not None:
        ratio = seq.gb_per_s / ram.gb_per_s
        text += f" and at {ratio:.0%} of the speed of summing an ndarray in RAM"
    text += "."
    s = seq.speedup
    if not math.isnan(s) and s >= 0.95:
        text += (
            " So the old rule of thumb that buffered streams win sequential reads does not "
            "hold here: a mapping is at least as fast, and needs no buffer management."
        )
    elif not math.isnan(s):
        text += f" Here buffered reads won the sequential scan, by {_num(1 / s)}x."
    return text


def _cold_take(r: Report) -> str | None:
    """take against os.pread and numpy.memmap from a cold cache, and the pages it read."""
    clauses = []
    for rec in RECORD_SIZES[::-1]:
        take = r.find("random", "cold", rec, "mmarray-take")
        if take is None:
            continue
        vs_pread = r.ratio("random", "cold", rec, "mmarray-take", "pread")
        vs_memmap = r.ratio("random", "cold", rec, "mmarray-take", "numpy-memmap")
        memmap = r.find("random", "cold", rec, "numpy-memmap")
        if not clauses:
            clause = (f"random {format_size(rec)} rows {_vs(vs_pread, 'os.pread')} and "
                      f"{_vs(vs_memmap, 'numpy.memmap fancy indexing')}")
            if take.pages_per_read is not None:
                clause += f", reading about {_page_count(take.pages_per_read)} per row"
                if memmap is not None and memmap.pages_per_read is not None:
                    clause += (f" (numpy.memmap: {_page_count(memmap.pages_per_read)}, "
                               "as readahead pulled in the file)")
        else:
            clause = f"{format_size(rec)} records {_pair(vs_pread, vs_memmap)}"
            if take.pages_per_read is not None:
                clause += f", {_page_count(take.pages_per_read)} per row"
        clauses.append(clause)
    if not clauses:
        return None
    size = r.info.get("cold_file", {}).get("size")
    where = f" ({format_size(size)} file)" if size else ""
    text = f"From a cold cache{where}, mmarray.take read {clauses[0]}"
    if len(clauses) > 1:
        text += "; for " + "; for ".join(clauses[1:])
    return text + (": it asks the kernel for every page of a batch at once, so the device "
                   "serves them in parallel instead of one page fault at a time.")


def _page_count(k: float) -> str:
    text = _pages(k)
    return f"{text} page" if text == "1.0" else f"{text} pages"


def _ratio_words(speedup: float | None) -> str:
    """``4.5`` -> ``"4.5x faster"``, for lists after a full clause."""
    return "n/a" if speedup is None else _compare(speedup, "level", "")


def _pair(a: float | None, b: float | None) -> str:
    """``"7.0x and 8.0x faster"``, or each in words when they differ in kind."""
    if a is not None and b is not None and a > 1.05 and b > 1.05:
        return f"{_num(a)}x and {_num(b)}x faster"
    return f"{_ratio_words(a)} and {_ratio_words(b)}"


def _cold_gather(r: Report) -> str | None:
    cg = r.find("random", "cold", 8, "mmarray-gather")
    cr = r.find("random", "cold", 8, "mmarray-gather-random")
    if cg is None or cr is None:
        return None
    text = (
        f"Through a plain mapping, cold random 8 B reads were "
        f"{_vs(cg.speedup, 'buffered')} without a hint and {_vs(cr.speedup, 'buffered')} "
        f"with advise(\"random\")"
    )
    if cg.cached_after is not None and cr.cached_after is not None:
        text += (
            f"; without the hint, readahead pulled {cg.cached_after:.0%} of the file "
            f"into memory, with it {cr.cached_after:.0%}"
        )
    return text + "."


def _cold_sequential(r: Report) -> str | None:
    cs = r.find("sequential", "cold", None, "mmarray-sum")
    cq = r.find("sequential", "cold", None, "mmarray-sum-sequential")
    if cs is None or cq is None:
        return None
    return (
        f"A cold sequential sum through mmarray was {_vs(cs.speedup, 'readinto')} "
        f"without a hint and {_vs(cq.speedup, 'readinto')} with "
        f"advise(\"sequential\") ({cs.gb_per_s:.2f} vs {cq.gb_per_s:.2f} GB/s)."
    )


# -- JSON ------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    """``mmarray bench --json``: the facts, every row, and the verdict."""
    data = {**report.as_dict(), "verdict": verdict(report)}
    return json.dumps(data, indent=2, allow_nan=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# -- plotting ------------------------------------------------------------------------


def matplotlib_missing() -> str | None:
    """An error line if matplotlib cannot be imported, else None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib, which is not installed (pip install matplotlib)"
    return None


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    path: str | os.PathLike[str],
    *,
    title: str,
    xlabel: str,
    higher_is_better: bool,
) -> None:
    """Save a horizontal bar chart of ratios (log scale, a line at 1) as PNG.

    Bars on the good side of 1 are green, the others orange, and those
    within 5% of 1 grey.  Shared by ``mmarray bench --plot`` and
    ``asv_bench/plot_results.py``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(values)
    longest = max((len(label) for label in labels), default=10)
    fig, ax = plt.subplots(figsize=(5 + 0.06 * longest, 1.2 + 0.3 * max(n, 1)))
    try:
        colors = [
            "#9e9e9e" if 0.95 <= v <= 1.05 else "#2a9d8f" if (v > 1) == higher_is_better
            else "#e76f51"
            for v in values
        ]
        ys = np.arange(n)[::-1]
        ax.barh(ys, values, color=colors, left=0)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlabel(_wrap(xlabel, 70), fontsize=9)
        fig.suptitle(_wrap(title, 110), fontsize=10)
        for y, v in zip(ys, values, strict=True):
            ax.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
        lo, hi = min([*values, 1.0]), max([*values, 1.0])
        ax.set_xlim(lo / 2, hi * 3)
        ax.grid(axis="x", which="major", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot_report(report: Report, path: str | os.PathLike[str]) -> None:
    """``mmarray bench --plot``: the speed-ups of every non-baseline row."""
    rows = [m for m in report.measurements if not m.baseline and not math.isnan(m.speedup)]
    labels = [
        f"{m.cache} {format_size(m.record) + ' ' if m.record else 'seq. '}| {m.label}"
        for m in rows
    ]
    f = report.info["file"]
    bar_chart(
        labels, [m.speedup for m in rows], path,
        title=f"mmarray bench, {format_size(f['size'])} file, {report.info['date'][:10]}",
        xlabel="speed-up vs buffered reads (time(buffered) / time(method); > 1 is faster)",
        higher_is_better=True,
    )


