"""The real export -> simplify -> convert chain on a tiny SAM: artifacts, interfaces and reports."""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
import pytest

from conftest import statuses
from stages.runtimes import MnnRuntime, OrtRuntime
from stages.runtimes.onnx_io import foreign_ops
from stages.sam.spec import component_example, decoder_example

REQUIRED_COLUMNS = {"model", "weights", "stage", "path", "bytes", "sha256", "seconds", "status",
                    "torch_version", "onnx_version", "onnxruntime_version", "mnn_version", "cpu", "cores"}


def test_every_stage_ran(tiny_run):
    _, _, results = tiny_run
    assert statuses(results) == dict.fromkeys(["export_encoder", "export_decoder", "simplify", "convert", "quantize",
                                               "parity", "bench", "profile", "report"], "ran")


@pytest.mark.parametrize("stage,rows", [("export_encoder", 1), ("export_decoder", 1), ("simplify", 2), ("convert", 14)])
def test_reports_have_one_row_per_artifact_with_provenance(tiny_run, stage, rows):
    root, cfg, _ = tiny_run
    df = pd.read_csv(root / "reports" / cfg.name / f"{stage}.csv")
    assert len(df) == rows
    assert REQUIRED_COLUMNS <= set(df.columns)
    assert (df["weights"] == "random-seed-0").all()
    assert (df["status"] == "ok").all()
    for _, row in df.iterrows():
        path = root / row["path"]
        assert path.stat().st_size == row["bytes"]
        assert len(row["sha256"]) == 64
    assert pd.api.types.is_numeric_dtype(df["bytes"]) and pd.api.types.is_numeric_dtype(df["seconds"])


def test_encoder_onnx_interface(tiny_run):
    root, cfg, _ = tiny_run
    model = onnx.load(root / "build" / cfg.name / "onnx" / "encoder.onnx")
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "image" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 1024, 1024]
    assert out.name == "image_embeddings" and [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 256, 64, 64]
    assert model.opset_import[0].version == cfg.export.opset


@pytest.mark.parametrize("num_points", [1, 3, 6])
def test_decoder_onnx_takes_any_number_of_points(tiny_run, num_points):
    root, cfg, _ = tiny_run
    rt = OrtRuntime(root / "build" / cfg.name / "onnx" / "decoder.sim.onnx")
    assert rt.input_names == ["image_embeddings", "point_coords", "point_labels", "mask_input",
                              "has_mask_input", "orig_im_size"]
    assert rt.output_names == ["masks", "iou_predictions", "low_res_masks"]
    emb = np.random.default_rng(1).standard_normal((1, 256, 64, 64)).astype(np.float32)
    feeds = decoder_example(emb, name="chelsea", num_points=num_points)
    assert feeds["point_coords"].shape[1] == max(2, num_points)
    out = rt.run(feeds)
    assert out["masks"].shape == (1, 1, 300, 451)  # chelsea is 300x451: masks come at the original size
    assert out["low_res_masks"].shape == (1, 1, 256, 256)
    assert out["iou_predictions"].shape == (1, 1)


def test_simplified_models_hold_only_default_domain_ops(tiny_run):
    root, cfg, _ = tiny_run
    for component in ("encoder", "decoder"):
        model = onnx.load(root / "build" / cfg.name / "onnx" / f"{component}.sim.onnx")
        assert foreign_ops(model) == []


@pytest.mark.parametrize("component", ["encoder", "decoder"])
def test_mnn_variants_load_run_and_match_onnxruntime(tiny_run, component):
    root, cfg, _ = tiny_run
    build = root / "build" / cfg.name
    feeds = component_example(component, cfg.seed)
    ref = OrtRuntime(build / "onnx" / f"{component}.sim.onnx").run(feeds)
    sizes = {}
    for variant in ("fp32", "fp16", "wint8"):
        path = build / "mnn" / f"{component}.{variant}.mnn"
        sizes[variant] = path.stat().st_size
        got = MnnRuntime(path, threads=1, precision="high").run(feeds)
        assert set(got) == set(ref)
        for name in ref:
            assert got[name].shape == ref[name].shape
            a, b = got[name].ravel().astype(np.float64), ref[name].ravel().astype(np.float64)
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
            assert cos > (0.9999 if variant == "fp32" else 0.99), (variant, name, cos)
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    assert sizes["wint8"] < 0.8 * sizes["fp32"]  # int8 storage; scales and small tensors stay float
