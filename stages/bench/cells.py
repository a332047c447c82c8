"""The bench's grid and rows, shared by the host (stages/bench/__init__.py) and SSH targets (stages/bench/remote.py):
cells, their workloads, the columns a cell has before it runs, and a timed row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.config.sweep import expand_variants
from stages.core.names import artifact_name, options_text
from stages.core.status import Status
from stages.runtimes import RUNTIMES, Same
from stages.runtimes.settings import RunSettings
from stages.sam.flops import component_flops
from stages.sam.spec import SPECS, parts


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

    def settings(self, sweep) -> RunSettings:
        """How this cell runs: its runtime, backend, precision, threads and its mode's options in `sweep`."""
        return RunSettings(self.runtime, self.backend, self.precision, self.threads,
                           dict(sweep.runtimes[self.runtime].modes[self.mode]))


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


def workloads(sweep, component: str, photo_hw: tuple[int, int]) -> list[dict]:
    """The component that makes masks (the decoder) at every point count and mask size of the sweep; e2e at its
    point count and the photo's size; the encoder once."""
    if component == "e2e":
        return [{"points": sweep.e2e_points, "out_size": list(photo_hw)}]
    if not SPECS[component].makes_masks:
        return [{"points": 0, "out_size": list(photo_hw)}]
    return [{"points": p, "out_size": list(s)} for p in sweep.decoder.points for s in sweep.decoder.out_sizes]


def flops_of(builder: str, component: str, points: int) -> float:
    return sum(component_flops(builder, s.name, points) for s in parts(component))



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
        needed = [Path(art[s.name]) for s in parts(cell.component)]
        missing = [p for p in needed if not p.exists()]
        return art, needed, (f"{self.ctx.rel(missing[0])} missing" if missing else None)



def cell_base(inputs: BenchInputs, cell: BenchCell, flags: set[str],
              target: str = "host") -> tuple[dict, RunSettings, Same | None]:
    """A cell's columns before it runs (what it is and computes in on a CPU with `flags`), how it runs, and the
    setting it repeats bit for bit there (None: it measures something of its own)."""
    ctx, sweep = inputs.ctx, inputs.sweep
    settings = cell.settings(sweep)
    opts = settings.options
    key = cell.key if target == "host" else f"{cell.key}@{target}"
    base = {"cell": key, **vars(cell), "image": inputs.photo_name, "target": target,
            "mode_options": options_text(opts)}
    kind = ctx.cfg.variant_kind(cell.variant)
    base["device"] = RUNTIMES[cell.runtime].device(cell.backend)
    compute = RUNTIMES[cell.runtime].arithmetic(cell.backend, cell.precision, opts, kind, flags)
    base.update(compute, variant_kind=kind)
    same = RUNTIMES[cell.runtime].identical_to(cell.precision, opts, kind, cell.backend, flags)
    if same is None and not any(s.makes_masks for s in parts(cell.component)) and "upsample" in opts:
        same = Same(cell.precision, {k: v for k, v in opts.items() if k != "upsample"},
                    "upsample applies to the decoder only: the encoder computes exactly what it does without it")
    base["upsample"] = settings.masks_made(cell.component)
    rs = sweep.runtimes[cell.runtime]
    if same and not (sweep.identical_settings == "skip" and same.timed_in(rs.precisions, rs.modes)):
        same = None  # the cell it repeats is not timed (or the sweep times both): this one is
    return base, settings, same



def samples_of(key: str, w: dict) -> list[dict]:
    return [{"cell": key, "points": w["points"], "out_h": w["out_size"][0], "out_w": w["out_size"][1], "run": i,
             "ms": ms} for i, ms in enumerate(w.pop("samples_ms"))]


def timed_row(ctx, cell: BenchCell, base: dict, w: dict, rate: float, r: dict, sha: str) -> dict:
    flops = flops_of(ctx.cfg.builder, cell.component, w["points"])
    gflops = flops / (w["p50_ms"] / 1000) / 1e9
    return {**base, **w, "status": str(Status.ok() if w["valid"] else Status.ok("fewer runs than min_runs")),
            "load_s": r["load_seconds"], "peak_rss_mb": r["peak_rss_mb"], "os_threads": r["os_threads"],
            "gflop": flops / 1e9, "achieved_gflops": gflops, "matmul_gflops": rate, "roofline_frac": gflops / rate,
            "runtime_version": r.get("runtime_version") or r.get("mnn_version"), "artifact_sha256": sha}
