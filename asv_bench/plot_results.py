"""Turn asv results into a PNG bar chart of mmarray's ratios.

asv's published dashboard loads its scripts from CDNs, so it does not render
on an offline machine; this draws the tracked ratios of one recorded run
(the ``track_*`` benchmarks whose unit is ``time(a)/time(b)``) as a static
picture instead.  By default it shows the I/O comparisons (mmarray against
buffered reads, ``readinto`` and an in-RAM array) as speed-ups, so that bars
right of 1 mean mmarray was faster.  The ratios of ``processes.py``
(concurrent appends against a queue, ``concurrent=True`` against a plain
writer, ``refresh()`` against ``os.pread``, reserved against sparse
storage) get a second panel below, drawn the same way::

    python asv_bench/plot_results.py -o docs/_static/bench-ratios.png
    python asv_bench/plot_results.py --all --as-recorded -o ratios.png

Needs matplotlib and mmarray (a single panel is drawn by
``mmarray._bench``, the same code as ``mmarray bench --plot``; two
panels by :func:`panel_chart` here, in the same style).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import itertools
import json
import math
import pathlib
import sys
import textwrap

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / ".asv" / "results"
#: Baselines of the I/O comparisons (words in a tracked ratio's unit).
IO_BASELINES = ("buffered", "readinto", "in-RAM")
#: Modules whose ratios get a panel of their own, with the panel's title.
PANELS = {
    "take": "mmarray.take: batched random reads, cold and warm (take.py)",
    "processes": "Several processes, refresh() and reserved storage (processes.py)",
}


def _load(path: pathlib.Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_run(results: pathlib.Path, machine: str | None, commit: str | None) -> pathlib.Path:
    """The result file to plot: the newest one, or the given machine's/commit's."""
    machines = [d for d in results.iterdir() if d.is_dir()] if results.is_dir() else []
    if machine is not None:
        machines = [d for d in machines if d.name == machine]
    runs = [
        f for d in machines for f in d.glob("*.json")
        if f.name != "machine.json" and (commit is None or f.name.startswith(commit[:8]))
    ]
    if not runs:
        what = f"machine {machine!r} " if machine else ""
        what += f"commit {commit!r} " if commit else ""
        raise FileNotFoundError(f"no asv results {what}in {results} (run asv first)")
    return max(runs, key=lambda f: _load(f).get("date", 0))


def _param_label(names: list[str], values: tuple[str, ...]) -> str:
    parts = []
    for name, value in zip(names, values, strict=True):
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(value)
        if name == "record_bytes":
            parts.append(f"{value} B")
        elif name == "advice":
            parts.append("no hint" if value == "none" else f'advise("{value}")')
        elif name == "batch_rows":
            parts.append(f"batch {value}")
        else:
            parts.append(str(value))
    return ", ".join(parts)


def tracked_ratios(
    run: dict, meta: dict, everything: bool, panel: str | None = None
) -> list[tuple[str, float, str]]:
    """``(label, time ratio, unit)`` for every tracked ratio in ``run``: of
    the modules without a panel of their own (``panel=None``; only the I/O
    comparisons unless ``everything``), or all of module ``panel``."""
    columns = run["result_columns"]
    out = []
    for name in sorted(run["results"]):
        info = meta.get(name, {})
        unit = info.get("unit", "")
        if info.get("type") != "track" or not (unit.startswith("time(") and "/time(" in unit):
            continue
        module = name.split(".")[0]
        if panel is None:
            io = any(b in unit.split("/")[1] for b in IO_BASELINES)
            if module in PANELS or not (everything or io):
                continue
        elif module != panel:
            continue
        row = dict(zip(columns, run["results"][name], strict=False))
        values = row["result"] if isinstance(row["result"], list) else [row["result"]]
        params = row.get("params") or []
        combos = list(itertools.product(*params)) if params else [()]
        title = info.get("pretty_name") or name
        title = title.removeprefix("Ratio, ")
        for combo, value in zip(combos, values, strict=False):
            if value is None or not math.isfinite(value) or value <= 0:
                continue  # failed or skipped
            label = title + (f" [{_param_label(info['param_names'], combo)}]" if combo else "")
            out.append((label, float(value), unit))
    return out


def _scalar(run: dict, name: str) -> float | None:
    """The value of a parameterless benchmark in ``run``, if recorded."""
    if name not in run["results"]:
        return None
    result = dict(zip(run["result_columns"], run["results"][name], strict=False))["result"]
    value = result[0] if isinstance(result, list) else result
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def panel_chart(
    panels: list[tuple[str, list[str], list[float], str]],
    path: str | pathlib.Path,
    *,
    title: str,
    higher_is_better: bool,
) -> None:
    """Save stacked horizontal bar charts of ratios, one panel per
    ``(panel title, labels, values, x label)``, as PNG.

    Each panel is drawn as ``mmarray._bench.bar_chart`` draws its
    one: log scale, a line at 1, bars on the good side of 1 green, the
    others orange, those within 5% of 1 grey; each panel has its own range.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    longest = max((len(label) for _, labels, _, _ in panels for label in labels), default=10)
    heights = [0.3 * max(len(values), 1) + 1.0 for _, _, values, _ in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(5 + 0.06 * longest, 0.4 + sum(heights)),
        gridspec_kw={"height_ratios": heights}, squeeze=False,
        layout="constrained",  # (room for the suptitle above the panels' titles)
    )
    try:
        for ax, (name, labels, values, xlabel) in zip(axes[:, 0], panels, strict=True):
            n = len(values)
            colors = [
                "#9e9e9e" if 0.95 <= v <= 1.05 else "#2a9d8f" if (v > 1) == higher_is_better
                else "#e76f51"
                for v in values
            ]
            ys = list(range(n))[::-1]
            ax.barh(ys, values, color=colors, left=0)
            ax.set_xscale("log")
            ax.axvline(1.0, color="black", linewidth=0.8)
            ax.set_yticks(ys, labels, fontsize=8)
            ax.set_xlabel(textwrap.fill(xlabel, 70), fontsize=9)
            ax.set_title(name, fontsize=9, fontweight="bold")
            for y, v in zip(ys, values, strict=True):
                ax.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
            lo, hi = min([*values, 1.0]), max([*values, 1.0])
            ax.set_xlim(lo / 2, hi * 3)
            if hi * 3 / (lo / 2) < 100:
                # Less than two decades: label 0.2, 0.5, 1, 2, 5 rather than
                # matplotlib's crowded minor ticks.
                ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.grid(axis="x", which="major", alpha=0.3)
        fig.suptitle(textwrap.fill(title, 110), fontsize=10)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png")
    parser.add_argument("--results", type=pathlib.Path, default=DEFAULT_RESULTS,
                        help=f"asv's results folder (default {DEFAULT_RESULTS})")
    parser.add_argument("--machine", help="machine name (default: the newest run's)")
    parser.add_argument("--commit", help="commit hash or prefix (default: the newest run)")
    parser.add_argument("--all", action="store_true",
                        help="also plot ratios against ndarray, numpy.memmap, np.load, ...")
    parser.add_argument("--as-recorded", action="store_true",
                        help="plot time(mmarray)/time(baseline) as asv records it "
                             "(lower is better) instead of speed-ups")
    args = parser.parse_args(argv)
    try:
        from mmarray._bench import bar_chart, matplotlib_missing
    except ImportError as exc:
        print(f"plot_results: error: needs mmarray importable ({exc})", file=sys.stderr)
        return 1
    missing = matplotlib_missing()
    if missing:
        print(f"plot_results: error: {missing.removeprefix('--plot ')}", file=sys.stderr)
        return 1
    try:
        path = find_run(args.results, args.machine, args.commit)
        run = _load(path)
        meta = _load(args.results / "benchmarks.json")
    except (OSError, ValueError) as exc:
        print(f"plot_results: error: {exc}", file=sys.stderr)
        return 1
    if args.as_recorded:
        xlabel = "time(mmarray) / time(baseline), as asv records it: left of 1 = mmarray faster"
        # In the other panels both sides may be mmarray: the label's "a / b" names them.
        panel_xlabel = ('time(a) / time(b) for labels "a / b", as asv records it: '
                        "left of 1 = a faster")
    else:
        xlabel = "speed-up = time(baseline) / time(mmarray): right of 1 = mmarray faster"
        panel_xlabel = 'speed-up = time(b) / time(a) for labels "a / b": right of 1 = a faster'
    first = "mmarray against the alternatives" if args.all else (
        "I/O: mmarray against buffered I/O, readinto and an in-RAM array")
    groups = [(first, tracked_ratios(run, meta, args.all), xlabel)]
    groups += [(heading, tracked_ratios(run, meta, args.all, panel=module), panel_xlabel)
               for module, heading in PANELS.items()]
    panels = [
        (heading, [label for label, _, _ in rows],
         [v if args.as_recorded else 1 / v for _, v, _ in rows], axis_label)
        for heading, rows, axis_label in groups if rows
    ]
    if not panels:
        print(f"plot_results: error: no tracked ratios in {path}", file=sys.stderr)
        return 1
    size = _scalar(run, "sequential.track_data_file_mib")
    when = datetime.datetime.fromtimestamp(run["date"] / 1000, datetime.timezone.utc)
    p = run.get("params", {})
    title = (f"mmarray asv, {p.get('machine', '?')} ({p.get('cpu', '?')}, "
             f"{p.get('num_cpu', '?')} CPUs), commit {run['commit_hash'][:8]}, "
             f"{when:%Y-%m-%d}" + (f", {size:.0f} MiB data file" if size else ""))
    if len(panels) == 1:
        _, labels, values, xlabel = panels[0]
        bar_chart(labels, values, args.output, title=title, xlabel=xlabel,
                  higher_is_better=not args.as_recorded)
    else:
        panel_chart(panels, args.output, title=title, higher_is_better=not args.as_recorded)
    count = sum(len(values) for _, _, values, _ in panels)
    print(f"plot_results: {count} ratios from {path.name} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
