"""The architecture issue 17 set: layers without cycles (import-linter's contracts in pyproject.toml), small
modules and functions, and a config check that imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ROOT / "stages"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
LONG_ON_PURPOSE = {("stages/__main__.py", "main")}  # the CLI's argument table


def test_import_contracts_hold():
    """Layers (a lower layer never imports a higher one, also inside a function) and no cycle in any package."""
    from importlinter.api import read_configuration  # noqa: F401  (the contracts are readable)

    out = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and " 0 broken" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]


def test_a_layer_violation_is_caught(tmp_path):
    """The contract is not vacuous: a copy of the tree where the lowest layer imports the engine fails it."""
    import shutil

    shutil.copytree(STAGES, tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    errors = tmp_path / "stages" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _late():\n    from stages.engine import run  # noqa: F401\n")
    out = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert out.returncode != 0
    assert "stages.core is not allowed to import stages.engine" in out.stdout


def _sources():
    return sorted(p for p in STAGES.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    rel = str(path.relative_to(ROOT))
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{rel}: {len(text.splitlines())} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES and (rel, n.name) not in LONG_ON_PURPOSE]
    assert not long, f"{rel}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_checking_configs_imports_no_torch():
    code = ("import sys\nfrom stages.config import known_models, load_model_config, load_sweep\n"
            "from pathlib import Path\n"
            "for m in known_models():\n    load_model_config(m)\n"
            "for s in sorted(Path('configs/sweeps').glob('*.yaml')):\n    load_sweep(s.stem)\n"
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'MNN') if m in sys.modules)\n"
            "print('heavy:', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout, out.stdout
