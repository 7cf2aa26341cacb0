"""``mmarray bench``: its command line, report structure and clean-up.

Tiny files and plans keep these fast; no test checks a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib

import pytest

from mmarray import _bench, _bench_report
from mmarray._bench import Measurement, Plan, Report

TINY = Plan(reads=200, cold_reads=20, repeat=1, scan_repeat=1, cold_repeat=1)
SIZE = 1 << 20
SECTIONS = {
    ("random", "warm", 8), ("random", "warm", 64), ("random", "warm", 4096),
    ("sequential", "warm", None),
}


@pytest.fixture(autouse=True)
def tiny_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick`` and the default plan both become tiny in these tests."""
    monkeypatch.setattr(_bench, "QUICK_PLAN", TINY)
    monkeypatch.setattr(_bench, "FULL_PLAN", TINY)


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
    args = parse("--size", "1M", "--quick", "--json", "--plot", "x.png", "--dir", "/tmp")
    assert (args.size, args.quick, args.json, args.plot, args.directory) == (
        1 << 20, True, True, "x.png", "/tmp"
    )
    assert args.func is _bench.main
    defaults = parse()
    assert (defaults.size, defaults.quick, defaults.json, defaults.plot) == (
        None, False, False, None
    )


@pytest.mark.parametrize("size", ["12Q", "1K"])
def test_bad_size_is_one_line_usage_error(size: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--size", size)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--size" in err and "Traceback" not in err


# -- running ------------------------------------------------------------------------------


def test_run_bench_report(tmp_path: pathlib.Path) -> None:
    report = _bench.run_bench(size=SIZE, directory=tmp_path, progress=False)
    assert scratch_files(tmp_path) == []
    sections = {m.section for m in report.measurements}
    assert sections >= SECTIONS
    if report.cold_reason is None:
        assert ("random", "cold", 8) in sections and ("sequential", "cold", None) in sections
        cold = [m for m in report.measurements if m.cache == "cold"]
        assert all(m.cached_after is None or 0 <= m.cached_after <= 1 for m in cold)
    else:
        assert not any(m.cache == "cold" for m in report.measurements)
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
                  "mmarray: gather a[idx] (new mapping)", "buffered: readinto 1 MiB chunks"):
        assert label in out
    assert "Random reads of 8 B records, warm cache" in out
    assert "Sequential sum of the whole file (1 MiB), warm cache" in out
    assert "[1/" in err  # progress went to stderr
    assert scratch_files(tmp_path) == []


def test_table_columns_align(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    _bench.main(parse("--size", "1M", "--dir", str(tmp_path)))
    out = capsys.readouterr().out
    block = out.split("warm cache (200 reads at random offsets per run)\n")[1].split("\n\n")[0]
    rows = block.splitlines()
    starts = {row.index("baseline") for row in rows if "baseline" in row}
    ratio_col = rows[0].index("vs buffered")
    assert starts == {ratio_col}
    assert all(row[ratio_col - 2 : ratio_col] == "  " for row in rows[1:])


def test_main_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    assert _bench.main(parse("--quick", "--size", "1M", "--json", "--dir", str(tmp_path))) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"date", "mmarray", "python", "numpy", "platform", "file", "plan", "cold_cache",
            "results", "verdict"} <= data.keys()
    assert set(data["cold_cache"]) == {"measured", "reason"}
    assert data["verdict"]
    for row in data["results"]:
        assert row["test"] in ("random", "sequential") and row["cache"] in ("warm", "cold")
        assert row["seconds"] > 0 and row["speedup"] > 0
        assert math.isclose(row["time_ratio"] * row["speedup"], 1.0)
        assert ("seconds_per_read" in row) == (row["test"] == "random")
        assert ("gb_per_s" in row) == (row["test"] == "sequential")
    assert scratch_files(tmp_path) == []


def test_interrupt_removes_scratch_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[str] = []

    def interrupted(self, *args, **kwargs):
        seen.append(self.path)
        assert os.path.exists(self.path)  # the file exists while measuring
        raise KeyboardInterrupt

    monkeypatch.setattr(_bench._Bench, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _bench.run_bench(size=SIZE, directory=tmp_path, progress=False)
    assert seen and not os.path.exists(seen[0])
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path))) == 130
    assert "interrupted" in capsys.readouterr().err
    assert scratch_files(tmp_path) == []


def test_interrupt_while_writing_removes_scratch_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self):
        with open(self.path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_bench._Bench, "write_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _bench.run_bench(size=SIZE, directory=tmp_path, progress=False)
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
    monkeypatch.setattr(_bench_report.importlib.util, "find_spec",
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
        assert "Cold cache not measured" in report.table()
        assert scratch_files(folder) == []
    finally:
        folder.rmdir()


# -- the verdict is computed from the numbers -------------------------------------------------


def synthetic(seq_speedup: float, cold: bool) -> Report:
    rows = []

    def add(test, cache, record, method, speedup, baseline=False, cached=None):
        seconds = 1.0 / speedup
        m = Measurement(test, cache, record, method, method, baseline, seconds,
                        1_000_000_000 if test == "sequential" else 1000, speedup, cached)
        rows.append(m)

    for record in (8, 4096):
        add("random", "warm", record, "mmarray-gather", 150.0 if record == 8 else 3.0)
        add("random", "warm", record, "mmarray-gather-mapped", 300.0)
        add("random", "warm", record, "mmarray-loop", 20.0 if record == 8 else 0.5)
        add("random", "warm", record, "buffered", 1.0, baseline=True)
        add("random", "warm", record, "pread", 3.0)
    add("sequential", "warm", None, "mmarray-sum", seq_speedup)
    add("sequential", "warm", None, "readinto", 1.0, baseline=True)
    add("sequential", "warm", None, "in-ram", seq_speedup * 2)
    if cold:
        add("random", "cold", 8, "mmarray-gather", 0.5, cached=1.0)
        add("random", "cold", 8, "mmarray-gather-random", 1.2, cached=0.03)
        add("random", "cold", 8, "buffered", 1.0, baseline=True, cached=0.05)
    info = {"virtual_machine": False, "plan": {"reads": 1000, "cold_reads": 10, "repeat": 1,
                                               "scan_repeat": 1, "cold_repeat": 1}}
    return Report(info, rows, None if cold else "it is on tmpfs")


def test_verdict_follows_the_numbers() -> None:
    text = _bench_report.verdict(synthetic(seq_speedup=1.3, cold=True))
    assert "150x faster than a buffered seek+read loop" in text
    assert "300x once its pages were mapped" in text
    assert "the loop 2.0x slower than buffered" in text
    assert "does not hold here" in text and "50% of the speed" in text
    assert "2.0x slower than buffered without a hint" in text
    assert "readahead pulled 100% of the file" in text and "with it 3%" in text

    text = _bench_report.verdict(synthetic(seq_speedup=0.5, cold=False))
    assert "buffered reads won the sequential scan, by 2.0x" in text
    assert "The cold cache was not measured: it is on tmpfs." in text


def test_format_helpers() -> None:
    assert _bench_report.format_time(1.6e-6) == "1.6 us"
    assert _bench_report.format_time(2.5e-8) == "25 ns"
    assert _bench_report.format_ratio(168.2) == "168x faster"
    assert _bench_report.format_ratio(0.5) == "2.0x slower"
    assert _bench_report.format_ratio(1.01).endswith("(same)")
    assert _bench.format_size(256 << 20) == "256 MiB" and _bench.format_size(4096) == "4 KiB"
