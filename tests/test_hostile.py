"""Corrupt, truncated and hostile .npy headers fail at open time, cleanly (issue 4).

Every broken input must give a ``ValueError`` (``TypeError`` for object
dtypes) that names the problem when ``open_array`` is called -- never a
SIGBUS later, never executed header text.  The fuzz tests mutate valid
headers at random; a batch also runs in a subprocess, so that a segfault or
SIGBUS fails one test instead of killing the run.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import random
import struct
import subprocess
import sys
import tempfile
import textwrap
import uuid
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npformat

import mmarray as mm

SHM_DIR = pathlib.Path("/dev/shm")
REPO = pathlib.Path(mm.__file__).resolve().parents[1]
TESTS_DIR = pathlib.Path(__file__).resolve().parent
GOOD = "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }"
#: Created only if header text were ever executed.
MARKER = pathlib.Path(tempfile.gettempdir()) / f"mmarray-PWNED-{uuid.uuid4().hex}"
CODE = f"__import__('os').system('touch {MARKER}')"
PUNCT = b"()[]{},:'\"0123456789-<>|.eE O"


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's mmarray."""
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, "-c", code], env=env, **kwargs)


def npy(
    text: str | bytes,
    version: tuple[int, int] = (1, 0),
    *,
    length: int | None = None,
    size: int = 128,
    data: bytes = bytes(16),
) -> bytes:
    """A .npy with header ``text`` padded to ``size`` bytes, then ``data``.

    ``length`` overrides the header-length field (to make it lie).
    """
    body = text.encode("latin1") if isinstance(text, str) else text
    prefix = 10 if version == (1, 0) else 12
    body += b" " * max(0, size - prefix - len(body) - 1) + b"\n"
    fmt = "<H" if version == (1, 0) else "<I"
    n = len(body) if length is None else length
    return npformat.magic(*version) + struct.pack(fmt, n) + body + data


def valid_npy(arr: np.ndarray) -> bytes:
    fp = io.BytesIO()
    np.save(fp, arr)
    return fp.getvalue()


# name -> (file bytes, exception, match)
HOSTILE = {
    "corrupt-magic": (b"\x93NUMPX" + npy(GOOD)[6:], ValueError, r"no \.npy header"),
    "not-npy-at-all": (b"hello, world" * 20, ValueError, r"no \.npy header"),
    "shorter-than-magic": (b"\x93NUM", ValueError, r"no \.npy header"),
    "truncated-header": (npy(GOOD)[:40], ValueError, "(?i)truncat|EOF"),
    "no-header-length": (npy(GOOD)[:9], ValueError, "(?i)truncat|EOF|length"),
    "header-length-past-end": (npy(GOOD, length=5000, data=b""), ValueError, "(?i)truncat|EOF"),
    "header-length-huge": (npy(GOOD, length=60_000), ValueError, "(?i)large|length"),
    "oversized-header": (
        npy(GOOD[:-1] + " " * 20_000 + "}", (2, 0), size=20_100),
        ValueError,
        "(?i)large|length",
    ),
    "code-in-header": (
        npy("{'descr': " + CODE + ", 'fortran_order': False, 'shape': (4,), }"),
        ValueError,
        "header",
    ),
    "code-as-header": (npy(CODE), ValueError, "header"),
    "code-in-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (" + CODE + ",), }"),
        ValueError,
        "header",
    ),
    "lambda-in-header": (
        npy("{'descr': (lambda: " + CODE + ")(), 'fortran_order': False, 'shape': (4,), }"),
        ValueError,
        "header",
    ),
    "non-dict-list": (npy("[1, 2, 3]"), ValueError, "dict"),
    "non-dict-str": (npy("'descr'"), ValueError, "dict"),
    "missing-key": (npy("{'descr': '<i4', 'shape': (4,), }"), ValueError, "keys"),
    "wrong-key": (npy("{'descr': '<i4', 'fortran': False, 'shape': (4,), }"), ValueError, "keys"),
    "extra-key": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), 'evil': 1}"),
        ValueError,
        "keys",
    ),
    "negative-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (-4,), }"),
        ValueError,
        "negative",
    ),
    "negative-inner-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (0, -1), }"),
        ValueError,
        "negative",
    ),
    "float-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (4.0,), }"),
        ValueError,
        "shape",
    ),
    "list-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': [4], }"),
        ValueError,
        "shape",
    ),
    "huge-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1000000,), }"),
        ValueError,
        "bytes",
    ),
    "huge-2d-shape": (
        npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000, 1000), }"),
        ValueError,
        "bytes",
    ),
    "one-byte-short": (npy(GOOD, data=bytes(15)), ValueError, "bytes"),
    "absurd-shape": (
        npy("{'descr': '<i4', 'fortran_order': False, 'shape': (0, 1" + "0" * 40 + "), }"),
        ValueError,
        None,
    ),
    "bad-descr": (
        npy("{'descr': 'zz9', 'fortran_order': False, 'shape': (4,), }"),
        ValueError,
        "descr",
    ),
    "bad-fortran-order": (
        npy("{'descr': '<i4', 'fortran_order': 'yes', 'shape': (4,), }"),
        ValueError,
        "fortran_order",
    ),
    "object-dtype": (
        npy("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"),
        TypeError,
        "object",
    ),
    "object-field": (
        npy("{'descr': [('a', '<i4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }"),
        TypeError,
        "object",
    ),
    "deeply-nested": (
        npy("{'descr': " + "[" * 3000 + "]" * 3000 + "}", (2, 0), size=6100),
        ValueError,
        "header",
    ),
    "bad-utf8-v3": (
        npy(b"{'descr': '\xff\xfe', 'fortran_order': False, 'shape': (4,), }", (3, 0)),
        ValueError,
        None,
    ),
    "zero-byte-file": (b"", ValueError, "(?i)empty|size 0"),
}


@pytest.fixture
def put(tmp_path, shm_name):
    """``put(kind, data) -> target``: hostile bytes in a file or a shared block."""

    def write(kind: str, data: bytes) -> str:
        if kind == "file":
            path = tmp_path / "hostile.npy"
            path.write_bytes(data)
            return str(path)
        # As if another program wrote the block: /dev/shm is where POSIX shm lives.
        (SHM_DIR / shm_name).write_bytes(data)
        return "shm://" + shm_name

    return write


def read_back(target: str) -> bytes:
    if target.startswith("shm://"):
        return (SHM_DIR / target[len("shm://") :]).read_bytes()
    return pathlib.Path(target).read_bytes()


def open_fds() -> int:
    # No gc.collect(): a failed open must close what it opened by itself.
    return len(os.listdir("/proc/self/fd"))


KIND_MODES = [("file", m) for m in ("r", "r+", "a", "c")] + [("shm", m) for m in ("r", "r+", "a")]


@pytest.mark.parametrize(("kind", "mode"), KIND_MODES)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_fails_at_open(put, name, kind, mode):
    data, exc, match = HOSTILE[name]
    target = put(kind, data)
    before = open_fds()
    with pytest.raises(exc, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's "Python 2 header" notice
        mm.open_array(target, mode)
    assert open_fds() == before  # whatever was opened was closed
    assert read_back(target) == data  # nothing rewritten, even in "a"
    assert not MARKER.exists()


def test_header_code_is_never_executed(tmp_path):
    side = tmp_path / "side-effect"
    for text in (
        "{'descr': " + CODE + ", 'fortran_order': False, 'shape': (4,), }",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), 'x': " + CODE + "}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }"
        f" if open({str(side)!r}, 'w') else 0",
    ):
        path = tmp_path / "evil.npy"
        path.write_bytes(npy(text, (2, 0), size=300))
        with pytest.raises(ValueError, match="header"):
            mm.open_array(path)
    assert not MARKER.exists()
    assert not side.exists()


def test_file_shorter_than_header_never_sigbus(tmp_path):
    # The classic SIGBUS: the header claims data past the end of the file.
    code = textwrap.dedent(
        f"""
        import numpy as np, mmarray as mm
        np.save({str(tmp_path / "a.npy")!r}, np.arange(100_000, dtype=np.int64))
        with open({str(tmp_path / "a.npy")!r}, "r+b") as f:
            f.truncate(4096 + 8)
        try:
            a = mm.open_array({str(tmp_path / "a.npy")!r})
        except ValueError as e:
            print("ValueError", e)
        else:
            print("opened", int(np.asarray(a)[-1]))
        """
    )
    out = run_python(code, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ValueError")


def test_unknown_version_is_named(tmp_path):
    path = tmp_path / "v.npy"
    data = bytearray(valid_npy(np.arange(4, dtype=np.int32)))
    data[6:8] = b"\x09\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="version"):
        mm.open_array(path)


def test_unbalanced_header_text(tmp_path):
    # numpy's Python-2 header filter raises tokenize.TokenError here.
    path = tmp_path / "u.npy"
    path.write_bytes(npy("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), "))
    with pytest.raises(ValueError, match="header"):
        mm.open_array(path)


def test_valid_file_still_opens_after_hostile_ones(tmp_path):
    # Sanity for the helpers above: an honest header opens.
    path = tmp_path / "ok.npy"
    path.write_bytes(npy(GOOD, data=np.arange(4, dtype="<i4").tobytes()))
    with mm.open_array(path) as a:
        assert a[:].tolist() == [0, 1, 2, 3]
    path.write_bytes(npy(GOOD, (2, 0), data=np.arange(4, dtype="<i4").tobytes()))
    with mm.open_array(path) as a:
        assert a[:].tolist() == [0, 1, 2, 3]


# -- fuzzing -----------------------------------------------------------------------------

SEEDS = [
    valid_npy(np.arange(12, dtype=np.int16).reshape(3, 4)),
    valid_npy(np.zeros((4, 3), dtype=[("a", "<i4"), ("b", ">f8", (2,))])),
    valid_npy(np.array(2.5)),
]


def mutate(data: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    """Apply ``(kind, position, byte)`` edits within the header, then maybe
    truncate to ``cut`` bytes."""
    header_end = data.index(b"\n") + 1
    out = bytearray(data)
    for kind, pos, byte in edits:
        pos %= header_end
        if kind == 0:
            out[pos] = byte
        elif kind == 1:
            out[pos] = PUNCT[byte % len(PUNCT)]
        elif kind == 2:
            del out[pos]
        else:
            out.insert(pos, byte)
    if cut is not None:
        del out[cut % (len(out) + 1) :]
    return bytes(out)


def check_mutant(path: pathlib.Path, data: bytes) -> str | None:
    """Open a mutant; None if it opened (and read fully) or failed cleanly,
    else the name of the unexpected exception."""
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mm.open_array(path) as a:
                np.asarray(a).tobytes()  # touches every page: SIGBUS if the size lied
                repr(a)
    except (ValueError, TypeError):
        return None
    except Exception as e:  # reported by the caller
        return f"{type(e).__name__}: {e}"
    return None


def fuzz_batch(directory: str, seed: int, count: int) -> list[str]:
    """``count`` random mutants; the unexpected failures (empty when all is well)."""
    rng = random.Random(seed)
    path = pathlib.Path(directory) / "fuzz.npy"
    problems = []
    for _ in range(count):
        base = rng.choice(SEEDS)
        edits = [
            (rng.randrange(4), rng.randrange(1 << 16), rng.randrange(256))
            for _ in range(rng.randint(1, 4))
        ]
        cut = rng.randrange(1 << 16) if rng.random() < 0.1 else None
        problem = check_mutant(path, mutate(base, edits, cut))
        if problem:
            problems.append(problem)
    return problems


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
    cut=st.none() | st.integers(0, 1 << 16),
)
def test_fuzzed_headers_fail_cleanly(fuzz_dir, base, edits, cut):
    assert check_mutant(fuzz_dir / "hyp.npy", mutate(base, edits, cut)) is None


def test_fuzz_batch_in_subprocess_never_crashes(tmp_path):
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import test_hostile
        print(json.dumps(test_hostile.fuzz_batch({str(tmp_path)!r}, 20240, 3000)))
        """
    )
    out = run_python(code, capture_output=True, text=True)
    # A negative return code is a signal (SIGBUS, SIGSEGV): the mapping was misused.
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    problems = json.loads(out.stdout.strip().splitlines()[-1])
    assert problems == []
