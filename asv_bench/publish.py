"""Record and publish the asv dashboard as a folder that renders offline.

``asv publish`` writes an ``index.html`` that loads jQuery, flot (and its
plugins), Bootstrap, stupidtable and blueimp-md5 from public CDNs; without
internet the page draws nothing.  This script runs (or reuses) the
benchmarks, runs ``asv publish``, then makes the published folder
self-contained: every external script and stylesheet the pages reference is
taken from the npm registry at the version asv asks for (``npm pack`` into a
cache outside the repository), copied to ``<html_dir>/vendor/`` and the
references rewritten.  Run it from anywhere; paths are the repository's::

    python asv_bench/publish.py                 # run the suite for HEAD, then publish
    python asv_bench/publish.py --reuse         # publish the results recorded so far
    ASV_MMARRAY_FILE_MB=8 python asv_bench/publish.py --quick   # a smoke dashboard

The npm tarballs are unpacked in ``~/.cache/mmarray-asv-assets`` (or
``$MMARRAY_ASV_ASSETS``, or ``$XDG_CACHE_HOME/mmarray-asv-assets``); once
there, no network is needed.  Nothing third-party enters the repository:
``asv_bench/.asv/`` is git-ignored.

Any failure (npm missing, a package or file not on npm, a URL of a CDN this
script does not know, a shallow clone) stops with a one-line message and
exit status 1; a failing ``asv`` command passes its exit status on.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "asv_bench" / "asv.conf.json"
VENDOR = "vendor"
#: Marks a fully unpacked package in the cache (a crash mid-unpack leaves none).
COMPLETE = ".complete"

#: asv names cdnjs libraries; npm may publish them under another name.
CDNJS_TO_NPM = {"stupidtable": "stupid-table-plugin"}

#: Versions asv asks for that npm never had, and the release used instead.
NPM_SUBSTITUTES = {
    ("stupid-table-plugin", "1.0.1"): (
        "1.1.3",
        "npm's first release of it (its CHANGELOG: 1.0.2-1.1.3 only add options and fixes)",
    ),
}

_TAG = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE | re.DOTALL)
_URL_ATTR = re.compile(r"""\b(src|href)\s*=\s*(["'])((?:https?:)?//[^"']+)\2""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*(["']?)([^"')]+)\1\s*\)""")
_SOURCE_MAP = re.compile(r"[#@] sourceMappingURL=(\S+)")
# Attributes that only make sense for a cross-origin CDN request.
_CDN_ATTRS = re.compile(r"""\s+(?:crossorigin|referrerpolicy)(?:\s*=\s*(["'])[^"']*\1)?""",
                        re.IGNORECASE)
_INTEGRITY = re.compile(r"""\s+integrity\s*=\s*(["'])([^"']*)\1""", re.IGNORECASE)


class PublishError(Exception):
    """Anything that stops the dashboard from being made (one-line message)."""


@dataclass(frozen=True)
class Asset:
    """One file of an npm package that a page loads from a CDN."""

    url: str
    package: str
    version: str
    path: str  # inside the package, POSIX
    note: str = ""

    @property
    def folder(self) -> PurePosixPath:
        """Where the package's files go, relative to the html folder."""
        return PurePosixPath(VENDOR, f"{self.package.replace('/', '+')}@{self.version}")

    @property
    def local(self) -> PurePosixPath:
        return self.folder / self.path


# -- where each CDN URL comes from on npm ---------------------------------------------------


def npm_source(url: str) -> Asset:
    """Map a CDN URL that asv uses to a file of an npm package."""
    full = "https:" + url if url.startswith("//") else url
    if m := re.fullmatch(r"https?://cdn\.jsdelivr\.net/npm/((?:@[^/]+/)?[^@/]+)@([^/]+)/(.+)",
                         full):
        package, version, path = m.groups()
    elif m := re.fullmatch(r"https?://code\.jquery\.com/jquery-([\d.]+)((?:\.slim)?(?:\.min)?)\.js",
                           full):
        package, version, path = "jquery", m[1], f"dist/jquery{m[2]}.js"
    elif m := re.fullmatch(r"https?://cdnjs\.cloudflare\.com/ajax/libs/([^/]+)/([^/]+)/(.+)",
                           full):
        package, version, path = CDNJS_TO_NPM.get(m[1], m[1]), m[2], m[3]
    else:
        raise PublishError(f"no npm source known for {url} (add a rule to asv_bench/publish.py)")
    note = ""
    if (package, version) in NPM_SUBSTITUTES:
        wanted = version
        version, why = NPM_SUBSTITUTES[package, version]
        note = f"asv asks for {wanted}, which is not on npm; {version} is {why}"
    return Asset(url, package, version, path, note)


def npm_cache() -> Path:
    if folder := os.environ.get("MMARRAY_ASV_ASSETS"):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmarray-asv-assets"


def fetch_package(package: str, version: str, cache: Path, wanted_by: str) -> Path:
    """The unpacked ``package@version`` from the cache, fetched with ``npm pack`` if missing."""
    target = cache / f"{package.replace('/', '+')}@{version}"
    if (target / COMPLETE).exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise PublishError(f"npm is needed to fetch {package}@{version} (for {wanted_by}) "
                           "and is not installed: apt-get install npm")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--json", "--pack-destination", tmp],
            capture_output=True, text=True, cwd=tmp, check=False,
        )
        if proc.returncode != 0:
            lines = [ln.removeprefix("npm error").strip() for ln in proc.stderr.splitlines()
                     if ln.startswith("npm error")]
            lines = [ln for ln in lines if ln and not ln.startswith(("code ", "A complete log"))]
            reason = lines[0] if lines else f"npm pack exited with status {proc.returncode}"
            raise PublishError(f"cannot fetch {package}@{version} from npm "
                               f"(for {wanted_by}): {reason}")
        (tarball,) = Path(tmp).glob("*.tgz")
        unpacked = Path(tmp, "unpacked")
        _unpack(tarball, unpacked)
        (unpacked / COMPLETE).write_text(f"{package}@{version}\n")
        if target.exists():  # a half-unpacked leftover
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def _unpack(tarball: Path, dest: Path) -> None:
    """Extract an npm tarball without its top folder (usually ``package/``)."""
    dest.mkdir()
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts[1:]
            if not member.isfile() or not parts or ".." in parts:
                continue
            out = dest.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def package_file(root: Path, path: str) -> PurePosixPath | None:
    """``path`` inside the package, or the unminified file when npm ships no
    ``.min`` copy (cdnjs minifies flot itself)."""
    for candidate in (path, path.replace(".min.", ".")):
        if (root / candidate).is_file():
            return PurePosixPath(candidate)
    return None


# -- making the html folder self-contained ----------------------------------------------------


def sri(data: bytes, integrity: str) -> bool:
    """Whether ``data`` matches any hash of a subresource-integrity value."""
    for token in integrity.split():
        algo, _, digest = token.partition("-")
        if algo in ("sha256", "sha384", "sha512"):
            ours = base64.b64encode(hashlib.new(algo, data).digest()).decode()
            if ours == digest.split("?")[0]:
                return True
    return False


def _copy(root: Path, path: PurePosixPath, dest_dir: Path) -> None:
    dest = dest_dir.joinpath(*path.parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root.joinpath(*path.parts), dest)


def _copy_dependencies(root: Path, path: PurePosixPath, dest_dir: Path, what: str) -> None:
    """Copy what a stylesheet's ``url(...)`` (fonts, images) and a script's
    source map point to, keeping the package's layout so relative URLs work."""
    text = (root / path).read_text(encoding="utf-8", errors="replace")
    refs = []
    if path.suffix == ".css":
        for _, ref in _CSS_URL.findall(text):
            if ref.startswith(("data:", "#")):
                continue
            if re.match(r"(?:[a-z]+:)?//", ref, re.IGNORECASE):
                raise PublishError(f"{what} loads {ref} from the network")
            refs.append((re.split(r"[?#]", ref)[0], True))
    refs += [(ref, False) for ref in _SOURCE_MAP.findall(text) if "//" not in ref]
    for ref, required in refs:
        dep = PurePosixPath(os.path.normpath(str(path.parent / ref)))
        if dep.parts[0] == "..":
            raise PublishError(f"{what} points outside its package: {ref}")
        if (root / dep).is_file():
            _copy(root, dep, dest_dir)
        elif required:
            raise PublishError(f"{what} needs {ref}, which its npm package lacks")


def vendor_assets(html_dir: Path, cache: Path) -> list[tuple[Asset, str]]:
    """Replace every CDN script and stylesheet of the published pages by a
    local copy from npm; return what was done, one line per asset."""
    pages = sorted(html_dir.glob("*.html"))
    if not (html_dir / "index.html").is_file():
        raise PublishError(f"{html_dir / 'index.html'} is missing: did asv publish run?")
    done: dict[str, tuple[Asset, str]] = {}
    for page in pages:
        text = page.read_text(encoding="utf-8")

        def rewrite(tag: re.Match) -> str:
            html = tag[0]
            attr = _URL_ATTR.search(html)
            if attr is None:
                return html
            url = attr[3]
            asset = npm_source(url)
            root = fetch_package(asset.package, asset.version, cache, url)
            found = package_file(root, asset.path)
            if found is None:
                raise PublishError(f"{asset.package}@{asset.version} on npm has no "
                                   f"{asset.path} (for {url})")
            minified_by_cdn = str(found) != asset.path
            asset = Asset(url, asset.package, asset.version, str(found), asset.note)
            pkg_dir = html_dir / asset.folder
            _copy(root, found, pkg_dir)
            _copy_dependencies(root, found, pkg_dir, url)
            integrity = _INTEGRITY.search(html)
            if integrity and sri((root / found).read_bytes(), integrity[2]):
                status = "the CDN's file: asv's integrity hash matches"
            else:
                # Not the CDN's bytes (cdnjs minifies flot itself; a substitute):
                # a stale hash would make the browser refuse the file.
                html = _INTEGRITY.sub("", html)
                if asset.note:
                    status = asset.note
                elif minified_by_cdn:
                    status = "npm has it unminified; the CDN minifies its own copy"
                else:
                    status = "same release as the CDN's, not byte-identical"
            done.setdefault(url, (asset, status))
            html = _CDN_ATTRS.sub("", html)
            return html.replace(attr[0], f'{attr[1]}="{asset.local}"')

        new = _TAG.sub(rewrite, text)
        if new != text:
            page.write_text(new, encoding="utf-8")
    check_offline(html_dir)
    return list(done.values())


def check_offline(html_dir: Path) -> None:
    """Fail if any page or stylesheet still loads something from the network."""
    for path in sorted(html_dir.rglob("*")):
        if path.suffix == ".html":
            for tag in _TAG.finditer(path.read_text(encoding="utf-8", errors="replace")):
                if attr := _URL_ATTR.search(tag[0]):
                    raise PublishError(f"{path.name} still loads {attr[3]}")
        elif path.suffix == ".css":
            for _, ref in _CSS_URL.findall(path.read_text(encoding="utf-8", errors="replace")):
                if re.match(r"(?:[a-z]+:)?//", ref, re.IGNORECASE):
                    raise PublishError(f"{path.relative_to(html_dir)} still loads {ref}")


# -- asv -----------------------------------------------------------------------------------------


def asv(config: Path, *args: str) -> None:
    """Run an asv command in this interpreter (``-E existing:same`` benchmarks it)."""
    cmd = [sys.executable, "-m", "asv", "--config", str(config), *args]
    print("$ asv " + " ".join(args), flush=True)
    code = subprocess.run(cmd, cwd=REPO, check=False).returncode
    if code != 0:
        print(f"publish.py: error: asv {args[0]} failed (exit status {code})", file=sys.stderr)
        raise SystemExit(code)


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PublishError(f"git {' '.join(args)} failed: {proc.stderr.strip() or 'not a repo?'}")
    return proc.stdout.strip()


def check_history() -> None:
    if git("rev-parse", "--is-shallow-repository") == "true":
        raise PublishError("this is a shallow clone and asv publish silently drops commits "
                           "it cannot see: run `git fetch --unshallow` first")


def load_config(config: Path) -> tuple[Path, Path]:
    """``(results_dir, html_dir)`` of an asv config, as absolute paths."""
    try:
        from asv.config import Config
    except ImportError:
        raise PublishError('asv is not installed: python -m pip install -e ".[bench]"') from None
    if not config.is_file():
        raise PublishError(f"no asv config at {config}")
    conf = Config.load(str(config))
    return config.parent / conf.results_dir, config.parent / conf.html_dir


def record(config: Path, quick: bool, benches: list[str]) -> None:
    """Run the suite in this interpreter and file the results under HEAD."""
    if not Path("~/.asv-machine.json").expanduser().exists():
        asv(config, "machine", "--yes")
    head = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        print(f"note: the working tree has changes; its results are filed under {head[:8]}")
    size = os.environ.get("ASV_MMARRAY_FILE_MB", "256")
    print(f"== recording {head[:8]} (ASV_MMARRAY_FILE_MB={size})", flush=True)
    args = ["run", "-E", "existing:same", "--set-commit-hash", head, "--show-stderr"]
    if quick:
        args.append("--quick")
    for bench in benches:
        args += ["-b", bench]
    asv(config, *args)


def has_results(results_dir: Path) -> bool:
    return any(p.name != "machine.json" for p in results_dir.glob("*/*.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python asv_bench/publish.py",
        description="Record asv results for HEAD and publish a dashboard that works offline.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--run", dest="run", action="store_true", default=True,
                      help="run the benchmarks for the current commit first (default)")
    mode.add_argument("--reuse", dest="run", action="store_false",
                      help="publish the results recorded so far, run nothing")
    parser.add_argument("--quick", action="store_true",
                        help="one sample per benchmark (asv run --quick; results are saved)")
    parser.add_argument("-b", "--bench", action="append", default=[], metavar="REGEX",
                        help="only benchmarks matching REGEX (asv run -b; repeatable)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="asv config (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.run and (args.quick or args.bench):
        parser.error("--quick and --bench apply to --run only")
    config = args.config.resolve()
    try:
        results_dir, html_dir = load_config(config)
        check_history()
        if args.run:
            record(config, args.quick, args.bench)
        elif not has_results(results_dir):
            raise PublishError(f"no results recorded in {results_dir}: run without --reuse")
        asv(config, "publish")
        cache = npm_cache()
        print(f"== making {html_dir} self-contained (npm packages cached in {cache})",
              flush=True)
        for asset, status in vendor_assets(html_dir, cache):
            print(f"  {asset.local}  ({status})")
    except PublishError as exc:
        print(f"publish.py: error: {exc}", file=sys.stderr)
        return 1
    shown = os.path.relpath(html_dir)
    print(f"\nThe dashboard in {shown}/ needs no internet. View it with\n"
          f"  asv --config {os.path.relpath(config)} preview\n"
          f"or\n  python -m http.server -d {shown} --bind 127.0.0.1 8080\n"
          "and open http://127.0.0.1:8080/ (as a file:// URL it cannot load its data).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
