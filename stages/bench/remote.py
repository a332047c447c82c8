"""The bench on an SSH target: its MNN cells, timed by the runner there (stages/ondevice/mnn_runner.py)
with the sweep's own stop rule and statistics, on the target's CPU, cores and MNN build.

A target gets the sweep's MNN cells only (PyTorch and onnxruntime cells are the host's). Its backends are the
ones its MNN opens (the probe runs there); `threads: auto` counts up to its own cores. No matmul roofline is
measured there: its rows say `roofline: none` and leave matmul_gflops empty. e2e cells are skipped with the
reason (the preprocessing they time runs in the host's numpy). Every row names the target, its CPU model, core
count, MNN version and backends: `machine`, `cpu`, `cores` and `machine_class` are the target's. Whatever a
target does (drops, crashes, stalls, answers garbage), it fails its own cells only: this never raises for it.
"""

from __future__ import annotations

import logging
import re
import threading

from stages.bench.cells import (
    BenchCell,
    BenchInputs,
    cell_base,
    grid,
    samples_of,
    timed_row,
    workloads,
)
from stages.bench.skips import Skips
from stages.core.artifacts import file_sha256
from stages.core.errors import PipelineError
from stages.core.status import Status
from stages.ondevice.mnn_runner import save_cases
from stages.runtimes.settings import RunSettings
from stages.runtimes.targets import feature_flags
from stages.sam.spec import SPECS

log = logging.getLogger(__name__)


def _feeds(inputs: BenchInputs, target, component: str, loads: list[dict]):
    """One case per workload: the encoder's image, or the decoder's prompt at each output size. A file per
    target: the targets' threads write theirs at once (a shared one was copied half-written)."""
    spec = SPECS[component]
    cases = {f"w{i}": spec.workload_feeds(inputs.image, inputs.embeddings, w["points"], w["out_size"])
             for i, w in enumerate(loads)}
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", target.name)
    return save_cases(inputs.tmp / f"target-{slug}-{component}-{len(loads)}.npz", cases)


def about_columns(target, about: dict) -> dict:
    """The target's identity in a row (these keys take the place of the host's in finish_rows)."""
    slug = (re.sub(r"[^a-z0-9]+", "-", str(about.get("cpu_model", "")).lower()).strip("-")
            or about.get("machine", ""))
    have = [b for b, why in (about.get("backends") or {}).items() if why is None]
    return {"target": target.name, "machine": target.name, "cpu": about.get("cpu_model", ""),
            "cores": about.get("cores", 0), "cpu_flags": about.get("cpu_features", ""),
            "machine_class": f"{slug}_{about.get('cores', 0)}c_{about.get('machine', '')}",
            "target_machine": about.get("machine", ""), "target_mnn": about.get("mnn_version", ""),
            "target_python": about.get("python", ""), "target_backends": " ".join(have)}


def target_rows(inputs: BenchInputs, target, stop: threading.Event) -> tuple[list[dict], list[dict]]:
    """Every MNN cell of the sweep on `target`, one at a time; a fault fails that cell and the next one
    runs."""
    ctx, sweep = inputs.ctx, inputs.sweep
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", target.name)
    try:
        about = target.probe(ctx.build / "logs" / f"bench-probe-{slug}.log")
        threads, down = sweep.thread_counts(about.get("cores") or None), None
    except (PipelineError, ValueError, TypeError) as e:  # down, or its answer is not the protocol's
        log.error("bench: target %s: %s", target.name, e)
        about, down = {"cores": 0}, str(e)
        threads = sweep.thread_counts(None)
    cells = [c for c in grid(sweep, ctx.cfg.convert.variants, ctx.cfg.quantize.variants, threads)
             if c.runtime == "mnn"]
    log.info("bench: %d MNN cells on %s (%s, %s cores, MNN %s), threads %s", len(cells), target.name,
             about.get("cpu_model", "?"), about.get("cores", "?"), about.get("mnn_version", "?"), threads)
    ident = about_columns(target, about)
    flags = feature_flags(about.get("cpu_features", ""))
    rows: list[dict] = []
    samples: list[dict] = []
    skips = Skips()
    for cell in cells:
        loads = workloads(sweep, cell.component, inputs.photo.shape[:2])
        base, settings, same = cell_base(inputs, cell, flags, target.name)
        base.update(ident, roofline="none", matmul_gflops=float("nan"), roofline_frac=float("nan"))
        art, needed, why = inputs.needed(cell)
        why = down or _unavailable(cell, about, target) or why
        if why is None and same:
            why = (f"{same.why} on {target.name} ({base['compute_note']}); not timed twice (sweep option "
                   f"identical_settings: run times it)")
        if why is None and stop.is_set():
            why = "the run was interrupted before this cell"
        if why and down:
            rows.extend({**base, **w, "status": str(Status.failed(why))} for w in loads)
            continue
        if why:
            skips.add(base, Status.skipped(why))
            continue
        try:
            rows_, samples_ = _time_cell(inputs, target, cell, base, settings, loads, needed)
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # an answer that is not the protocol's
            log.exception("bench %s on %s", cell.key, target.name)
            why = f"the answer of {target.name} is not the protocol's ({type(e).__name__}: {e})"
            rows_, samples_ = [{**base, **w, "status": str(Status.failed(why))} for w in loads], []
        rows.extend(rows_)
        samples.extend(samples_)
    return rows + skips.rows(), samples


def _unavailable(cell: BenchCell, about: dict, target) -> str | None:
    if cell.component == "e2e":
        return (f"e2e times the host's numpy preprocessing with the encoder and decoder; on {target.name} "
                f"the encoder and decoder rows are timed apart")
    why = (about.get("backends") or {}).get(cell.backend, f"MNN backend {cell.backend} was not probed")
    return f"{why} on {target.name}" if why else None


def _time_cell(inputs: BenchInputs, target, cell: BenchCell, base: dict, settings: RunSettings, loads: list[dict],
               needed) -> tuple[list[dict], list[dict]]:
    ctx, sweep = inputs.ctx, inputs.sweep
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", target.name)
    log_file = ctx.build / "logs" / f"bench-{slug}-{cell.key.replace('/', '_')}.log"
    res = target.run({"model": str(needed[0]), "feeds": str(_feeds(inputs, target, cell.component, loads)),
                      "settings": settings.runner_settings(cell.component),
                      "timing": vars(sweep.timing.share(len(loads)))}, log_file, sweep.timeout_s)
    timings = res.result.get("timings") if res.ok else None
    if res.ok and not (isinstance(timings, list) and len(timings) == len(loads)
                       and all(isinstance(t, dict) for t in timings)):
        res.ok, res.error = False, (f"the runner on {target.name} sent back {str(timings)[:80]!r} as the "
                                    f"timings of {len(loads)} workloads")
    if res.ok and res.result.get("nonfinite_outputs"):
        res.ok, res.error = False, f"outputs {', '.join(res.result['nonfinite_outputs'])} hold NaN or Inf"
    if not res.ok:
        log.error("bench %s on %s failed: %s", cell.key, target.name, res.why)
        return [{**base, **w, "status": str(Status.failed(res.why))} for w in loads], []
    r = res.result
    if SPECS[cell.component].makes_masks:
        base["upsample"] = r.get("upsample", base["upsample"])
    sha = ",".join(file_sha256(p)[:16] for p in needed)
    rows, samples = [], []
    for w, t in zip(loads, r["timings"], strict=True):
        w = {**w, **t}
        samples.extend(samples_of(base["cell"], w))
        rows.append(timed_row(ctx, cell, base, w, float("nan"), r, sha))
    return rows, samples

