"""One parity cell evaluated: the PyTorch reference (encoder on each photo, decoder on each prompt), the cell's
outputs on a target (MNN through the runner, other runtimes in a worker process), and its rows against the
thresholds of its tier."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stages.config import Thresholds
from stages.core.errors import PipelineError
from stages.core.isolate import run_isolated
from stages.ondevice.mnn_runner import load_cases, save_cases
from stages.runtimes import DEFAULT_UPSAMPLE, RUNTIMES
from stages.runtimes.settings import RunSettings
from stages.runtimes.targets import HOST, Target
from stages.runtimes.tasks import infer
from stages.sam import metrics
from stages.sam.models import build_model
from stages.sam.preprocess import preprocess_image, upsample_masks
from stages.sam.samples import PROMPTS, prompt
from stages.sam.spec import DECODER, ENCODER, decoder_feeds

log = logging.getLogger(__name__)

SEP = "::"


@dataclass
class ParityCell:
    artifact: str  # onnx | onnx-sim | mnn-<variant> | a quantize.variants artifact (mnn-int8, ort-int8-static)
    runtime: str  # a key of stages.runtimes.RUNTIMES
    precision: str
    variant: str
    tier: str
    step: int
    encoder: Path
    decoder: Path
    memory: str = "normal"

    @property
    def key(self) -> str:
        return f"{self.artifact}@{self.precision}" + ("" if self.memory == "normal" else f"~memory-{self.memory}")


@dataclass
class Reference:
    images: list[tuple[str, np.ndarray]]
    encoder_feeds: dict[str, dict[str, np.ndarray]]  # image -> {"image": ...}
    embeddings: dict[str, np.ndarray]  # image -> torch embeddings
    decoder_feeds: dict[str, dict[str, np.ndarray]]  # image::prompt -> feeds with torch embeddings
    decoder_out: dict[str, dict[str, np.ndarray]]  # image::prompt -> torch outputs


def torch_reference(ctx, images: list[tuple[str, np.ndarray]], prompts=PROMPTS, threads: int | None = None) -> Reference:
    model, _ = build_model(ctx.cfg, ctx.root)
    encoder, decoder = ENCODER.module(model), DECODER.module(model, ctx.cfg.export.multimask_output)
    ref = Reference(images, {}, {}, {}, {})
    torch.set_num_threads(threads or ctx.cfg.parity.threads)
    with torch.no_grad():
        for name, img in tqdm(images, desc="parity: PyTorch reference", unit="image"):
            x = preprocess_image(img)
            ref.encoder_feeds[name] = dict(zip(ENCODER.input_names, [x], strict=True))
            emb = encoder(torch.from_numpy(x)).numpy()
            ref.embeddings[name] = emb
            for p in prompts:
                feeds = _prompt_feeds(emb, name, img, p, ref)
                out = decoder(*(torch.from_numpy(feeds[k]) for k in DECODER.input_names))
                ref.decoder_feeds[f"{name}{SEP}{p}"] = feeds
                ref.decoder_out[f"{name}{SEP}{p}"] = dict(zip(DECODER.output_names, (o.numpy() for o in out),
                                                              strict=True))
    return ref


def _prompt_feeds(emb: np.ndarray, name: str, img: np.ndarray, p: str, ref: Reference) -> dict[str, np.ndarray]:
    spec = prompt(p, img.shape[:2])
    mask = None
    if p == "mask_feedback":  # the previous prediction's best low-res mask, as an interactive tool feeds it back
        prev = ref.decoder_out[f"{name}{SEP}one_point"]
        best = int(np.argmax(prev["iou_predictions"][0]))
        mask = prev["low_res_masks"][:, best : best + 1]
    return decoder_feeds(emb, spec["points"], spec["labels"], img.shape[:2], box=spec["box"], mask_input=mask)


def _infer(ctx, cell: ParityCell, component: str, cases: dict, tmp: Path, target: Target = HOST,
           threads: int | None = None, timeout_s: float | None = None,
           upsample: str = DEFAULT_UPSAMPLE) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Run every case through the cell's `component`: MNN cells through the target's MNN runner (the host's
    too: one code path), other runtimes in a worker process. Returns the outputs and where a decoder's masks
    were made ("fp32" or "graph", as the runner reports it: a decoder without low_res_masks runs whole)."""
    feeds = save_cases(tmp / f"{component}-feeds.npz", cases)
    out = tmp / f"{component}-out.npz"
    threads = threads or ctx.cfg.parity.threads
    where = "" if target == HOST else f"{target.name.replace(':', '-')}-"
    log_file = ctx.build / "logs" / f"parity-{where}{cell.key}-{component}.log"
    timeout_s = timeout_s or ctx.cfg.parity.timeout_s
    model = str(getattr(cell, component))
    if cell.runtime == "mnn":
        # where a decoder's masks are made: as MnnRuntime makes them by default, or in the graph
        settings = RunSettings("mnn", RUNTIMES["mnn"].cpu_backend, cell.precision, threads,
                               {"memory": cell.memory, "upsample": upsample})
        res = target.run({"model": model, "feeds": str(feeds), "out": str(out),
                          "settings": settings.runner_settings(component)}, log_file, timeout_s)
    else:
        settings = RunSettings(cell.runtime, RUNTIMES[cell.runtime].cpu_backend, cell.precision, threads)
        res = run_isolated(infer, {"settings": settings.to_json(), "model": model, "feeds": str(feeds),
                                   "out": str(out)}, log_file, timeout_s)
    if not res.ok:
        raise PipelineError(res.why)
    return load_cases(out), (res.result or {}).get("upsample", "graph")


def evaluate_cell(ctx, cell: ParityCell, ref: Reference, target: Target = HOST, threads: int | None = None,
                  timeout_s: float | None = None, fp32_upsample: bool = False,
                  upsample: str = DEFAULT_UPSAMPLE) -> list[dict]:
    """Run one cell (encoder, decoder on torch embeddings, own encoder -> own decoder) and score it.
    fp32_upsample: also score the masks made from the cell's low_res_masks upsampled in fp32 on the host
    (mask_iou_fp32_upsample), which tells the in-graph resize's error from the rest of the decoder's.
    upsample: where an MNN decoder's masks are made (MnnModel): "fp32" (outside the graph, as this project runs
    MNN decoders by default) or "graph"."""
    th = ctx.cfg.parity.thresholds[cell.tier]
    with tempfile.TemporaryDirectory(prefix="parity-") as d:
        tmp = Path(d)
        enc, _ = _infer(ctx, cell, "encoder", ref.encoder_feeds, tmp, target, threads, timeout_s)
        cases = {f"dec{SEP}{k}": v for k, v in ref.decoder_feeds.items()}
        for key, feeds in ref.decoder_feeds.items():
            own = enc[key.split(SEP)[0]]["image_embeddings"]
            cases[f"e2e{SEP}{key}"] = {**feeds, "image_embeddings": own.astype(np.float32)}
        dec, made = _infer(ctx, cell, "decoder", cases, tmp, target, threads, timeout_s, upsample)
    enc_m = {img: metrics.tensor_metrics(enc[img]["image_embeddings"], ref.embeddings[img]) for img in ref.embeddings}
    rows = [_encoder_row(enc_m, th)]
    for kind in ("dec", "e2e"):
        per_case = {}
        for key, want in ref.decoder_out.items():
            got = dec[f"{kind}{SEP}{key}"]
            for out in ("masks", "iou_predictions"):
                if got[out].shape != want[out].shape:  # a row that says so, not a crash of the stage
                    raise PipelineError(f"{out} of {key} has shape {list(got[out].shape)}, PyTorch gives "
                                        f"{list(want[out].shape)}")
            per_case[key] = {
                "mask_iou": metrics.mask_iou(got["masks"], want["masks"]),
                "logits_within_tol": metrics.within_tol(got["masks"], want["masks"], th.logit_rtol),
                "iou_pred_abs": float(np.abs(got["iou_predictions"].astype(np.float64) - want["iou_predictions"]).max())
                if metrics.finite(got["iou_predictions"]) else np.nan,
                "max_abs": metrics.tensor_metrics(got["masks"], want["masks"])["max_abs"],
            }
            if fp32_upsample:
                hw = ref.decoder_feeds[key]["orig_im_size"]
                per_case[key]["mask_iou_fp32_upsample"] = metrics.mask_iou(
                    upsample_masks(got["low_res_masks"], hw), want["masks"])
        rows.append(_decoder_row(per_case, th, e2e=kind == "e2e"))
        rows[-1]["upsample"] = made  # where the masks were made, as the runner reports it
    return rows


def _worst_case(per: dict[str, dict[str, float]], metric: str, lower_is_worse: bool) -> str:
    vals = {k: v[metric] for k, v in per.items()}
    nan = [k for k, v in vals.items() if np.isnan(v)]
    if nan:
        return nan[0]
    return (min if lower_is_worse else max)(vals, key=vals.get)


def _check(row: dict, checks: list[tuple[str, str, float]]) -> dict:
    failed = []
    for metric, op, limit in checks:
        value = row[metric]
        ok = value >= limit if op == ">=" else value <= limit
        if not ok:  # NaN fails every comparison
            failed.append(f"{metric} {'non-finite' if np.isnan(value) else f'{value:.6g}'} (need {op} {limit:g})")
    row["pass"] = not failed
    row["failed_checks"] = "; ".join(failed)
    return row


def _encoder_row(per: dict[str, dict[str, float]], th: Thresholds) -> dict:
    row = {"component": "encoder", "n_cases": len(per),
           "max_abs": metrics.worst([m["max_abs"] for m in per.values()], lower_is_worse=False),
           "mean_abs": float(np.mean([m["mean_abs"] for m in per.values()])),
           "cosine": metrics.worst([m["cosine"] for m in per.values()]),
           "rel_l2": metrics.worst([m["rel_l2"] for m in per.values()], lower_is_worse=False),
           "worst_case": _worst_case(per, "cosine", True)}
    return _check(row, [("cosine", ">=", th.cosine), ("rel_l2", "<=", th.rel_l2)])


def _decoder_row(per: dict[str, dict[str, float]], th: Thresholds, e2e: bool) -> dict:
    row = {"component": "e2e" if e2e else "decoder", "n_cases": len(per),
           "max_abs": metrics.worst([m["max_abs"] for m in per.values()], lower_is_worse=False),
           "mask_iou": metrics.worst([m["mask_iou"] for m in per.values()]),
           "mean_mask_iou": float(np.mean([m["mask_iou"] for m in per.values()])),
           "logits_within_tol": metrics.worst([m["logits_within_tol"] for m in per.values()]),
           "iou_pred_abs": metrics.worst([m["iou_pred_abs"] for m in per.values()], lower_is_worse=False),
           "worst_case": _worst_case(per, "mask_iou", True)}
    if all("mask_iou_fp32_upsample" in m for m in per.values()):
        row["mask_iou_fp32_upsample"] = metrics.worst([m["mask_iou_fp32_upsample"] for m in per.values()])
    if e2e:
        return _check(row, [("mask_iou", ">=", th.e2e_mask_iou)])
    return _check(row, [("mask_iou", ">=", th.mask_iou), ("logits_within_tol", ">=", th.logits_within_tol),
                        ("iou_pred_abs", "<=", th.iou_pred_abs)])


def failure_table(rows: list[dict]) -> str:
    bad = [r for r in rows if not r.get("pass", False)]
    lines = [f"{'cell':<24} {'tier':<16} {'component':<9} failed checks"]
    for r in bad:
        why = r["failed_checks"] or r["status"]
        lines.append(f"{r['artifact'] + '@' + r['precision']:<24} {r['tier']:<16} {r['component']:<9} {why}")
    return "\n".join(lines)
