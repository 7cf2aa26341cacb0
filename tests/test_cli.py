"""The command line: output, exit codes, one-line errors, never a traceback."""

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

import mmarray as mm
from mmarray._cli import human, main


def run(*args):
    """``python -m mmarray ARGS`` in a real interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "mmarray", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def block():
    name = f"mmtest-cli-{uuid.uuid4().hex[:12]}"
    blk = mm.SharedBlock.create(name, 12345)
    yield blk
    blk.close()


def test_info_npy_file(tmp_path, capsys):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((5, 7), dtype=">f4"))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "shape:" in out and "(5, 7)" in out
    assert ">f4" in out and ".npy version 1.0" in out
    assert f"{path.stat().st_size} bytes" in out


def test_info_open_array_reports_capacity(tmp_path, capsys):
    path = tmp_path / "g.npy"
    with mm.open_array(path, "w+", dtype=np.int64, shape=(3,), capacity=100):
        pass
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(3,)" in out and "capacity:    100 rows" in out


def test_info_raw_file(tmp_path, capsys):
    path = tmp_path / "raw.bin"
    path.write_bytes(b"abc" * 100)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "300 bytes" in out and "raw bytes" in out


def test_info_shared_block(block, capsys):
    assert main(["info", f"shm://{block.name}"]) == 0
    out = capsys.readouterr().out
    assert "12345 bytes" in out and f"shm://{block.name}" in out


def test_info_shared_array(capsys):
    name = f"mmtest-cli-{uuid.uuid4().hex[:12]}"
    with mm.open_array(f"shm://{name}", "w+", dtype=np.uint8, shape=(2, 3)):
        assert main(["info", f"shm://{name}"]) == 0
    assert "(2, 3)" in capsys.readouterr().out


def test_ls_lists_blocks_with_sizes(block, capsys):
    assert main(["ls"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(block.name))
    assert "12345" in line


def test_rm_removes_block():
    name = f"mmtest-cli-{uuid.uuid4().hex[:12]}"
    mm.SharedBlock.create(name, 10, persist=True).close()
    try:
        assert name in mm.shared_blocks()
        assert main(["rm", f"shm://{name}"]) == 0
        assert name not in mm.shared_blocks()
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "/no/such/file.npy"], "No such file or directory"),
        (["info", "shm://mmtest-no-such-block"], "No such shared block"),
        (["info", "shm://bad/name"], "block name must be"),
        (["rm", "shm://mmtest-no-such-block"], "no shared block named"),
        (["rm", "not-a-block"], "give shm://NAME"),
    ],
)
def test_user_mistakes_are_one_line(args, message):
    proc = run(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert message in proc.stderr


def test_corrupt_header_is_one_line(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <bad>}\n" + bytes(100))
    proc = run("info", str(path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("mmarray: error:") and "Traceback" not in proc.stderr


def test_bad_usage_exits_2():
    proc = run("frobnicate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_no_command_prints_help():
    proc = run()
    assert proc.returncode == 0 and "info" in proc.stdout


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                     (256 << 20, "256.0 MiB")])
def test_human_sizes(n, text):
    assert human(n) == text
