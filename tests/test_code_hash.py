"""A stage's code hash covers the code it runs, and no more: an edit in the bench's task makes bench (and report,
which reads its CSV) out of date, an edit in the converter's task convert and what follows it; `status` names the
file, the param or the input that changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ALL_STAGES, ROOT_DIR, write_config
from stages.__main__ import main
from stages.engine.lock import PACKAGE_DIR, code_files


def _rel(files: list[Path]) -> set[str]:
    return {f.relative_to(PACKAGE_DIR.parent).as_posix() for f in files}


def test_code_files_of_a_stage_module():
    bench = _rel(code_files("stages.bench"))
    # the module, what it imports, and what those import inside functions (tasks.py imports timing.py in bench())
    assert {"stages/bench/__init__.py", "stages/bench/tasks.py", "stages/bench/cells.py",
            "stages/ondevice/timing.py", "stages/core/isolate.py"} <= bench
    # never the runner, the CLI, the tools, or another stage
    others = {f"stages/{s}.py" for s in ALL_STAGES if s not in ("bench", "report")} | {"stages/report/__init__.py"}
    assert not {f for f in bench if f.startswith(("stages/engine/", "stages/tools/")) or f == "stages/__main__.py"
                or f in others}, bench
    # the converter's task lives in the conversion library: no stage before convert covers it
    for stage in ("export_encoder", "export_decoder", "simplify"):
        code = _rel(code_files(f"stages.{stage}"))
        assert "stages/conversion/mnn.py" not in code and "stages/bench/tasks.py" not in code, stage


def _status_of(out: str) -> dict[str, str]:
    """{stage: the rest of its status line}."""
    return {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip()}


@pytest.fixture
def source_copy(tmp_path):
    """The source tree (stages/, pipeline.yaml, configs/ and the tiny sweep in tests/configs/) copied, so a test
    can edit its code."""
    src = tmp_path / "src"
    shutil.copytree(ROOT_DIR / "stages", src / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for configs in ("configs", "tests/configs"):
        shutil.copytree(ROOT_DIR / configs, src / configs)
    shutil.copy(ROOT_DIR / "pipeline.yaml", src)
    return src


def _status(src: Path, cfg: Path, root: Path) -> dict[str, str]:
    """`python -m stages status` run with the copy's code (its tree first on sys.path, its tree as cwd)."""
    out = subprocess.run([sys.executable, "-m", "stages", "status", "--model", str(cfg), "--root", str(root)],
                         cwd=src, env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return _status_of(out.stdout)


@pytest.mark.parametrize(("edited", "direct", "after"), [
    # the bench's task: bench itself; report reads latency.csv
    ("stages/bench/tasks.py", ["bench"], {"report": "bench"}),
    # the converter's task (mnnconvert, smoke_run) is in stages/conversion/mnn.py: convert and the stages that call
    # the converter themselves (quantize, profile), then what reads their outputs; nothing before convert
    ("stages/conversion/mnn.py", ["convert", "quantize", "profile"], {"parity": "convert",
                                                               "bench": "convert, parity", "report": "bench, parity"}),
])
def test_an_edit_in_a_task_makes_its_stage_and_what_follows_out_of_date(fp32_only, source_copy, edited, direct,
                                                                          after):
    root, cfg = fp32_only
    status = _status(source_copy, cfg, root)
    assert all(status[s].startswith("up to date") for s in ALL_STAGES), status  # the copy's code is the build's
    file = source_copy / edited
    file.write_text(file.read_text() + "\n\ndef _edited():\n    return 1\n")
    status = _status(source_copy, cfg, root)
    for stage in direct:
        assert status[stage].startswith(f"will run: code changed: {edited}"), (stage, status)
    for stage, who in after.items():
        assert status[stage].startswith(f"will run: after {who} "), (stage, status)
    fresh = [s for s in ALL_STAGES if s not in [*direct, *after]]
    assert all(status[s].startswith("up to date") for s in fresh), status


def test_status_names_changed_params_and_inputs(fp32_only, capsys):
    root, cfg = fp32_only
    write_config(cfg, base=cfg, **{"convert.timeout_s": 901})
    sim = root / "build" / "tiny_fp32" / "onnx" / "decoder.sim.onnx"
    sim.write_bytes(sim.read_bytes() + b"\0")
    assert main(["status", "--model", str(cfg), "--root", str(root)]) == 0
    status = _status_of(capsys.readouterr().out)
    assert status["simplify"].startswith(f"will run: output {sim} changed since it was made"), status
    assert status["convert"].startswith("will run: params changed: convert; deps changed: "
                                        "build/tiny_fp32/onnx/decoder.sim.onnx"), status
    assert status["export_encoder"].startswith("up to date"), status
    assert status["report"].startswith("will run: after "), status
