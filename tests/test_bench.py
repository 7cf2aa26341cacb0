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
import statistics

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
            for method in ("mmarray-take", "pread", "mapping-gather", "mmarray-gather-random"):
                m = report.find("random", "cold", record, method)
                assert m is not None
                # At most every page of the file, spread over the reads asked for.
                assert m.pages_per_read is None or (
                    0 <= m.pages_per_read <= 2 * SIZE / 4096 / m.count)
        assert report.find("sequential", "cold", None, "mapping-sum").pages_per_read is None
    else:
        assert not any(m.cache == "cold" for m in report.measurements)
    assert all(m.pages_per_read is None for m in report.measurements if m.cache == "warm")
    for section in sections:
        rows = [m for m in report.measurements if m.section == section]
        (base,) = [m for m in rows if m.baseline]
        assert base.speedup == pytest.approx(1.0) and base.call == "level"
        assert all(m.seconds > 0 and m.speedup > 0 for m in rows)
        assert all(m.call in ("faster", "slower", "level") for m in rows)
        assert {len(m.times) for m in rows} == {1}  # TINY: one run each, every one kept
    for record in (8, 64, 4096):  # numpy.memmap where its method differs: the loop
        assert report.find("random", "warm", record, "numpy-memmap-loop") is not None
    assert report.find("random", "warm", 4096, "mapping-gather-batches") is not None
    assert report.find("random", "warm", 8, "mapping-gather-batches") is None
    assert report.info["file"]["size"] == SIZE
    assert report.info["plan"] == {"reads": 200, "cold_reads": 20, "repeat": 1,
                                   "scan_repeat": 1, "cold_repeat": 1}


def test_main_prints_table(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    assert _bench.main(parse("--size", "1M", "--dir", str(tmp_path))) == 0
    out, err = capsys.readouterr()
    assert "vs buffered" in out and "baseline" in out and "\nVerdict: " in out
    for label in ("buffered: f.seek + f.read loop", "os.pread loop",
                  "mapping: gather a[idx] (new mapping)",
                  "mmarray.take(a, idx, axis=0) (new mapping)",
                  "numpy.memmap: Python loop of m[i] (new mapping)",
                  "mapping: gather a[idx], 256 rows at a time",
                  "ndarray already in RAM: a.sum() (reference)",
                  "buffered: readinto 1 MiB chunks"):
        assert label in out
    assert "ceiling" not in out
    assert '"mapping:" rows index the plain ndarray of MappedFile.array' in out
    assert "Random reads of 8 B records, warm cache" in out
    assert "Sequential sum of the whole file (1 MiB), warm cache" in out
    assert "On cached pages, mmarray.take, against the gather" in out.replace("\n", " ")
    if "Cold cache not measured" not in out:
        for label in ("mmarray.take(a, idx, axis=0)  ", "mapping: gather a[idx], no hint"):
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
        assert row["times"] and row["seconds_min"] <= row["seconds"] <= row["seconds_max_kept"]
        assert row["call"] in ("faster", "slower", "level")
        assert math.isclose(row["time_ratio"] * row["speedup"], 1.0)
        assert ("seconds_per_read" in row) == (row["test"] == "random")
        assert ("gb_per_s" in row) == (row["test"] == "sequential")
        assert "pages_per_read" in row
    methods = {(row["cache"], row["record"], row["method"]) for row in data["results"]}
    assert ("warm", 4096, "mmarray-take") in methods
    if data["cold_cache"]["random_reads"]["measured"]:
        for record in (8, 64, 4096):
            assert {("cold", record, m) for m in ("mmarray-take", "mapping-gather")} <= methods
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


# -- the report, fed fixed measurements -----------------------------------------------------


def runs(median: float, spread: float = 0.02) -> tuple[float, ...]:
    """Five run times around ``median``; the kept range is median * (1 - spread) to
    median * (1 + spread / 2) (the slowest of the five is left out)."""
    return tuple(median * (1 + spread * k) for k in (0, -1, -0.5, 0.5, 1))


#: The labels the bench prints, by (cache, method key).
LABELS = {(s.cache, m.key): m.label for s in _bench.SECTIONS for m in s.methods}


def row(test: str, cache: str, record: int | None, method: str, seconds: float | tuple,
        baseline: bool = False, cached: float | None = None, pages: float | None = None,
        label: str | None = None) -> Measurement:
    times = seconds if isinstance(seconds, tuple) else runs(seconds)
    count = 1_000_000_000 if test == "sequential" else 1000
    label = label or LABELS.get((cache, method), method)
    return Measurement(test, cache, record, method, label, baseline, times, count,
                       cached_after=cached, pages_per_read=pages)


INFO = {
    "virtual_machine": False, "mmarray": "0", "python": "3", "numpy": "2", "platform": "Linux",
    "cpus": 2, "date": "2026-12-02T00:00:00+00:00",
    "file": {"directory": "/tmp", "size": 1 << 20, "filesystem": "ext4"},
    "plan": {"reads": 1000, "cold_reads": 10, "repeat": 5, "scan_repeat": 5, "cold_repeat": 5},
    "cold_file": {"size": 1 << 30},
}


def build(rows: list[Measurement], cold_reason: str | None = None,
          cold_random_reason: str | None = None) -> Report:
    """A report as the runner makes it: each row compared with its section's baseline."""
    for m in rows:
        base = next(b for b in rows if b.section == m.section and b.baseline)
        versus = m.compare(base)
        m.speedup, m.call = versus.ratio, versus.call
    return Report(INFO, rows, cold_reason, cold_random_reason)


def synthetic(seq_speedup: float = 1.3, cold: bool = True, *, in_ram: float | None = None,
              loop_4k: float = 0.5, batches_4k: float = 0.4, cold_sum: float = 1.0,
              cold_random_reason: str | None = None) -> Report:
    """Times in seconds (the baseline takes 1.0); ``in_ram``: its speed-up over the
    baseline (default twice the mapping's)."""
    rows = []

    def add(test, cache, record, method, seconds, **kw):
        rows.append(row(test, cache, record, method, seconds, **kw))

    for record in (8, 4096):
        add("random", "warm", record, "mapping-gather", 1 / 150 if record == 8 else 1 / 3)
        add("random", "warm", record, "mapping-gather-mapped", 1 / 300)
        add("random", "warm", record, "mmarray-take", 1 / 150 if record == 8 else 1 / 2)
        add("random", "warm", record, "mapping-loop", 1 / 20 if record == 8 else loop_4k)
        add("random", "warm", record, "numpy-memmap-loop", 1 / 5 if record == 8 else 0.8)
        if record == 4096:
            add("random", "warm", record, "mapping-gather-batches", batches_4k)
        add("random", "warm", record, "buffered", 1.0, baseline=True)
        add("random", "warm", record, "pread", 1 / 3)
    add("sequential", "warm", None, "mapping-sum", 1 / seq_speedup)
    add("sequential", "warm", None, "readinto", 1.0, baseline=True)
    add("sequential", "warm", None, "in-ram", 1 / (in_ram or seq_speedup * 2))
    if cold:
        add("sequential", "cold", None, "mapping-sum", cold_sum)
        add("sequential", "cold", None, "mmarray-sum-sequential", 1.0)
        add("sequential", "cold", None, "readinto", 1.0, baseline=True)
    if cold and cold_random_reason is None:
        add("random", "cold", 8, "mapping-gather", 2.0, cached=1.0, pages=131.0)
        add("random", "cold", 8, "mmarray-gather-random", 1 / 1.2, cached=0.004, pages=1.0)
        add("random", "cold", 8, "buffered", 1.0, baseline=True, cached=0.05, pages=2.0)
        for record, take in ((64, 6.0), (4096, 5.0)):
            add("random", "cold", record, "mapping-gather", 4.0, cached=1.0, pages=131.0)
            add("random", "cold", record, "mmarray-take", 1 / take, cached=0.03, pages=1.0)
            add("random", "cold", record, "buffered", 1.0, baseline=True, cached=0.05, pages=2.0)
            add("random", "cold", record, "pread", 0.8, cached=0.03, pages=1.0)
    return build(rows, None if cold else "it is on tmpfs", cold_random_reason)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_compare_calls_only_what_the_spread_allows() -> None:
    a = row("random", "warm", 8, "a", 1.0)
    assert a.compare(row("random", "warm", 8, "b", 2.0)) == _bench.Comparison(2.0, "faster")
    assert a.compare(row("random", "warm", 8, "b", 0.5)).call == "slower"
    # Medians 20% apart, but each spread over +-30%: the ranges overlap.
    wide = row("random", "warm", 8, "a", runs(1.0, 0.3))
    assert wide.compare(row("random", "warm", 8, "b", runs(1.2, 0.3))).call == "level"
    # The slowest run in every five is left out: one run slowed by another program
    # does not hide a difference.
    noisy = row("random", "warm", 8, "a", (1.0, 0.99, 1.01, 1.02, 9.0))
    assert (noisy.slowest, noisy.fastest) == (1.02, 0.99)
    assert noisy.compare(row("random", "warm", 8, "b", 2.0)).call == "faster"
    # Two slow runs of five: the second one stays in the range.
    twice = row("random", "warm", 8, "a", (1.0, 0.99, 1.01, 3.0, 9.0))
    assert twice.compare(row("random", "warm", 8, "b", 2.0)).call == "level"
    # Ranges apart but a ratio that prints as 1.00x: level.
    tight = row("random", "warm", 8, "a", runs(1.0, 0.0001))
    assert tight.compare(row("random", "warm", 8, "b", runs(1.003, 0.0001))).call == "level"


def test_ratio_words_keep_small_gaps_honest() -> None:
    c = _bench.Comparison
    assert bench_report.format_ratio(c(168.2, "faster")) == "168x faster"
    assert bench_report.format_ratio(c(0.5, "slower")) == "2.0x slower"
    assert bench_report.format_ratio(c(1 / 1.056, "slower")) == "1.06x slower"  # not 1.1x
    assert bench_report.format_ratio(c(1.3, "level")) == "level"
    assert bench_report.format_ratio(None) == "n/a"


def test_table_shows_median_and_range() -> None:
    rows = [row("random", "warm", 8, "mapping-gather", (2e-5, 1.9e-5, 2.1e-5, 2.05e-5, 9e-5),
                label="mapping: gather a[idx] (new mapping)"),
            row("random", "warm", 8, "buffered", 1e-3, baseline=True, label="buffered"),
            row("sequential", "warm", None, "mapping-sum", 0.1, label="mapping: a.sum()"),
            row("sequential", "warm", None, "readinto", 0.101, baseline=True, label="readinto")]
    out = bench_report.format_table(build(rows))
    # 1000 reads per run: medians of 20.5 ns and 1 us per read; 90 ns, the slowest, left out.
    assert "mapping: gather a[idx] (new mapping)     20.5 ns [19-21]      49x faster" in out
    assert "buffered                                    1 us [0.98-1.01]  baseline" in out
    # 1e9 bytes in 0.1 s; GB/s from the slowest kept run to the fastest; 1% apart: level.
    assert "mapping: a.sum()                      10.00 GB/s [9.9-10.2]   level" in out
    assert "the slowest run in every 5 is left out" in flat(out)
    assert '"faster" and "slower" only where the two ranges do not overlap' in flat(out)


def test_verdict_faster() -> None:
    text = flat(bench_report.verdict(synthetic(seq_speedup=1.3)))
    assert "150x faster than a buffered seek+read loop" in text
    assert "300x faster once its pages were mapped" in text
    assert "even a Python loop of a[i] was 20x faster than it" in text
    assert "numpy.memmap's own loop of m[i] was 4.0x slower than that loop" in text
    assert "the loop 2.0x faster than buffered" in text
    assert "1.30x faster than readinto of 1 MiB chunks" in text
    assert "at 50% of the speed of summing an ndarray already in RAM" in text
    assert "a mapping was faster, and needs no buffer management" in text
    assert "readahead pulled 100% of the file into memory, with it 0.4%" in text
    # take, warm: against the gather on the same pages; 4 KiB: (1/2) / (1/3) = 1.5x slower.
    assert ("On cached pages, mmarray.take, against the gather a[idx] it replaces, was "
            "level for 8 B and 1.50x slower for 4 KiB records, more than the 1.3x") in text
    # take, cold: 0.8 / 0.2 = 4x os.pread, 4.0 / 0.2 = 20x the plain mapping.
    assert ("From a cold cache (1 GiB file), mmarray.take read random 4 KiB rows 4.0x faster "
            "than os.pread and 20x faster than a plain mapping's gather (numpy.memmap's "
            "m[idx]), reading about 1.0 page per row (the plain mapping: 131 pages, as "
            "readahead pulled in 100% of the file); for 64 B records 4.8x and 24x faster, "
            "1.0 page per row: it asks the kernel") in text


def test_verdict_slower() -> None:
    text = flat(bench_report.verdict(synthetic(seq_speedup=0.5, cold=False)))
    assert "Here buffered reads won the sequential scan, by 2.0x." in text
    assert "The cold cache was not measured: it is on tmpfs." in text
    assert "mmarray.take read" not in text and "at least as fast" not in text
    r = synthetic()
    for m in r.measurements:
        if m.cache == "cold" and m.method == "mmarray-take":
            m.times = tuple(t * 10 for t in m.times)  # now 2.5x slower than os.pread
    text = flat(bench_report.verdict(r))
    assert "random 4 KiB rows 2.5x slower than os.pread" in text
    assert "it asks the kernel for every page" not in text  # no reason for a win it lacked
    text = flat(bench_report.verdict(synthetic(cold_sum=1.5)))
    assert "A cold sequential sum through a mapping was 1.50x slower than readinto without" in text


def test_verdict_level() -> None:
    # A 5.6% gap inside a +-10% spread: level, never "1.1x slower".
    r = synthetic(seq_speedup=1 / 1.056)
    for m in r.measurements:
        if m.section == ("sequential", "warm", None) and m.method != "in-ram":
            m.times = runs(statistics.median(m.times), 0.1)
    r = build(r.measurements, None)
    text = flat(bench_report.verdict(r))
    assert "level with readinto of 1 MiB chunks" in text
    assert "a mapping streams as fast as buffered reads" in text
    assert "1.1x slower" not in text and "does not hold" not in text
    assert "level" in bench_report.format_table(r)
    text = flat(bench_report.verdict(synthetic(seq_speedup=1.0, in_ram=1.0)))
    assert "and level with summing an ndarray already in RAM" in text
    assert "level with readinto without a hint and level with readinto with" in text
    text = flat(bench_report.verdict(synthetic(cold_random_reason="the 1 GiB file does not fit")))
    assert "Cold random reads were not measured: the 1 GiB file does not fit." in text
    assert "mmarray.take read" not in text


@pytest.mark.parametrize("in_ram", [0.5, 1.3, 2.0])
def test_the_in_ram_row_is_a_reference_never_a_ceiling(in_ram: float) -> None:
    """The mapping beats (0.5), levels with (1.3) or trails (2.0) the in-RAM sum."""
    r = synthetic(seq_speedup=1.3, in_ram=in_ram)
    table = bench_report.format_table(r)
    assert "ndarray already in RAM: a.sum() (reference)" in table
    assert "ceiling" not in table  # the verdict is part of the table
    text = flat(bench_report.verdict(r))
    if in_ram < 1.3:
        assert ("2.6x faster than summing an ndarray already in RAM (0.5 GB/s): that row is a "
                "reference, not a bound") in text
    elif in_ram == 1.3:
        assert "and level with summing an ndarray already in RAM" in text
    else:
        assert "at 65% of the speed of summing an ndarray already in RAM" in text


def test_loop_beating_the_gather_is_explained() -> None:
    text = flat(bench_report.verdict(synthetic()))  # loop 0.5 s, gather 1/3 s: no surprise
    assert "The loop beat the gather" not in text
    text = flat(bench_report.verdict(synthetic(loop_4k=0.2, batches_4k=0.18)))
    assert ("The loop beat the gather of 4 KiB rows (1.67x faster) because they do not do the "
            "same work: the gather keeps every row, writing 1,000 rows (3.9 MiB) into one new "
            "array, while the loop copies each row into a small scalar and drops it at once"
            ) in text
    assert ("Gathering 256 rows (1 MiB) at a time instead, each batch dropped like the loop's "
            "rows, was 1.85x faster than the whole gather and 1.11x faster than the loop."
            ) in text
    # Batches that do not help: no "because", and it says the gap stayed.
    text = flat(bench_report.verdict(synthetic(loop_4k=0.2, batches_4k=0.34)))
    assert "because" not in text.split("The loop beat the gather")[1].split(".")[0]
    assert "but gathering 256 rows (1 MiB) at a time did not close the gap here" in text


def test_json_of_fixed_measurements() -> None:
    data = json.loads(bench_report.to_json(synthetic()))
    row0 = data["results"][0]
    assert row0["times"] == list(runs(1 / 150))
    assert row0["call"] == "faster" and row0["seconds"] == pytest.approx(1 / 150)
    assert data["verdict"].startswith("With the file in the page cache")


def test_format_helpers() -> None:
    assert bench_report.format_time(1.6e-6) == "1.6 us"
    assert bench_report.format_time(2.5e-8) == "25 ns"
    assert bench_report.format_time(9.996e-7) == "1000 ns"  # not "1e+03 ns"
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
