"""``mmarray bench``: its command line, report structure and clean-up.

Tiny files and plans keep these fast; no test checks a timing.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pathlib

import pytest

from mmarray import _bench
from mmarray._bench import Measurement, Plan, Report, runner
from mmarray._bench import report as bench_report

TINY = Plan(reads=200, cold_reads=20, repeat=1, scan_repeat=1, cold_repeat=1)
SIZE = 1 << 20
SECTIONS = {
    ("random", "warm", 8), ("random", "warm", 64), ("random", "warm", 4096),
    ("sequential", "warm", None),
}


@pytest.fixture(autouse=True)
def tiny_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick`` and the default plan both become tiny in these tests, and
    so does the cold random reads' file."""
    monkeypatch.setattr(runner, "QUICK_PLAN", TINY)
    monkeypatch.setattr(runner, "FULL_PLAN", TINY)
    monkeypatch.setattr(runner, "QUICK_COLD_SIZE", SIZE)
    monkeypatch.setattr(runner, "DEFAULT_COLD_SIZE", SIZE)


def scratch_files(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("mmarray-bench-"))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmarray")
    _bench.add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


# -- sizes and arguments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64K", 64 << 10), ("64M", 64 << 20), ("1g", 1 << 30), ("1.5G", 3 << 29),
     ("256MiB", 256 << 20), ("512kb", 512 << 10), (" 2 M ", 2 << 20)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert _bench.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-1M", "1X", "ten", "1e6"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size must be"):
        _bench.parse_size(text)


def test_parser_options() -> None:
    args = parse("--size", "1M", "--cold-size", "2M", "--quick", "--json", "--plot", "x.png",
                 "--dir", "/tmp")
    assert (args.size, args.cold_size, args.quick, args.json, args.plot, args.directory) == (
        1 << 20, 2 << 20, True, True, "x.png", "/tmp"
    )
    assert args.func is _bench.main
    defaults = parse()
    assert (defaults.size, defaults.cold_size, defaults.quick, defaults.json, defaults.plot) == (
        None, None, False, False, None
    )


@pytest.mark.parametrize("option", ["--size", "--cold-size"])
@pytest.mark.parametrize("size", ["12Q", "1K", "-1G"])
def test_bad_size_is_one_line_usage_error(
    option: str, size: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(f"{option}={size}")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: size must" in err and "Traceback" not in err


@pytest.mark.parametrize("keyword", ["size", "cold_size"])
def test_run_bench_rejects_small_sizes(keyword: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"must be at least 65536 bytes \(got 4096\)"):
        _bench.run_bench(**{keyword: 4096}, directory=tmp_path, progress=False)
    assert scratch_files(tmp_path) == []


# -- running ------------------------------------------------------------------------------


def test_run_bench_report(tmp_path: pathlib.Path) -> None:
    report = _bench.run_bench(size=SIZE, cold_size=2 * SIZE, directory=tmp_path, progress=False)
    assert scratch_files(tmp_path) == []
    sections = {m.section for m in report.measurements}
    assert sections >= SECTIONS
    for record in (8, 64, 4096):
        assert report.find("random", "warm", record, "mmarray-take") is not None
    assert report.info["cold_file"] == {"size": 2 * SIZE}
    if report.cold_reason is None:
        assert report.cold_random_reason is None
        assert ("random", "cold", 8) in sections and ("sequential", "cold", None) in sections
        cold = [m for m in report.measurements if m.cache == "cold"]
        assert all(m.cached_after is None or 0 <= m.cached_after <= 1 for m in cold)
        for record in (8, 64, 4096):
            for method in ("mmarray-take", "numpy-memmap", "pread", "mmarray-gather"):
                m = report.find("random", "cold", record, method)
                assert m is not None
                # At most every page of the file, spread over the reads asked for.
                assert m.pages_per_read is None or (
                    0 <= m.pages_per_read <= 2 * SIZE / 4096 / m.count)
        assert report.find("sequential", "cold", None, "mmarray-sum").pages_per_read is None
    else:
        assert not any(m.cache == "cold" for m in report.measurements)
    assert all(m.pages_per_read is None for m in report.measurements if m.cache == "warm")
    for section in sections:
        rows = [m for m in report.measurements if m.section == section]
        (base,) = [m for m in rows if m.baseline]
        assert base.speedup == pytest.approx(1.0)
        assert all(m.seconds > 0 and m.speedup > 0 for m in rows)
    assert report.info["file"]["size"] == SIZE
    assert report.info["plan"] == {"reads": 200, "cold_reads": 20, "repeat": 1,
                                   "scan_repeat": 1, "cold_repeat": 1}


def test_main_prints_table(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path))) == 0
    out, err = capsys.readouterr()
    assert "vs buffered" in out and "baseline" in out and "\nVerdict: " in out
    for label in ("buffered: f.seek + f.read loop", "os.pread loop",
                  "mmarray: gather a[idx] (new mapping)",
                  "mmarray: take(a, idx, axis=0) (new mapping)",
                  "buffered: readinto 1 MiB chunks"):
        assert label in out
    assert "Random reads of 8 B records, warm cache" in out
    assert "Sequential sum of the whole file (1 MiB), warm cache" in out
    assert "On cached pages, mmarray.take, against the gather" in out.replace("\n", " ")
    if "Cold cache not measured" not in out:
        for label in ("mmarray: take(a, idx, axis=0)  ", "numpy.memmap: gather m[idx]"):
            assert label in out
        assert "reads at random offsets per run of a 1 MiB file); file dropped" in out
        assert "pages/read" in out
        assert "mmarray.take read random 4 KiB rows" in out.replace("\n", " ")
    assert "[1/" in err  # progress went to stderr
    assert scratch_files(tmp_path) == []


def test_table_columns_align(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    _bench.main(parse("--size", "1M", "--dir", str(tmp_path)))
    out = capsys.readouterr().out
    blocks = [out.split("warm cache (200 reads at random offsets per run)\n")[1]]
    if "per run of a 1 MiB file); file dropped" in out:
        blocks.append(out.split("file dropped from the page cache before each run\n")[1])
    for block in blocks:
        rows = block.split("\n\n")[0].splitlines()
        starts = {row.index("baseline") for row in rows if "baseline" in row}
        ratio_col = rows[0].index("vs buffered")
        assert starts == {ratio_col}
        assert all(row[ratio_col - 2 : ratio_col] == "  " for row in rows[1:])
        if "pages/read" in rows[0]:
            end = rows[0].index("pages/read") + len("pages/read")
            assert all(len(row) == end for row in rows[1:])  # right-aligned under it


def test_main_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    assert _bench.main(parse("--quick", "--size", "1M", "--json", "--dir", str(tmp_path))) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"date", "mmarray", "python", "numpy", "platform", "file", "cold_file", "plan",
            "cold_cache", "results", "verdict"} <= data.keys()
    assert set(data["cold_cache"]) == {"measured", "reason", "random_reads"}
    assert set(data["cold_cache"]["random_reads"]) == {"measured", "reason", "file_size"}
    assert data["cold_cache"]["random_reads"]["file_size"] == SIZE  # QUICK_COLD_SIZE here
    assert data["verdict"]
    for row in data["results"]:
        assert row["test"] in ("random", "sequential") and row["cache"] in ("warm", "cold")
        assert row["seconds"] > 0 and row["speedup"] > 0
        assert math.isclose(row["time_ratio"] * row["speedup"], 1.0)
        assert ("seconds_per_read" in row) == (row["test"] == "random")
        assert ("gb_per_s" in row) == (row["test"] == "sequential")
        assert "pages_per_read" in row
    methods = {(row["cache"], row["record"], row["method"]) for row in data["results"]}
    assert ("warm", 4096, "mmarray-take") in methods
    if data["cold_cache"]["random_reads"]["measured"]:
        for record in (8, 64, 4096):
            assert {("cold", record, "mmarray-take"), ("cold", record, "numpy-memmap")} <= methods
        take = next(row for row in data["results"] if row["cache"] == "cold"
                    and row["record"] == 4096 and row["method"] == "mmarray-take")
        assert take["pages_per_read"] is None or take["pages_per_read"] >= 0
    assert scratch_files(tmp_path) == []


def test_cold_file_that_does_not_fit_is_skipped_with_its_reason(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    assert _bench.main(parse("--size", "1M", "--cold-size", "100T", "--dir", str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert not any(f"{n} records, cold cache" in out for n in ("8 B", "64 B", "4 KiB"))
    flat = " ".join(out.split())
    if "Cold cache not measured" in out:  # e.g. a temp dir on tmpfs: nothing cold at all
        return
    reason = f"the 100 TiB file for them does not fit in {tmp_path} ("
    assert f"Cold random reads not measured: {reason}" in out
    assert "use --cold-size or --dir" in out
    assert f"Cold random reads were not measured: {reason}" in flat  # the verdict says so too
    assert "Sequential sum of the whole file (1 MiB), cold cache" in out  # the rest still runs
    assert scratch_files(tmp_path) == []


def test_interrupt_removes_scratch_files(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[str] = []

    def interrupted(self, section, w, *args, **kwargs):
        seen.append(w.path)
        assert os.path.exists(w.path)  # the file exists while measuring
        raise KeyboardInterrupt

    monkeypatch.setattr(runner._Bench, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _bench.run_bench(size=SIZE, directory=tmp_path, progress=False)
    assert seen and not os.path.exists(seen[0])
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path))) == 130
    assert "interrupted" in capsys.readouterr().err
    assert scratch_files(tmp_path) == []


@pytest.mark.parametrize("which", [1, 2])
def test_interrupt_while_writing_removes_scratch_files(
    which: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while writing the main file (1) or the cold file (2)."""
    calls: list[str] = []
    write = runner._Bench.write_file

    def interrupted(self, path, size):
        calls.append(path)
        if len(calls) < which:
            return write(self, path, size)
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner._Bench, "write_file", interrupted)
    if which == 2:  # the cold file is written only where a cold cache can be staged
        monkeypatch.setattr(runner, "cold_cache_reason", lambda path: None)
    with pytest.raises(KeyboardInterrupt):
        _bench.run_bench(size=SIZE, directory=tmp_path, progress=False)
    assert len(calls) == which
    assert scratch_files(tmp_path) == []


def test_missing_directory_is_one_line_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path / "nope"))) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmarray bench: error:") and "\n" not in err


def test_plot_without_matplotlib(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(bench_report.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else object())
    png = tmp_path / "chart.png"
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path), "--plot", str(png))) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "matplotlib" in err
    assert not png.exists() and scratch_files(tmp_path) == []


def test_plot(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "chart.png"
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path), "--plot", str(png))) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chart saved" in capsys.readouterr().err


@pytest.mark.skipif(_bench.filesystem_type("/dev/shm") != "tmpfs", reason="no tmpfs /dev/shm")
def test_tmpfs_has_no_cold_cache(tmp_path: pathlib.Path) -> None:
    folder = pathlib.Path("/dev/shm") / f"mmarray-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    try:
        report = _bench.run_bench(size=SIZE, directory=folder, progress=False)
        assert report.cold_reason is not None and "tmpfs" in report.cold_reason
        assert "Cold cache not measured" in _bench.format_table(report)
        assert scratch_files(folder) == []
    finally:
        folder.rmdir()


# -- the verdict is computed from the numbers -------------------------------------------------


def synthetic(seq_speedup: float, cold: bool, cold_random_reason: str | None = None) -> Report:
    rows = []

    def add(test, cache, record, method, speedup, baseline=False, cached=None, pages=None):
        seconds = 1.0 / speedup
        m = Measurement(test, cache, record, method, method, baseline, seconds,
                        1_000_000_000 if test == "sequential" else 1000, speedup, cached, pages)
        rows.append(m)

    for record in (8, 4096):
        add("random", "warm", record, "mmarray-gather", 150.0 if record == 8 else 3.0)
        add("random", "warm", record, "mmarray-gather-mapped", 300.0)
        add("random", "warm", record, "mmarray-take", 150.0 if record == 8 else 2.0)
        add("random", "warm", record, "mmarray-loop", 20.0 if record == 8 else 0.5)
        add("random", "warm", record, "buffered", 1.0, baseline=True)
        add("random", "warm", record, "pread", 3.0)
    add("sequential", "warm", None, "mmarray-sum", seq_speedup)
    add("sequential", "warm", None, "readinto", 1.0, baseline=True)
    add("sequential", "warm", None, "in-ram", seq_speedup * 2)
    if cold and cold_random_reason is None:
        add("random", "cold", 8, "mmarray-gather", 0.5, cached=1.0, pages=131.0)
        add("random", "cold", 8, "mmarray-gather-random", 1.2, cached=0.03, pages=1.0)
        add("random", "cold", 8, "buffered", 1.0, baseline=True, cached=0.05, pages=2.0)
        for record, take in ((64, 6.0), (4096, 5.0)):
            add("random", "cold", record, "mmarray-take", take, cached=0.03, pages=1.0)
            add("random", "cold", record, "numpy-memmap", 0.25, cached=1.0, pages=131.0)
            add("random", "cold", record, "buffered", 1.0, baseline=True, cached=0.05, pages=2.0)
            add("random", "cold", record, "pread", 1.25, cached=0.03, pages=1.0)
    info = {"virtual_machine": False, "plan": {"reads": 1000, "cold_reads": 10, "repeat": 1,
                                               "scan_repeat": 1, "cold_repeat": 1},
            "cold_file": {"size": 1 << 30}}
    return Report(info, rows, None if cold else "it is on tmpfs", cold_random_reason)


def test_verdict_follows_the_numbers() -> None:
    text = bench_report.verdict(synthetic(seq_speedup=1.3, cold=True))
    assert "150x faster than a buffered seek+read loop" in text
    assert "300x once its pages were mapped" in text
    assert "the loop 2.0x slower than buffered" in text
    assert "does not hold here" in text and "50% of the speed" in text
    assert "1.5x slower than buffered without a hint" not in text
    assert "2.0x slower than buffered without a hint" in text
    assert "readahead pulled 100% of the file" in text and "with it 3%" in text
    # take, warm: against the gather on the same pages; 4 KiB: 3.0 / 2.0 = 1.5x slower.
    assert ("On cached pages, mmarray.take, against the gather a[idx] it replaces, was "
            "level for 8 B and 1.5x slower for 4 KiB records, more than the 1.3x") in text
    # take, cold: 5.0 / 1.25 = 4x pread, 5.0 / 0.25 = 20x numpy.memmap.
    assert ("From a cold cache (1 GiB file), mmarray.take read random 4 KiB rows 4.0x faster "
            "than os.pread and 20x faster than numpy.memmap fancy indexing, reading about "
            "1.0 page per row (numpy.memmap: 131 pages, as readahead pulled in the file); "
            "for 64 B records 4.8x and 24x faster, 1.0 page per row") in text

    text = bench_report.verdict(synthetic(seq_speedup=0.5, cold=False))
    assert "buffered reads won the sequential scan, by 2.0x" in text
    assert "The cold cache was not measured: it is on tmpfs." in text
    assert "mmarray.take read" not in text

    text = bench_report.verdict(synthetic(seq_speedup=1.0, cold=True,
                                          cold_random_reason="the 1 GiB file does not fit"))
    assert "Cold random reads were not measured: the 1 GiB file does not fit." in text
    assert "mmarray.take read" not in text


def test_take_slower_cold_is_said_so() -> None:
    r = synthetic(seq_speedup=1.0, cold=True)
    for m in r.measurements:
        if m.cache == "cold" and m.method == "mmarray-take":
            m.seconds *= 10  # now 2.5x slower than os.pread
    assert "random 4 KiB rows 2.5x slower than os.pread" in bench_report.verdict(r)


def test_format_helpers() -> None:
    assert bench_report.format_time(1.6e-6) == "1.6 us"
    assert bench_report.format_time(2.5e-8) == "25 ns"
    assert bench_report.format_ratio(168.2) == "168x faster"
    assert bench_report.format_ratio(0.5) == "2.0x slower"
    assert bench_report.format_ratio(1.01).endswith("(same)")
    assert _bench.format_size(256 << 20) == "256 MiB" and _bench.format_size(4096) == "4 KiB"


def test_imports_flow_one_way() -> None:
    """No module of the bench package imports one that comes after it."""
    order = ["units", "cache", "workloads", "results", "runner", "report", "cli"]
    folder = pathlib.Path(_bench.__file__).parent
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted([*order, "__init__"])
    for i, name in enumerate(order):
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        used = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert used <= set(order[:i]), (name, used - set(order[:i]))
