"""Stage profile: where the time goes, per op type, in the MNN and onnxruntime encoder and decoder.

MNN: the Session API with per-op callbacks (MNN's own op names and FLOP counts). A Session cannot run a
graph whose shapes depend on an input's values (the decoder's orig_im_size), so the decoder is profiled
from a copy of its simplified ONNX with orig_im_size and the point count fixed to the profile's workload,
converted with the variant's own flags. onnxruntime: its built-in profiler on the simplified ONNX.
Both at the same thread count; each op type's GFLOP/s is set against the dense matmul rate.
Writes reports/<model>/profile.csv (one row per component, runtime, artifact and op type) and profile.md.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from stages.bench.cells import expand_variants
from stages.convert import converter_argv, static_flags
from stages.core.artifacts import artifact_paths, atomic_output
from stages.core.isolate import run_isolated
from stages.sam.preprocess import decoder_feeds, preprocess_image
from stages.sam.samples import load_images

log = logging.getLogger(__name__)


def fixed_decoder(src: Path, dst: Path, points: int, out_hw: list[int]) -> None:
    """The decoder ONNX with orig_im_size a constant and point_coords/point_labels of a fixed length."""
    model = onnx.load(str(src))
    g = model.graph
    keep = [i for i in g.input if i.name != "orig_im_size"]
    del g.input[:]
    g.input.extend(keep)
    g.initializer.append(numpy_helper.from_array(np.array(out_hw, np.float32), "orig_im_size"))
    for i in g.input:
        if i.name in ("point_coords", "point_labels"):
            d = i.type.tensor_type.shape.dim[1]
            d.ClearField("dim_param")
            d.dim_value = points + 1  # SamPredictor's padding point
    onnx.save(model, str(dst))


def run(ctx) -> list[dict]:
    pcfg = ctx.cfg.profile
    paths = artifact_paths(ctx.cells)
    variants = expand_variants("mnn", pcfg.variants, ctx.cfg.convert.variants)
    rows: list[dict] = []
    for v in [v for v in variants if f"mnn-{v}" not in paths]:
        log.warning("profile: variant %r is not in convert.variants (%s): not profiled", v, ", ".join(ctx.cfg.convert.variants))
        rows.append({"cell": f"mnn-{v}", "runtime": "mnn", "artifact": f"mnn-{v}",
                     "status": f"skipped: {v!r} is not in convert.variants"})
    variants = [v for v in variants if f"mnn-{v}" in paths]
    (_, photo), = load_images([ctx.cfg.bench.image], ctx.root)
    with tempfile.TemporaryDirectory(prefix="profile-") as d:
        d = Path(d)
        image = preprocess_image(photo)
        from stages.runtimes import OrtRuntime

        emb = OrtRuntime(paths["onnx-sim"]["encoder"], threads=pcfg.threads).run({"image": image})["image_embeddings"]
        h, w = pcfg.decoder_out_size
        n = pcfg.decoder_points
        pts = np.array([[w * (0.3 + 0.4 * i / n), h * 0.5] for i in range(n)], np.float32)
        feeds = {"encoder": {"image": image},
                 "decoder": {k: v for k, v in decoder_feeds(emb, pts, np.ones(n, np.float32), (h, w)).items()
                             if k != "orig_im_size"}}
        fixed = {"encoder": paths["onnx-sim"]["encoder"], "decoder": d / "decoder.fixed.onnx"}
        fixed_decoder(paths["onnx-sim"]["decoder"], fixed["decoder"], n, [h, w])
        rate = run_isolated("matmul_rate", {"threads": pcfg.threads, "n": 2048, "min_seconds": 1.0},
                            ctx.build / "logs" / "profile-matmul.log", 300)
        gflops_peak = rate.result.get("gflops", float("nan")) if rate.ok else float("nan")
        jobs = []
        for component in ("encoder", "decoder"):
            np.savez(d / f"{component}.npz", **feeds[component])
            jobs.append((component, "onnxruntime", "onnx-sim", str(fixed[component])))
            for v in variants:
                if not paths[f"mnn-{v}"][component].exists():  # its conversion failed: convert.csv says why
                    rows.append({"cell": f"{component}/mnn-{v}", "component": component, "runtime": "mnn",
                                 "artifact": f"mnn-{v}", "status": f"skipped: {ctx.rel(paths[f'mnn-{v}'][component])} missing"})
                    continue
                if component == "encoder":
                    mnn = paths[f"mnn-{v}"]["encoder"]
                else:  # the fixed-shape decoder converted with this variant's flags
                    mnn = d / f"decoder.{v}.mnn"
                    flags, _ = static_flags(fixed[component], [*ctx.cfg.convert.variants[v], *ctx.cfg.convert.extra_args], d)
                    res = run_isolated("mnnconvert", {"argv": converter_argv(fixed[component], mnn, flags), "dst": str(mnn),
                                                       "feeds": str(d / "decoder.npz")},
                                       ctx.build / "logs" / f"profile-convert-decoder-{v}.log", pcfg.timeout_s)
                    if not res.ok:
                        rows.append({"cell": f"decoder/mnn-{v}", "component": component, "runtime": "mnn",
                                     "artifact": f"mnn-{v}", "status": f"failed: {res.why}"})
                        continue
                jobs.append((component, "mnn", f"mnn-{v}", str(mnn)))
        for component, runtime, artifact, model in jobs:
            cell = f"{component}/{artifact}"
            res = run_isolated("profile", {"runtime": runtime, "model": model, "feeds": str(d / f"{component}.npz"),
                                           "threads": pcfg.threads, "runs": pcfg.runs},
                               ctx.build / "logs" / f"profile-{component}-{artifact}.log", pcfg.timeout_s)
            if not res.ok:
                rows.append({"cell": cell, "component": component, "runtime": runtime, "artifact": artifact,
                             "status": f"failed: {res.why}"})
                log.error("profile %s failed: %s", cell, res.why)
                continue
            r = res.result
            for op in r["ops"]:
                gflop = 2 * op["mflop"] / 1e3  # MNN counts a multiply-add as one; the matmul rate counts two
                gf = gflop / (op["ms"] / 1e3) if op["ms"] > 0 and gflop == gflop else float("nan")
                rows.append({"cell": cell, "component": component, "runtime": runtime, "artifact": artifact,
                             "threads": pcfg.threads, "op_type": op["type"], "count": op["count"],
                             "ms": round(op["ms"], 3), "share_pct": round(100 * op["ms"] / r["ops_ms"], 2),
                             "gflop": gflop, "gflops": gf, "matmul_gflops": gflops_peak,
                             "roofline_frac": gf / gflops_peak, "ops_total_ms": round(r["ops_ms"], 2),
                             "wall_ms": round(r["wall_ms"], 2), "graph_ops": r["graph_ops"],
                             "workload": "1024x1024" if component == "encoder" else f"{n} pt -> {h}x{w}",
                             "status": "ok"})
    md = ctx.reports / "profile.md"
    with atomic_output(md) as tmp:
        tmp.write_text(markdown(ctx.cfg.name, rows, gflops_peak, pcfg.threads))
    return rows


def markdown(model: str, rows: list[dict], peak: float, threads: int) -> str:
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r.get("status") == "ok"])
    out = [f"# {model}: per-op time profile ({threads} threads)\n",
           f"Dense fp32 matmul rate here: {peak:.0f} GFLOP/s. MNN: Session API with per-op callbacks (MNN's "
           "FLOP counts, a multiply-add as 2 FLOP like the matmul rate); onnxruntime: its profiler, node times only. "
           "`wall` is one whole run; `ops` the sum of op times. Full table: profile.csv.\n"]
    for r in rows:
        if r.get("status", "ok") != "ok":
            out.append(f"- {r['cell']}: {r['status']}\n")
    if df.empty:
        return "\n".join(out)
    for component, g in df.groupby("component", sort=False):
        out.append(f"\n## {component} ({g['workload'].iloc[0]})\n")
        totals = g.groupby("artifact", sort=False).agg(runtime=("runtime", "first"), wall_ms=("wall_ms", "first"),
                                                       ops_ms=("ops_total_ms", "first"), graph_ops=("graph_ops", "first"))
        out.append("| artifact | runtime | wall ms | ops ms | ops in graph |\n|---|---|---|---|---|")
        out += [f"| {a} | {t.runtime} | {t.wall_ms:.1f} | {t.ops_ms:.1f} | {t.graph_ops} |" for a, t in totals.iterrows()]
        for artifact, a in g.groupby("artifact", sort=False):
            top = a.sort_values("ms", ascending=False).head(8)
            out.append(f"\n{artifact}: top op types\n\n| op type | count | ms | share % | GFLOP/s | of matmul rate |\n|---|---|---|---|---|---|")
            out += [f"| {r.op_type} | {r.count} | {r.ms:.1f} | {r.share_pct:.1f} | "
                    f"{'' if r.gflops != r.gflops else f'{r.gflops:.0f}'} | "
                    f"{'' if r.roofline_frac != r.roofline_frac else f'{100 * r.roofline_frac:.0f}%'} |"
                    for r in top.itertuples()]
    return "\n".join(out) + "\n"
