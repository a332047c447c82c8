"""What the MNN runner's process runs on and in: the CPU's name, peak memory and threads, the C-level stdout
MNN prints to (captured, so its CPU-feature and backend-fallback lines can be read), and numpy's BLAS threads.
Standard library (and threadpoolctl when present) only: it ships to a device beside mnn_runner.py."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import tempfile
from pathlib import Path


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers: where stdout is a pipe (an SSH session), printf's lines sit in a buffer and
    would reach the file descriptor only after it has been put back."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def captured_stdout(into: list[str]):
    """Capture what native code prints on file descriptor 1 (MNN prints the CPU features with printf),
    echo it to the real stdout afterwards (the caller's log keeps it), and add its lines to `into`."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            into.extend(text.splitlines())


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a target: this file ran as a script, which set OPENBLAS_NUM_THREADS=1 before numpy loaded
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas():
    """numpy's OpenBLAS threads busy-wait after each call and take the cores MNN's own threads need: vit_t's
    decoder with its masks upsampled in numpy (2 ms of BLAS) ran 2x slower than without, in a loop, until that
    BLAS work ran on one thread (same 2 ms: the blocks are small). Limited only around the runner's own numpy
    work, so the caller's numpy (preprocessing) keeps its threads."""
    ctl = _blas_controller()
    if ctl is None:
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def cpu_model() -> str:
    """The CPU's name as the kernel reports it (x86 "model name", ARM "Hardware" / "Model" or the part number)."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or platform.machine()


def process_stats() -> dict:
    """Peak resident memory (VmHWM: getrusage's ru_maxrss carries the forking parent's over exec) and the
    number of OS threads of this process."""
    stats = {"peak_rss_mb": float("nan"), "os_threads": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                stats["peak_rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                stats["os_threads"] = int(line.split()[1])
    except OSError:
        pass
    return stats
