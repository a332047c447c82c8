"""isolate.py runs a task *function* in a child process that imports only the task's module (stages/core/child.py):
no table of tasks, and a stage's code hash covers the tasks it runs, not everyone's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from stages.core.isolate import run_isolated, task_name
from stages.runtimes.tasks import mnn_probe

ROOT = Path(__file__).resolve().parent.parent


def test_a_task_is_a_function_or_its_module_and_name(tmp_path):
    assert task_name(mnn_probe) == ("stages.runtimes.tasks", "mnn_probe")
    assert task_name("stages.bench.tasks:bench") == ("stages.bench.tasks", "bench")
    for task in (mnn_probe, "stages.runtimes.tasks:mnn_probe"):
        res = run_isolated(task, {"backend": "CPU"}, tmp_path / "probe.log", timeout_s=60)
        assert res.ok and res.result == {"created": True}, res.why


def test_a_task_that_cannot_be_found_or_raises_is_a_failed_result(tmp_path):
    res = run_isolated("stages.no_such_module:task", {}, tmp_path / "a.log", timeout_s=60)
    assert not res.ok and "ModuleNotFoundError" in res.error
    res = run_isolated(mnn_probe, {}, tmp_path / "b.log", timeout_s=60)  # no "backend": KeyError in the task
    assert not res.ok and res.error.startswith("KeyError")


def test_the_child_imports_the_task_module_not_its_stage():
    """A bench cell's child holds MNN and numpy, not the bench stage's torch and pandas (its peak RSS is a column)."""
    code = ("import sys\nfrom stages.core.child import load\nload('stages.bench.tasks')\nload('stages.quantize.tasks')\n"
            "load('stages.runtimes.tasks')\nload('stages.runtimes.roofline')\n"
            "print(sorted(m for m in ('torch', 'pandas', 'onnx', 'stages.bench', 'stages.config') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_isolate_imports_nothing_of_the_project():
    for name in ("isolate.py", "child.py"):
        tree = ast.parse((ROOT / "stages" / "core" / name).read_text())
        mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in mods if m and m.startswith("stages")], name
