"""The quantize stage's tasks for a child process (stages/core/isolate.py; the quantizers can segfault): MNN's
quantizer and onnxruntime.quantization, each proving its int8 model loads and gives finite outputs. Light at
import: the child imports this module.

Never import MNN.tools here (it pip-installs a package and sends usage data): `_tools` is the C extension.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from stages.conversion.mnn import output_check, smoke_run
from stages.runtimes.tasks import peak_rss_mb

# compute nodes: how many run in int8 after quantization, and how many stayed in float
ONNX_COMPUTE = {"Conv", "MatMul", "Gemm", "ConvTranspose"}


def mnnquant(req: dict) -> dict:
    """MNN's post-training quantizer (the C extension's entry point, as the mnnquant tool would call it),
    then prove the int8 model loads and gives finite outputs."""
    import _tools

    dst = Path(req["dst"])
    t0 = time.perf_counter()
    _tools.mnnquant(req["argv"])
    seconds = time.perf_counter() - t0
    sys.stdout.flush()
    if not dst.exists() or dst.stat().st_size == 0:
        return {"error": "MNN quantizer wrote no model (see its output)", "quant_seconds": seconds}
    res = smoke_run(req)
    if "error" not in res:
        from stages.runtimes import MnnRuntime

        ref = MnnRuntime(Path(req["reference"]), threads=req.get("threads", 1)).run(dict(np.load(req["feeds"])))
        res.update(output_check({k: list(v.shape) for k, v in ref.items()}, res["shapes"]))
    return {"quant_seconds": seconds, **res, "peak_rss_mb": peak_rss_mb()}


def onnx_int8_nodes(path: Path) -> dict:
    """Compute nodes running in int8: ConvInteger / MatMulInteger / QLinear* (dynamic), or a Conv / MatMul whose
    inputs all come from DequantizeLinear (QDQ, which onnxruntime fuses into an int8 kernel)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = flt = 0
    for n in g.node:
        if n.op_type in ("ConvInteger", "MatMulInteger") or n.op_type.startswith("QLinear"):
            int8 += 1
        elif n.op_type in ONNX_COMPUTE:
            ins = [i for i in n.input[:2] if i]
            if ins and all(i in dq for i in ins):
                int8 += 1
            else:
                flt += 1
    return {"int8_nodes": int8, "float_nodes": flt}


def ort_quantize(req: dict) -> dict:
    """onnxruntime.quantization: dynamic, or static QDQ calibrated (MinMax) on the request's cases."""
    from stages.runtimes import OrtRuntime

    src, dst = Path(req["src"]), Path(req["dst"])
    t0 = time.perf_counter()
    _ort_quantize(req, src, dst)
    seconds = time.perf_counter() - t0
    feeds = dict(np.load(req["feeds"]))
    rt = OrtRuntime(dst, threads=req.get("threads", 1))
    t0 = time.perf_counter()
    outs = rt.run(feeds)
    run_seconds = time.perf_counter() - t0
    bad = [k for k, v in outs.items() if not np.all(np.isfinite(v))]
    if bad:
        return {"error": f"quantized model runs but gives NaN/Inf in {', '.join(bad)}"}
    ref = OrtRuntime(src, threads=req.get("threads", 1)).run(feeds)
    check = output_check({k: list(v.shape) for k, v in ref.items()}, {k: list(v.shape) for k, v in outs.items()})
    return {"quant_seconds": seconds, "run_seconds": run_seconds, **onnx_int8_nodes(dst), **check,
            "peak_rss_mb": peak_rss_mb()}


def _ort_quantize(req: dict, src: Path, dst: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from stages.ondevice.mnn_runner import load_cases

    big = any(src.with_name(src.name + s).exists() for s in (".data",))
    if req["method"] == "dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=False,
                         nodes_to_exclude=req["exclude"], use_external_data_format=big)
        return
    cases = load_cases(Path(req["calibration"]))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cases.values())

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=req["per_channel"],
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=req["exclude"],
                    # compute ops only: with every op (the default), the arithmetic on orig_im_size that
                    # sizes the decoder's masks is quantized too and masks come out 514x514 for 512x512
                    op_types_to_quantize=list(ONNX_COMPUTE),
                    use_external_data_format=big)
