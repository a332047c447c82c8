"""Stage export_decoder: prompt encoder + mask decoder to ONNX with the official SamOnnxModel interface.

Inputs image_embeddings, point_coords [1,N,2], point_labels [1,N], mask_input [1,1,256,256],
has_mask_input [1], orig_im_size [2]; outputs masks, iou_predictions, low_res_masks; N is dynamic.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from stages.core.artifacts import atomic_output
from stages.runtimes.onnx_io import check_onnx, ort_outputs, resave_export
from stages.sam.models import build_model
from stages.sam.samples import decoder_example

log = logging.getLogger(__name__)

INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]


def onnx_decoder(model: torch.nn.Module, multimask_output: bool) -> torch.nn.Module:
    # mobile_sam's SamOnnxModel for every family: segment_anything's version crops with int(tensor),
    # which tracing freezes to the example's orig_im_size.
    from mobile_sam.utils.onnx import SamOnnxModel

    return SamOnnxModel(model, return_single_mask=not multimask_output).eval()


def run(ctx) -> list[dict]:
    (cell,) = ctx.cells
    (out,) = cell.outs
    model, _ = build_model(ctx.cfg, ctx.root)
    decoder = onnx_decoder(model, ctx.cfg.export.multimask_output)
    rng = np.random.default_rng(ctx.cfg.seed)
    embeddings = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    example = decoder_example(embeddings, num_points=ctx.cfg.export.example_points)
    t0 = time.perf_counter()
    args = tuple(torch.from_numpy(example[k]) for k in INPUTS)
    with torch.no_grad():
        with atomic_output(out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                decoder, args, str(tmp), input_names=INPUTS, output_names=OUTPUTS,
                dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                opset_version=ctx.cfg.export.opset, do_constant_folding=True, dynamo=False,
            )
            external = resave_export(tmp, ctx.cfg.export.external_data_mb)
            check_onnx(tmp)
            # Check at another point count and image size than traced, so a frozen shape shows up here.
            other = decoder_example(embeddings, name="coffee", num_points=ctx.cfg.export.example_points + 2)
            with torch.no_grad():
                ref_other = decoder(*(torch.from_numpy(other[k]) for k in INPUTS))
            got = ort_outputs(tmp, other)
    seconds = time.perf_counter() - t0
    masks = got["masks"]
    if masks.shape != tuple(ref_other[0].shape):
        raise AssertionError(f"exported decoder gives masks {masks.shape}, torch {tuple(ref_other[0].shape)}")
    diff = float(np.abs(masks - ref_other[0].numpy()).max())
    log.info("decoder exported: %s, max |onnx - torch| masks = %.2e", out, diff)
    return [{"cell": "decoder", "component": "decoder", **ctx.describe(out), "seconds": round(seconds, 2),
             "opset": ctx.cfg.export.opset, "multimask_output": ctx.cfg.export.multimask_output,
             "external_data": external, "max_abs_diff_vs_torch": diff, "status": "ok"}]
