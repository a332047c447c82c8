"""Stage simplify: onnxslim or onnxsim on each exported ONNX, checked against the raw model on onnxruntime.

A simplified model holding an op outside the default ONNX domain is rejected: MNN cannot convert
those (onnxsim's optimizer fuses the decoder's attention into com.microsoft.Attention).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx

from stages.artifacts import atomic_output
from stages.errors import PipelineError
from stages.onnx_io import foreign_ops, load_onnx, op_counts, ort_outputs
from stages.samples import component_example

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


def run(ctx) -> list[dict]:
    scfg = ctx.cfg.simplify
    rows = []
    for cell in ctx.cells:
        (src,) = cell.deps
        (out,) = cell.outs
        component = cell.values["component"]
        t0 = time.perf_counter()
        raw_model = load_onnx(src)
        before = sum(op_counts(raw_model).values())
        model = simplify_model(raw_model, scfg.tool, scfg.onnxsim_optimize)
        foreign = foreign_ops(model)
        if foreign:
            raise PipelineError(
                f"{scfg.tool} turned {src.name} into a graph with ops outside the default ONNX domain "
                f"({', '.join(foreign)}); MNN cannot convert them. Use simplify.tool: onnxslim, or "
                f"onnxsim with onnxsim_optimize: false."
            )
        with atomic_output(out) as tmp:
            onnx.save(model, str(tmp))
            feeds = component_example(component, ctx.cfg.seed)
            diff, problems = compare(ort_outputs(src, feeds), ort_outputs(tmp, feeds), scfg.check_atol, scfg.check_rtol)
            if problems:
                raise PipelineError(f"simplified {component} differs from the raw ONNX on onnxruntime: " + "; ".join(problems))
        after = sum(op_counts(model).values())
        log.info("%s: %s %d -> %d nodes, max |diff| vs raw %.2e", component, scfg.tool, before, after, diff)
        rows.append({"cell": cell.key, "component": component, **ctx.describe(out),
                     "seconds": round(time.perf_counter() - t0, 2), "tool": scfg.tool,
                     "nodes_before": before, "nodes_after": after, "max_abs_diff_vs_raw": diff, "status": "ok"})
    return rows
