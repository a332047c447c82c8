"""A real demo server and a real browser for tests: `python -m stages demo` in its own process on 127.0.0.1, and
Debian's headless Chromium driven by Playwright (its own browser download is not used: executable_path)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from stages.core import debian

ROOT_DIR = Path(__file__).resolve().parent.parent
# flags from this machine kind's notes: without the background-networking ones Chromium keeps calling out
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"]


@contextlib.contextmanager
def demo_server(root: Path, model: str, *extra: str, timeout_s: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the demo on a free port; yield its base URL and process; stop it afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "stages", "demo", "--model", model, "--root", str(root),
                             "--port", "0", "--threads", "1", *extra], cwd=ROOT_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"the demo server exited with {proc.wait()}:\n{''.join(lines)}")
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
            if time.monotonic() > deadline:
                raise AssertionError(f"the demo server did not start in {timeout_s} s:\n{''.join(lines)}")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Debian Chromium (installed with apt-get when the tests run as root, as in CI)."""
    from playwright.sync_api import sync_playwright

    exe = debian.ensure({"chromium": "chromium"}, "the demo's browser tests")["chromium"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


MASK_PIXELS_JS = """([x, y, r]) => {
  const c = document.getElementById('mask-layer');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let total = 0, near = 0;
  for (let i = 3; i < d.length; i += 4) {
    if (d[i] > 0) {
      total++;
      const px = ((i - 3) / 4) % c.width, py = Math.floor((i - 3) / 4 / c.width);
      if (Math.abs(px - x) <= r && Math.abs(py - y) <= r) near++;
    }
  }
  return {total, near, width: c.width, height: c.height};
}"""


def mask_pixels(page, x: float = 0, y: float = 0, r: int = 3) -> dict:
    """Tinted pixels on the page's mask layer: in all, and within r pixels of (x, y) in image pixels."""
    return page.evaluate(MASK_PIXELS_JS, [x, y, r])
