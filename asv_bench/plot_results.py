"""Turn asv results into a PNG bar chart of mmarray's ratios.

asv's published dashboard loads its scripts from CDNs, so it does not render
on an offline machine; this draws the tracked ratios of one recorded run
(the ``track_*`` benchmarks whose unit is ``time(a)/time(b)``) as a static
picture instead.  By default it shows the I/O comparisons (mmarray against
buffered reads, ``readinto`` and an in-RAM array) as speed-ups, so that bars
right of 1 mean mmarray was faster::

    python asv_bench/plot_results.py -o docs/_static/bench-ratios.png
    python asv_bench/plot_results.py --all --as-recorded -o ratios.png

Needs matplotlib and mmarray (the chart is drawn by ``mmarray._bench_report``, the
same code as ``mmarray bench --plot``).
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

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / ".asv" / "results"
#: Baselines of the I/O comparisons (words in a tracked ratio's unit).
IO_BASELINES = ("buffered", "readinto", "in-RAM")


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
        else:
            parts.append(str(value))
    return ", ".join(parts)


def tracked_ratios(run: dict, meta: dict, everything: bool) -> list[tuple[str, float, str]]:
    """``(label, time ratio, unit)`` for every tracked ratio in ``run``."""
    columns = run["result_columns"]
    out = []
    for name in sorted(run["results"]):
        info = meta.get(name, {})
        unit = info.get("unit", "")
        if info.get("type") != "track" or not (unit.startswith("time(") and "/time(" in unit):
            continue
        if not everything and not any(b in unit.split("/")[1] for b in IO_BASELINES):
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
        from mmarray._bench_report import bar_chart, matplotlib_missing
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
    rows = tracked_ratios(run, meta, args.all)
    if not rows:
        print(f"plot_results: error: no tracked ratios in {path}", file=sys.stderr)
        return 1
    size = _scalar(run, "sequential.track_data_file_mib")
    when = datetime.datetime.fromtimestamp(run["date"] / 1000, datetime.timezone.utc)
    p = run.get("params", {})
    title = (f"mmarray asv, {p.get('machine', '?')} ({p.get('cpu', '?')}, "
             f"{p.get('num_cpu', '?')} CPUs), commit {run['commit_hash'][:8]}, "
             f"{when:%Y-%m-%d}" + (f", {size:.0f} MiB data file" if size else ""))
    labels = [label for label, _, _ in rows]
    if args.as_recorded:
        values = [v for _, v, _ in rows]
        xlabel = "time(mmarray) / time(baseline), as asv records it: left of 1 = mmarray faster"
    else:
        values = [1 / v for _, v, _ in rows]
        xlabel = "speed-up = time(baseline) / time(mmarray): right of 1 = mmarray faster"
    bar_chart(labels, values, args.output, title=title, xlabel=xlabel,
              higher_is_better=not args.as_recorded)
    print(f"plot_results: {len(rows)} ratios from {path.name} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
