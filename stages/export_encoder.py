"""Stage export_encoder: the image encoder to ONNX, with the inputs and outputs of its spec (stages/sam/spec.py:
image [1,3,1024,1024] -> image_embeddings [1,256,64,64])."""

from __future__ import annotations

import gc
import logging
import time
import warnings

import numpy as np
import torch

from stages.core.artifacts import atomic_output
from stages.core.status import Status
from stages.runtimes.onnx_io import check_onnx, ort_outputs, resave_export
from stages.sam.models import build_model
from stages.sam.spec import ENCODER as SPEC

log = logging.getLogger(__name__)


def run(ctx) -> list[dict]:
    (cell,) = ctx.cells
    (out,) = cell.outs
    model, _ = build_model(ctx.cfg, ctx.root)
    encoder = SPEC.module(model)
    del model  # the prompt encoder and mask decoder are not needed here
    feeds = SPEC.example(ctx.cfg.seed)
    args = tuple(torch.from_numpy(feeds[k]) for k in SPEC.input_names)
    t0 = time.perf_counter()
    with torch.no_grad():
        reference = encoder(*args).numpy()
        with atomic_output(out) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about python ints in TinyViT
                torch.onnx.export(
                    encoder, args, str(tmp), input_names=SPEC.input_names, output_names=SPEC.output_names,
                    dynamic_axes=SPEC.dynamic_axes or None,
                    opset_version=ctx.cfg.export.opset, do_constant_folding=True, dynamo=False,
                )
            del encoder  # vit_h: 2.5 GB of weights that the checks below do not need
            gc.collect()
            external = resave_export(tmp, ctx.cfg.export.external_data_mb)
            check_onnx(tmp)
            (name,) = SPEC.output_names
            got = ort_outputs(tmp, feeds)[name]
    seconds = time.perf_counter() - t0
    if got.shape != SPEC.shape(name):
        raise AssertionError(f"exported encoder gives {got.shape}, expected {SPEC.shape(name)}")
    diff = float(np.abs(got - reference).max())
    log.info("encoder exported: %s, max |onnx - torch| on a real photo = %.2e", out, diff)
    return [{"cell": "encoder", "component": "encoder", **ctx.describe(out), "seconds": round(seconds, 2),
             "opset": ctx.cfg.export.opset, "external_data": external, "max_abs_diff_vs_torch": diff,
             "status": str(Status.ok())}]
