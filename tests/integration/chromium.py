"""Headless Chromium for page tests: find the binary, dump a page's DOM with its console lines."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

# With --enable-logging=stderr every console message (log, warn, error, uncaught exceptions,
# failed resource loads) comes out as one INFO:CONSOLE line; the level is not shown.
CONSOLE_LINE = re.compile(r":INFO:CONSOLE[:(]")


def chromium_binary() -> str:
    """The Chromium binary, or skip: CI installs Debian's chromium when it is root (.ci/run)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on PATH (apt-get install chromium)")


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]


def _run(args: list[str], user_data: Path, timeout_s: float) -> subprocess.CompletedProcess:
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={user_data}",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                          check=False, stdin=subprocess.DEVNULL)


def render(url: str, user_data: Path, budget_ms: int = 8000, timeout_s: float = 90) -> Rendered:
    """The DOM after the page's scripts ran (virtual time waits for its fetches) and every
    console message it produced."""
    done = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], user_data, timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if CONSOLE_LINE.search(line)]
    return Rendered(done.stdout, console)


def screenshot(url: str, path: Path, user_data: Path, size: tuple[int, int] = (1280, 900),
               budget_ms: int = 8000, timeout_s: float = 90) -> Path:
    done = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                 "--hide-scrollbars", f"--screenshot={path}", url], user_data, timeout_s)
    assert done.returncode == 0 and path.is_file(), done.stderr[-3000:]
    return path


class DevToolsPage:
    """One page of a headless Chromium driven over the DevTools protocol (the websockets client
    comes with uvicorn[standard]): evaluate scripts, collect console messages and exceptions."""

    def __init__(self, url: str, user_data: Path, timeout_s: float = 30) -> None:
        from tests.integration.stack import free_port, wait_for

        port = free_port()
        self.exits = contextlib.ExitStack()
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={user_data}", f"--remote-debugging-port={port}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            pages = wait_for(lambda: self._pages(port), timeout_s, "the DevTools endpoint")
            self.ws = self.exits.enter_context(
                connect(pages[0]["webSocketDebuggerUrl"], max_size=None))  # type: ignore[index]
        except BaseException:
            self.close()
            raise
        self.timeout_s = timeout_s
        self.next_id = 0
        self.console: list[str] = []
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", url=url)

    @staticmethod
    def _pages(port: int) -> list[dict] | None:
        try:
            listed = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
        except httpx.HTTPError:
            return None
        return [t for t in listed if t.get("type") == "page"] or None

    def send(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout_s))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
        elif message.get("method") == "Runtime.exceptionThrown":
            self.console.append(params["exceptionDetails"].get("text", "exception"))
        elif message.get("method") == "Log.entryAdded":
            self.console.append(params["entry"].get("text", ""))

    def evaluate(self, expression: str) -> object:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_until(self, expression: str, what: str) -> object:
        from tests.integration.stack import wait_for

        # Until the page has loaded the elements may not exist yet: that is "not yet", not a bug.
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        return wait_for(lambda: self.evaluate(guarded), self.timeout_s, what)

    def close(self) -> None:
        self.exits.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
