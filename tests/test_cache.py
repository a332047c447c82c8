"""The runner's cache: nothing changed -> nothing runs, also in a build moved to another folder; a param, a
deleted output or a stale temp file re-runs exactly what it should."""

from __future__ import annotations

import json

import pytest

from conftest import ALL_STAGES as ALL
from conftest import statuses, write_config
from stages.__main__ import main
from stages.config import load_model_config
from stages.core.artifacts import partial_name
from stages.engine.run import run_pipeline


def _run(root, cfg_path, **kw):
    return statuses(run_pipeline(load_model_config(str(cfg_path)), root, **kw))


def test_moved_build_is_up_to_date_and_a_second_run_runs_nothing(fp32_build, fp32_only, capsys):
    assert set(fp32_build[2].values()) == {"ran"}  # the session's build ran every stage once
    root, cfg_path = fp32_only  # ... and was copied to another root
    lock_file = root / "build" / "tiny_fp32" / "pipeline.lock.json"
    cache_file = root / "build" / "tiny_fp32" / ".file_hashes.json"  # size/mtime -> sha256, apart from the lock
    lock = json.loads(lock_file.read_text())
    assert list(lock) == ["stages"] and sorted(lock["stages"]) == sorted(ALL)
    # provenance only: params, and a hash per input, per output and per code file (no timings, no cache)
    assert all(sorted(s) == ["code", "deps", "outs", "params"] for s in lock["stages"].values()), lock
    assert all(isinstance(s[k], dict) for s in lock["stages"].values() for k in ("code", "deps", "outs"))
    paths = [*json.loads(cache_file.read_text()), *(k for s in lock["stages"].values() for k in [*s["deps"], *s["outs"]])]
    assert paths and not [p for p in paths if p.startswith("/") and str(fp32_build[0]) in p]  # relative to the root
    assert main(["status", "--model", str(cfg_path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if "up to date" in line] == ALL, out
    before, cached = lock_file.read_bytes(), cache_file.read_bytes()
    runs = (root / "reports" / "tiny_fp32" / "runs.csv").read_bytes()  # each stage's last run: when, how long, memory
    assert _run(root, cfg_path) == dict.fromkeys(ALL, "cached")
    assert lock_file.read_bytes() == before  # nothing ran ...
    assert cache_file.read_bytes() == cached  # ... nothing was re-hashed (the copy kept the mtimes) ...
    assert (root / "reports" / "tiny_fp32" / "runs.csv").read_bytes() == runs  # ... and no run was recorded


def test_status_names_the_changed_code_file(fp32_only, capsys):
    root, cfg_path = fp32_only
    lock_file = root / "build" / "tiny_fp32" / "pipeline.lock.json"
    lock = json.loads(lock_file.read_text())
    lock["stages"]["report"]["code"]["stages/report/__init__.py"] = "0" * 64  # as if report.py had been edited since
    lock_file.write_text(json.dumps(lock))
    assert main(["status", "--model", str(cfg_path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "report           will run: code changed: stages/report/__init__.py" in out, out


@pytest.mark.slow
def test_param_change_reruns_that_stage_and_downstream_only(fp32_only):
    root, cfg_path = fp32_only
    write_config(cfg_path, base=cfg_path, **{"export.multimask_output": True})
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "ran"), "export_encoder": "cached"}
    write_config(cfg_path, base=cfg_path, **{"convert.timeout_s": 901})
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "cached"), "convert": "ran"}
    write_config(cfg_path, base=cfg_path, **{"parity.thresholds.fp32.cosine": 0.999})
    # bench reads parity.csv (which cells pass decides what candidates: passing times), so it re-runs too
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "cached"), "parity": "ran", "bench": "ran", "report": "ran"}


@pytest.mark.slow
def test_opset_change_reruns_both_exports(fp32_only):
    root, cfg_path = fp32_only
    write_config(cfg_path, base=cfg_path, **{"export.opset": 16})
    # up to simplify: that the new exports carry on downstream is test_param_change's check
    assert _run(root, cfg_path, targets=["simplify"]) == dict.fromkeys(["export_encoder", "export_decoder", "simplify"], "ran")


def test_deleted_or_altered_output_reruns_the_stage_that_makes_it(fp32_only):
    root, cfg_path = fp32_only
    mnn = root / "build" / "tiny_fp32" / "mnn" / "decoder.fp32.mnn"
    mnn.unlink()
    # convert makes the same bytes again, so parity, which reads them, stays cached
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "cached"), "convert": "ran"}
    assert mnn.exists()
    report = root / "reports" / "tiny_fp32" / "simplify.csv"
    report.unlink()
    # simplify re-runs; its ONNX comes out byte-identical, so convert stays cached
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "cached"), "simplify": "ran"}


def test_partial_files_from_an_interrupted_run_are_removed(fp32_only):
    root, cfg_path = fp32_only
    out = root / "build" / "tiny_fp32" / "mnn" / "encoder.fp32.mnn"
    stale = partial_name(out)
    stale.parent.mkdir()
    stale.write_bytes(b"half a model")
    out.unlink()
    assert _run(root, cfg_path)["convert"] == "ran"
    assert not stale.exists() and not stale.parent.exists() and out.exists()
