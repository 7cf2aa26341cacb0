"""Presenting ``mmarray bench`` results: the table, the verdict, JSON, the chart.

Everything here reads a :class:`~mmarray._bench.results.Report` and measures
nothing.  Every figure is a median with its range (fastest to slowest run),
and every "faster" or "slower", in the table and in the verdict, comes from
:meth:`~mmarray._bench.results.Measurement.compare`: ranges apart, or
"level".  A range leaves out the slowest run in every five
(:data:`~mmarray._bench.results.DROPPED_PER`).  ``asv_bench/plot_results.py``
draws the dashboard's static chart with :func:`bar_chart` too.
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

from .results import DROPPED_PER, Comparison, Measurement, Report
from .units import format_size
from .workloads import BATCH, RECORD_SIZES

#: The most that take may cost beside a gather on resident pages (issue 12).
WARM_TAKE_GOAL = 1.3
#: How the verdict names the cold "mapping-gather" row.
PLAIN_GATHER = "a plain mapping's gather (numpy.memmap's m[idx])"
#: A cold run that leaves more of the file cached than this read it ahead.
READAHEAD_SHOWN = 0.5


def _sig(x: float) -> str:
    """Three significant digits, never in exponent form: ``999.6`` -> ``"1000"``."""
    text = f"{x:.3g}"
    return f"{x:.0f}" if "e" in text else text


def _time_unit(seconds: float) -> tuple[float, str]:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return scale, unit
    return 1e-9, "ns"


def format_time(seconds: float) -> str:
    """``1.6e-06`` -> ``"1.6 us"``."""
    scale, unit = _time_unit(seconds)
    return f"{_sig(seconds / scale)} {unit}"


def _num(x: float) -> str:
    """A ratio to the precision that tells ratios near 1 apart: 1.06, 2.5, 168."""
    if x >= 9.95:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 1.995 else f"{x:.2f}"


def format_ratio(versus: Comparison | None) -> str:
    """``Comparison(168.2, "faster")`` -> ``"168x faster"``; ``"level"`` when the
    ranges overlap; ``"n/a"`` for None."""
    if versus is None or math.isnan(versus.ratio):
        return "n/a"
    return _ratio_words(versus)


def _ratio_words(versus: Comparison | None) -> str:
    """``"4.5x faster"``, ``"1.06x slower"`` or ``"level"``."""
    if versus is None:
        return "n/a"
    if versus.call == "faster":
        return f"{_num(versus.ratio)}x faster"
    if versus.call == "slower":
        return f"{_num(1 / versus.ratio)}x slower"
    return "level"


def _vs(versus: Comparison | None, what: str) -> str:
    """``"4.5x faster than what"``, ``"level with what"``."""
    if versus is None:
        return f"(not measured against {what})"
    words = _ratio_words(versus)
    return f"level with {what}" if words == "level" else f"{words} than {what}"


# -- the table ------------------------------------------------------------------------


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


def _figure(m: Measurement) -> tuple[str, str]:
    """The median and ``[range]`` of a row (fastest run to slowest kept), the range
    in the median's unit: time per read for random reads, GB/s (slowest first) for sums."""
    if m.test == "random":
        scale, unit = _time_unit(m.per_read)
        lo, hi = m.fastest / m.count / scale, m.slowest / m.count / scale
        return f"{_sig(m.per_read / scale)} {unit}", f"[{_sig(lo)}-{_sig(hi)}]"
    lo, hi = m.count / m.slowest / 1e9, m.count / m.fastest / 1e9
    return f"{m.gb_per_s:.2f} GB/s", f"[{_sig(lo)}-{_sig(hi)}]"


def _header(report: Report) -> list[str]:
    info = report.info
    f, plan = info["file"], info["plan"]
    notes = [
        f"Each figure is the median of {plan['repeat']} runs for random reads, "
        f"{plan['scan_repeat']} for sums, {plan['cold_repeat']} when cold; methods take "
        "turns, and each run opens its own handle. [range] runs from the fastest run to "
        f"the slowest kept: the slowest run in every {DROPPED_PER} is left out, as other "
        "programs on the machine only ever slow a run down (--json has every time).",
        '"vs buffered" = median time(buffered) / median time(method). "faster" and "slower" '
        'only where the two ranges do not overlap; otherwise "level".',
        '"mapping:" rows index the plain ndarray of MappedFile.array: mmap and numpy\'s own '
        "indexing, which is what numpy.memmap does, so it has rows only where its method "
        "differs.",
    ]
    if any(m.pages_per_read is not None for m in report.measurements):
        notes.append('"pages/read" = pages a cold run added to the page cache, per read '
                     "asked for.")
    return [
        f"mmarray bench: {format_size(f['size'])} scratch file in {f['directory']}"
        f" ({f['filesystem'] or 'unknown file system'})",
        f"mmarray {info['mmarray']}, Python {info['python']}, numpy {info['numpy']}, "
        f"{info['platform']}, {info['cpus']} CPUs; {info['date']}",
        *(_wrap(note) for note in notes),
    ]


def format_table(report: Report) -> str:
    """The aligned table that ``mmarray bench`` prints."""
    lines = _header(report)
    sections: dict[tuple, list[Measurement]] = {}
    for m in report.measurements:
        sections.setdefault(m.section, []).append(m)
    width = max([len(m.label) for m in report.measurements] + [6])
    figures = {id(m): _figure(m) for m in report.measurements}
    spread = max([len(r) for _, r in figures.values()] + [7])
    for (test, cache, record), rows in sections.items():
        lines += ["", _section_title(test, cache, record, report)]
        cold = cache == "cold"
        head = "per read" if test == "random" else "speed"
        header = f"  {'method':<{width}}  {head:>10} {'range':<{spread}}  {'vs buffered':<14}"
        if cold:
            header += "  page cache after"
            if any(m.pages_per_read is not None for m in rows):
                header += "  pages/read"
        lines.append(header.rstrip())
        for m in rows:
            value, bracket = figures[id(m)]
            ratio = ("baseline" if m.baseline
                     else "n/a" if m.call is None else format_ratio(Comparison(m.speedup, m.call)))
            row = f"  {m.label:<{width}}  {value:>10} {bracket:<{spread}}  {ratio:<14}"
            if cold and m.cached_after is not None:
                row += f"  {f'{m.cached_after:>6.1%} of file':<16}"
                if m.pages_per_read is not None:
                    row += f"  {_pages(m.pages_per_read):>10}"
            lines.append(row.rstrip())
    if report.cold_reason:
        lines += ["", f"Cold cache not measured: {report.cold_reason}."]
    elif report.cold_random_reason:
        lines += ["", f"Cold random reads not measured: {report.cold_random_reason}."]
    if not report.info.get("in_ram_measured", True):
        lines += ["", "In-RAM reference not measured: the file is over half the free memory."]
    lines += ["", _wrap("Verdict: " + verdict(report))]
    return "\n".join(lines)


def _wrap(text: str, width: int = 88) -> str:
    # Paths in skip reasons stay whole, so that they can be copied.
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


# -- the verdict ------------------------------------------------------------------------


def verdict(report: Report) -> str:
    """One paragraph in plain words, computed from the measured numbers.

    Every comparison in it follows the table's rule: "faster" or "slower"
    only where the ranges of run times are apart, else "level".
    """
    parts = [
        text for text in (
            _warm_random(report), _warm_loop_vs_gather(report), _warm_take(report),
            _warm_sequential(report),
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
    def vs(record: int, method: str, against: str = "buffered") -> Comparison | None:
        return r.compare("random", "warm", record, method, against)

    g8 = vs(8, "mapping-gather")
    if g8 is None:
        return None
    g8m, l8, p8 = vs(8, "mapping-gather-mapped"), vs(8, "mapping-loop"), vs(8, "pread")
    text = (f"With the file in the page cache, a vectorised gather of 8 B records through a "
            f"mapping was {_vs(g8, 'a buffered seek+read loop')}")
    if g8m is not None:
        text += f" ({_ratio_words(g8m)} once its pages were mapped)"
    if l8 is not None and l8.call == "faster":
        text += f", and even a Python loop of a[i] was {_vs(l8, 'it')}"
    elif l8 is not None:
        text += f", and a Python loop of a[i] was {_vs(l8, 'it')}"
    if g8.call == "faster":
        text += ": a mapped read is a memory access, not a system call"
    text += f" (os.pread was {_vs(p8, 'buffered')})." if p8 is not None else "."
    nm = vs(8, "numpy-memmap-loop", "mapping-loop")
    if nm is not None:
        text += f" numpy.memmap's own loop of m[i] was {_vs(nm, 'that loop')}"
        if nm.call == "slower":
            text += (": numpy.memmap runs a Python __getitem__ for every element; "
                     "MappedFile.array's view has none")
        text += "."
    g4, l4 = vs(4096, "mapping-gather"), vs(4096, "mapping-loop")
    if g4 is not None:
        shrinks = g4.ratio < g8.ratio
        text += (f" {'The lead shrinks as records grow: for' if shrinks else 'For'} 4 KiB "
                 f"records the gather was {_vs(g4, 'buffered')} and the loop "
                 f"{_vs(l4, 'buffered')}.")
    return text


def _warm_loop_vs_gather(r: Report) -> str | None:
    """Why a loop of a[i] can beat the gather of 4 KiB rows: not the same work."""
    loop = r.compare("random", "warm", 4096, "mapping-loop", "mapping-gather")
    gather = r.find("random", "warm", 4096, "mapping-gather")
    if loop is None or gather is None or loop.call != "faster":
        return None
    kept = format_size(gather.count * 4096)
    work = (f"the gather keeps every row, writing {gather.count:,} rows ({kept}) into one new "
            "array, while the loop copies each row into a small scalar and drops it at once, "
            "as the buffered and os.pread loops drop theirs")
    batches = r.compare("random", "warm", 4096, "mapping-gather-batches", "mapping-gather")
    batch_vs_loop = r.compare("random", "warm", 4096, "mapping-gather-batches",
                              "mapping-loop")
    what = f"gathering {BATCH} rows ({format_size(BATCH * 4096)}) at a time"
    if batches is not None and batches.call == "faster":
        return (f"The loop beat the gather of 4 KiB rows ({_ratio_words(loop)}) because they "
                f"do not do the same work: {work}, so its copies stay in the CPU's cache. "
                f"{what[0].upper()}{what[1:]} instead, each batch dropped like the loop's rows, "
                f"was "
                f"{_vs(batches, 'the whole gather')} and {_vs(batch_vs_loop, 'the loop')}.")
    text = f"The loop beat the gather of 4 KiB rows ({_ratio_words(loop)}): {work}"
    if batches is None:
        return text + "."
    return (text + f"; but {what} did not close the gap here "
            f"({_vs(batches, 'the whole gather')}).")


def _warm_take(r: Report) -> str | None:
    """take against the gather on the same warm pages: the price of its checks."""
    found = [(rec, r.compare("random", "warm", rec, "mmarray-take", "mapping-gather"))
             for rec in RECORD_SIZES]
    found = [(rec, x) for rec, x in found if x is not None]
    if not found:
        return None
    each = [f"{_ratio_words(x)} for {format_size(rec)}" for rec, x in found]
    listed = each[0] if len(each) == 1 else ", ".join(each[:-1]) + " and " + each[-1]
    text = (f"On cached pages, mmarray.take, against the gather a[idx] it replaces, was "
            f"{listed} records")
    if not any(x.call == "slower" and x.ratio < 1 / WARM_TAKE_GOAL for _, x in found):
        return text + ": when a few sampled pages are resident it asks the kernel for nothing."
    return (text + f", more than the {WARM_TAKE_GOAL}x its residency check is meant to "
            "cost at most.")


def _warm_sequential(r: Report) -> str | None:
    seq = r.find("sequential", "warm", None, "mapping-sum")
    base = r.find("sequential", "warm", None, "readinto")
    if seq is None or base is None:
        return None
    versus = seq.compare(base)
    text = (f"A sequential sum of the whole file through a mapping ran at {seq.gb_per_s:.1f} "
            f"GB/s, {_vs(versus, 'readinto of 1 MiB chunks')}")
    ram = r.find("sequential", "warm", None, "in-ram")
    if ram is not None:
        in_ram = seq.compare(ram)
        if in_ram.call == "slower":
            text += (f", and at {seq.gb_per_s / ram.gb_per_s:.0%} of the speed of summing an "
                     f"ndarray already in RAM ({ram.gb_per_s:.1f} GB/s)")
        elif in_ram.call == "level":
            text += (f", and level with summing an ndarray already in RAM "
                     f"({ram.gb_per_s:.1f} GB/s)")
        else:
            text += (f", and {_vs(in_ram, 'summing an ndarray already in RAM')} "
                     f"({ram.gb_per_s:.1f} GB/s): that row is a reference, not a bound, as "
                     "both sums read the same bytes from memory, the mapping from the page "
                     "cache's pages and the array from its own")
    text += "."
    if versus.call == "faster":
        text += (" So with the file cached, the rule of thumb that buffered streams win "
                 "sequential reads does not hold here: a mapping was faster, and needs no "
                 "buffer management.")
    elif versus.call == "level":
        text += (" So with the file cached, a mapping streams as fast as buffered reads, "
                 "and needs no buffer management.")
    else:
        text += f" Here buffered reads won the sequential scan, by {_num(1 / versus.ratio)}x."
    return text


def _cold_take(r: Report) -> str | None:
    """take against os.pread and a plain mapping's gather from a cold cache, and the
    pages it read."""
    clauses = []
    explained = False
    for rec in RECORD_SIZES[::-1]:
        take = r.find("random", "cold", rec, "mmarray-take")
        if take is None:
            continue
        vs_pread = r.compare("random", "cold", rec, "mmarray-take", "pread")
        vs_gather = r.compare("random", "cold", rec, "mmarray-take", "mapping-gather")
        gather = r.find("random", "cold", rec, "mapping-gather")
        if not clauses:
            explained = vs_pread is not None and vs_pread.call == "faster"
            clause = (f"random {format_size(rec)} rows {_vs(vs_pread, 'os.pread')} and "
                      f"{_vs(vs_gather, PLAIN_GATHER)}")
            if take.pages_per_read is not None:
                clause += f", reading about {_page_count(take.pages_per_read)} per row"
                if gather is not None and gather.pages_per_read is not None:
                    clause += f" (the plain mapping: {_page_count(gather.pages_per_read)}"
                    if gather.cached_after is not None and gather.cached_after > READAHEAD_SHOWN:
                        clause += (f", as readahead pulled in {_share(gather.cached_after)} "
                                   "of the file")
                    clause += ")"
        else:
            clause = f"{format_size(rec)} records {_pair(vs_pread, vs_gather)}"
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
    if not explained:
        return text + "."
    return text + (": it asks the kernel for every page of a batch at once, so the device "
                   "serves them in parallel instead of one page fault at a time.")


def _share(fraction: float) -> str:
    """``0.994`` -> ``"99%"``, ``0.004`` -> ``"0.4%"`` (not "0%")."""
    return f"{fraction:.1%}" if 0 < fraction < 0.01 else f"{fraction:.0%}"


def _page_count(k: float) -> str:
    text = _pages(k)
    return f"{text} page" if text == "1.0" else f"{text} pages"


def _pair(a: Comparison | None, b: Comparison | None) -> str:
    """``"7.0x and 8.0x faster"``, or each in words when they differ in kind."""
    if a is not None and b is not None and a.call == b.call == "faster":
        return f"{_num(a.ratio)}x and {_num(b.ratio)}x faster"
    return f"{_ratio_words(a)} and {_ratio_words(b)}"


def _cold_gather(r: Report) -> str | None:
    cg = r.find("random", "cold", 8, "mapping-gather")
    cr = r.find("random", "cold", 8, "mmarray-gather-random")
    base = r.find("random", "cold", 8, "buffered")
    if cg is None or cr is None or base is None:
        return None
    text = (
        f"Through a plain mapping (as numpy.memmap maps), cold random 8 B reads were "
        f"{_vs(cg.compare(base), 'buffered')} without a hint and "
        f"{_vs(cr.compare(base), 'buffered')} with mmarray's advise(\"random\")"
    )
    if cg.cached_after is not None and cr.cached_after is not None:
        text += (
            f"; without the hint, readahead pulled {_share(cg.cached_after)} of the file "
            f"into memory, with it {_share(cr.cached_after)}"
        )
    return text + "."


def _cold_sequential(r: Report) -> str | None:
    cs = r.find("sequential", "cold", None, "mapping-sum")
    cq = r.find("sequential", "cold", None, "mmarray-sum-sequential")
    base = r.find("sequential", "cold", None, "readinto")
    if cs is None or cq is None or base is None:
        return None
    return (
        f"A cold sequential sum through a mapping was {_vs(cs.compare(base), 'readinto')} "
        f"without a hint and {_vs(cq.compare(base), 'readinto')} with "
        f"advise(\"sequential\") ({cs.gb_per_s:.2f} and {cq.gb_per_s:.2f} GB/s against "
        f"{base.gb_per_s:.2f})."
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
    level: Sequence[bool] | None = None,
) -> None:
    """Save a horizontal bar chart of ratios (log scale, a line at 1) as PNG.

    Bars on the good side of 1 are green, the others orange, and those
    within 5% of 1 grey, or, when ``level`` is given, those it marks.
    Shared by ``mmarray bench --plot`` and ``asv_bench/plot_results.py``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(values)
    longest = max((len(label) for label in labels), default=10)
    fig, ax = plt.subplots(figsize=(5 + 0.06 * longest, 1.2 + 0.3 * max(n, 1)))
    try:
        grey = level if level is not None else [0.95 <= v <= 1.05 for v in values]
        colors = [
            "#9e9e9e" if g else "#2a9d8f" if (v > 1) == higher_is_better else "#e76f51"
            for v, g in zip(values, grey, strict=True)
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
        xlabel="speed-up vs buffered reads (median time(buffered) / median time(method); "
               "> 1 is faster; grey: the ranges of run times overlap)",
        higher_is_better=True,
        level=[m.call == "level" for m in rows],
    )


