"""A native crash in the converter fails one cell with the signal in its row; everything else is kept."""

from __future__ import annotations

import signal
import threading
import time

import pandas as pd
import psutil
import pytest

from conftest import TINY, statuses, write_config
from stages.config import load_model_config
from stages.errors import PipelineError
from stages.pipeline import run_pipeline


def _kill_first_worker(sig: int, found: list, stop: threading.Event, task: str = "") -> None:
    """Send `sig` to the first `python -m stages.worker TASK` child seen (any task when task is empty)."""
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                cmd = child.cmdline()
                if "stages.worker" in cmd and (not task or task in cmd):
                    child.send_signal(sig)
                    found.append(child.pid)
                    return
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.005)


def test_converter_crash_fails_only_its_cell(fp32_only):
    root, cfg_path = fp32_only
    write_config(cfg_path, base=cfg_path, **{"convert.variants": {"fp32": [], "fp16": ["--fp16"]}})
    cfg = load_model_config(str(cfg_path))
    run_pipeline(cfg, root, targets=["simplify"])
    found, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_first_worker, args=(signal.SIGSEGV, found, stop))
    killer.start()
    try:
        results = run_pipeline(cfg, root)
    finally:
        stop.set()
        killer.join()
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
    # the next run resumes at convert and finishes it
    assert statuses(run_pipeline(cfg, root)) == {"export_encoder": "cached", "export_decoder": "cached",
                                                 "simplify": "cached", "convert": "ran", "quantize": "ran",
                                                 "parity": "ran",
                                                 "bench": "ran", "profile": "ran", "report": "ran"}


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
    from stages.pipeline import run_lock

    cfg = load_model_config(str(TINY))
    build = tmp_path / "build" / cfg.name
    with run_lock(build):
        with pytest.raises(PipelineError, match="another run .* is in progress"):
            run_pipeline(cfg, tmp_path)
