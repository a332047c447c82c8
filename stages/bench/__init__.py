"""Stage bench: latency over component x runtime x backend x variant x precision x threads.

The grid comes from configs/sweeps/<sweep>.yaml. Every cell runs in its own child process, so a crash
fails that cell's row and the sweep goes on, each runtime gets exactly the cell's thread count, and
peak RSS is the cell's own. A backend that is not there (an execution provider not installed, an MNN
GPU backend missing from the wheel, which MNN would silently replace by the CPU) is a skipped row.
A dense fp32 matmul rate measured at each thread count is the roofline every row is compared to.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.bench.cells import BenchInputs, cell_base, grid, samples_of, timed_row, workloads
from stages.bench.paired import COLUMNS, paired_rows
from stages.bench.remote import target_rows
from stages.bench.skips import Candidates, SameFiles, Skips
from stages.bench.tasks import bench
from stages.config import load_sweep
from stages.config.sweep import expand_variants
from stages.core.artifacts import (
    SAMPLES_CSV,
    atomic_output,
    cached_file_sha256,
    file_sha256,
    machine,
    sidecars,
)
from stages.core.isolate import run_isolated
from stages.core.names import SIM_ONNX, artifact_paths
from stages.core.signals import deferred
from stages.core.status import Status, is_ok
from stages.ondevice.timing import summarize
from stages.runtimes import RUNTIMES, OrtRuntime
from stages.runtimes.roofline import matmul_rate
from stages.runtimes.ssh import close_all
from stages.runtimes.targets import HOST, parse_target
from stages.sam.preprocess import preprocess_image
from stages.sam.samples import load_images

log = logging.getLogger(__name__)

PAIRED_CSV = "paired.csv"


def roofline(ctx, sweep, threads: list[int]) -> dict[int, float]:
    rates = {}
    for t in threads:
        res = run_isolated(matmul_rate, {"threads": t, "n": sweep.roofline.matmul_n,
                                           "min_seconds": sweep.roofline.min_seconds},
                           ctx.build / "logs" / f"bench-matmul-t{t}.log", timeout_s=300)
        rates[t] = res.result.get("gflops", float("nan")) if res.ok else float("nan")
        log.info("roofline: dense fp32 matmul %d^3 at %d thread(s): %.0f GFLOP/s", sweep.roofline.matmul_n, t, rates[t])
    return rates


def run(ctx) -> list[dict]:
    sweep = load_sweep(ctx.cfg.bench.sweep)
    targets = [parse_target(t, "bench.targets") for t in ctx.cfg.bench.targets]
    (photo_name, photo), = load_images([ctx.cfg.bench.image], ctx.root)
    paths = artifact_paths(ctx.cells, ctx.cfg.quantize.variants)
    paths["torch"] = {"encoder": ctx.cfg.source, "decoder": ctx.cfg.source}
    rows: list[dict] = []
    samples: list[dict] = []  # every timed run of every ok cell: what the A/B regression gate tests on
    remote = [t for t in targets if t != HOST]
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        image = preprocess_image(photo)
        # real embeddings of the photo for the decoder-only cells
        embeddings = OrtRuntime(paths[SIM_ONNX]["encoder"], threads=max(sweep.thread_counts()))\
            .run({"image": image})["image_embeddings"]
        inputs = BenchInputs(ctx, sweep, photo_name, photo, image, embeddings, paths, Path(d))
        # each SSH target times its cells one at a time (a device to itself), the targets in parallel; the host's
        # own cells run here meanwhile (an SSH target costs the host little: copying files, waiting)
        pool = ThreadPoolExecutor(max_workers=max(1, len(remote)), thread_name_prefix="bench-target")
        pairs: list[dict] = []
        stop = threading.Event()
        try:
            futures = [pool.submit(target_rows, inputs, t, stop) for t in remote]
            if HOST in targets:
                _add(rows, samples, host_rows(inputs))
                pairs = paired_rows(inputs, inputs.tmp / "feeds.npz", set(str(machine()["cpu_flags"]).split()))
            elif sweep.paired:
                log.warning("bench: the sweep's paired comparisons run on the host only, which is not a target here")
            for f in futures:
                _add(rows, samples, f.result())
        except BaseException:
            stop.set()  # Ctrl-C: no new remote cell starts; close_all below kills the running ones there
            raise
        finally:
            with deferred():  # a Ctrl-C in the first close comes after all three steps
                close_all(remote)
                pool.shutdown(wait=True, cancel_futures=True)
                close_all(remote)  # a call a target's thread started while the first close ran (now gone too)
    for r in rows:
        r["out_h"], r["out_w"] = r.pop("out_size")
    _speedups(rows)
    with atomic_output(ctx.reports / SAMPLES_CSV) as tmp:
        pd.DataFrame(samples, columns=["cell", "points", "out_h", "out_w", "run", "ms"]).to_csv(tmp, index=False)
    with atomic_output(ctx.reports / PAIRED_CSV) as tmp:  # same-process A/B (sweep `paired`), with provenance
        cols = list(dict.fromkeys([*COLUMNS, *(k for r in pairs for k in r)]))  # skipped rows lack the numbers
        pd.DataFrame(pairs, columns=cols).to_csv(tmp, index=False)
    return rows


def _add(rows: list[dict], samples: list[dict], more: tuple[list[dict], list[dict]]) -> None:
    rows.extend(more[0])
    samples.extend(more[1])


def host_rows(inputs: BenchInputs) -> tuple[list[dict], list[dict]]:
    """Every cell of the sweep on this machine, each in its own child process, against the matmul roofline."""
    ctx, sweep = inputs.ctx, inputs.sweep
    threads = sweep.thread_counts()
    cells = grid(sweep, ctx.cfg.convert.variants, ctx.cfg.quantize.variants)
    log.info("bench: %d cells from %s on the host, threads %s", len(cells), sweep.source, threads)
    rates = roofline(ctx, sweep, threads)
    flags = set(str(machine()["cpu_flags"]).split())
    feeds = inputs.tmp / "feeds.npz"
    np.savez(feeds, photo=inputs.photo, image=inputs.image, embeddings=inputs.embeddings)
    rows: list[dict] = []
    samples: list[dict] = []
    skip = NotTimed(inputs)
    for cell in tqdm(cells, desc="bench", unit="cell"):
        loads = workloads(sweep, cell.component, inputs.photo.shape[:2])
        base, settings, same = cell_base(inputs, cell, flags)
        art, needed, why = skip.why(cell, base, settings.options, same)
        if why:
            skip.rows.add(base, Status.skipped(why))
            continue
        req = {
            "settings": settings.to_json(), "component": cell.component, "workloads": loads,
            "encoder": str(art["encoder"]), "decoder": str(art["decoder"]), "feeds": str(feeds),
            "timing": vars(sweep.timing.share(sweep.processes)), "root": str(ctx.root), "config": str(ctx.cfg.source),
        }
        res = timed_processes(req, ctx.build / "logs" / f"bench-{cell.key.replace('/', '_')}.log", sweep)
        if not res.ok:
            log.error("bench %s failed: %s", cell.key, res.why)
            rows.extend({**base, **w, "status": str(Status.failed(res.why))} for w in loads)
            continue
        r = res.result
        if cell.runtime != "torch":
            skip.same_files.add(cell, skip.shas(needed))
        if r.get("upsample"):  # what the runtime did: a decoder without low_res_masks runs its own resize
            base["upsample"] = r["upsample"]
        sha = ",".join(file_sha256(p)[:16] for p in needed) if cell.runtime != "torch" else ctx.weights
        # the roofline is the CPU's matmul rate: a GPU cell has none measured, so no fraction of it
        rate = rates[cell.threads] if base["device"] == "cpu" else float("nan")
        for w in r["workloads"]:
            samples.extend(samples_of(base["cell"], w))
            rows.append(timed_row(ctx, cell, {**base, "roofline": "host matmul" if base["device"] == "cpu" else "none"},
                                   w, rate, r, sha))
    return rows + skip.rows.rows(), samples


class NotTimed:
    """Why a host cell is not timed (None: it is): its backend is not here, it computes exactly what another
    timed cell does (a setting, or the same file), its artifact is missing, or it is no candidate (`candidates:
    passing`: it fails parity, or only stores another variant's weights in fewer bits and is not the smallest
    passing file). The skipped cells' rows, one per reason, in `rows`."""

    def __init__(self, inputs: BenchInputs):
        self.inputs, self.rows = inputs, Skips()
        self.unavailable: dict[tuple[str, str], str | None] = {}
        self.candidates = Candidates(inputs.ctx.reports / "parity.csv", inputs.sweep.candidates, inputs.ctx.root)
        self.same_files = SameFiles()
        cfg, mnn = inputs.ctx.cfg, inputs.sweep.runtimes.get("mnn")
        self.mnn_variants = set(expand_variants("mnn", mnn.variants, cfg.convert.variants)) if mnn else set()

    def why(self, cell, base: dict, opts: dict, same) -> tuple[dict | None, list[Path], str | None]:
        sweep, rt = self.inputs.sweep, RUNTIMES[cell.runtime]
        if (cell.runtime, cell.backend) not in self.unavailable:
            self.unavailable[(cell.runtime, cell.backend)] = rt.unavailable(cell.backend)
        art, needed, why = self.inputs.needed(cell)
        why = self.unavailable[(cell.runtime, cell.backend)] or why
        if why is None and same:
            why = (f"{same.why} on this machine ({base['compute_note']}); not timed twice (sweep option "
                   f"identical_settings: run times it)")
        memory = opts.get("memory", "normal")
        if why is None:
            why = self.candidates.why_not(cell.runtime, cell.artifact, rt.parity_precision(cell.precision), memory,
                                          cell.component)
        if why is None and cell.runtime == "mnn":
            twin = self.inputs.ctx.cfg.float_twin(cell.variant)
            why = self.candidates.why_twin(cell, twin if twin in self.mnn_variants else None, memory)
        if why is None and sweep.identical_settings == "skip" and cell.runtime != "torch":
            why = self.same_files.why_same(cell, self.shas(needed))
        return art, needed, why

    @staticmethod
    def shas(needed: list[Path]) -> tuple[str, ...]:
        return tuple(cached_file_sha256(q) for p in needed for q in (p, *sidecars(p)))


def timed_processes(req: dict, logfile, sweep):
    """The bench task in `sweep.processes` fresh processes one after another, their timed runs pooled per
    workload (p50 and the rest over all of them; cold-start numbers from the first); `process_p50_ms` lists
    each process's own p50. The first failure is the cell's result."""
    results = []
    for _ in range(sweep.processes):
        res = run_isolated(bench, req, logfile, sweep.timeout_s)
        if not res.ok:
            return res
        results.append(res)
    first = results[0]
    for i, w in enumerate(first.result["workloads"]):
        each = [r.result["workloads"][i] for r in results]
        own = {"processes": len(each), "process_p50_ms": " ".join(f"{e['p50_ms']:.1f}" for e in each)}
        if len(each) > 1:  # one process: its own statistics stand
            pooled = [ms for e in each for ms in e["samples_ms"]]
            w.update(summarize([ms / 1000 for ms in pooled]), samples_ms=pooled, valid=all(e["valid"] for e in each),
                     stopped_by=next((e["stopped_by"] for e in each if e.get("stopped_by") == "budget"),
                                     each[0].get("stopped_by")))  # one process at its budget: the cell was
        w.update(own)
    return first


def _speedups(rows: list[dict]) -> None:
    """speedup_vs_torch: PyTorch eager p50 over the cell's p50, same component, workload, threads, kind of
    device (CPU rows against torch cpu, GPU rows against torch cuda) and target (an SSH target has no PyTorch
    rows: its rows have none)."""
    def key(r):
        return (r["component"], r["points"], r["out_h"], r["out_w"], r["threads"], r.get("device", "cpu"),
                r.get("target", "host"))

    ref = {key(r): r["p50_ms"] for r in rows if r["runtime"] == "torch" and is_ok(r["status"])}
    for r in rows:
        t = ref.get(key(r))
        r["speedup_vs_torch"] = t / r["p50_ms"] if t and r.get("p50_ms") else float("nan")
