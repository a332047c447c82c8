"""Stage quantize: full int8 (weights and activations) with each runtime's own post-training quantizer.

  mnn          MNN's quantizer (`_tools.mnnquant`, never the console script) on the fp32 .mnn, in sequence-input
               mode: every calibration sample is a folder with one text file per input and an input.json
  onnxruntime  onnxruntime.quantization on the simplified ONNX: dynamic (int8 weights, activation ranges
               computed at run time) or static (QDQ, activation ranges from the calibration set)

Calibration (quantize.calibration): photos preprocessed the SAM way for the encoder; for the decoder its real
inputs: embeddings of those photos (fp32 encoder on onnxruntime) with seeded prompts of every kind parity
uses (points with a negative one, a box, a box with a point, a point with the previous mask fed back). The
default photos are not parity's, so parity measures the int8 models on images they were not calibrated on.
Each quantization runs in a child process (the quantizers can segfault); a failed cell is a failed row.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from stages.core.artifacts import atomic_output, sidecars
from stages.core.errors import PipelineError
from stages.core.isolate import run_isolated
from stages.core.status import Status
from stages.ondevice.mnn_runner import load_cases, save_cases
from stages.quantize.tasks import mnnquant, ort_quantize
from stages.runtimes.settings import RunSettings
from stages.runtimes.tasks import infer
from stages.sam.preprocess import IMAGE_SIZE, preprocess_image
from stages.sam.samples import load_images
from stages.sam.spec import ENCODER, SPECS, decoder_feeds

log = logging.getLogger(__name__)


def sample_prompts(hw: tuple[int, int], n: int, rng: np.random.Generator) -> list[dict]:
    """n prompts in original-image pixels, kinds in turn: points (one negative), box, box + point, and a
    point whose previous mask is fed back (`feedback`: the caller fills mask_input)."""
    h, w = hw
    kinds = ["points", "box", "box_point", "feedback"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        pt = rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h]).astype(np.float32)[None]
        x0, y0 = rng.uniform([0.0, 0.0], [0.5 * w, 0.5 * h])
        x1, y1 = rng.uniform([x0 + 0.2 * w, y0 + 0.2 * h], [w, h])
        box = np.array([x0, y0, x1, y1], np.float32)
        if kind == "points":
            k = int(rng.integers(1, 4))
            pts = rng.uniform([0, 0], [w, h], size=(k, 2)).astype(np.float32)
            labels = np.ones(k, np.float32)
            labels[-1] = 0 if k > 1 else 1
            out.append({"kind": kind, "points": pts, "labels": labels, "box": None})
        elif kind == "box":
            out.append({"kind": kind, "points": np.zeros((0, 2), np.float32), "labels": np.zeros(0, np.float32),
                        "box": box})
        else:
            out.append({"kind": kind, "points": pt, "labels": np.ones(1, np.float32),
                        "box": box if kind == "box_point" else None})
    return out


def _infer(ctx, model: Path, cases: dict[str, dict[str, np.ndarray]], tmp: Path, tag: str) -> dict:
    feeds = save_cases(tmp / f"{tag}-feeds.npz", cases)
    out = tmp / f"{tag}-out.npz"
    settings = RunSettings("onnxruntime", "CPUExecutionProvider", "fp32", ctx.cfg.quantize.threads)
    res = run_isolated(infer, {"settings": settings.to_json(), "model": str(model), "feeds": str(feeds),
                               "out": str(out)},
                       ctx.build / "logs" / f"quantize-calibration-{tag}.log", ctx.cfg.quantize.timeout_s)
    if not res.ok:
        raise PipelineError(f"calibration inputs: {model.name} on onnxruntime failed: {res.why}")
    return load_cases(out)


def calibration_set(ctx, component: str, encoder_onnx: Path, decoder_onnx: Path, tmp: Path) -> dict[str, dict[str, np.ndarray]]:
    """{sample: {input: array}} for one component, in a fixed order."""
    ccfg = ctx.cfg.quantize.calibration
    images = load_images(ccfg.images, ctx.root)
    (image,) = ENCODER.input_names
    enc = {f"{i:02d}_{name}": {image: preprocess_image(img)} for i, (name, img) in enumerate(images)}
    upstream = SPECS[component].upstream
    if upstream is None:  # calibrated on the photos themselves
        return enc
    (embeddings,) = SPECS[upstream].output_names  # the decoder: on those photos' real embeddings
    emb = _infer(ctx, encoder_onnx, enc, tmp, upstream)
    rng = np.random.default_rng(ccfg.seed)
    cases, kinds = {}, {}
    for key, (_, img) in zip(enc, images, strict=True):
        hw = img.shape[:2]
        for j, p in enumerate(sample_prompts(hw, ccfg.prompts_per_image, rng)):
            name = f"{key}_{j}_{p['kind']}"
            cases[name] = decoder_feeds(emb[key][embeddings], p["points"], p["labels"], hw, box=p["box"])
            kinds[name] = p["kind"]
    # Every sample carries the mask its prompt gives (fp32 decoder, first pass). `feedback` samples use it
    # (has_mask_input 1), as an interactive tool feeds a click's mask back; the others ignore it (the graph
    # multiplies that branch by has_mask_input = 0, so their outputs do not change), but the mask
    # convolutions see real ranges on every sample: MNN's EMA turns a batch whose range is 0 (an all-zero
    # mask_input) into a NaN scale that never leaves its running average, and the decoder then gives NaN.
    first = _infer(ctx, decoder_onnx, cases, tmp, "decoder")
    for key, f in cases.items():
        best = int(np.argmax(first[key]["iou_predictions"][0]))
        f["mask_input"] = first[key]["low_res_masks"][:, best : best + 1].astype(np.float32)
        f["has_mask_input"] = np.array([1.0 if kinds[key] == "feedback" else 0.0], np.float32)
    return dict(sorted(cases.items()))


def write_sequence_set(cases: dict[str, dict[str, np.ndarray]], outputs: list[str], folder: Path) -> Path:
    """MNN's quantizer input_type "sequence": one folder per sample, `<input>.txt` (values in order) and
    input.json (every input's name and shape, so dynamic inputs such as num_points get their size)."""
    for case, feeds in cases.items():
        d = folder / case
        d.mkdir(parents=True)
        for name, value in feeds.items():
            np.asarray(value, np.float32).tofile(d / f"{name}.txt", sep="\n", format="%.7g")
        (d / "input.json").write_text(json.dumps({
            "inputs": [{"name": n, "shape": list(np.shape(v))} for n, v in feeds.items()], "outputs": outputs}))
    return folder


def mnn_config(variant, folder: Path, n: int) -> dict:
    """The quantizer's JSON: sequence inputs (preprocessing is already in the data, so no mean/normal)."""
    cfg = {"format": "RGB", "mean": [0.0, 0.0, 0.0], "normal": [1.0, 1.0, 1.0], "width": IMAGE_SIZE, "height": IMAGE_SIZE,
           "path": str(folder) + "/", "used_image_num": n, "input_type": "sequence",
           "feature_quantize_method": variant.method, "weight_quantize_method": variant.weight_method}
    if variant.skip_ops:
        cfg["skip_quant_op_names"] = list(variant.skip_ops)
    return cfg


def run(ctx) -> list[dict]:
    qcfg = ctx.cfg.quantize
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantize-") as d:
        tmp = Path(d)
        sets: dict[str, dict | str] = {}  # component -> calibration cases, or why they could not be made
        cells = [c for c in ctx.cells if "variant" in c.values]
        if not cells:  # one row that says so (and carries the stage's memory columns)
            log.info("quantize: %s has no quantize.variants: nothing to make", ctx.cfg.source)
            return [{"cell": "-", "status": str(Status.skipped(f"quantize.variants is empty in {ctx.rel(ctx.cfg.source)}"))}]
        for cell in cells:
            component, name = cell.values["component"], cell.values["variant"]
            variant = qcfg.variants[name]
            sim, mnn_fp32, encoder_onnx = cell.deps[:3]
            (out,) = cell.outs
            logfile = ctx.build / "logs" / f"quantize-{cell.key}.log"
            t0 = time.perf_counter()
            info: dict = {}
            try:
                if component not in sets:
                    try:
                        sets[component] = calibration_set(ctx, component, encoder_onnx, sim, tmp)
                    except PipelineError as e:
                        sets[component] = str(e)
                cases = sets[component]
                if isinstance(cases, str):
                    raise PipelineError(cases)
                info = quantize_cell(ctx, component, name, variant, cases, sim, mnn_fp32, out, tmp, logfile)
                status = Status.ok()
                if info.get("shape_mismatch"):  # the model exists but is wrong: parity must not take it
                    raise PipelineError(f"output shapes differ from the float model: {info['shape_mismatch']}")
                if info.get("missing_outputs"):
                    status = Status.ok(f"lacks output {info['missing_outputs']} of the float model")
                    log.warning("quantize %s: the int8 model lacks output(s) %s of the float model",
                                cell.key, info["missing_outputs"])
            except PipelineError as e:
                status = Status.failed(e)
                for q in [out, *sidecars(out)]:  # an artifact from an earlier config must not pass for this one
                    q.unlink(missing_ok=True)
                log.error("quantize %s failed: %s (log: %s)", cell.key, e, ctx.rel(logfile))
            calib = sets.get(component)
            rows.append({"cell": cell.key, "component": component, "variant": name,
                         "artifact": variant.artifact(name), "runtime": variant.runtime, "method": variant.method,
                         "weight_method": variant.weight_method if variant.runtime == "mnn" else "",
                         "skip_ops": len(variant.skip_ops), "tier": variant.tier,
                         "calibration_images": len({k.split("_")[0] for k in calib}) if isinstance(calib, dict) else 0,
                         "calibration_samples": len(calib) if isinstance(calib, dict) else 0,
                         **ctx.describe(out), "source_bytes": _size(mnn_fp32 if variant.runtime == "mnn" else sim),
                         "seconds": round(time.perf_counter() - t0, 2),
                         "int8_nodes": info.get("int8_nodes"), "float_nodes": info.get("float_nodes"),
                         "smoke_run_ms": round(info.get("run_seconds", float("nan")) * 1000, 1),
                         "quantizer_peak_rss_mb": round(info["peak_rss_mb"]) if "peak_rss_mb" in info else None,
                         "missing_outputs": info.get("missing_outputs", ""),
                         "log": ctx.rel(logfile), "status": str(status)})
    return rows


def _size(path: Path) -> int | None:
    from stages.core.artifacts import artifact_bytes

    return artifact_bytes(path) if path.exists() else None


def quantize_cell(ctx, component: str, name: str, variant, cases: dict, sim: Path, mnn_fp32: Path, out: Path,
                  tmp: Path, logfile: Path) -> dict:
    smoke = tmp / f"{component}-smoke.npz"
    np.savez(smoke, **next(iter(cases.values())))
    outputs = SPECS[component].output_names
    with atomic_output(out) as dst:
        if variant.runtime == "mnn":
            folder = tmp / f"{component}-sequence"
            if not folder.exists():
                write_sequence_set(cases, outputs, folder)
            conf = tmp / f"{component}-{name}.json"
            conf.write_text(json.dumps(mnn_config(variant, folder, len(cases)), indent=1))
            req = {"argv": ["mnnquant", str(mnn_fp32), str(dst), str(conf)], "dst": str(dst), "feeds": str(smoke),
                   "reference": str(mnn_fp32),
                   "threads": ctx.cfg.quantize.threads,
                   "nan_hint": f" (the int8 model {variant.method} made from {mnn_fp32.name} computes them)"}
            res = run_isolated(mnnquant, req, logfile, ctx.cfg.quantize.timeout_s)
        else:
            data = tmp / f"{component}-calibration.npz"
            if not data.exists():
                save_cases(data, cases)
            req = {"src": str(sim), "dst": str(dst), "method": variant.method, "per_channel": variant.per_channel,
                   "exclude": list(variant.skip_ops), "calibration": str(data), "feeds": str(smoke),
                   "threads": ctx.cfg.quantize.threads}
            res = run_isolated(ort_quantize, req, logfile, ctx.cfg.quantize.timeout_s)
        if not res.ok:
            raise PipelineError(res.why)
    return res.result
