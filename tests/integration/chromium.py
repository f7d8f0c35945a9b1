"""Headless Chromium for page tests: find the binary, dump a page's DOM with its console lines."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

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
