"""MNN-only segmentation: matches SamPredictor, imports no torch/onnx/onnxruntime, rejects bad input clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT_DIR
from stages.core.errors import PipelineError
from stages.sam.models import build_model
from stages.sam.samples import photo
from stages.tools.image_io import read_image
from stages.tools.segment import MnnSamPredictor


def _mnn(tiny_run, component):
    root, cfg, _ = tiny_run
    return root / "build" / cfg.name / "mnn" / f"{component}.fp32.mnn"


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return MnnSamPredictor(_mnn(tiny_run, "encoder"), _mnn(tiny_run, "decoder"), threads=1)


def sam_predictor_masks(sam_predictor, points, labels, box):
    """SamPredictor's masks as the exported single-mask decoder chooses them: with one point or a box alone
    the best of the three multimask outputs, with more prompt points the single-mask output (SAM's ONNX rule)."""
    n = (0 if points is None else len(points)) + (2 if box is not None else 1)
    multi = n < 2.5
    masks, iou, _ = sam_predictor.predict(point_coords=points, point_labels=labels, box=box, multimask_output=multi)
    return masks[int(np.argmax(iou))] if multi else masks[0]


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
def test_masks_match_sam_predictor(tiny_run, predictor, name):
    from mobile_sam import SamPredictor

    root, cfg, _ = tiny_run
    model, _ = build_model(cfg, root)
    ref = SamPredictor(model)
    img = photo(name)
    h, w = img.shape[:2]
    with torch.no_grad():
        ref.set_image(img)
    predictor.set_image(img)
    prompts = [
        (np.array([[0.5 * w, 0.45 * h]]), np.array([1]), None),
        (np.array([[0.5 * w, 0.45 * h], [0.6 * w, 0.6 * h], [0.05 * w, 0.05 * h]]), np.array([1, 1, 0]), None),
        (None, None, np.array([0.25 * w, 0.2 * h, 0.75 * w, 0.85 * h])),
        (np.array([[0.5 * w, 0.45 * h]]), np.array([1]), np.array([0.25 * w, 0.2 * h, 0.75 * w, 0.85 * h])),
    ]
    for points, labels, box in prompts:
        with torch.no_grad():
            want = sam_predictor_masks(ref, points, labels, box)
        got = predictor.predict(points, labels, box).masks[0]
        assert got.shape == (h, w)
        iou = np.logical_and(got, want).sum() / max(1, np.logical_or(got, want).sum())
        assert iou >= 0.99, (name, points, box, iou)


def test_one_encoder_run_serves_many_prompts(predictor):
    calls = []
    run = predictor.encoder.run
    predictor.encoder.run = lambda feeds: calls.append(1) or run(feeds)
    try:
        img = photo("coffee")
        predictor.set_image(img)
        first = predictor.predict([[300, 200]], [1])
        predictor.predict([[100, 100], [300, 200]], [0, 1])
        again = predictor.predict(None, None, mask_input=first.low_res_masks[0])  # previous mask fed back
    finally:
        predictor.encoder.run = run
    assert len(calls) == 1
    assert again.masks.shape == (1, 400, 600) and first.low_res_masks.shape == (1, 256, 256)


def test_runs_with_mnn_and_numpy_only(tiny_run, tmp_path):
    image = tmp_path / "chelsea.jpg"
    Image.fromarray(photo("chelsea")).save(image)
    code = f"""
import sys
from stages.__main__ import main
rc = main(["segment", "--encoder", r"{_mnn(tiny_run, 'encoder')}", "--decoder", r"{_mnn(tiny_run, 'decoder')}",
           "--image", r"{image}", "--points", "220,140;300,200", "--labels", "1,0", "--out", r"{tmp_path}"])
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "PIL", "onnxslim") if m in sys.modules)
print("HEAVY", heavy)
sys.exit(rc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert "time ms  read" in out.stdout and "encoder" in out.stdout and "decoder" in out.stdout
    mask = np.asarray(Image.open(tmp_path / "chelsea.mask.png"))
    assert mask.shape[:2] == (300, 451) and set(np.unique(mask)) <= {0, 255}
    overlay = np.asarray(Image.open(tmp_path / "chelsea.overlay.jpg"))
    assert overlay.shape == (300, 451, 3)


def test_grayscale_and_rgba_images_are_converted(predictor, tmp_path):
    gray = tmp_path / "gray.png"
    rgba = tmp_path / "rgba.png"
    Image.fromarray(photo("coffee")[..., 0]).save(gray)
    Image.fromarray(np.dstack([photo("coffee"), np.full((400, 600), 128, np.uint8)])).save(rgba)
    for path in (gray, rgba):
        img = read_image(path)
        assert img.shape == (400, 600, 3) and img.dtype == np.uint8
    predictor.set_image(photo("coffee")[..., 0])  # HxW array
    assert predictor.predict([[300, 200]]).masks.shape == (1, 400, 600)
    predictor.set_image(np.dstack([photo("coffee"), np.zeros((400, 600), np.uint8)]))  # HxWx4 array
    assert predictor.predict([[300, 200]]).masks.shape == (1, 400, 600)


def test_missing_and_unreadable_images(tmp_path):
    with pytest.raises(PipelineError, match=r"image .*nope.jpg does not exist"):
        read_image(tmp_path / "nope.jpg")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(PipelineError, match=r"notes.jpg: not a JPEG, PNG or BMP image"):
        read_image(bad)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "no prompt"),
    ({"point_coords": [[700, 100]], "point_labels": [1]}, r"outside the 600x400 image"),
    ({"point_coords": [[10, -5]], "point_labels": [1]}, r"outside"),
    ({"box": [400, 50, 100, 300]}, r"x0 < x1 and y0 < y1"),
    ({"point_coords": [[10, 10], [20, 20]], "point_labels": [1]}, r"2 points but 1 labels"),
    ({"point_coords": [[10, 10]], "point_labels": [2]}, r"labels must be 1 \(foreground\) or 0"),
    ({"point_coords": [[10, 10, 3]]}, r"N x 2"),
])
def test_bad_prompts_are_named(predictor, kwargs, match):
    predictor.set_image(photo("coffee"))
    with pytest.raises(PipelineError, match=match):
        predictor.predict(**kwargs)


def test_cli_bad_input_exits_2_with_one_line(tiny_run, tmp_path, capsys):
    from stages.__main__ import main

    args = ["segment", "--encoder", str(_mnn(tiny_run, "encoder")), "--decoder", str(_mnn(tiny_run, "decoder")),
            "--out", str(tmp_path)]
    assert main([*args, "--image", str(tmp_path / "missing.jpg"), "--points", "1,1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    image = tmp_path / "c.jpg"
    Image.fromarray(photo("chelsea")).save(image)
    swapped = ["segment", "--encoder", str(_mnn(tiny_run, "decoder")), "--decoder", str(_mnn(tiny_run, "encoder")),
               "--out", str(tmp_path), "--image", str(image), "--points", "1,1"]
    assert main(swapped) == 2
    err = capsys.readouterr().err
    assert "decoder.fp32.mnn is not a SAM encoder" in err and "Traceback" not in err
    assert main(["segment", "--model", "nonexistent", "--root", str(tmp_path), "--image", "x.jpg", "--points", "1,1"]) == 2
    assert "run `make all` first" in capsys.readouterr().err
    assert not list(Path(tmp_path).glob("*.png")) and not list(Path(tmp_path).glob("*.overlay.jpg"))


@pytest.mark.parametrize("hw", [(512, 512), (427, 640), (1800, 1200)])
def test_fp32_mask_upsampling_is_sams_postprocessing(hw):
    """upsample_masks (numpy) against SamOnnxModel.mask_postprocessing's two F.interpolate calls in torch."""
    import torch.nn.functional as F

    from stages.sam.preprocess import resized_shape, upsample_masks

    low = np.random.default_rng(1).standard_normal((1, 1, 256, 256)).astype(np.float32) * 8
    ph, pw = resized_shape(*hw)
    ref = F.interpolate(torch.from_numpy(low), (1024, 1024), mode="bilinear", align_corners=False)[..., :ph, :pw]
    ref = F.interpolate(ref, hw, mode="bilinear", align_corners=False).numpy()
    got = upsample_masks(low, hw)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    assert ((got > 0) != (ref > 0)).mean() < 1e-5


def test_predictor_can_upsample_masks_itself(tiny_run, predictor):
    """upsample="fp32" (the default): the decoder runs without its in-graph resize (the fix for fp16 decoders
    on ARM) and its low_res_masks are upsampled here; on the host's fp32 decoder both give the same mask."""
    own, predictor = predictor, MnnSamPredictor(_mnn(tiny_run, "encoder"), _mnn(tiny_run, "decoder"), threads=1,
                                                upsample="graph")
    assert own.decoder.model.settings["upsample"] == "fp32" and predictor.decoder.model.settings["upsample"] == "graph"
    assert own.decoder.model._outputs == ["iou_predictions", "low_res_masks"]  # the resize is not even loaded
    img = photo("coffee")
    pts, labels = np.array([[200.0, 150.0]]), np.array([1.0])
    predictor.set_image(img)
    own.set_image(img)
    a, b = predictor.predict(pts, labels), own.predict(pts, labels)
    inter, union = (a.masks & b.masks).sum(), (a.masks | b.masks).sum()
    assert a.masks.shape == b.masks.shape and inter / union > 0.999
    assert "upsample_fp32" in b.timings_ms and "upsample_fp32" not in a.timings_ms
    with pytest.raises(PipelineError, match="upsample 'fp16' is not one of graph, fp32"):
        MnnSamPredictor(_mnn(tiny_run, "encoder"), _mnn(tiny_run, "decoder"), upsample="fp16")


@pytest.mark.parametrize("hw", [(1200, 1800), (300, 451), (1024, 1000), (512, 512), (2000, 37)])
def test_numpy_resize_is_pils_bilinear_and_preprocess_takes_the_fast_path(hw):
    """The banded resize (MNN-only preprocessing) against PIL on a real photo scaled to odd sizes: at most 1 level
    off on under 1% of pixels when shrinking a photo-shaped image (a 2000x37 strip: 5.6%, as the dense
    matrix formulation it replaced); and the fast NCHW path equals resize-then-normalize."""
    from stages.sam.preprocess import numpy_resize, pil_resize, preprocess_image, resized_shape

    img = np.asarray(Image.fromarray(photo("coffee")).resize((hw[1], hw[0]), Image.BICUBIC))
    size = resized_shape(*hw)
    got, want = numpy_resize(img, size), pil_resize(img, size)
    diff = np.abs(got.astype(int) - want)
    assert got.shape == want.shape == (*size, 3) and got.dtype == np.uint8
    assert diff.max() <= (1 if max(hw) >= 1024 else 2)
    if max(hw) > 1024:
        assert (diff > 0).mean() < (0.01 if min(hw) >= 300 else 0.06)
    generic = preprocess_image(img, resize=lambda im, s: numpy_resize(im, s).copy())  # not the fast path
    assert np.array_equal(preprocess_image(img, resize=numpy_resize), generic)


def test_loading_a_model_again_and_again_does_not_pile_up_memory(tiny_run):
    """The demo reloads variants as users switch: pymnn's Module.get_info() kept ~4 MB per call (170 MB over 40
    decoder loads measured), so the runner asks each file's names once per process."""
    from stages.ondevice.mnn_runner import MnnModel

    def rss_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

    decoder = _mnn(tiny_run, "decoder")
    MnnModel(decoder, upsample="fp32")
    before = rss_mb()
    for _ in range(40):
        MnnModel(decoder, upsample="fp32")
    assert rss_mb() - before < 40
