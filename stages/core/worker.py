"""Child-process side of isolate.py: the tasks that call native code which may crash.

Never import MNN.tools here (it pip-installs a package and sends usage data): `_tools` is the C extension.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def mnnconvert(req: dict) -> dict:
    """Convert ONNX -> MNN, then prove the file loads and runs once on the given feeds."""
    import _tools

    dst = Path(req["dst"])
    t0 = time.perf_counter()
    _tools.mnnconvert(req["argv"])  # returns True even when conversion failed: check the file
    seconds = time.perf_counter() - t0
    sys.stdout.flush()
    if not dst.exists() or dst.stat().st_size == 0:
        return {"error": "MNN converter wrote no model (see its output: 'Converted Failed!' or unsupported ops)",
                "convert_seconds": seconds}
    return {"convert_seconds": seconds, **smoke_run(req)}


def smoke_run(req: dict) -> dict:
    from stages.runtimes import MnnRuntime

    feeds = dict(np.load(req["feeds"]))
    rt = MnnRuntime(Path(req["dst"]), threads=req.get("threads", 1), precision=req.get("precision", "normal"))
    t0 = time.perf_counter()
    outs = rt.run(feeds)
    seconds = time.perf_counter() - t0
    bad = [k for k, v in outs.items() if not np.all(np.isfinite(v))]
    shapes = {k: list(v.shape) for k, v in outs.items()}
    if bad:
        from stages.runtimes import external_hint

        hint = req.get("nan_hint") or external_hint(Path(req["dst"]))
        return {"error": f"MNN model runs but gives NaN/Inf in {', '.join(bad)}" + hint,
                "shapes": shapes}
    return {"run_seconds": seconds, "shapes": shapes, "inputs": rt.input_names, "outputs": rt.output_names}


def infer(req: dict) -> dict:
    """Load a model with one runtime and run every case of a feeds .npz ("case::input" keys) through it."""
    from stages.runtimes import RUNTIMES
    from stages.sam.samples import load_cases

    t0 = time.perf_counter()
    rt = RUNTIMES[req["runtime"]](Path(req["model"]), threads=req["threads"], precision=req["precision"],
                                  **req.get("options", {}))
    load_seconds = time.perf_counter() - t0
    cases = load_cases(Path(req["feeds"]))
    outs = {}
    t0 = time.perf_counter()
    for case, feeds in cases.items():
        for name, value in rt.run(feeds).items():
            outs[f"{case}::{name}"] = value
    run_seconds = time.perf_counter() - t0
    np.savez(req["out"], **outs)
    return {"load_seconds": load_seconds, "run_seconds": run_seconds, "cases": len(cases)}


def peak_rss_mb() -> float:
    """This process's peak resident memory (the runner's account, which a target gives too)."""
    from stages.ondevice.mnn_runner import process_stats

    return process_stats()["peak_rss_mb"]


def mnn_probe(req: dict) -> dict:
    import MNN.nn as nn

    from stages.runtimes import mnn_schedule

    rm = nn.create_runtime_manager((mnn_schedule(req["backend"], 1, "normal"),))
    sys.stdout.flush()
    return {"created": rm is not None}


def bench(req: dict) -> dict:
    """Time one cell's workloads: load the runtime(s), then the stop rule per workload. See stages/bench/__init__.py."""
    import psutil

    from stages.ondevice.timing import StopRule, measure, summarize
    from stages.runtimes import RUNTIMES
    from stages.sam.preprocess import bench_prompt, decoder_feeds, preprocess_image

    cls = RUNTIMES[req["runtime"]]
    opts = {"threads": req["threads"], "precision": req["precision"], "backend": req["backend"],
            "root": req.get("root", "."), **req.get("options", {})}
    data = dict(np.load(req["feeds"]))
    rule = StopRule(**req["timing"])
    t0 = time.perf_counter()
    component = req["component"]
    enc = cls(Path(req["encoder"]), component="encoder", **opts) if component in ("encoder", "e2e") else None
    dec = cls(Path(req["decoder"]), component="decoder", **opts) if component in ("decoder", "e2e") else None
    load_seconds = time.perf_counter() - t0
    photo = data["photo"]
    results = []
    for w in req["workloads"]:
        h, wd = w["out_size"]
        pts, labels = bench_prompt(w["points"], (h, wd))
        if component == "encoder":
            feeds = {"image": data["image"]}

            def fn(feeds=feeds):
                return enc.run(feeds)
        elif component == "decoder":
            feeds = decoder_feeds(data["embeddings"], pts, labels, (h, wd))

            def fn(feeds=feeds):
                return dec.run(feeds)
        else:
            def fn(pts=pts, labels=labels):
                emb = enc.run({"image": preprocess_image(photo)})["image_embeddings"]
                return dec.run(decoder_feeds(emb, pts, labels, photo.shape[:2]))
        timing = measure(fn, rule)
        results.append({**w, **summarize(timing.samples_s), "first_run_ms": timing.first_run_s * 1000,
                        "valid": timing.valid, "samples_ms": [round(x * 1000, 4) for x in timing.samples_s]})
    return {"load_seconds": load_seconds, "workloads": results,
            "upsample": getattr(getattr(dec, "model", None), "upsample", None),  # MNN: where the masks were made
            "peak_rss_mb": peak_rss_mb(),
            "os_threads": psutil.Process().num_threads(), "runtime_version": cls.version()}


def matmul_rate(req: dict) -> dict:
    """Dense fp32 matmul GFLOP/s at a thread count: the roofline each cell is compared to."""
    import torch

    from stages.ondevice.timing import StopRule, measure, summarize

    torch.set_num_threads(req["threads"])
    n = req["n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    timing = measure(lambda: a @ b, StopRule(warmup=2, min_runs=5, min_seconds=req["min_seconds"], max_seconds=30))
    p50 = summarize(timing.samples_s)["p50_ms"] / 1000
    return {"gflops": 2 * n**3 / p50 / 1e9, "threads_seen": torch.get_num_threads()}


def profile(req: dict) -> dict:
    """Per-op-type time of one model: MNN via Session callbacks, onnxruntime via its profiler."""
    import collections
    import json as _json

    feeds = dict(np.load(req["feeds"]))
    runs, threads = req["runs"], req["threads"]
    per_run: list[dict[str, float]] = []
    counts: collections.Counter = collections.Counter()
    mflop: dict[str, float] = collections.defaultdict(float)
    walls = []
    if req["runtime"] == "mnn":
        import MNN

        interp = MNN.Interpreter(req["model"])
        session = interp.createSession({"numThread": threads, "precision": "normal"})
        inputs = interp.getSessionInputAll(session)
        for name, t in inputs.items():
            interp.resizeTensor(t, feeds[name].shape)
        interp.resizeSession(session)
        for name, t in inputs.items():
            x = np.ascontiguousarray(feeds[name], dtype=np.float32)
            t.copyFrom(MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe))
        interp.runSession(session)  # warm-up
        graph_ops = 0
        for i in range(runs):
            times: dict[str, float] = collections.defaultdict(float)
            start: list[float] = [0.0]

            def begin(tensors, info, start=start):
                start[0] = time.perf_counter()
                return True

            def end(tensors, info, times=times, first=(i == 0), start=start):
                k = info.getType()
                times[k] += time.perf_counter() - start[0]
                if first:
                    counts[k] += 1
                    mflop[k] += info.getFlops()
                return True

            t0 = time.perf_counter()
            interp.runSessionWithCallBackInfo(session, begin, end)
            walls.append(time.perf_counter() - t0)
            per_run.append(times)
        graph_ops = sum(counts.values())
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(req["result_file"]).with_suffix("")) + "-ort"
        sess = ort.InferenceSession(req["model"], so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        f = {k: feeds[k] for k in names}
        sess.run(None, f)  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, f)
            walls.append(time.perf_counter() - t0)
        trace = _json.loads(Path(sess.end_profiling()).read_text())
        nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_node = len(nodes) // (runs + 1)
        for i in range(runs):
            times = collections.defaultdict(float)
            for e in nodes[(i + 1) * per_node:(i + 2) * per_node]:
                times[e["args"]["op_name"]] += e["dur"] / 1e6
            per_run.append(times)
        for e in nodes[per_node:2 * per_node]:
            counts[e["args"]["op_name"]] += 1
            mflop[e["args"]["op_name"]] = float("nan")
        graph_ops = per_node
    ops = [{"type": k, "count": counts[k], "mflop": mflop[k],
            "ms": float(np.median([r.get(k, 0.0) for r in per_run])) * 1000} for k in counts]
    ops.sort(key=lambda o: -o["ms"])
    return {"ops": ops, "ops_ms": sum(o["ms"] for o in ops), "wall_ms": float(np.median(walls)) * 1000,
            "graph_ops": graph_ops}


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


def output_check(want: dict[str, list[int]], got: dict[str, list[int]]) -> dict:
    """What a quantized model lost against its float source: outputs, or output shapes."""
    missing = [k for k in want if k not in got]
    shapes = [f"{k} {got[k]} (float {want[k]})" for k in want if k in got and got[k] != want[k]]
    return {"missing_outputs": ", ".join(missing), "shape_mismatch": "; ".join(shapes)}


# compute nodes: how many run in int8 after quantization, and how many stayed in float
ONNX_COMPUTE = {"Conv", "MatMul", "Gemm", "ConvTranspose"}


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
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from stages.sam.samples import load_cases

    src, dst = Path(req["src"]), Path(req["dst"])
    big = any(src.with_name(src.name + s).exists() for s in (".data",))
    t0 = time.perf_counter()
    if req["method"] == "dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=False,
                         nodes_to_exclude=req["exclude"], use_external_data_format=big)
    else:
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
    seconds = time.perf_counter() - t0
    from stages.runtimes import OrtRuntime

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


TASKS = {"mnnconvert": mnnconvert, "mnnquant": mnnquant, "ort_quantize": ort_quantize, "profile": profile, "mnn_smoke": smoke_run, "infer": infer, "mnn_probe": mnn_probe,
         "bench": bench, "matmul_rate": matmul_rate}


def main() -> None:
    task, req_path = sys.argv[1], sys.argv[2]
    req = json.loads(Path(req_path).read_text())
    try:
        result = TASKS[task](req)
    except Exception as e:  # reported through the result file; a native crash never gets here
        cause = e.__cause__ if isinstance(e, SystemError) and e.__cause__ else e  # MNN wraps its errors
        result = {"error": f"{type(cause).__name__}: {cause}"}
    Path(req["result_file"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
