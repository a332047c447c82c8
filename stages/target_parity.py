"""Stage target_parity: MNN cells checked as a target computes them (`make arm MODEL=...`).

The host's parity stage answers "is the conversion right"; this one answers "what does the phone compute".
On an x86 host MNN's precision low is fp32; on an ARMv8.2 CPU it is fp16, and memory low on a weight-
quantized model runs int8 dot products (sdot / i8mm). Each cell of `targets.<name>` runs on its
target (the emulated ARM64 target: MNN's real aarch64 kernels under QEMU) and, for comparison, on the host,
through the same runner (stages/ondevice/mnn_runner.py), against the same PyTorch reference and thresholds as
parity.csv. Here the decoder runs whole (upsample graph: its in-graph resize, computed as the target computes
it), and decoder and e2e rows also score the masks made by upsampling the cell's low_res_masks in fp32
(mask_iou_fp32_upsample, what MnnRuntime and make segment do by default): where that is much better than
mask_iou, the in-graph resize to the photo's size is what lost the accuracy.

Timing on an emulated target is meaningless: no time from here is reported as latency.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from stages.accuracy.evaluate import ParityCell, evaluate_cell, failure_table, torch_reference
from stages.config import parse_cell_key
from stages.core.artifacts import file_sha256
from stages.core.errors import PipelineError
from stages.core.names import artifact_paths, mnn_artifact
from stages.core.status import Status
from stages.runtimes import MnnRuntime
from stages.runtimes.ssh import close_all
from stages.runtimes.targets import HOST, Target, feature_flags, parse_target
from stages.sam.samples import load_images

log = logging.getLogger(__name__)


def cells_of(ctx, keys: list[str], where: str) -> list[ParityCell]:
    pcfg = ctx.cfg.parity
    paths = artifact_paths(ctx.cells, ctx.cfg.quantize.variants)
    cells = []
    for step, key in enumerate(keys, start=1):
        variant, precision, memory = parse_cell_key(key, where)
        if mnn_artifact(variant) not in paths:
            raise PipelineError(f"{where}: {key!r} names variant {variant!r}, which is not in convert.variants "
                                f"({', '.join(ctx.cfg.convert.variants)})")
        cells.append(ParityCell(mnn_artifact(variant), "mnn", precision, variant, pcfg.tier(variant, precision, memory),
                                step, **paths[mnn_artifact(variant)], memory=memory))
    return cells


def _unchecked(target: Target, cell: ParityCell, flags: set[str]) -> str | None:
    """Settings a target cannot compute as a device would: said so, never reported as checked."""
    if cell.precision == "Low_BF16" and "sme2" not in flags:
        return (f"Low_BF16 cannot be checked on {target.describe()}: MNN's bf16 kernels need SME2, which this "
                f"CPU does not report{' (QEMU offers none)' if target.emulated else ''}; it would compute fp32")
    return None


def run(ctx) -> list[dict]:
    pcfg = ctx.cfg.parity
    if not ctx.cfg.targets:
        raise PipelineError(f"{ctx.cfg.source}: targets is empty; name at least one target with its cells, "
                            f"e.g. arm64: {{target: arm64, cells: [mnn-fp32@normal, mnn-fp32@low]}}")
    targets = {name: parse_target(tcfg.target, f"targets.{name}.target") for name, tcfg in ctx.cfg.targets.items()}
    try:
        rows = _rows(ctx, targets)
    finally:
        close_all(targets.values())  # an SSH target's run folder (and what it copied) is removed
    for r in rows:
        th = pcfg.thresholds[r["tier"]]
        r["gate"] = th.gate
        r["tier_why"] = th.why
    gating = [r for r in rows if r["pass"] is False and r["gate"]]
    if gating:
        log.error("target parity: %d of %d rows below threshold or not run:\n%s", len(gating), len(rows),
                  failure_table(gating))
    return rows


def _rows(ctx, targets: dict) -> list[dict]:
    rows: list[dict] = []
    host_done: dict[tuple, list[dict]] = {}
    for name, tcfg in ctx.cfg.targets.items():
        target = targets[name]
        cells = cells_of(ctx, tcfg.cells, f"targets.{name}.cells")
        images = load_images(tcfg.images, ctx.root)
        ref = torch_reference(ctx, images, tcfg.prompts, tcfg.threads)
        about, down = _about(ctx, dict.fromkeys([HOST, target]))
        for cell in tqdm(cells, desc=f"target parity ({name})", unit="cell"):
            for t in dict.fromkeys([target, HOST]):
                memo = (t.name, cell.key, " ".join(tcfg.images + tcfg.prompts))
                if t == HOST and memo in host_done:
                    continue
                out = _cell_rows(ctx, name, tcfg, cell, t, about[t], down.get(t), ref, len(images))
                rows.extend(out)
                if t == HOST:
                    host_done[memo] = out
    return rows


def _about(ctx, targets) -> tuple[dict, dict]:
    """What each target is (MNN version, machine, CPU features), and why one could not be reached: its cells fail
    with that reason; the other targets go on."""
    about, down = {}, {}
    for t in targets:
        try:
            about[t] = t.probe(ctx.build / "logs" / f"target-probe-{t.name.replace(':', '-')}.log")
        except PipelineError as e:
            log.error("target %s: %s", t.name, e)
            down[t] = str(e)
            about[t] = {"machine": "", "mnn_version": "", "cpu_features": ""}
            continue
        log.info("target %s: %s, MNN %s, CPU features %s", t.describe(), about[t]["machine"],
                 about[t]["mnn_version"], about[t]["cpu_features"])
    return about, down


def _cell_base(ctx, name: str, tcfg, cell, t, about: dict, n_images: int) -> dict:
    flags = feature_flags(about["cpu_features"])
    base = {"target_name": name, "target": t.name,
            "target_cpu": t.cpu or ("host" if t == HOST else about.get("cpu_model", "")),
            "emulated": t.emulated, "cell": cell.key, "step": cell.step, "artifact": cell.artifact,
            "runtime": "mnn", "precision": cell.precision, "memory": cell.memory,
            "variant": cell.variant, "tier": cell.tier, "threads": tcfg.threads,
            "images": n_images, "prompts": " ".join(tcfg.prompts),
            "target_machine": about["machine"], "target_mnn": about["mnn_version"],
            "cpu_features": about["cpu_features"], "upsample": "graph"}
    kind = ctx.cfg.variant_kind(cell.variant)
    base.update(MnnRuntime.arithmetic("CPU", cell.precision, {"memory": cell.memory}, kind, flags), variant_kind=kind)
    return base


def _cell_rows(ctx, name: str, tcfg, cell, t, about: dict, down: str | None, ref, n_images: int) -> list[dict]:
    """One cell on one target: its rows per component (encoder, decoder, e2e), with the cell's status."""
    base = _cell_base(ctx, name, tcfg, cell, t, about, n_images)
    why = _unchecked(t, cell, feature_flags(about["cpu_features"]))
    if down:
        status, results = Status.failed(down), []
    elif why:
        status, results = Status.skipped(why), []
    else:
        try:
            results = evaluate_cell(ctx, cell, ref, t, tcfg.threads, tcfg.timeout_s, fp32_upsample=True,
                                    upsample="graph")
            status = Status.ok()
        except PipelineError as e:
            status, results = Status.failed(e), []
            log.error("target parity %s on %s failed: %s", cell.key, t.name, e)
    if not results:
        verdict = None if status.is_skipped else False
        results = [{"component": c, "pass": verdict, "failed_checks": ""} for c in ("encoder", "decoder", "e2e")]
    out = []
    for r in results:
        path = cell.encoder if r["component"] == "encoder" else cell.decoder
        sha = file_sha256(path)[:16] if Path(path).exists() else ""
        out.append({**base, **r, "artifact_path": ctx.rel(path), "artifact_sha256": sha, "status": str(status)})
    return out
