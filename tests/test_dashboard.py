"""The asv dashboard renders offline, in a real browser (issue 8).

``asv_bench/publish.py`` builds a small dashboard -- a quick run of one
headline benchmark per area at ``ASV_MMARRAY_FILE_MB=8``, with its own asv
config, results and html folder under a temporary folder -- which is served
from 127.0.0.1 and opened in headless Chromium with every other host made
unresolvable.  The test drives Chromium over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no driver package, no port), waits until flot
has plotted the headline graph, checks that the page asked nothing of any
other host, and saves a screenshot to ``tests/artifacts/dashboard.png``.

Needs Debian's ``chromium``, asv (``pip install -e ".[bench]"``), npm (or a
filled asset cache) and the git history; it skips without them, except under
``CI=true``, where a missing piece is a failure.  Deselect with
``-m "not browser"``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
ARTIFACT = REPO / "tests" / "artifacts" / "dashboard.png"
#: One headline ratio per area: random reads, sequential scans, appends.
HEADLINES = [
    "random_reads.RandomReadRatios.track_gather_vs_buffered",
    "sequential.ScanRatios.track_mmarray_vs_readinto",
    "growth.AppendScaling.track_per_row_vs_10k",
]
SHOWN = HEADLINES[0]
#: The graph the screenshot shows: the ratio against record size, log scale.
PAGE = f"index.html#{SHOWN}?x-axis=record_bytes&y-axis-scale=log"
WINDOW = (1400, 1000)
BUILD_TIMEOUT = 300
RENDER_TIMEOUT = 30
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # Every host but the dashboard's server is unresolvable: offline for real.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]


def _missing(reason: str) -> None:
    """Skip, or fail in CI, which is meant to install everything this test needs."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


# -- building and serving the dashboard -------------------------------------------------------


def _asv_config(tmp: Path) -> Path:
    """The suite's asv config with the repository's paths made absolute and
    asv's state in ``tmp``, so recorded results are neither used nor touched."""
    from asv.util import load_json

    conf = load_json(str(REPO / "asv_bench" / "asv.conf.json"), js_comments=True)
    conf.update(
        repo=str(REPO),
        benchmark_dir=str(REPO / "asv_bench" / "benchmarks"),
        env_dir=str(tmp / "env"),
        results_dir=str(tmp / "results"),
        html_dir=str(tmp / "html"),
    )
    path = tmp / "asv.conf.json"
    path.write_text(json.dumps(conf, indent=2))
    return path


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium (or ``$MMARRAY_CHROMIUM``)."""
    for name in (os.environ.get("MMARRAY_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    _missing("headless Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Path:
    try:
        import asv  # noqa: F401
    except ImportError:
        _missing('asv is not installed (python -m pip install -e ".[bench]")')
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"],
                         capture_output=True, text=True, check=False)
    if git.returncode != 0:
        _missing("not a git checkout: asv publish needs the history")
    if git.stdout.strip() == "true":
        _missing("a shallow clone: asv publish needs the history")
    if shutil.which("npm") is None and not os.environ.get("MMARRAY_ASV_ASSETS"):
        _missing("npm is not installed (apt-get install npm)")

    tmp = tmp_path_factory.mktemp("dashboard")
    cmd = [sys.executable, str(REPO / "asv_bench" / "publish.py"), "--run", "--quick",
           "--config", str(_asv_config(tmp))]
    for name in HEADLINES:
        cmd += ["-b", name]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "ASV_MMARRAY_FILE_MB": "8"},
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        pytest.fail(f"publish.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return tmp / "html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # The browser may hang up mid-response when it closes: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server(html_dir: Path) -> Iterator[str]:
    """The dashboard served on an ephemeral port of 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


# -- a minimal DevTools-protocol client -----------------------------------------------------------


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are >= 10, so that moving them to fds 3 and 4 cannot
    overwrite one with the other."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe``: it reads
    NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4."""

    def __init__(self, exe: str, profile: Path, log: Path) -> None:
        cmd_r, cmd_w = _high_pipe()
        out_r, out_w = _high_pipe()
        # bash moves the pipe ends to fds 3 and 4 (dash takes single-digit fds only).
        script = f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "-c", script, "bash", *args, "about:blank"],
                pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True,
            )
        os.close(cmd_r)
        os.close(out_w)
        self._send, self._recv, self._buf = cmd_w, out_r, b""
        self._next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._send, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {waiting_for}")
            chunk = os.read(self._recv, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # TimeoutError is an OSError
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group start_new_session made
            self.proc.wait(10)
        os.close(self._send)
        os.close(self._recv)


#: What the page shows, gathered in the page; flot keeps its plot in .data("plot").
PROBE = """(() => {
  const nav = [...document.querySelectorAll('#graphdisplay-navigation a[href^="#"]')];
  const plot = window.jQuery && jQuery('#main-graph').data('plot');
  let series = 0, points = 0, colored = 0, xLabel = '', yLabel = '';
  if (plot) {
    // asv draws the axis labels on the canvas: ask flot for them.
    xLabel = plot.getAxes().xaxis.options.axisLabel;
    yLabel = plot.getAxes().yaxis.options.axisLabel;
    for (const s of plot.getData()) {
      series += 1;
      points += s.data.filter(p => p && p[1] !== null && isFinite(p[1])).length;
    }
    // Pixels in a series colour: the grid and axes are grey, the data is not.
    const canvas = document.querySelector('#main-graph canvas.flot-base');
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < px.length; i += 4) {
      const hi = Math.max(px[i], px[i + 1], px[i + 2]);
      const lo = Math.min(px[i], px[i + 1], px[i + 2]);
      if (px[i + 3] > 0 && hi - lo > 60) colored += 1;
    }
  }
  return {
    path: location.pathname,
    names: nav.map(a => a.textContent.trim()),
    series: series, points: points, colored: colored, xLabel: xLabel, yLabel: yLabel,
  };
})()"""

#: Open the benchmark tree down to the graph shown, as a reader would.
EXPAND = """(() => {
  for (const label of document.querySelectorAll('#graphdisplay-navigation label.nav-header')) {
    if (['random_reads', 'RandomReadRatios'].includes(label.textContent.trim())) label.click();
  }
})()"""


@pytest.fixture(scope="module")
def page(chromium: str, server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Open the headline graph; return what the page showed and asked for."""
    tmp = tmp_path_factory.mktemp("chromium")
    browser = Browser(chromium, tmp / "profile", tmp / "chromium.log")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime"):
            browser.call(f"{domain}.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=WINDOW[0],
                     height=WINDOW[1], deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", session, url=server + PAGE)
        deadline = time.monotonic() + RENDER_TIMEOUT
        while True:
            shown = browser.evaluate(session, PROBE)
            if shown["names"] and shown["points"] and shown["colored"]:
                break
            if time.monotonic() > deadline:
                break  # the assertions below say what is missing
            time.sleep(0.25)
        browser.evaluate(session, EXPAND)
        time.sleep(0.5)  # the tree opens with a 150 ms animation
        shot = browser.call("Page.captureScreenshot", session, format="png")
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_bytes(base64.b64decode(shot["data"]))
    except Exception:
        log = (tmp / "chromium.log").read_text(errors="replace")[-3000:]
        print(f"chromium log:\n{log}")
        raise
    finally:
        browser.close()
    requests = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    return {"server": server, "shown": shown, "requests": requests}


def test_page_loads_nothing_from_outside(page: dict) -> None:
    outside = [u for u in page["requests"] if not u.startswith((page["server"], "data:"))]
    assert not outside, f"the dashboard asked other hosts for {outside}"
    vendored = [u for u in page["requests"] if "/vendor/" in u]
    assert any("jquery" in u for u in vendored), page["requests"]
    assert any("flot" in u for u in vendored), page["requests"]


def test_benchmark_list_is_populated(page: dict) -> None:
    shown = page["shown"]
    assert shown["path"].endswith("/index.html"), "the page fell back to error.html"
    names = shown["names"]
    assert len(names) >= len(HEADLINES), names
    # The headline ratios are named so that a reader can find them.
    headlines = [n for n in names if n.startswith("Headline:")]
    assert len(headlines) >= 3, names


def test_headline_graph_is_drawn(page: dict) -> None:
    shown = page["shown"]
    assert shown["series"] >= 1, "flot plotted no series"
    assert shown["points"] >= 3, f"expected one point per record size, got {shown['points']}"
    assert shown["colored"] > 50, "the graph's canvas has no data drawn on it"
    # The y axis carries the ratio's unit, the x axis the parameter name.
    assert shown["yLabel"] == "time(mmarray)/time(buffered)"
    assert shown["xLabel"] == "record_bytes"
    assert ARTIFACT.stat().st_size > 10_000
