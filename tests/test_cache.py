"""The runner's cache: nothing changed -> nothing runs; a param, a deleted output or a stale temp file re-runs
exactly what it should."""

from __future__ import annotations

import time

from conftest import statuses, write_config
from stages.artifacts import partial_name
from stages.config import load_model_config
from stages.pipeline import run_pipeline

ALL = ["export_encoder", "export_decoder", "simplify", "convert", "quantize", "parity", "bench", "profile", "report"]


def _run(root, cfg_path, **kw):
    return statuses(run_pipeline(load_model_config(str(cfg_path)), root, **kw))


def test_second_run_skips_every_stage_and_is_fast(fp32_only):
    root, cfg_path = fp32_only
    assert set(_run(root, cfg_path).values()) == {"ran"}
    t0 = time.perf_counter()
    assert _run(root, cfg_path) == dict.fromkeys(ALL, "cached")
    assert time.perf_counter() - t0 < 10


def test_param_change_reruns_that_stage_and_downstream_only(fp32_only):
    root, cfg_path = fp32_only
    _run(root, cfg_path)
    write_config(cfg_path, base=cfg_path, **{"export.multimask_output": True})
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "ran"), "export_encoder": "cached"}
    write_config(cfg_path, base=cfg_path, **{"convert.timeout_s": 901})
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "cached"), "convert": "ran"}
    write_config(cfg_path, base=cfg_path, **{"parity.thresholds.fp32.cosine": 0.999})
    assert _run(root, cfg_path) == {**dict.fromkeys(ALL, "cached"), "parity": "ran", "report": "ran"}


def test_opset_change_reruns_both_exports(fp32_only):
    root, cfg_path = fp32_only
    _run(root, cfg_path)
    write_config(cfg_path, base=cfg_path, **{"export.opset": 16})
    assert _run(root, cfg_path) == dict.fromkeys(ALL, "ran")


def test_deleted_or_altered_output_reruns_the_stage_that_makes_it(fp32_only):
    root, cfg_path = fp32_only
    _run(root, cfg_path)
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
    _run(root, cfg_path)
    out = root / "build" / "tiny_fp32" / "mnn" / "encoder.fp32.mnn"
    stale = partial_name(out)
    stale.parent.mkdir()
    stale.write_bytes(b"half a model")
    out.unlink()
    assert _run(root, cfg_path)["convert"] == "ran"
    assert not stale.exists() and not stale.parent.exists() and out.exists()
