"""Parity on the tiny SAM: correct artifacts pass, broken or NaN ones fail, thresholds decide the verdict."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pandas as pd
import yaml
from onnx import numpy_helper

from conftest import write_config
from stages.__main__ import main
from stages.sam.metrics import mask_iou, tensor_metrics, within_tol


def _parity(root, cfg_name="tiny_vit_t") -> pd.DataFrame:
    return pd.read_csv(root / "reports" / cfg_name / "parity.csv")


def _edit_initializer(path, pick, change) -> str:
    """Change one weight tensor of an ONNX file in place; return its name."""
    model = onnx.load(path)
    init = pick(model.graph.initializer)
    arr = change(numpy_helper.to_array(init).copy())
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(model, path)
    return init.name


def _largest(inits):
    return max((i for i in inits if i.data_type == onnx.TensorProto.FLOAT), key=lambda i: np.prod(i.dims))


def test_metrics_on_known_values():
    ref = np.array([[1.0, -1.0], [2.0, -2.0]], np.float32)
    m = tensor_metrics(ref * 1.01, ref)
    assert np.isclose(m["cosine"], 1.0) and np.isclose(m["rel_l2"], 0.01) and np.isclose(m["max_abs"], 0.02)
    assert mask_iou(np.array([1.0, 1.0, -1.0, -1.0]), np.array([1.0, -1.0, -1.0, -1.0])) == 0.5
    assert mask_iou(-np.ones(4), -np.ones(4)) == 1.0
    assert within_tol(np.array([0.0, 0.5, 2.0]), np.array([0.0, 0.0, 2.0]), rtol=0.1) == 2 / 3
    assert np.isnan(tensor_metrics(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))["cosine"])
    assert np.isnan(mask_iou(np.array([np.inf, 1.0]), np.array([1.0, 1.0])))


def test_correct_artifacts_pass_with_a_row_per_step(tiny_run):
    root, _, results = tiny_run
    assert {r.stage: r.status for r in results}["parity"] == "ran"
    df = _parity(root)
    ran = df[df["status"] == "ok"]
    assert ran[ran["gate"]]["pass"].all()
    assert list(df.drop_duplicates("cell")["cell"]) == ["onnx@fp32", "onnx-sim@fp32", "mnn-fp32@normal",
                                                       "mnn-fp32@high", "mnn-fp32@low", "mnn-fp16@normal",
                                                       "mnn-wint8@normal", "mnn-wint8@normal~memory-low",
                                                       "mnn-fp32-static@normal", "mnn-fp32-scaleq@normal", "mnn-fp32-lean@normal",
                                                       "mnn-fp32-lean-t@normal",
                                                       "mnn-int8@normal",
                                                       "ort-int8-dynamic@fp32", "ort-int8-static@fp32"]
    # precision low computes fp32 on this x86 CPU: its rows say so instead of repeating precision normal's
    low = df[df["cell"] == "mnn-fp32@low"]
    assert low["status"].str.startswith("skipped: precision low computes exactly what precision normal does").all()
    assert low["pass"].isna().all() and (low["fp16_compute"] == "no").all()
    assert set(df[df["cell"] != "mnn-fp32@low"]["status"]) == {"ok"}
    int8 = df[df["tier"] == "int8"]  # full int8: checked against its target, never gating the run
    assert len(int8) == 9 and not int8["gate"].any()
    assert int8[int8["component"] == "encoder"]["cosine"].notna().all()  # they ran and were scored
    assert set(int8["runtime"]) == {"mnn", "onnxruntime"}
    assert df["step"].is_monotonic_increasing
    assert set(df["component"]) == {"encoder", "decoder", "e2e"}
    assert (df["weights"] == "random-seed-0").all()
    enc = df[(df["component"] == "encoder") & (df["status"] == "ok")]
    assert enc["cosine"].notna().all() and enc["rel_l2"].notna().all()
    dec = df[(df["component"] != "encoder") & (df["status"] == "ok")]
    assert dec["mask_iou"].notna().all() and (dec["n_cases"] == 2 * 5).all()  # 2 photos x 5 prompts


# The three tests below re-run parity on a copy of the fp32-only tiny build (ONNX, simplified ONNX, MNN fp32; one
# photo): the steps a damaged artifact is found at are the same as in the full build, at a fraction of the cost.


def test_zeroed_encoder_layer_fails_at_the_step_that_broke(fp32_only, caplog):
    root, cfg_path = fp32_only
    sim = root / "build" / "tiny_fp32" / "onnx" / "encoder.sim.onnx"
    _edit_initializer(sim, _largest, np.zeros_like)
    with caplog.at_level(logging.ERROR):
        code = main(["run", "--model", str(cfg_path), "--root", str(root), "parity", "--single"])
    assert code == 1
    assert "failed checks" in caplog.text and "onnx-sim@fp32" in caplog.text
    df = _parity(root, "tiny_fp32").set_index(["cell", "component"])
    assert df.loc[("onnx@fp32", "encoder"), "pass"]  # the raw export is still right ...
    assert not df.loc[("onnx-sim@fp32", "encoder"), "pass"]  # ... divergence enters at simplify
    assert not df.loc[("onnx-sim@fp32", "e2e"), "pass"]
    assert df.loc[("mnn-fp32@normal", "encoder"), "pass"]  # MNN was converted before the damage


def test_nan_output_fails(fp32_only):
    root, cfg_path = fp32_only
    sim = root / "build" / "tiny_fp32" / "onnx" / "decoder.sim.onnx"
    _edit_initializer(sim, _largest, lambda a: np.full_like(a, np.nan))
    assert main(["run", "--model", str(cfg_path), "--root", str(root), "parity", "--single"]) == 1
    df = _parity(root, "tiny_fp32").set_index(["cell", "component"])
    row = df.loc[("onnx-sim@fp32", "decoder")]
    assert not row["pass"] and "non-finite" in row["failed_checks"]
    assert df.loc[("onnx@fp32", "decoder"), "pass"]


def test_threshold_edit_changes_the_verdict(fp32_only):
    root, cfg_path = fp32_only
    # a tier for MNN fp32 at precision normal only (variant@precision), stricter than the fp32 one
    fp32 = yaml.safe_load(cfg_path.read_text())["parity"]["thresholds"]["fp32"]
    write_config(cfg_path, base=cfg_path, **{"parity.thresholds.fp32@normal": {**fp32, "rel_l2": 1e-9}})
    assert main(["run", "--model", str(cfg_path), "--root", str(root), "parity", "--single"]) == 1
    df = _parity(root, "tiny_fp32")
    failed = df[(df["pass"] == False) & df["gate"]]  # noqa: E712 (pass is empty for a skipped cell)
    assert set(failed["cell"]) == {"mnn-fp32@normal"} and set(failed["component"]) == {"encoder"}
    assert "rel_l2" in failed.iloc[0]["failed_checks"] and failed.iloc[0]["th_rel_l2"] == 1e-9
    assert df[df["cell"] != "mnn-fp32@normal"]["pass"].all()  # the ONNX cells keep the fp32 tier
