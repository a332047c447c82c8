"""Stage export_decoder: prompt encoder + mask decoder to ONNX with the official SamOnnxModel interface.

Its spec (stages/sam/spec.py): inputs image_embeddings, point_coords [1,N,2], point_labels [1,N],
mask_input [1,1,256,256], has_mask_input [1], orig_im_size [2]; outputs masks, iou_predictions, low_res_masks;
N (num_points) is dynamic.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from stages.core.artifacts import atomic_output
from stages.core.status import Status
from stages.runtimes.onnx_io import check_onnx, ort_outputs, resave_export
from stages.sam.models import build_model
from stages.sam.spec import DECODER as SPEC

log = logging.getLogger(__name__)

def run(ctx) -> list[dict]:
    (cell,) = ctx.cells
    (out,) = cell.outs
    model, _ = build_model(ctx.cfg, ctx.root)
    decoder = SPEC.module(model, ctx.cfg.export.multimask_output)
    points = ctx.cfg.export.example_points
    example = SPEC.example(ctx.cfg.seed, num_points=points)
    t0 = time.perf_counter()
    args = tuple(torch.from_numpy(example[k]) for k in SPEC.input_names)
    with torch.no_grad():
        with atomic_output(out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                decoder, args, str(tmp), input_names=SPEC.input_names, output_names=SPEC.output_names,
                dynamic_axes=SPEC.dynamic_axes,
                opset_version=ctx.cfg.export.opset, do_constant_folding=True, dynamo=False,
            )
            external = resave_export(tmp, ctx.cfg.export.external_data_mb)
            check_onnx(tmp)
            # Check at another point count and image size than traced, so a frozen shape shows up here.
            other = SPEC.example(ctx.cfg.seed, num_points=points + 2, name="coffee")
            with torch.no_grad():
                ref_other = decoder(*(torch.from_numpy(other[k]) for k in SPEC.input_names))[0].numpy()
            got = ort_outputs(tmp, other)
    seconds = time.perf_counter() - t0
    masks = got[SPEC.output_names[0]]
    if masks.shape != ref_other.shape:
        raise AssertionError(f"exported decoder gives masks {masks.shape}, torch {ref_other.shape}")
    diff = float(np.abs(masks - ref_other).max())
    log.info("decoder exported: %s, max |onnx - torch| masks = %.2e", out, diff)
    return [{"cell": "decoder", "component": "decoder", **ctx.describe(out), "seconds": round(seconds, 2),
             "opset": ctx.cfg.export.opset, "multimask_output": ctx.cfg.export.multimask_output,
             "external_data": external, "max_abs_diff_vs_torch": diff, "status": str(Status.ok())}]
