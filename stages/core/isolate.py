"""Run native tools (MNN converter, quantizer, runtimes) in a child process, so a segfault fails one cell.

A task is a function `task(request: dict) -> dict` in the module of what uses it (the bench's in
stages/bench/tasks.py, the converter's in stages/conversion/mnn.py, ...). The child is `python -m stages.core.child MODULE
TASK REQUEST.json` (stages/core/child.py); it writes the task's result as JSON. Its output goes to a log file that is
kept; on failure the caller gets the exit signal and the last lines of that log. This module imports nothing of the
project: a stage that isolates a task imports the task's module itself, so its code hash covers that code only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class IsolatedResult:
    ok: bool
    returncode: int | None
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    log_tail: str = ""

    @property
    def why(self) -> str:
        """One line for a CSV status: the error, the signal, and the last log lines."""
        tail = " | ".join(line.strip() for line in self.log_tail.splitlines()[-4:] if line.strip())
        return f"{self.error}" + (f" [last output: {tail}]" if tail else "")


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not finish"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name} ({-returncode})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


Task = Callable[[dict[str, Any]], dict[str, Any]]


def task_name(task: Task | str) -> tuple[str, str]:
    """(module, function) of a task function, or of "module:function"."""
    if isinstance(task, str):
        module, _, function = task.partition(":")
        if not module or not function:
            raise ValueError(f"task {task!r} is not 'module:function'")
        return module, function
    return task.__module__, task.__name__


def run_isolated(task: Task | str, request: dict[str, Any], log_file: Path, timeout_s: float) -> IsolatedResult:
    """Run `task` (a function, or "module:function") with `request` in a child process; never raises for a crash
    or a timeout. Errors name the task by its function's name."""
    module, function = task_name(task)
    # the package comes from this process's tree
    tree = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p)}
    return run_process([sys.executable, "-m", "stages.core.child", module, function], request, log_file, timeout_s,
                       env, function)


def run_process(argv: list[str], request: dict[str, Any], log_file: Path, timeout_s: float,
                env: dict[str, str] | None = None, what: str = "") -> IsolatedResult:
    """Run `argv REQUEST.json` (the request gains "result_file", where the child writes its JSON result) with
    its output in `log_file`; never raises for a crash or a timeout. `what` names it in errors."""
    what = what or Path(argv[-1]).name
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sam-deploy-") as tmp:
        req = Path(tmp) / "request.json"
        res = Path(tmp) / "result.json"
        req.write_text(json.dumps({**request, "result_file": str(res)}))
        # the child runs in its own temp folder: MNN's converter writes `.__convert_external_data.bin` into the
        # current directory, so two conversions sharing one (two pipelines at once) corrupted each other's
        # weights (an fp32 encoder at cosine -0.01).
        with open(log_file, "w") as out:
            proc = subprocess.Popen([*argv, str(req)], stdout=out, stderr=subprocess.STDOUT,
                                    env=env or {**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp)
            try:
                rc = proc.wait(timeout=timeout_s)
                error = "" if rc == 0 else f"{what} {describe_exit(rc)}"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc, error = None, f"{what} timed out after {timeout_s:.0f} s and was killed"
            except BaseException:  # Ctrl-C: take the child down with us
                proc.kill()
                proc.wait()
                raise
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-12:])
        result: dict[str, Any] = {}
        if res.exists():
            result = json.loads(res.read_text())
        if not error and result.get("error"):
            error = result["error"]
        if not error and not res.exists():
            error = f"{what} exited without a result"
    if error:
        log.debug("%s failed: %s\n%s", what, error, tail)
    return IsolatedResult(ok=not error, returncode=rc, result=result, error=error, log_tail=tail)
