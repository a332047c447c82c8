"""Stage simplify: onnxslim or onnxsim on each exported ONNX, checked against the raw model on onnxruntime.

A simplified model holding an op outside the default ONNX domain is rejected: MNN cannot convert
those (onnxsim's optimizer fuses the decoder's attention into com.microsoft.Attention).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from stages.core.artifacts import PARTIAL_MARK, atomic_output
from stages.core.errors import PipelineError
from stages.core.status import Status
from stages.runtimes.onnx_io import foreign_ops, load_onnx, op_counts, ort_outputs, save_onnx, stored_bytes
from stages.sam.spec import component_example

log = logging.getLogger(__name__)


def simplify_model(model: onnx.ModelProto, tool: str, optimize: bool) -> onnx.ModelProto:
    if tool == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    if tool == "onnxsim":
        import onnxsim

        simplified, ok = onnxsim.simplify(model, perform_optimization=optimize)
        if not ok:
            raise PipelineError("onnxsim could not validate its simplified model")
        return simplified
    return model


def compare(raw: dict[str, np.ndarray], new: dict[str, np.ndarray], atol: float, rtol: float) -> tuple[float, list[str]]:
    """Max |diff| over all outputs, and every problem (missing output, shape, values), not just the first."""
    problems, worst = [], 0.0
    for name, ref in raw.items():
        if name not in new:
            problems.append(f"output {name} missing")
            continue
        got = new[name]
        if got.shape != ref.shape:
            problems.append(f"{name}: shape {got.shape} != {ref.shape}")
            continue
        d = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
        worst = max(worst, d)
        if not np.all(np.isfinite(got)):
            problems.append(f"{name}: NaN or Inf")
        elif not np.allclose(got, ref, atol=atol, rtol=rtol):
            problems.append(f"{name}: max |diff| {d:.3g} > atol {atol} + rtol {rtol}")
    return worst, problems


PROTOBUF_LIMIT = 2**31 - 1


def slim_large(src: Path, workdir: Path, max_rounds: int = 3) -> onnx.ModelProto:
    """onnxslim on a model past protobuf's 2 GB (vit_h's encoder). onnxslim's own shape inference
    serializes the model in memory and fails there, so shapes are inferred from the file on disk
    (onnx.shape_inference.infer_shapes_path reads external data) and onnxslim runs without it; repeated
    while the node count drops, as onnxslim's own loop does."""
    import onnxslim

    from stages.runtimes.onnx_io import save_onnx as save

    path, best, model = src, None, None
    for i in range(max_rounds):
        inferred = workdir / f"round{i}.inferred.onnx"
        if path == src:  # the raw export's external data is found relative to the model: infer beside it
            inferred = src.parent / f".{src.stem}.inferred{PARTIAL_MARK}{os.getpid()}.onnx"
        try:
            onnx.shape_inference.infer_shapes_path(str(path), str(inferred))
            candidate = onnxslim.slim(onnx.load(str(inferred)), no_shape_infer=True)
        finally:
            if path == src:
                inferred.unlink(missing_ok=True)
        n = len(candidate.graph.node)
        log.info("onnxslim on a >2 GB model, round %d: %d nodes", i + 1, n)
        if best is not None and n >= best:
            break
        best, model = n, candidate
        if i + 1 < max_rounds:
            path = workdir / f"round{i}.onnx"
            save(model, path, 0)
    return model


def run(ctx) -> list[dict]:
    scfg = ctx.cfg.simplify
    rows = []
    for cell in ctx.cells:
        (src,) = cell.deps
        (out,) = cell.outs
        component = cell.values["component"]
        t0 = time.perf_counter()
        graph_only = onnx.load(str(src), load_external_data=False)
        before = sum(op_counts(graph_only).values())
        big = stored_bytes(graph_only) > PROTOBUF_LIMIT
        if big and scfg.tool == "onnxslim":
            with tempfile.TemporaryDirectory(prefix="slim-", dir=src.parent) as work:
                model = slim_large(src, Path(work))
        elif big and scfg.tool == "onnxsim":
            raise PipelineError(f"{src} is past protobuf's 2 GB limit, which onnxsim cannot simplify; "
                                f"use simplify.tool: onnxslim (or none)")
        else:
            model = simplify_model(load_onnx(src), scfg.tool, scfg.onnxsim_optimize)
        after = sum(op_counts(model).values())
        foreign = foreign_ops(model)
        if foreign:
            raise PipelineError(
                f"{scfg.tool} turned {src.name} into a graph with ops outside the default ONNX domain "
                f"({', '.join(foreign)}); MNN cannot convert them. Use simplify.tool: onnxslim, or "
                f"onnxsim with onnxsim_optimize: false."
            )
        with atomic_output(out) as tmp:
            save_onnx(model, tmp, ctx.cfg.export.external_data_mb)
            del model  # a vit_h encoder is 2.5 GB of weights per copy
            feeds = component_example(component, ctx.cfg.seed)
            diff, problems = compare(ort_outputs(src, feeds), ort_outputs(tmp, feeds), scfg.check_atol, scfg.check_rtol)
            if problems:
                raise PipelineError(f"simplified {component} differs from the raw ONNX on onnxruntime: " + "; ".join(problems))
        log.info("%s: %s %d -> %d nodes, max |diff| vs raw %.2e", component, scfg.tool, before, after, diff)
        rows.append({"cell": cell.key, "component": component, **ctx.describe(out),
                     "seconds": round(time.perf_counter() - t0, 2), "tool": scfg.tool,
                     "nodes_before": before, "nodes_after": after, "max_abs_diff_vs_raw": diff, "status": str(Status.ok())})
    return rows
