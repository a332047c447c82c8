"""Stage parity: every artifact against the PyTorch model with the same weights, on real photos and prompts.

Cells are (artifact, runtime, precision): the raw and simplified ONNX on onnxruntime, and each MNN
variant under each runtime precision it is meant for. Per cell three rows:
  encoder  the artifact's embeddings vs PyTorch's, on every image
  decoder  the artifact's decoder fed PyTorch's embeddings, on every prompt of every image
  e2e      the artifact's own encoder feeding its own decoder, vs PyTorch end to end
Rows are ordered by `step` (torch -> onnx -> simplified onnx -> MNN variants) so a user sees where
accuracy was lost. A row below its tier's thresholds fails the stage after every row is written.
Each cell runs in a child process: a runtime that crashes fails that cell's rows, not the stage.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from stages.accuracy.evaluate import ParityCell, evaluate_cell, failure_table, torch_reference
from stages.core.artifacts import file_sha256, machine
from stages.core.errors import PipelineError
from stages.core.names import RAW_ONNX, SIM_ONNX, artifact_name, artifact_paths, mnn_artifact
from stages.core.status import Status
from stages.runtimes import RUNTIMES, identical_skip
from stages.sam.samples import PROMPTS, load_images

log = logging.getLogger(__name__)
def parity_cells(ctx) -> list[ParityCell]:
    pcfg = ctx.cfg.parity
    paths = artifact_paths(ctx.cells, ctx.cfg.quantize.variants)
    cells = [ParityCell(RAW_ONNX, "onnxruntime", "fp32", "fp32", pcfg.tier("fp32", "fp32"), 1, **paths[RAW_ONNX]),
             ParityCell(SIM_ONNX, "onnxruntime", "fp32", "fp32", pcfg.tier("fp32", "fp32"), 2, **paths[SIM_ONNX])]
    step = 3
    for variant in ctx.cfg.convert.variants:
        for memory in pcfg.mnn_memory.get(variant, ["normal"]):
            for precision in pcfg.mnn_precisions.get(variant, ["normal"]):
                cells.append(ParityCell(mnn_artifact(variant), "mnn", precision, variant,
                                        pcfg.tier(variant, precision, memory), step, **paths[mnn_artifact(variant)],
                                        memory=memory))
                step += 1
    for name, q in ctx.cfg.quantize.variants.items():  # full int8, last: the furthest from PyTorch
        precisions = pcfg.mnn_precisions.get(name, ["normal"]) if q.runtime == "mnn" else ["fp32"]
        for precision in precisions:
            cells.append(ParityCell(artifact_name(q.runtime, name), q.runtime, precision, name,
                                    pcfg.tier(q.tier, precision), step, **paths[artifact_name(q.runtime, name)]))
            step += 1
    return cells


def run(ctx) -> list[dict]:
    pcfg = ctx.cfg.parity
    images = load_images(pcfg.images, ctx.root)
    cells = parity_cells(ctx)
    log.info("parity: %d cells x %d images x %d prompts", len(cells), len(images), len(PROMPTS))
    ref = torch_reference(ctx, images)
    rows = []
    flags = set(str(machine()["cpu_flags"]).split())
    for cell in tqdm(cells, desc="parity", unit="cell"):
        base = {"cell": cell.key, "step": cell.step, "artifact": cell.artifact, "runtime": cell.runtime,
                "precision": cell.precision, "memory": cell.memory, "variant": cell.variant, "tier": cell.tier,
                "threads": pcfg.threads, "images": len(images)}
        kind = ctx.cfg.variant_kind(cell.variant) if cell.artifact not in ("onnx", "onnx-sim") else "float"
        rt = RUNTIMES[cell.runtime]
        opts = {"memory": cell.memory} if cell.runtime == "mnn" else {}
        compute = rt.arithmetic("CPU" if cell.runtime == "mnn" else "cpu", cell.precision, opts, kind, flags)
        base.update(compute, variant_kind=kind)
        same = rt.identical_to(cell.precision, opts, kind, "CPU", flags) if cell.runtime == "mnn" else None
        missing = [p for p in (cell.encoder, cell.decoder) if not p.exists()]
        if same and pcfg.identical_settings == "skip" and same.precision in pcfg.mnn_precisions.get(cell.variant, ["normal"]) \
                and same.options.get("memory", "normal") in pcfg.mnn_memory.get(cell.variant, ["normal"]):
            repeats = ParityCell(cell.artifact, cell.runtime, same.precision, cell.variant, cell.tier, cell.step,
                                 cell.encoder, cell.decoder, same.options.get("memory", "normal"))
            status, results = Status.skipped(f"{same.why} on this machine ({compute['compute_note']}); its rows would "
                                             f"repeat {repeats.key} (parity.identical_settings: run checks it anyway)"), []
        elif missing:
            status, results = Status.skipped(f"{ctx.rel(missing[0])} missing"), []
        else:
            try:
                results, status = evaluate_cell(ctx, cell, ref), Status.ok()
            except PipelineError as e:
                status, results = Status.failed(e), []
                log.error("parity %s failed: %s", cell.key, e)
        if not results:  # a cell that did not run: not passed; one skipped by design is not failed either
            verdict = None if identical_skip(status) else False
            results = [{"component": c, "pass": verdict, "failed_checks": ""} for c in ("encoder", "decoder", "e2e")]
        for r in results:
            path = cell.encoder if r["component"] == "encoder" else cell.decoder
            sha = file_sha256(path)[:16] if path.exists() else ""
            rows.append({**base, **r, "artifact_path": ctx.rel(path), "artifact_sha256": sha, "status": str(status)})
    th_cols = {f"th_{k}": v for k, v in vars(pcfg.thresholds["fp32"]).items() if k not in ("why", "gate")}
    for r in rows:
        th = vars(pcfg.thresholds[r["tier"]])
        r.update({k: th[k[3:]] for k in th_cols}, gate=th["gate"])
    gating = [r for r in rows if r["pass"] is False and r["gate"]]
    targets = [r for r in rows if r["pass"] is False and not r["gate"]]
    if gating:
        log.error("parity: %d of %d rows below threshold or not run:\n%s", len(gating), len(rows), failure_table(gating))
    if targets:
        log.warning("parity: %d rows below the target of a report-only tier (gate: false), not failing the run:\n%s",
                    len(targets), failure_table(targets))
    return rows
