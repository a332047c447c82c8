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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.artifacts import artifact_paths, atomic_output, machine
from stages.compare import SAMPLES_CSV
from stages.config import load_sweep
from stages.flops import decoder_flops, encoder_flops
from stages.isolate import run_isolated
from stages.models import file_sha256
from stages.preprocess import preprocess_image
from stages.runtimes import RUNTIMES, OrtRuntime, Same
from stages.samples import load_images
from stages.ssh import close_all
from stages.targets import HOST, parse_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchCell:
    component: str
    runtime: str
    backend: str
    artifact: str
    variant: str
    precision: str
    threads: int
    mode: str = "default"

    @property
    def key(self) -> str:
        mode = "" if self.mode == "default" else f"~{self.mode}"
        return f"{self.component}/{self.runtime}-{self.backend}/{self.artifact}@{self.precision}{mode}/t{self.threads}"


def artifact_name(runtime: str, variant: str) -> str:
    """Sweep variant -> artifact name shared with parity.csv (torch is the PyTorch model itself)."""
    return {"torch": "torch", "onnxruntime": variant}.get(runtime, f"{runtime}-{variant}")


ALL_VARIANTS = {"torch": ["fp32"], "onnxruntime": ["onnx", "onnx-sim"]}


def expand_variants(runtime: str, variants: list[str], convert_variants, quant: dict | None = None) -> list[str]:
    """`all` in a sweep's variants: every artifact of that runtime (for MNN, every convert.variants entry),
    and its full-int8 quantize.variants; `int8`: only those. A variant added to the model config is timed
    without editing the sweep."""
    int8 = [name for name, q in (quant or {}).items() if q.runtime == runtime]
    out: list[str] = []
    for v in variants:
        if v == "all":
            out.extend([*ALL_VARIANTS.get(runtime, list(convert_variants)), *int8])
        else:
            out.extend(int8 if v == "int8" else [v])
    return list(dict.fromkeys(out))


def grid(sweep, convert_variants=(), quant: dict | None = None, thread_counts: list[int] | None = None) -> list[BenchCell]:
    """The sweep's cells, at its thread counts (or `thread_counts`: a target's own)."""
    cells = []
    for threads in thread_counts or sweep.thread_counts():
        for component in sweep.components:
            for runtime, rs in sweep.runtimes.items():
                for backend in rs.backends:
                    for variant in expand_variants(runtime, rs.variants, convert_variants, quant):
                        for precision in rs.precisions:
                            for mode in rs.modes:
                                cells.append(BenchCell(component, runtime, backend, artifact_name(runtime, variant),
                                                       variant, precision, threads, mode))
    return cells


def masks_made(runtime: str, component: str, options: dict) -> str:
    """Where a row's full-size masks come from: "fp32" (upsampled in numpy, MNN's default), "graph" (the
    decoder's own resize), "" for the encoder."""
    if component == "encoder":
        return ""
    return options.get("upsample", "fp32") if runtime == "mnn" else "graph"


def workloads(sweep, component: str, photo_hw: tuple[int, int]) -> list[dict]:
    if component == "encoder":
        return [{"points": 0, "out_size": list(photo_hw)}]
    if component == "e2e":
        return [{"points": sweep.e2e_points, "out_size": list(photo_hw)}]
    return [{"points": p, "out_size": list(s)} for p in sweep.decoder.points for s in sweep.decoder.out_sizes]


def flops_of(builder: str, component: str, points: int) -> float:
    if component == "encoder":
        return encoder_flops(builder)
    if component == "decoder":
        return decoder_flops(builder, points)
    return encoder_flops(builder) + decoder_flops(builder, points)


def roofline(ctx, sweep, threads: list[int]) -> dict[int, float]:
    rates = {}
    for t in threads:
        res = run_isolated("matmul_rate", {"threads": t, "n": sweep.roofline.matmul_n,
                                           "min_seconds": sweep.roofline.min_seconds},
                           ctx.build / "logs" / f"bench-matmul-t{t}.log", timeout_s=300)
        rates[t] = res.result.get("gflops", float("nan")) if res.ok else float("nan")
        log.info("roofline: dense fp32 matmul %d^3 at %d thread(s): %.0f GFLOP/s", sweep.roofline.matmul_n, t, rates[t])
    return rates


@dataclass
class BenchInputs:
    """What every target's cells are timed on: the photo, its preprocessed image and real embeddings."""

    ctx: object
    sweep: object
    photo_name: str
    photo: np.ndarray
    image: np.ndarray
    embeddings: np.ndarray
    paths: dict
    tmp: Path

    def needed(self, cell: BenchCell) -> tuple[dict | None, list[Path], str | None]:
        """The cell's artifact paths, the files it needs, and why it cannot run (None: it can)."""
        art = self.paths.get(cell.artifact)
        if art is None:
            return None, [], f"no artifact {cell.artifact!r} in this pipeline (variants: {', '.join(self.paths)})"
        needed = [Path(art[c]) for c in (["encoder", "decoder"] if cell.component == "e2e" else [cell.component])]
        missing = [p for p in needed if not p.exists()]
        return art, needed, (f"{self.ctx.rel(missing[0])} missing" if missing else None)


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
        embeddings = OrtRuntime(paths["onnx-sim"]["encoder"], threads=max(sweep.thread_counts()))\
            .run({"image": image})["image_embeddings"]
        inputs = BenchInputs(ctx, sweep, photo_name, photo, image, embeddings, paths, Path(d))
        # each SSH target times its cells one at a time (a device to itself), the targets in parallel; the host's
        # own cells run here meanwhile (an SSH target costs the host little: copying files, waiting)
        from stages.target_bench import target_rows  # it builds on this module's cells and rows

        pool = ThreadPoolExecutor(max_workers=max(1, len(remote)), thread_name_prefix="bench-target")
        stop = threading.Event()
        try:
            futures = [pool.submit(target_rows, inputs, t, stop) for t in remote]
            if HOST in targets:
                _add(rows, samples, host_rows(inputs))
            for f in futures:
                _add(rows, samples, f.result())
        except BaseException:
            stop.set()  # Ctrl-C: no new remote cell starts; close_all below kills the running ones there
            raise
        finally:
            close_all(remote)
            pool.shutdown(wait=True, cancel_futures=True)
    for r in rows:
        r["out_h"], r["out_w"] = r.pop("out_size")
    _speedups(rows)
    with atomic_output(ctx.reports / SAMPLES_CSV) as tmp:
        pd.DataFrame(samples, columns=["cell", "points", "out_h", "out_w", "run", "ms"]).to_csv(tmp, index=False)
    return rows


def _add(rows: list[dict], samples: list[dict], more: tuple[list[dict], list[dict]]) -> None:
    rows.extend(more[0])
    samples.extend(more[1])


def cell_base(inputs: BenchInputs, cell: BenchCell, flags: set[str], target: str = "host") -> tuple[dict, dict, Same | None]:
    """A cell's columns before it runs (what it is and computes in on a CPU with `flags`), its options, and the
    setting it repeats bit for bit there (None: it measures something of its own)."""
    ctx, sweep = inputs.ctx, inputs.sweep
    opts = sweep.runtimes[cell.runtime].modes[cell.mode]
    key = cell.key if target == "host" else f"{cell.key}@{target}"
    base = {"cell": key, **vars(cell), "image": inputs.photo_name, "target": target,
            "mode_options": _options_text(opts)}
    kind = ctx.cfg.variant_kind(cell.variant)
    base["device"] = RUNTIMES[cell.runtime].device(cell.backend)
    compute = RUNTIMES[cell.runtime].arithmetic(cell.backend, cell.precision, opts, kind, flags)
    base.update(compute, variant_kind=kind)
    same = RUNTIMES[cell.runtime].identical_to(cell.precision, opts, kind, cell.backend, flags)
    if same is None and cell.component == "encoder" and "upsample" in opts:
        same = Same(cell.precision, {k: v for k, v in opts.items() if k != "upsample"},
                    "upsample applies to the decoder only: the encoder computes exactly what it does without it")
    base["upsample"] = masks_made(cell.runtime, cell.component, opts)
    rs = sweep.runtimes[cell.runtime]
    if same and not (sweep.identical_settings == "skip" and same.timed_in(rs.precisions, rs.modes)):
        same = None  # the cell it repeats is not timed (or the sweep times both): this one is
    return base, opts, same


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
    unavailable: dict[tuple[str, str], str | None] = {}
    for cell in tqdm(cells, desc="bench", unit="cell"):
        loads = workloads(sweep, cell.component, inputs.photo.shape[:2])
        base, opts, same = cell_base(inputs, cell, flags)
        if (cell.runtime, cell.backend) not in unavailable:
            unavailable[(cell.runtime, cell.backend)] = RUNTIMES[cell.runtime].unavailable(cell.backend)
        art, needed, why = inputs.needed(cell)
        why = unavailable[(cell.runtime, cell.backend)] or why
        if why is None and same:
            why = (f"{same.why} on this machine ({base['compute_note']}); not timed twice (sweep option "
                   f"identical_settings: run times it)")
        if why:
            rows.extend({**base, **w, "status": f"skipped: {why}"} for w in loads)
            continue
        res = run_isolated("bench", {
            "runtime": cell.runtime, "backend": cell.backend, "precision": cell.precision,
            "threads": cell.threads, "component": cell.component, "workloads": loads,
            "encoder": str(art["encoder"]), "decoder": str(art["decoder"]), "feeds": str(feeds),
            "timing": vars(sweep.timing), "root": str(ctx.root), "options": opts,
        }, ctx.build / "logs" / f"bench-{cell.key.replace('/', '_')}.log", sweep.timeout_s)
        if not res.ok:
            log.error("bench %s failed: %s", cell.key, res.why)
            rows.extend({**base, **w, "status": f"failed: {res.why}"} for w in loads)
            continue
        r = res.result
        if r.get("upsample"):  # what the runtime did: a decoder without low_res_masks runs its own resize
            base["upsample"] = r["upsample"]
        sha = ",".join(file_sha256(p)[:16] for p in needed) if cell.runtime != "torch" else ctx.weights
        # the roofline is the CPU's matmul rate: a GPU cell has none measured, so no fraction of it
        rate = rates[cell.threads] if base["device"] == "cpu" else float("nan")
        for w in r["workloads"]:
            samples.extend(_samples(base["cell"], w))
            rows.append(_timed_row(ctx, cell, {**base, "roofline": "host matmul" if base["device"] == "cpu" else "none"},
                                   w, rate, r, sha))
    return rows, samples


def _samples(key: str, w: dict) -> list[dict]:
    return [{"cell": key, "points": w["points"], "out_h": w["out_size"][0], "out_w": w["out_size"][1], "run": i,
             "ms": ms} for i, ms in enumerate(w.pop("samples_ms"))]


def _timed_row(ctx, cell: BenchCell, base: dict, w: dict, rate: float, r: dict, sha: str) -> dict:
    flops = flops_of(ctx.cfg.builder, cell.component, w["points"])
    gflops = flops / (w["p50_ms"] / 1000) / 1e9
    return {**base, **w, "status": "ok" if w["valid"] else "ok: fewer runs than min_runs",
            "load_s": r["load_seconds"], "peak_rss_mb": r["peak_rss_mb"], "os_threads": r["os_threads"],
            "gflop": flops / 1e9, "achieved_gflops": gflops, "matmul_gflops": rate, "roofline_frac": gflops / rate,
            "runtime_version": r.get("runtime_version") or r.get("mnn_version"), "artifact_sha256": sha}


def _options_text(opts: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in opts.items()) or "-"


def _speedups(rows: list[dict]) -> None:
    """speedup_vs_torch: PyTorch eager p50 over the cell's p50, same component, workload, threads, kind of
    device (CPU rows against torch cpu, GPU rows against torch cuda) and target (an SSH target has no PyTorch
    rows: its rows have none)."""
    def key(r):
        return (r["component"], r["points"], r["out_h"], r["out_w"], r["threads"], r.get("device", "cpu"),
                r.get("target", "host"))

    ref = {key(r): r["p50_ms"] for r in rows if r["runtime"] == "torch" and r["status"].startswith("ok")}
    for r in rows:
        t = ref.get(key(r))
        r["speedup_vs_torch"] = t / r["p50_ms"] if t and r.get("p50_ms") else float("nan")
