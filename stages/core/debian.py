"""Debian packages a feature needs on the host (QEMU for the ARM64 target, Chromium for the demo's browser tests):
installed with apt-get when running as root (as CI does), otherwise an error naming the command to run."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from stages.core.errors import PipelineError

log = logging.getLogger(__name__)
APT_TIMEOUT_S = 900  # one apt-get call (update or install): a mirror that stops answering must not hold the lock


def tool(name: str) -> str | None:
    """The path of an executable on PATH or in /usr/bin or /usr/sbin (sshd; a venv's PATH may lack them)."""
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/bin", "/usr/sbin") if Path(f"{d}/{name}").exists()), None)


def ensure(needs: dict[str, str], purpose: str, install: bool = True) -> dict[str, str]:
    """needs: executable -> Debian package. Returns executable -> path, installing what is missing if allowed.
    One apt-get at a time on this machine (two test workers may ask at once): an flock serializes them."""
    def missing() -> list[str]:
        return sorted({pkg for exe, pkg in needs.items() if not tool(exe)})

    if missing() and install and os.geteuid() == 0 and shutil.which("apt-get"):
        with open(Path(tempfile.gettempdir()) / "sam-deploy-apt.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            todo = missing()  # another process may have installed them while this one waited
            if todo:
                log.info("installing Debian packages %s (%s)", " ".join(todo), purpose)
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *todo]):
                    try:
                        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S,
                                             stdin=subprocess.DEVNULL)
                    except subprocess.TimeoutExpired:
                        raise PipelineError(f"`{' '.join(argv)}` did not finish within {APT_TIMEOUT_S} s (a "
                                            "package mirror that does not answer?); nothing was installed "
                                            f"for {purpose}") from None
                    if res.returncode != 0:
                        raise PipelineError(f"`{' '.join(argv)}` failed: {(res.stderr or res.stdout).strip()[-500:]}. "
                                            f"{purpose} needs the Debian packages {', '.join(sorted(set(needs.values())))}")
    if missing():
        raise PipelineError(f"{purpose} needs the Debian packages {', '.join(missing())}: `sudo apt-get install "
                            f"{' '.join(missing())}` (they could not be installed here: "
                            f"{'not root' if os.geteuid() != 0 else 'no apt-get' if not shutil.which('apt-get') else 'installing was not asked for'})")
    return {exe: tool(exe) for exe in needs}  # type: ignore[misc]
