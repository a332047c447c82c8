"""The component specs (stages/sam/spec.py): their sample inputs run through the tiny torch encoder and decoder
and give the declared output names and shapes; the export's dynamic axes are the ones the cached builds have."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT_DIR, TINY
from stages.config import load_model_config
from stages.sam.models import build_model
from stages.sam.spec import DECODER, ENCODER, SPECS, decoder_feeds, parts


@pytest.fixture(scope="module")
def model():
    cfg = load_model_config(str(TINY))
    return build_model(cfg, ROOT_DIR)[0]


def _run(spec, model, feeds, multimask=False):
    with torch.no_grad():
        outs = spec.module(model, multimask)(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {n: o.numpy() for n, o in zip(spec.output_names, outs, strict=True)}


@pytest.mark.parametrize("component", list(SPECS))
@pytest.mark.parametrize("multimask", [False, True])
def test_sample_inputs_give_the_declared_outputs(model, component, multimask):
    spec = SPECS[component]
    feeds = spec.example(seed=1, num_points=3, name="coffee")
    assert list(feeds) == spec.input_names
    dims = spec.dims(feeds, multimask)
    for t in spec.inputs:
        assert feeds[t.name].shape == t.concrete(**dims), t.name
        assert feeds[t.name].dtype == np.dtype(t.dtype), t.name
    got = _run(spec, model, feeds, multimask)
    assert {n: v.shape for n, v in got.items()} == {t.name: t.concrete(**dims) for t in spec.outputs}


def test_decoder_dims_follow_the_prompt_and_the_photo():
    feeds = DECODER.example(num_points=4, name="coffee")  # 400x600; 3 points + the padding one
    assert DECODER.dims(feeds, multimask_output=True) == {"num_points": 4, "orig_h": 400, "orig_w": 600, "num_masks": 4}
    box = decoder_feeds(DECODER.example()["image_embeddings"], np.zeros((0, 2)), np.zeros(0), (300, 200),
                        box=np.array([1, 2, 30, 40.0]))
    assert DECODER.dims(box)["num_points"] == 2  # a box is two points, and no padding point


def test_exports_keep_their_interface():
    """The names and dynamic axes of the cached builds and the committed baseline."""
    assert ENCODER.input_names == ["image"] and ENCODER.output_names == ["image_embeddings"]
    assert ENCODER.dynamic_axes == {}
    assert DECODER.input_names == ["image_embeddings", "point_coords", "point_labels", "mask_input",
                                   "has_mask_input", "orig_im_size"]
    assert DECODER.output_names == ["masks", "iou_predictions", "low_res_masks"]
    assert DECODER.dynamic_axes == {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    assert ENCODER.shape("image") == (1, 3, 1024, 1024)
    assert ENCODER.shape("image_embeddings") == DECODER.shape("image_embeddings") == (1, 256, 64, 64)
    assert DECODER.shape("mask_input") == (1, 1, 256, 256)
    assert DECODER.upstream == "encoder" and ENCODER.upstream is None
    assert [s.name for s in parts("e2e")] == ["encoder", "decoder"]


def test_workload_feeds_and_fixed_inputs():
    image = ENCODER.example()["image"]
    emb = DECODER.example()["image_embeddings"]
    assert list(ENCODER.workload_feeds(image, emb, 0, (480, 640))) == ["image"]
    feeds = DECODER.workload_feeds(image, emb, 3, (480, 640))
    values, dims = DECODER.fixed_inputs(3, [480, 640])
    assert feeds["point_coords"].shape[1] == dims["num_points"] == 4
    assert np.array_equal(values["orig_im_size"], feeds["orig_im_size"])
    assert ENCODER.fixed_inputs(3, [480, 640]) == ({}, {})
    assert ENCODER.workload(0, (480, 640)) == "1024x1024" and DECODER.workload(3, (480, 640)) == "3 pt -> 480x640"


def test_flops_come_from_each_components_hook():
    from stages.sam.flops import component_flops

    enc = component_flops("tiny.vit_t", "encoder")
    one, three = component_flops("tiny.vit_t", "decoder", 1), component_flops("tiny.vit_t", "decoder", 3)
    assert enc > three > one > 0


def test_the_spec_imports_no_torch():
    code = "import sys, stages.sam.spec\nprint(sorted(m for m in ('torch', 'onnx', 'MNN') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
