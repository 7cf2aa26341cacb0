"""The documentation cannot rot: everything it shows runs here.

* the doctests in mmarray's docstrings (the examples of the API reference);
* every ```python block of the pages in ``docs/`` (MyST Markdown) and every
  ``.. code-block:: python`` of its reStructuredText pages -- each page's
  blocks in order, as one script, in a fresh process and a scratch folder,
  and then once more in the same folder, where it must pass and print the
  same (examples must not depend on starting from an empty folder);
* the two-process "Demo" of the getting-started page, as two processes;
* the example notebook, executed headlessly (nbclient + ipykernel);
* the Sphinx build with warnings as errors (when Sphinx is installed);
* numpydoc sections of the public API.

Marking blocks in a page (an HTML comment on the line before the fence)::

    <!-- not run: why -->           never run (e.g. it needs two terminals)
    <!-- requires: dask, joblib --> run only if these modules are installed
"""

from __future__ import annotations

import contextlib
import difflib
import doctest
import importlib
import importlib.util
import inspect
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

import mmarray

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOK = DOCS / "examples" / "quickstart.ipynb"
SHM_DIR = pathlib.Path("/dev/shm")
PAGE_TIMEOUT = 300  # seconds for one page's examples (some start process pools)

SKIP_RE = re.compile(r"^\s*(<!--|\.\.)\s*not run\b")
REQUIRES_RE = re.compile(r"^\s*(?:<!--|\.\.)\s*requires:\s*([\w., ]+?)\s*(?:-->)?\s*$")
MD_FENCE_RE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*python\s*$")
RST_BLOCK_RE = re.compile(r"^(?P<indent> *)\.\. (?:code-block|code|sourcecode):: python\s*$")


@dataclass
class Block:
    """One Python example of a page."""

    line: int  # 1-based line of the first code line
    code: str
    skip: bool
    requires: tuple[str, ...]


def _marker(lines: list[str], index: int) -> tuple[bool, tuple[str, ...]]:
    """The ``not run`` / ``requires`` markers on the lines just above ``index``."""
    skip, requires = False, ()
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    while j >= 0 and (SKIP_RE.match(lines[j]) or REQUIRES_RE.match(lines[j])):
        if SKIP_RE.match(lines[j]):
            skip = True
        else:
            m = REQUIRES_RE.match(lines[j])
            assert m is not None
            requires += tuple(n.strip() for n in m.group(1).split(",") if n.strip())
        j -= 1
    return skip, requires


def code_blocks(page: pathlib.Path) -> list[Block]:
    """The Python blocks of a Markdown or reStructuredText page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        md = MD_FENCE_RE.match(lines[i]) if page.suffix == ".md" else None
        rst = RST_BLOCK_RE.match(lines[i]) if page.suffix == ".rst" else None
        if md:
            fence, indent = md.group("fence"), len(md.group("indent"))
            end = i + 1
            while end < len(lines) and lines[end].strip() != fence:
                end += 1
            body = [ln[indent:] for ln in lines[i + 1 : end]]
            blocks.append(Block(i + 2, "\n".join(body) + "\n", *_marker(lines, i)))
            i = end + 1
            continue
        if rst:
            indent = len(rst.group("indent"))
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith(":"):  # options
                j += 1
            body_lines: list[str] = []
            k = j
            while k < len(lines) and (
                not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > indent
            ):
                body_lines.append(lines[k])
                k += 1
            code = "\n".join(body_lines).strip("\n")
            pad = min(
                (len(ln) - len(ln.lstrip()) for ln in code.splitlines() if ln.strip()),
                default=0,
            )
            code = "\n".join(ln[pad:] for ln in code.splitlines())
            blocks.append(Block(j + 1, code + "\n", *_marker(lines, i)))
            i = k
            continue
        i += 1
    return blocks


def doc_pages() -> list[pathlib.Path]:
    pages = [
        p
        for p in sorted(DOCS.rglob("*"))
        if p.suffix in (".md", ".rst")
        and not {"_build", "generated", "_templates"} & set(p.relative_to(DOCS).parts)
    ]
    return [p for p in pages if any(not b.skip for b in code_blocks(p))]


PAGES = doc_pages()


def _ids(pages: list[pathlib.Path]) -> list[str]:
    return [str(p.relative_to(DOCS)) for p in pages]


def _block_names() -> set[str]:
    return set(os.listdir(SHM_DIR)) if SHM_DIR.is_dir() else set()


def _remove_new_blocks(before: set[str], text: str) -> list[str]:
    """Remove shared blocks that appeared since ``before`` and that ``text``
    names; return their names (a page should leave none behind)."""
    left = sorted(n for n in _block_names() - before if re.search(rf"\b{re.escape(n)}\b", text))
    for name in left:
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / name).unlink()
    return left


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# -- the pages' code blocks --------------------------------------------------------


def test_pages_have_examples():
    names = set(_ids(PAGES))
    for page in (
        "getting-started.md",
        "guide/files.md",
        "guide/views.md",
        "guide/shared.md",
        "guide/arrays.md",
        "guide/lifecycle.md",
        "guide/processes.md",
        "migrating.md",
    ):
        assert page in names, f"docs/{page} has no runnable Python example"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_page_examples_run(page: pathlib.Path, tmp_path: pathlib.Path):
    rel = page.relative_to(DOCS)
    parts, skipped = [], []
    for block in code_blocks(page):
        if block.skip:
            continue
        missing = [m for m in block.requires if importlib.util.find_spec(m) is None]
        if missing:
            skipped.append(f"line {block.line} (needs {', '.join(missing)})")
            continue
        parts.append(f"# ---- docs/{rel}, line {block.line} ----\n{block.code}")
    if not parts:
        pytest.skip("every example needs a module that is not installed: " + "; ".join(skipped))
    script = tmp_path / (re.sub(r"\W", "_", str(rel.with_suffix(""))) + ".py")
    script.write_text("\n".join(parts), encoding="utf-8")
    # Twice in the same folder: a reader who runs the page again (or re-runs
    # a notebook cell) finds the files of the first run there, and must get
    # what the page shows again (not 8 rows where it promised 4).
    printed = []
    for run in ("first", "second"):
        before = _block_names()
        try:
            proc = subprocess.run(
                [sys.executable, script.name],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=PAGE_TIMEOUT,
                env=_child_env(),
            )
        finally:
            leaked = _remove_new_blocks(before, page.read_text(encoding="utf-8"))
        assert proc.returncode == 0, (
            f"the examples of docs/{rel} failed on the {run} run in one folder "
            f"(script {script}):\n{proc.stderr}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        assert not leaked, f"docs/{rel} left shared blocks behind: {leaked}"
        printed.append(proc.stdout)
    assert printed[0] == printed[1], (
        f"the examples of docs/{rel} print something else when run again in the same "
        "folder:\n" + "".join(difflib.unified_diff(
            printed[0].splitlines(True), printed[1].splitlines(True), "first run", "second run"
        ))
    )


def test_getting_started_demo_in_two_processes(tmp_path: pathlib.Path):
    """Process A and process B of the getting-started page, as a user runs them."""
    blocks = code_blocks(DOCS / "getting-started.md")
    a = next(b.code for b in blocks if b.code.startswith("# process A"))
    b = next(b.code for b in blocks if b.code.startswith("# process B"))
    if (SHM_DIR / "Demo").exists():
        pytest.skip("a shared block named 'Demo' exists already (mmarray rm shm://Demo)")
    (tmp_path / "a.py").write_text(a)
    (tmp_path / "b.py").write_text(b)
    env = _child_env()
    proc_a = subprocess.Popen(
        [sys.executable, "a.py"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out_b = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc_a.poll() is None:
            if (SHM_DIR / "Demo").exists():
                run_b = subprocess.run(
                    [sys.executable, "b.py"],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=env,
                )
                out_b = run_b.stdout.strip()
                if out_b == "12345":
                    break
            time.sleep(0.05)
        assert out_b == "12345", f"process B printed {out_b!r}"
        _, err_a = proc_a.communicate("\n", timeout=60)
        assert proc_a.returncode == 0, err_a
        assert not (SHM_DIR / "Demo").exists(), "process A did not remove 'Demo' on close"
        after = subprocess.run(
            [sys.executable, "b.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert "FileNotFoundError: [Errno 2] No such shared block: 'Demo'" in after.stderr
    finally:
        if proc_a.poll() is None:
            proc_a.kill()
            proc_a.communicate()
        _remove_new_blocks(set(), "Demo")


# -- doctests -----------------------------------------------------------------------


def _modules_with_doctests() -> list[str]:
    finder = doctest.DocTestFinder()
    names = sorted(
        f"mmarray.{m.name}" for m in pkgutil.iter_modules(mmarray.__path__) if m.name != "__main__"
    )
    return [
        name
        for name in names
        if any(t.examples for t in finder.find(importlib.import_module(name), name))
    ]


MODULES = _modules_with_doctests()


def test_docstrings_have_examples():
    finder = doctest.DocTestFinder()
    found = sum(
        len(t.examples)
        for name in MODULES
        for t in finder.find(importlib.import_module(name), name)
    )
    assert found >= 10


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    if any("dask" in ex.source for t in tests for ex in t.examples):
        pytest.importorskip("dask")
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report: list[str] = []
    before = _block_names()
    try:
        for test in tests:
            runner.run(test, out=report.append)
    finally:
        _remove_new_blocks(before, "\n".join(t.docstring or "" for t in tests))
    assert runner.failures == 0, "".join(report)


# -- numpydoc sections of the public API ---------------------------------------------


#: Public API that must be documented: top-level names and their methods.
def _public_objects() -> list[str]:
    names = [n for n in mmarray.__all__ if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(mmarray, n)
        out.append(n)
        if inspect.isclass(obj):
            # memmap inherits numpy.memmap's documented surface; ours is
            # flush/close/advise.
            own = ("flush", "close", "advise") if n == "memmap" else None
            for m, _ in inspect.getmembers(obj):
                if m.startswith("_") or (own is not None and m not in own):
                    continue
                if callable(inspect.getattr_static(obj, m)) or isinstance(
                    inspect.getattr_static(obj, m), (classmethod, staticmethod)
                ):
                    out.append(f"{n}.{m}")
    return out


#: numpydoc.validate codes that fail the check: no docstring, undocumented
#: parameters, parameters documented that do not exist, no Returns section.
REQUIRED = {"GL08", "PR01", "PR02", "RT01"}


def _section_gaps(path: str) -> list[str]:
    validate = pytest.importorskip("numpydoc.validate").validate
    result = validate(f"mmarray.{path}")
    gaps = [f"{code}: {msg}" for code, msg in result["errors"] if code in REQUIRED]
    if "." not in path:  # a top-level name: it also needs examples and raises
        from numpydoc.docscrape import get_doc_object

        doc = get_doc_object(getattr(mmarray, path))
        if not doc["Examples"]:
            gaps.append("EX01: no Examples section")
        if not doc["Raises"] and path != "shared_blocks":
            gaps.append("no Raises section")
    return gaps


@pytest.mark.parametrize("path", _public_objects())
def test_public_docstring_sections(path: str):
    gaps = _section_gaps(path)
    assert not gaps, f"mmarray.{path}: " + "; ".join(gaps)


# -- the notebook ------------------------------------------------------------------------


def test_notebook_runs(tmp_path: pathlib.Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    before = _block_names()
    try:
        client.execute()
    finally:
        _remove_new_blocks(before, NOTEBOOK.read_text(encoding="utf-8"))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook drew no plot"
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("MappedArray" in t and "capacity used" in t for t in tables), (
        "the notebook shows no MappedArray table"
    )


# -- the Sphinx build -------------------------------------------------------------------


def test_docs_build_without_warnings(tmp_path: pathlib.Path):
    for module in ("sphinx", "numpydoc", "myst_nb", "pydata_sphinx_theme", "sphinx_copybutton"):
        pytest.importorskip(module)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for page in (
        "index",
        "getting-started",
        "guide/arrays",
        "api",
        "examples/quickstart",
        "generated/mmarray.MappedFile",
    ):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
