"""Render a page in a real headless Chromium and look at the result (text, HTML, screenshot).

Why the DevTools protocol: `chromium --headless --screenshot` (even with --virtual-time-budget)
captures only Streamlit's loading skeleton, because the app arrives later over a websocket. So we
start Chromium with a remote-debugging port, open a tab over the DevTools HTTP endpoint, drive it
over its websocket, poll `document.body.innerText` in real time until the content is there, and
only then capture. Dependencies: the stdlib and `websockets` (asyncio client).
"""

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy 127.0.0.1


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@dataclass
class Page:
    text: str  # document.body.innerText
    html: str  # document.documentElement.outerHTML
    screenshot: bytes  # PNG of the viewport (the window size in FLAGS, less the browser's own bar)
    counts: dict[str, int] = field(default_factory=dict)  # CSS selector -> matches, for `count=`


class Browser:
    def __init__(self, devtools: str):
        self.devtools = devtools  # "http://127.0.0.1:<port>"

    def render(self, url: str, wait_for_text: str | None = None, absent_selector: str | None = None,
               timeout: float = 60, count: tuple[str, ...] | list[str] = ()) -> Page:
        """Open `url` in a new tab and wait until `wait_for_text` is in the page text and nothing
        matches `absent_selector` (e.g. Streamlit's '[data-testid="stStatusWidget"]', shown while
        the script runs), then until the text stops changing. Returns the page; `count` selectors
        are counted into Page.counts. Raises TimeoutError with an excerpt of the last text."""
        req = urllib.request.Request(f"{self.devtools}/json/new?about:blank", method="PUT")
        with _HTTP.open(req, timeout=10) as resp:
            tab = json.load(resp)
        try:
            return asyncio.run(self._render(tab["webSocketDebuggerUrl"], url, wait_for_text,
                                            absent_selector, timeout, list(count)))
        finally:
            with contextlib.suppress(OSError):
                _HTTP.open(f"{self.devtools}/json/close/{tab['id']}", timeout=10).close()

    async def _render(self, ws_url, url, wait_for_text, absent_selector, timeout, count) -> Page:
        async with connect(ws_url, max_size=None, proxy=None) as ws:
            ids = iter(range(1, 1 << 30))

            async def call(method: str, **params):
                msg_id = next(ids)
                await ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                while True:  # skip events and other replies
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == msg_id:
                        if "error" in msg:
                            raise RuntimeError(f"DevTools {method}: {msg['error']}")
                        return msg["result"]

            async def js(expr: str):
                res = await call("Runtime.evaluate", expression=expr, returnByValue=True)
                return res["result"].get("value")

            await call("Page.navigate", url=url)
            deadline, text, last, stable = time.monotonic() + timeout, "", None, 0
            while True:
                text = await js("document.body ? document.body.innerText : ''") or ""
                ready = (wait_for_text is None or wait_for_text in text) and (
                    absent_selector is None
                    or await js(f"document.querySelectorAll({json.dumps(absent_selector)}).length") == 0)
                stable = stable + 1 if ready and text == last else 0
                if stable >= 2:  # ready, and the text unchanged over the last two polls
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url}: no {wait_for_text!r} (absent {absent_selector!r}) "
                                       f"after {timeout:.0f}s; last text: {text[-500:]!r}")
                last = text
                await asyncio.sleep(0.5)
            html = await js("document.documentElement.outerHTML")
            counts = {sel: await js(f"document.querySelectorAll({json.dumps(sel)}).length") for sel in count}
            # The viewport only: Streamlit scrolls inside its own container, so there is nothing
            # beyond it, and captureBeyondViewport=True resizes the page for the capture, which
            # starts the sidebar's collapse/expand transition; the shot then shows the
            # navigation half slid out, its labels clipped.
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            return Page(text=text, html=html, screenshot=base64.b64decode(shot["data"]), counts=counts)


@contextlib.contextmanager
def headless_chromium(tmp_dir, startup_timeout: float = 30):
    """Start headless Chromium with a fresh profile under `tmp_dir`; yield a Browser; kill the
    whole process group on exit."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium / chromium-browser / google-chrome on PATH")
    profile = Path(tmp_dir) / f"chromium-profile-{time.monotonic_ns()}"
    profile.mkdir(parents=True)
    with open(profile.parent / f"{profile.name}.log", "wb") as log:
        yield from _run(binary, profile, log, startup_timeout)


def _run(binary, profile, log, startup_timeout):
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + startup_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit {proc.poll()}); see {log.name}")
            time.sleep(0.1)
        yield Browser(f"http://127.0.0.1:{port_file.read_text().split()[0]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # stragglers (renderers, zygote), if any
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def main() -> None:
    """Screenshots of a running dashboard for the docs:
    python -m tests.helpers.browser http://127.0.0.1:8501 docs/screenshots \\
        compare= paper study sweeps registry runs inspect"""
    import sys
    import tempfile

    base, out, *pages = sys.argv[1:]
    Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, headless_chromium(tmp) as browser:
        for page in pages:
            name, _, path = page.partition("=")
            shot = browser.render(f"{base}/{path if _ else name}",
                                  absent_selector='[data-testid="stStatusWidget"]', timeout=180).screenshot
            (Path(out) / f"{name}.png").write_bytes(shot)
            print(f"{name}: {len(shot)} bytes")


if __name__ == "__main__":
    main()
