"""Shared fixtures for the mmarray test suite.

* ``--runslow`` opts in to tests marked ``@pytest.mark.slow`` (the marker
  is declared in pyproject.toml); without it they are skipped.
* ``shm_name`` gives a unique shared-block name and removes the block in
  teardown if a test (or a crash in it) left it behind.
* ``make_file`` writes a scratch file with given contents.
* ``fd_count`` counts this process's open descriptors.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator

import pytest

SHM_DIR = pathlib.Path("/dev/shm")
FD_DIR = pathlib.Path("/proc/self/fd")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="also run tests marked slow (they need time or disk)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A fresh shared-block name; the block is removed afterwards if it exists."""
    name = f"mmtest-{uuid.uuid4().hex}"
    yield name
    with contextlib.suppress(FileNotFoundError):
        (SHM_DIR / name).unlink()


@pytest.fixture
def make_file(tmp_path: pathlib.Path) -> Callable[..., pathlib.Path]:
    """``make_file(data=b"\\0" * 4096, name="data.bin")`` -> path of a new file."""

    def make(data: bytes = bytes(4096), name: str = "data.bin") -> pathlib.Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


def count_fds() -> int:
    """Open descriptors of this process, after collecting garbage."""
    gc.collect()
    return len(os.listdir(FD_DIR))


@pytest.fixture
def fd_count() -> Callable[[], int]:
    """A function returning the number of entries in ``/proc/self/fd``."""
    if not FD_DIR.is_dir():
        pytest.skip("needs /proc/self/fd")
    return count_fds
