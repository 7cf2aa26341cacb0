"""The soak test (issue 11 item 5): ``tests/soak.py`` at its default length.

Worker processes share files, shared blocks and growable arrays while the
script SIGKILLs some of them at random and starts replacements; see the
script's docstring for what it checks.  It runs for 8 seconds by default;
``MMARRAY_SOAK_SECONDS=600`` soaks for ten minutes, ``MMARRAY_SOAK_PROCS``
and ``MMARRAY_SOAK_SEED`` change the number of workers and the seed.  To
repeat a run outside pytest::

    python tests/soak.py --seconds 8 --procs 5 --seed 20240611
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

SOAK = pathlib.Path(__file__).with_name("soak.py")
SECONDS = float(os.environ.get("MMARRAY_SOAK_SECONDS", "8"))
PROCS = int(os.environ.get("MMARRAY_SOAK_PROCS", "5"))
SEED = int(os.environ.get("MMARRAY_SOAK_SEED", "20240611"))

pytestmark = pytest.mark.skipif(
    not (pathlib.Path("/proc/self/fd").is_dir() and pathlib.Path("/dev/shm").is_dir()),
    reason="the soak needs Linux (/proc/self/fd and /dev/shm)",
)


def test_soak():
    cmd = [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--procs", str(PROCS),
           "--seed", str(SEED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 120)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no summary; stderr:\n{proc.stderr}"
    summary = json.loads(lines[-1])
    rerun = " ".join(["python", "tests/soak.py", *cmd[2:]])
    detail = f"{rerun}\n{json.dumps(summary, indent=1)}\nstderr:\n{proc.stderr[-20_000:]}"

    assert summary["failures"] == [], detail
    assert summary["ok"] and proc.returncode == 0, detail
    # It did soak: workers were killed and replaced, rows were checked, and
    # every attempt at a second writer was refused.
    assert summary["kills"] >= 1, detail
    assert summary["processes_started"] >= PROCS + summary["kills"], detail
    assert summary["rows_checked"] > 0, detail
    assert summary["flushes_reported"] > 0, detail
    assert summary["probes"] > 0, detail
    assert summary["blocked_second_writers"] == summary["probes"], detail
    assert summary["admitted_second_writers"] == 0, detail
    assert summary["shrink_admitted"] == 0, detail
    assert summary["fd_checked"] >= 1, detail  # at least the elder mixer lived to the end
    assert summary["leaks"] == 0, detail
