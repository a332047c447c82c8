"""Same-process A/B comparisons (sweep `paired`): two variants of one component (of one runtime, or MNN's against
onnxruntime's: `b_runtime`) loaded in one child process and called alternately on the same inputs, in several fresh
processes; reports/MODEL/paired.csv, one row per comparison and workload.

Why: MNN's 2-thread decoder on this VM runs either fast or about 2x slower, per process and sometimes switching
between workloads (one cell's processes spread up to 2.3x), so separate cells cannot show a difference of a few
percent; the two calls of a pair run back to back and share whatever phase the process is in. A row's verdict
needs both a sign test over the call pairs (b faster or slower in more untied pairs than chance, p < 0.01) and
every process agreeing (its median ratio on the same side of 1): one disturbed process cannot make a verdict
(stages/core/ab.py, the statistics the regression gate uses too).
Runs on the host only, each side on its runtime's first backend and precision in the sweep.
"""

from __future__ import annotations

import logging

from stages.bench.cells import BenchCell, cell_base, workloads
from stages.bench.tasks import paired
from stages.core.ab import compare_calls
from stages.core.artifacts import file_sha256, with_machine
from stages.core.isolate import run_isolated
from stages.core.names import artifact_name
from stages.core.status import Status
from stages.runtimes import RUNTIMES
from stages.sam.spec import parts

log = logging.getLogger(__name__)

COLUMNS = ["model", "weights", "comparison", "component", "runtime", "backend", "precision", "mode", "threads", "a", "b", "points",
           "out_h", "out_w", "processes", "calls", "a_p50_ms", "b_p50_ms", "ratio_b_a", "ratio_p25", "ratio_p75",
           "b_faster_pairs", "ties", "pairs", "p_value", "process_ratios", "verdict", "upsample", "a_sha256", "b_sha256",
           "runtime_version", "status", "machine_class", "cpu_flags", "b_runtime", "b_mode"]


def paired_rows(inputs, feeds, flags: set[str]) -> list[dict]:
    """Every comparison of the sweep's `paired` list on this machine, at its highest thread count."""
    ctx, sweep = inputs.ctx, inputs.sweep
    threads = max(sweep.thread_counts())
    rows: list[dict] = []
    for pc in sweep.paired:
        cells, settings, upsample = {}, {}, {}
        for side in ("a", "b"):
            runtime, variant, mode = pc.side(side)
            rs = sweep.runtimes[runtime]
            cells[side] = BenchCell(pc.component, runtime, rs.backends[0], artifact_name(runtime, variant), variant,
                                    rs.precisions[0], threads, mode)
            base, settings[side], _ = cell_base(inputs, cells[side], flags)
            upsample[side] = base["upsample"]
        name = _name(pc)
        a = cells["a"]
        head = {"model": ctx.cfg.name, "weights": ctx.weights, "comparison": name, "component": pc.component,
                "runtime": pc.runtime, "backend": a.backend, "precision": a.precision, "mode": pc.mode,
                "threads": threads, "a": pc.a, "b": pc.b, "upsample": " ".join(dict.fromkeys(upsample.values())),
                "b_runtime": cells["b"].runtime, "b_mode": cells["b"].mode}
        loads = workloads(sweep, pc.component, inputs.photo.shape[:2])
        files, why = {}, None
        for side, cell in cells.items():
            art, needed, missing = inputs.needed(cell)
            why = why or RUNTIMES[cell.runtime].unavailable(cell.backend) or missing  # never a number from elsewhere
            files[side] = (art, needed)
        if why:
            rows.extend({**head, **_workload(w), "status": str(Status.skipped(why))} for w in loads)
            continue
        req = {"component": pc.component, "workloads": loads, "feeds": str(feeds), "warmup": sweep.timing.warmup,
               "calls": pc.calls, "root": str(ctx.root), "config": str(ctx.cfg.source),
               "sides": {side: {"settings": settings[side].to_json(),
                                **{s.name: str(art[s.name]) for s in parts(pc.component)}}
                         for side, (art, _) in files.items()}}
        rows.extend(_timed(inputs, pc, name, req, head, loads, files))
    return with_machine(rows)  # as every stage CSV row has them


def _name(pc) -> str:
    if not pc.b_runtime or (pc.b_runtime == pc.runtime and pc.b_mode == pc.mode):
        return f"{pc.component}/{pc.runtime}: {pc.b} vs {pc.a}" + ("" if pc.mode == "default" else f" ~{pc.mode}")
    mode = {s: "" if m == "default" else f"~{m}" for s, m in (("a", pc.mode), ("b", pc.b_mode))}
    return f"{pc.component}: {pc.b_runtime} {pc.b}{mode['b']} vs {pc.runtime} {pc.a}{mode['a']}"


def _timed(inputs, pc, name: str, req: dict, head: dict, loads: list[dict], files: dict) -> list[dict]:
    """The comparison in `processes` fresh processes (every other one loads b first): one row per workload."""
    ctx, sweep = inputs.ctx, inputs.sweep
    results = []
    for i in range(sweep.processes):
        res = run_isolated(paired, {**req, "b_first": i % 2 == 1},
                           ctx.build / "logs" / f"bench-paired-{name.replace('/', '_').replace(' ', '')}.log",
                           sweep.timeout_s)
        if not res.ok:
            log.error("bench paired %s failed: %s", name, res.why)
            return [{**head, **_workload(w), "status": str(Status.failed(res.why))} for w in loads]
        results.append(res.result)
    sha = {f"{side}_sha256": ",".join(file_sha256(p)[:16] for p in needed) for side, (_, needed) in files.items()}
    rows = []
    for i, w in enumerate(loads):
        each = [r["workloads"][i] for r in results]
        rows.append({**head, **_workload(w), **compare_calls([e["a_ms"] for e in each], [e["b_ms"] for e in each]),
                     **sha, "runtime_version": results[0]["runtime_version"], "status": str(Status.ok())})
        log.info("bench paired %s, %s: b/a %.3f (%s)", name, _workload(w), rows[-1]["ratio_b_a"], rows[-1]["verdict"])
    return rows


def _workload(w: dict) -> dict:
    return {"points": w["points"], "out_h": w["out_size"][0], "out_w": w["out_size"][1]}
