"""A native crash in the converter fails one cell with the signal in its row; everything else is kept."""

from __future__ import annotations

import signal

import pandas as pd
import pytest

from conftest import TINY, killing_worker, statuses, write_config
from stages.config import load_model_config
from stages.core.errors import PipelineError
from stages.engine.run import run_pipeline


def test_converter_crash_fails_only_its_cell(fp32_only):
    root, cfg_path = fp32_only
    write_config(cfg_path, base=cfg_path, **{"convert.variants": {"fp32": [], "fp16": ["--fp16"]}})
    cfg = load_model_config(str(cfg_path))
    with killing_worker(signal.SIGSEGV) as found:  # the copied build is up to date through simplify
        results = run_pipeline(cfg, root)
    assert found, "no converter child process was seen"
    assert statuses(results)["convert"] == "failed"
    df = pd.read_csv(root / "reports" / cfg.name / "convert.csv")
    assert len(df) == 4  # every cell has its row
    failed = df[df["status"] != "ok"]
    assert len(failed) == 1
    assert "SIGSEGV" in failed.iloc[0]["status"]
    mnn = root / "build" / cfg.name / "mnn"
    ok_cells = df[df["status"] == "ok"]["cell"]
    for cell in ok_cells:
        component, variant = cell.split("-")
        assert (mnn / f"{component}.{variant}.mnn").exists()
    assert not (mnn / f"{failed.iloc[0]['component']}.{failed.iloc[0]['variant']}.mnn").exists()
    assert not list(mnn.glob(".*partial*"))
    # the next run resumes at convert and finishes it, and parity checks what it made
    assert statuses(run_pipeline(cfg, root, targets=["parity"])) == {
        "export_encoder": "cached", "export_decoder": "cached", "simplify": "cached", "convert": "ran", "parity": "ran"}


def test_onnxsim_attention_fusion_is_rejected_before_mnn_sees_it(tmp_path):
    path = write_config(tmp_path / "c.yaml", name="tiny_sim", **{"simplify.tool": "onnxsim",
                                                                 "simplify.onnxsim_optimize": True})
    cfg = load_model_config(str(path))
    results = {r.stage: r for r in run_pipeline(cfg, tmp_path)}
    assert results["simplify"].status == "failed"
    assert "com.microsoft" in results["simplify"].detail and "MNN cannot convert" in results["simplify"].detail
    assert results["convert"].status == "skipped" and "simplify" in results["convert"].detail
    # the exports it started from are kept
    assert (tmp_path / "build" / "tiny_sim" / "onnx" / "decoder.onnx").exists()
    df = pd.read_csv(tmp_path / "reports" / "tiny_sim" / "simplify.csv")
    assert df["status"].str.startswith("failed").all()


def test_two_runs_on_one_model_do_not_overlap(tmp_path):
    from stages.engine.run import run_lock

    cfg = load_model_config(str(TINY))
    build = tmp_path / "build" / cfg.name
    with run_lock(build):
        with pytest.raises(PipelineError, match="another run .* is in progress"):
            run_pipeline(cfg, tmp_path)
