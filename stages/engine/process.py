"""A stage in its own process: forked from a server that has torch and onnx imported already, so its memory is
freed when it ends, its peak is its own, and a native crash or the kernel's OOM killer fails this stage instead
of the whole run. Log records and the outcome come back over a queue; the memory of the stage and its workers
is sampled meanwhile.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from typing import Any

from stages.core import artifacts
from stages.core.errors import PipelineError
from stages.core.signals import HELD, hold
from stages.engine.graph import Stage, StageContext
from stages.runtimes.ssh_session import CLOSE_BOUND_S

STOP_WAIT_S = CLOSE_BOUND_S + 30  # after SIGTERM, how long a stage may take to clean up before it is killed

# Heavy modules the stage processes start from: imported once by multiprocessing's fork server, so each
# stage process forks from it in about 0.1 s instead of importing torch again (about 3 s).
_PRELOAD = ["torch", "onnx", "onnxruntime", "numpy", "pandas", "stages.sam.models", "stages.core.artifacts"]


def _interrupt_once(signum, frame):
    """A stage's first SIGINT or SIGTERM unwinds it; later ones are held (stages/core/signals.py: not ignored, so
    the ssh a cleanup starts can still be stopped) and cannot cut its cleanup short. Ctrl-C reaches the stage and
    the runner together, and the runner then terminates the stage: without this, that SIGTERM could land before
    the cleanup (a remote run folder removed over SSH) had begun. The runner kills a stage still alive STOP_WAIT_S
    later, or at a second Ctrl-C."""
    import signal

    for sig in HELD:
        signal.signal(sig, hold)
    raise KeyboardInterrupt


def peak_rss_mb() -> float:
    """Peak resident memory of this process or of any child it waited for (the stage's workers), in MB."""
    import resource

    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(kib / 1024, 1)


def _stage_child(module_name: str, ctx: StageContext, queue, env: dict[str, str], level: int) -> None:
    """Body of a stage's own process: run the module, send log records and the outcome to the parent."""
    import logging.handlers
    import signal

    os.environ.clear()
    os.environ.update(env)  # the parent's environment now, not the fork server's from when it started
    signal.signal(signal.SIGTERM, _interrupt_once)  # unwind: temp files are removed on the way out
    signal.signal(signal.SIGINT, _interrupt_once)
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(queue)]
    root.setLevel(level)
    try:
        rows = importlib.import_module(module_name).run(ctx)
        queue.put(("ok", rows, "", peak_rss_mb()))
    except PipelineError as e:
        queue.put(("error", str(e), "", peak_rss_mb()))
    except KeyboardInterrupt:
        queue.put(("interrupted", "", "", peak_rss_mb()))
    except Exception as e:  # a bug or a tool's exception: the stage fails, the run goes on
        queue.put(("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=-3), peak_rss_mb()))


def in_own_process(stage: Stage, ctx: StageContext) -> tuple[str, Any, str, float, float]:
    """Run the stage's module in its own process: (kind "ok" or "error", rows or the error, traceback, peak
    RSS of the process or a worker in MB, peak of them all summed in MB). Ctrl-C / SIGTERM stop it and re-raise."""
    import multiprocessing

    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(_PRELOAD)
    q = mp.Queue()
    proc = mp.Process(target=_stage_child, name=f"stage-{stage.name}",
                      args=(stage.module, ctx, q, dict(os.environ), logging.getLogger().getEffectiveLevel()))
    proc.start()
    sampler = TreeMemory(proc.pid)
    try:
        outcome = _outcome(proc, q, stage.timeout_s)
        if outcome is TIMED_OUT:
            try:
                _stop(proc, q, stage.name)
            finally:
                for d in {o.parent for o in stage.outs}:
                    artifacts.remove_partials(d)
            return ("error", f"stage {stage.name} did not finish within {stage.timeout_s:g} s (timeout_s in "
                    "pipeline.yaml): stopped", "", float("nan"), sampler.peak_mb)
        proc.join()
    except BaseException:  # Ctrl-C / SIGTERM here: stop the stage the same way, then go on unwinding
        try:
            _stop(proc, q, stage.name)
        finally:
            for d in {o.parent for o in stage.outs}:
                artifacts.remove_partials(d)
        raise
    finally:
        q.close()
        sampler.stop()
    if outcome is None:
        from stages.core.isolate import describe_exit

        why = describe_exit(proc.exitcode)
        if proc.exitcode == -9:
            why += " (SIGKILL: often the kernel's out-of-memory killer; see `dmesg`)"
        return "error", f"stage process {why}", "", float("nan"), sampler.peak_mb
    if outcome[0] == "interrupted":
        raise KeyboardInterrupt
    return (*outcome, sampler.peak_mb)


def _stop(proc, q, name: str) -> None:
    """Terminate a stage and give it STOP_WAIT_S to clean up (the longest cleanup a stage does: an SSH target's
    close), passing its log records on meanwhile; then, or at once at another Ctrl-C / SIGTERM here, kill it."""
    import time

    log = logging.getLogger(__name__)
    try:
        if not proc.is_alive():
            return
        proc.terminate()
        log.warning("stage %s: waiting up to %d s for its cleanup; Ctrl-C again to stop it now", name, STOP_WAIT_S)
        deadline = time.monotonic() + STOP_WAIT_S
        while proc.is_alive() and time.monotonic() < deadline:
            _pass_on_logs(q, 0.2)
        if proc.is_alive():
            log.warning("stage %s killed: its cleanup took over %d s and may be incomplete", name, STOP_WAIT_S)
    except KeyboardInterrupt:
        log.warning("stage %s killed before its cleanup was done (an SSH target's run folder may be left there)",
                    name)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def _pass_on_logs(q, timeout: float) -> None:
    """Hand the child's log records that come within `timeout` to this process's loggers; drop anything else."""
    import queue as queue_mod

    try:
        item = q.get(timeout=timeout)
    except (queue_mod.Empty, OSError, EOFError, ValueError):
        return
    if isinstance(item, logging.LogRecord):
        logging.getLogger(item.name).handle(item)


TIMED_OUT = ("timed out",)


def _outcome(proc, q, timeout_s: float = float("inf")) -> tuple | None:
    """Pass the child's log records on until its outcome comes; None when it died without sending one, TIMED_OUT
    when it is still running after `timeout_s`."""
    import queue as queue_mod
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline and proc.is_alive():  # also for a stage that logs all the time
            return TIMED_OUT
        try:
            item = q.get(timeout=0.2)
        except queue_mod.Empty:
            if proc.is_alive():
                continue
            try:
                item = q.get(timeout=1.0)
            except queue_mod.Empty:
                return None
        if isinstance(item, logging.LogRecord):
            logging.getLogger(item.name).handle(item)
        else:
            return item


class TreeMemory:
    """Samples the summed resident memory of a process and all its descendants (a stage and its workers
    run at the same time: the PyTorch reference in the stage, a runtime in a worker), every `every` s."""

    def __init__(self, pid: int, every: float = 0.25):
        import threading

        self.peak_mb = 0.0
        self._pid, self._every = pid, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"memory-{pid}")
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            total = 0
            for p in [root, *self._children(root)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, round(total / 2**20, 1))
            self._done.wait(self._every)

    @staticmethod
    def _children(root) -> list:
        import psutil

        try:
            return root.children(recursive=True)
        except psutil.Error:
            return []

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

