"""Full int8: the quantize stage's config, calibration data, the artifacts it makes, and how parity and bench
take them. The tiny pipeline run (conftest.tiny_run) quantizes the tiny vit_t with MNN's and onnxruntime's
real quantizers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest

from conftest import TINY, write_config
from stages.bench.cells import expand_variants
from stages.config import QuantVariant, load_model_config
from stages.core.errors import ConfigError
from stages.engine.graph import load_pipeline
from stages.quantize import sample_prompts, write_sequence_set
from stages.runtimes import MnnRuntime, OrtRuntime
from stages.sam.spec import encoder_example

PIPELINE = TINY.parent.parent.parent / "pipeline.yaml"


def _quant(root):
    return pd.read_csv(root / "reports" / "tiny_vit_t" / "quantize.csv").set_index("cell")


def test_every_int8_artifact_is_made_loads_and_runs(tiny_run):
    root, cfg, _ = tiny_run
    df = _quant(root)
    assert set(df.index) == {f"{c}-{v}" for c in ("encoder", "decoder") for v in cfg.quantize.variants}
    assert df["status"].str.startswith("ok").all(), df["status"].to_dict()
    assert (df["calibration_images"] == 2).all()
    assert df.loc["encoder-int8", "calibration_samples"] == 2
    assert df.loc["decoder-int8", "calibration_samples"] == 2 * 4  # 2 photos x prompts_per_image
    int8 = root / "build" / "tiny_vit_t" / "int8"
    feeds = {"image": encoder_example("chelsea")}
    mnn = MnnRuntime(int8 / "encoder.int8.mnn").run(feeds)["image_embeddings"]
    ort = OrtRuntime(int8 / "encoder.ort-int8-static.onnx").run(feeds)["image_embeddings"]
    ref = OrtRuntime(root / "build" / "tiny_vit_t" / "onnx" / "encoder.sim.onnx").run(feeds)["image_embeddings"]
    for got in (mnn, ort):
        assert np.isfinite(got).all() and got.shape == ref.shape
        # int8, not noise (an unrelated tensor: cosine about 0). Measured on the tiny model: 0.896 MNN, 0.907
        # onnxruntime static with zero attention biases; with seeded ones one of them gave 0.751 on an AMD AVX2
        # machine (onnxruntime's u8s8 there saturates)
        assert float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.5


def test_onnxruntime_int8_graphs_are_quantized(tiny_run):
    root, _, _ = tiny_run
    int8 = root / "build" / "tiny_vit_t" / "int8"
    static = {n.op_type for n in onnx.load(str(int8 / "encoder.ort-int8-static.onnx")).graph.node}
    dynamic = {n.op_type for n in onnx.load(str(int8 / "decoder.ort-int8-dynamic.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= static
    assert "MatMulInteger" in dynamic or "DynamicQuantizeLinear" in dynamic
    df = _quant(root)
    assert (df.loc["encoder-ort-int8-static", "int8_nodes"] > 0) and df.loc["encoder-ort-int8-static", "float_nodes"] == 0


def test_static_int8_decoder_keeps_the_mask_size(tiny_run):
    """Quantizing every op (onnxruntime's default) also quantizes the arithmetic on orig_im_size, and the masks
    came out 514x514 for a 512x512 photo: only compute ops are quantized, and the stage checks output shapes."""
    root, _, _ = tiny_run
    int8 = root / "build" / "tiny_vit_t" / "int8"
    rng = np.random.default_rng(0)
    for hw in [(512, 512), (400, 600), (300, 451)]:
        feeds = {"image_embeddings": rng.standard_normal((1, 256, 64, 64)).astype(np.float32),
                 "point_coords": np.array([[[500.0, 375.0], [0.0, 0.0]]], np.float32),
                 "point_labels": np.array([[1.0, -1.0]], np.float32),
                 "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
                 "orig_im_size": np.array(hw, np.float32)}
        for name in ("decoder.ort-int8-static.onnx", "decoder.ort-int8-dynamic.onnx"):
            assert OrtRuntime(int8 / name).run(feeds)["masks"].shape == (1, 1, *hw), (name, hw)
        assert MnnRuntime(int8 / "decoder.int8.mnn").run(feeds)["masks"].shape == (1, 1, *hw)


def test_int8_rows_in_parity_and_bench(tiny_run):
    root, cfg, _ = tiny_run
    parity = pd.read_csv(root / "reports" / "tiny_vit_t" / "parity.csv")
    assert {"mnn-int8", "ort-int8-dynamic", "ort-int8-static"} <= set(parity["artifact"])
    # the int8 rows come last: the furthest from PyTorch
    assert parity[parity["tier"] == "int8"]["step"].min() > parity[parity["tier"] != "int8"]["step"].max()
    sweep = ["fp32", "int8"]
    assert expand_variants("mnn", sweep, cfg.convert.variants, cfg.quantize.variants) == ["fp32", "int8"]
    assert expand_variants("onnxruntime", ["onnx-sim", "int8"], {}, cfg.quantize.variants) == \
        ["onnx-sim", "ort-int8-dynamic", "ort-int8-static"]
    assert expand_variants("mnn", ["all"], {"fp32": []}, cfg.quantize.variants) == ["fp32", "int8"]


def test_outputs_take_their_extension_from_the_variant(tmp_path):
    cfg = load_model_config(str(TINY))
    stages = {s.name: s for s in load_pipeline(PIPELINE, cfg, tmp_path)}
    outs = sorted(p.name for p in stages["quantize"].outs)
    assert outs == ["decoder.int8.mnn", "decoder.ort-int8-dynamic.onnx", "decoder.ort-int8-static.onnx",
                    "encoder.int8.mnn", "encoder.ort-int8-dynamic.onnx", "encoder.ort-int8-static.onnx"]
    assert {p.name for p in stages["parity"].deps} >= set(outs)


def test_no_quantize_variants_drops_the_int8_artifacts_everywhere(tmp_path):
    cfg = load_model_config(str(write_config(tmp_path / "c.yaml", **{"quantize.variants": {}})))
    stages = {s.name: s for s in load_pipeline(PIPELINE, cfg, tmp_path)}
    assert stages["quantize"].outs == []
    for name in ("parity", "bench"):
        assert not [p for p in stages[name].deps if "int8" in p.parts], name
        assert len(stages[name].cells) == 2 * len(cfg.convert.variants)


@pytest.mark.parametrize("variant,needle", [
    ({"runtime": "tflite"}, "runtime: 'tflite' is not one of mnn, onnxruntime"),
    ({"runtime": "mnn", "method": "dynamic"}, "method: 'dynamic' is not one of EMA, KL, ADMM"),
    ({"runtime": "onnxruntime", "method": "EMA"}, "method: 'EMA' is not one of dynamic, static"),
    ({"runtime": "mnn", "weight_method": "KL"}, "weight_method: 'KL' is not one of MAX_ABS, ADMM"),
])
def test_bad_quantize_variant_names_the_key(tmp_path, variant, needle):
    path = write_config(tmp_path / "c.yaml", **{"quantize.variants": {"q": variant}})
    with pytest.raises(ConfigError) as e:
        load_model_config(str(path))
    assert str(path) in str(e.value) and "quantize.variants.q." in str(e.value) and needle in str(e.value)


def test_quantize_variant_may_not_reuse_a_convert_variant_name(tmp_path):
    path = write_config(tmp_path / "c.yaml", **{"quantize.variants": {"fp16": {"runtime": "mnn"}}})
    with pytest.raises(ConfigError, match="'fp16' is also a convert.variants name"):
        load_model_config(str(path))


def test_artifact_names():
    assert QuantVariant("mnn").artifact("int8") == "mnn-int8" and QuantVariant("mnn").format == "mnn"
    q = QuantVariant("onnxruntime", "static")
    assert q.artifact("ort-int8-static") == "ort-int8-static" and q.format == "onnx"


def test_sampled_prompts_cover_every_kind_inside_the_image():
    rng = np.random.default_rng(1)
    prompts = sample_prompts((300, 451), 8, rng)
    assert [p["kind"] for p in prompts] == ["points", "box", "box_point", "feedback"] * 2
    for p in prompts:
        pts = p["points"]
        assert len(pts) == len(p["labels"])
        assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= 451).all() and (pts[:, 1] >= 0).all() and (pts[:, 1] <= 300).all()
        if p["box"] is not None:
            x0, y0, x1, y1 = p["box"]
            assert 0 <= x0 < x1 <= 451 and 0 <= y0 < y1 <= 300
    again = sample_prompts((300, 451), 8, np.random.default_rng(1))
    assert all(np.array_equal(a["points"], b["points"]) for a, b in zip(prompts, again, strict=True))


def test_sequence_set_round_trips(tmp_path):
    """MNN's sequence input: one folder per sample, <input>.txt with the values in order, input.json with shapes."""
    rng = np.random.default_rng(0)
    cases = {"a": {"x": rng.standard_normal((1, 3, 4, 5)).astype(np.float32), "n": np.array([3.0], np.float32)},
             "b": {"x": rng.standard_normal((1, 3, 4, 5)).astype(np.float32), "n": np.array([1.0], np.float32)}}
    folder = write_sequence_set(cases, ["y"], tmp_path / "seq")
    assert sorted(p.name for p in folder.iterdir()) == ["a", "b"]
    spec = json.loads((folder / "a" / "input.json").read_text())
    assert spec == {"inputs": [{"name": "x", "shape": [1, 3, 4, 5]}, {"name": "n", "shape": [1]}], "outputs": ["y"]}
    back = np.loadtxt(folder / "b" / "x.txt", dtype=np.float32).reshape(1, 3, 4, 5)
    np.testing.assert_allclose(back, cases["b"]["x"], rtol=1e-6)
