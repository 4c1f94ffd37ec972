"""Drive one tab of the headless Chromium that `tests.helpers.browser.headless_chromium` starts: navigate,
wait, click with real mouse events and read the page back, over the DevTools protocol (`websockets`).

`Browser.render` loads a page and looks at it; a test that clicks through a page needs the tab to stay open
between steps. Clicks are `Input.dispatchMouseEvent` at an element's centre (or at an offset inside it), so
Streamlit's widgets — and its data grid, drawn on a canvas — get what a user's mouse gives them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator

from websockets.asyncio.client import connect

from tests.helpers.browser import _HTTP, Browser


class Tab:
    def __init__(self, loop: asyncio.AbstractEventLoop, ws):
        self._loop, self._ws, self._ids = loop, ws, iter(range(1, 1 << 30))

    def call(self, method: str, **params) -> dict:
        return self._loop.run_until_complete(self._call(method, params))

    async def _call(self, method: str, params: dict) -> dict:
        msg_id = next(self._ids)
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events and other replies
            msg = json.loads(await self._ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        result = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expr[:200]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait(self, expr: str, what: str, timeout: float = 60, settle: str | None = None) -> object:
        """Poll the JS expression until it is truthy, then (with `settle`, a CSS selector of a busy indicator)
        until nothing matches it and the page text is the same twice. Returns the expression's value."""
        deadline, last, stable = time.monotonic() + timeout, None, 0
        while True:
            try:
                value = self.js(expr)
            except RuntimeError:  # e.g. the page not loaded yet: no body, no element
                value = None
            if value and settle is None:
                return value
            if value:
                idle = self.js(f"document.querySelectorAll({json.dumps(settle)}).length") == 0
                text = self.text()
                stable = stable + 1 if idle and text == last else 0
                last = text
                if stable >= 2:
                    return self.js(expr)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout:.0f}s; page text: {self.text()[-800:]!r}")
            time.sleep(0.5)

    def rect(self, element: str) -> dict:
        """The viewport rectangle of the element a JS expression returns, scrolled into view first."""
        found = self.js(f"(() => {{ const e = {element}; if (!e) return null;"
                        " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                        " return {x: r.left, y: r.top, width: r.width, height: r.height}; })()")
        if not found:
            raise LookupError(f"no element for {element}")
        return found

    def click(self, element: str, dx: float | None = None, dy: float | None = None) -> None:
        """A left click at (dx, dy) inside the element a JS expression returns (default: its centre)."""
        box = self.rect(element)
        x = box["x"] + (box["width"] / 2 if dx is None else dx)
        y = box["y"] + (box["height"] / 2 if dy is None else dy)
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png",
                                          captureBeyondViewport=False)["data"])


@contextlib.contextmanager
def open_tab(browser: Browser) -> Iterator[Tab]:
    """A new tab of the browser, closed on exit."""
    request = urllib.request.Request(f"{browser.devtools}/json/new?about:blank", method="PUT")
    with _HTTP.open(request, timeout=10) as response:
        target = json.load(response)
    loop = asyncio.new_event_loop()
    ws = loop.run_until_complete(connect(target["webSocketDebuggerUrl"], max_size=None, proxy=None))
    try:
        yield Tab(loop, ws)
    finally:
        loop.run_until_complete(ws.close())
        loop.close()
        with contextlib.suppress(OSError):
            _HTTP.open(f"{browser.devtools}/json/close/{target['id']}", timeout=10).close()
