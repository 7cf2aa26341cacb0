"""Every ```python block of README.md runs as written (in a scratch folder,
twice in the same folder, printing the same both times)."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARK = "<!-- not run"


def python_blocks():
    text = README.read_text()
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        before = text[: m.start()].rstrip().splitlines()[-1:]
        if before and before[0].startswith(SKIP_MARK):
            continue
        blocks.append(m.group(1))
    return blocks


def test_readme_has_the_classic_examples():
    blocks = python_blocks()
    assert any("long.bin" in b and "500_000" in b for b in blocks)
    assert any("short.bin" in b and "capacity=1000" in b for b in blocks)


def test_readme_commands_come_first():
    lines = README.read_text().splitlines()
    fence = lines.index("```bash")
    assert lines[fence + 1] == 'python -m pip install -e ".[test]" && mmarray bench'
    assert lines[fence + 2] == "python -m pytest"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(python_blocks()[index])
    # Twice in the same folder: running an example again must work, and
    # print the same, too.
    printed = []
    for run in ("first", "second"):
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{run} run in one folder:\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
        printed.append(proc.stdout)
    assert printed[0] == printed[1], f"the second run printed {printed[1]!r}, not {printed[0]!r}"
