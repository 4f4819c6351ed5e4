"""Headless Chromium driven over the DevTools protocol on a pipe: open a page, run JavaScript, take screenshots.

Usage:
    with Browser() as browser:                       # raises BrowserMissing when no chromium is installed
        page = browser.open(Path("runs/a/report/index.html"))
        page.evaluate("document.title")              # the value of a JavaScript expression
        page.click("#pseudo th[data-key=conf]")      # a real mouse click at the element's centre
        page.screenshot("#agents", Path("agents.png"))
        page.errors                                  # console errors, uncaught exceptions, failed loads

The browser reads commands on file descriptor 3 and answers on 4 (`--remote-debugging-pipe`, what Puppeteer's
`pipe: true` uses): no port, no websocket library and nothing downloaded; Debian's `chromium` package is enough.
Every message is one JSON object ended by a NUL byte. Tests and bench.report use it; nothing here is needed to
build a report.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# where Debian and other distributions put the browser
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserMissing(RuntimeError):
    """No Chromium executable was found."""


class BrowserError(RuntimeError):
    """The browser answered a command with an error, closed, or did not answer in time."""


def find_chromium() -> str | None:
    """Path of a Chromium executable ($CHROMIUM first, then the usual names on PATH), or None."""
    given = os.environ.get("CHROMIUM")
    if given:
        return given if Path(given).is_file() else shutil.which(given)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab, attached in flat mode (commands carry its session id)."""

    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session
        # "console error: ..." / "exception: ..." / "log error: ..." in the order they came
        self.errors: list[str] = []

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited); raises BrowserError when the
        expression throws."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]!r} threw: {text}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll `expression` until it is truthy; returns its value. Raises BrowserError after `timeout` s."""
        end = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > end:
                raise BrowserError(f"waited {timeout} s for {expression!r}")
            time.sleep(0.05)

    def box(self, selector: str) -> dict[str, float]:
        """x, y, width, height of the first element matching `selector`, in page (document) pixels, scrolled
        into view first."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        return box

    def click(self, selector: str) -> None:
        """A left mouse press and release at the centre of the first element matching `selector`."""
        box = self.box(selector)
        scroll = self.evaluate("[scrollX, scrollY]")
        x, y = box["x"] - scroll[0] + box["width"] / 2, box["y"] - scroll[1] + box["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def select(self, selector: str, value: str) -> None:
        """Choose `value` in the <select> matching `selector`, as a user would (a change event follows)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event('change', {{bubbles: true}})); }})()")

    def screenshot(self, selector: str, path: Path) -> Path:
        """PNG of the first element matching `selector` (the whole element, beyond the viewport too)."""
        box = self.box(selector)
        answer = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": box["x"], "y": box["y"], "width": max(box["width"], 1), "height": max(box["height"], 1),
                     "scale": 1}})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(answer["data"]))
        return path


class Browser:
    """A headless Chromium process and its DevTools pipe; a context manager that closes the browser."""

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserMissing("no chromium on PATH; install it (Debian: apt-get install -y chromium) or set "
                                 "$CHROMIUM to its path")
        self.width, self.height = width, height
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []
        self._pages: dict[str, Page] = {}
        self._profile = tempfile.TemporaryDirectory(prefix="mer-semi-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire() -> None:  # in the child: the browser reads fd 3 and writes fd 4
            # through fresh copies, since dup2 onto itself would leave a descriptor close-on-exec
            reading, writing = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(reading, 3)
            os.dup2(writing, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.process = subprocess.Popen(
            [self.executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-sync", "--mute-audio", "--hide-scrollbars",
             f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # close_fds would shut 3 and 4 after `wire`; Python's own descriptors are close-on-exec anyway
            close_fds=False, preexec_fn=wire)
        os.close(to_browser_read)
        os.close(from_browser_write)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("Browser.close", timeout=5.0)
            except (BrowserError, OSError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def _read_message(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\0" not in self._buffer:

            left = end - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from the browser in {timeout} s")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"the browser closed the pipe (exit code {self.process.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _dispatch(self, event: dict) -> None:
        """Record page errors from events; keep the rest for wait_event."""
        page = self._pages.get(event.get("sessionId", ""))
        method, params = event.get("method"), event.get("params", {})
        if page is not None:
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                page.errors.append(f"console error: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                page.errors.append("exception: " + (details.get("exception", {}).get("description")
                                                    or details.get("text", "")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                page.errors.append(f"log error: {entry.get('text')} {entry.get('url', '')}".strip())
        self._events.append(event)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        """Send one command and return its result; events that arrive meanwhile are dispatched."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read_message(timeout)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                return answer.get("result", {})
            self._dispatch(answer)

    def wait_event(self, method: str, session: str | None = None, timeout: float = 30.0) -> dict:
        """The params of the first event `method` (of `session`) not yet taken, waiting for it if need be."""
        end = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method and (session is None or event.get("sessionId") == session):
                    del self._events[i]
                    return event.get("params", {})
            left = end - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no {method} event in {timeout} s")
            self._dispatch(self._read_message(left))

    def open(self, path: Path | str, timeout: float = 30.0) -> Page:
        """A new tab with `path` (a file, or any URL) loaded: returns once its load event has fired."""
        url = Path(path).resolve().as_uri() if not str(path).startswith(("file:", "http:", "https:", "about:")) \
            else str(path)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        self._events = [e for e in self._events if e.get("sessionId") != session]
        page.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", session, timeout)
        return page
