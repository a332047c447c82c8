"""Stage profile: where the time goes, per op type, in the MNN and onnxruntime encoder and decoder.

MNN: the Session API with per-op callbacks (MNN's own op names and FLOP counts). A Session cannot run a
graph whose shapes depend on an input's values (the decoder's orig_im_size), so the decoder is profiled
from a copy of its simplified ONNX with orig_im_size and the point count fixed to the profile's workload,
converted with the variant's own flags. As MnnRuntime runs it (profile.decoder_upsample: fp32), that copy is
cut at low_res_masks and iou_predictions, and the numpy upsample to the full-size masks is timed beside it as
one more op row. onnxruntime: its built-in profiler on the simplified ONNX (the decoder whole, as the bench
times it).
Both at the same thread count; each op type's GFLOP/s is set against the dense matmul rate.
Writes reports/<model>/profile.csv (one row per component, runtime, artifact and op type) and profile.md.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import numpy_helper

from stages.config.sweep import expand_variants
from stages.conversion.mnn import converter_argv, mnnconvert, output_names, static_flags
from stages.core.artifacts import atomic_output
from stages.core.isolate import run_isolated
from stages.core.names import SIM_ONNX, artifact_paths, mnn_artifact, mnn_file
from stages.core.status import Status
from stages.runtimes.onnx_rewrites import apply_rewrites, split_flags
from stages.runtimes.roofline import matmul_rate
from stages.runtimes.tasks import UPSAMPLE_OP
from stages.runtimes.tasks import profile as profile_task
from stages.sam.preprocess import preprocess_image
from stages.sam.samples import load_images
from stages.sam.spec import ENCODER, SPECS

log = logging.getLogger(__name__)


def fix_shapes(src: Path, dst: Path, values: dict[str, np.ndarray], dims: dict[str, int]) -> None:
    """The ONNX with the inputs in `values` made constants and its symbolic dims in `dims` fixed (the decoder:
    orig_im_size, and point_coords/point_labels of the workload's length)."""
    model = onnx.load(str(src))
    g = model.graph
    keep = [i for i in g.input if i.name not in values]
    del g.input[:]
    g.input.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    for i in g.input:
        for d in i.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                value = dims[d.dim_param]
                d.ClearField("dim_param")
                d.dim_value = value
    onnx.save(model, str(dst))


def cut_outputs(src: Path, dst: Path, drop: set[str]) -> list[str]:
    """The ONNX without the outputs in `drop` and the nodes only they need; the names of the outputs kept."""
    model = onnx.load(str(src), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    keep = [o.name for o in model.graph.output if o.name not in drop]
    onnx.utils.extract_model(str(src), str(dst), inputs, keep)
    return keep


def run(ctx) -> list[dict]:
    pcfg = ctx.cfg.profile
    paths = artifact_paths(ctx.cells)
    rows: list[dict] = []
    variants = _variants(ctx, paths, rows)
    with tempfile.TemporaryDirectory(prefix="profile-") as d:
        d = Path(d)
        fixed, workload = _inputs(ctx, paths, d)
        rate = run_isolated(matmul_rate, {"threads": pcfg.threads, "n": 2048, "min_seconds": 1.0},
                            ctx.build / "logs" / "profile-matmul.log", 300)
        gflops_peak = rate.result.get("gflops", float("nan")) if rate.ok else float("nan")
        for component, runtime, artifact, model, upsample in _jobs(ctx, paths, variants, fixed, d, rows):
            cell = f"{component}/{artifact}"
            res = run_isolated(profile_task, {"runtime": runtime, "model": model, "feeds": str(d / f"{component}.npz"),
                                              "threads": pcfg.threads, "runs": pcfg.runs, "upsample": upsample},
                               ctx.build / "logs" / f"profile-{component}-{artifact}.log", pcfg.timeout_s)
            base = {"cell": cell, "component": component, "runtime": runtime, "artifact": artifact,
                    "threads": pcfg.threads, "upsample": _upsample_label(component, upsample is not None)}
            if not res.ok:
                rows.append({**base, "status": str(Status.failed(res.why))})
                log.error("profile %s failed: %s", cell, res.why)
                continue
            rows.extend(_op_rows(base, res.result, gflops_peak, workload[component]))
    md = ctx.reports / "profile.md"
    with atomic_output(md) as tmp:
        tmp.write_text(markdown(ctx.cfg.name, rows, gflops_peak, pcfg.threads))
    return rows


def _variants(ctx, paths: dict, rows: list[dict]) -> list[str]:
    """The MNN variants to profile; a skipped row for each one convert does not make."""
    variants = expand_variants("mnn", ctx.cfg.profile.variants, ctx.cfg.convert.variants)
    for v in [v for v in variants if mnn_artifact(v) not in paths]:
        log.warning("profile: variant %r is not in convert.variants (%s): not profiled", v, ", ".join(ctx.cfg.convert.variants))
        rows.append({"cell": mnn_artifact(v), "runtime": "mnn", "artifact": mnn_artifact(v),
                     "status": str(Status.skipped(f"{v!r} is not in convert.variants"))})
    return [v for v in variants if mnn_artifact(v) in paths]


def _inputs(ctx, paths: dict, d: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Each component's feeds (d/<component>.npz) and the ONNX it is profiled from (the decoder's with fixed
    shapes), and each component's workload as profile.csv names it."""
    pcfg = ctx.cfg.profile
    (_, photo), = load_images([ctx.cfg.bench.image], ctx.root)
    image = preprocess_image(photo)
    from stages.runtimes import OrtRuntime

    (image_input,), (embeddings,) = ENCODER.input_names, ENCODER.output_names
    emb = OrtRuntime(paths[SIM_ONNX]["encoder"], threads=pcfg.threads).run({image_input: image})[embeddings]
    n, hw = pcfg.decoder_points, pcfg.decoder_out_size
    fixed, workload = {}, {}
    for component, spec in SPECS.items():
        values, dims = spec.fixed_inputs(n, hw)  # the inputs whose values set shapes become constants
        feeds = spec.workload_feeds(image, emb, n, hw)
        np.savez(d / f"{component}.npz", **{k: v for k, v in feeds.items() if k not in values})
        fixed[component] = paths[SIM_ONNX][component]
        if values:
            fixed[component] = d / f"{component}.fixed.onnx"
            fix_shapes(paths[SIM_ONNX][component], fixed[component], values, dims)
        workload[component] = spec.workload(n, hw)
    return fixed, workload


def _cut_for_upsample(ctx, src: Path, dst: Path) -> tuple[Path, dict | None]:
    """The fixed-shape decoder as MnnRuntime runs it (profile.decoder_upsample fp32: cut at low_res_masks and
    iou_predictions) and the upsample to time beside it; (src, None) where it runs whole."""
    if ctx.cfg.profile.decoder_upsample != "fp32":
        return src, None
    try:
        kept = cut_outputs(src, dst, {"masks"})
    except Exception as e:  # onnx's extractor or checker: profile the whole graph, and say so
        log.warning("profile: cannot cut %s at low_res_masks (%s): its whole graph is profiled", src.name, e)
        return src, None
    if "low_res_masks" not in kept:  # MnnModel runs a decoder without low_res_masks whole
        log.warning("profile: %s has no low_res_masks output: its whole graph is profiled", src.name)
        return src, None
    # the upsample's cost depends on shapes only; the spec's (shape inference leaves num_masks symbolic here)
    low_res = SPECS["decoder"].shape("low_res_masks", num_masks=4 if ctx.cfg.export.multimask_output else 1)
    return dst, {"low_res_shape": list(low_res), "orig_hw": list(ctx.cfg.profile.decoder_out_size)}


def _mnn_decoder(ctx, v: str, sim: Path, fixed: Path, d: Path) -> tuple[Path | str, dict | None]:
    """Variant v's decoder as the profile runs it: its fixed-shape ONNX, rewritten as the convert stage does,
    cut as MnnRuntime runs it, converted with the variant's flags; (MNN file or why not, upsample). Static
    conversion is decided on the simplified decoder, as the convert stage does (SAM's: never, num_points is
    dynamic); a static copy of the fixed-shape one would time a graph the bench never runs."""
    flags, rewrites = split_flags([*ctx.cfg.convert.variants[v], *ctx.cfg.convert.extra_args], f"convert.variants.{v}")
    src = fixed
    if rewrites:  # on the whole graph, as the convert stage does: the rewritten copy is what the converter reads
        src = d / f"decoder.{v}.rewritten.onnx"
        apply_rewrites(fixed, rewrites, src)
    src, upsample = _cut_for_upsample(ctx, src, d / f"decoder.{v}.cut.onnx")
    flags, _ = static_flags(sim, flags, d)
    mnn = d / mnn_file("decoder", v)
    res = run_isolated(mnnconvert, {"argv": converter_argv(src, mnn, flags), "dst": str(mnn),
                                    "feeds": str(d / "decoder.npz"), "outputs": output_names(src)},
                       ctx.build / "logs" / f"profile-convert-decoder-{v}.log", ctx.cfg.profile.timeout_s)
    return (mnn if res.ok else res.why), upsample


def _upsample_label(component: str, outside: bool) -> str:
    """profile.csv's `upsample`: where a decoder's full-size masks were made ("" for the encoder)."""
    return "" if not SPECS[component].shape_inputs else "fp32" if outside else "graph"


def _jobs(ctx, paths: dict, variants: list[str], fixed: dict[str, Path], d: Path, rows: list[dict]) -> list[tuple]:
    """(component, runtime, artifact, model file, upsample to time beside it) to profile: the simplified ONNX on
    onnxruntime and each MNN variant (the decoder's converted from its fixed-shape ONNX, cut as MnnRuntime runs
    it, with the variant's flags); rows for those that cannot be."""
    jobs = []
    for component, spec in SPECS.items():
        jobs.append((component, "onnxruntime", SIM_ONNX, str(fixed[component]), None))
        for v in variants:
            row = {"cell": f"{component}/mnn-{v}", "component": component, "runtime": "mnn",
                   "artifact": mnn_artifact(v), "upsample": _upsample_label(component, ctx.cfg.profile.decoder_upsample == "fp32")}
            if not paths[mnn_artifact(v)][component].exists():  # its conversion failed: convert.csv says why
                rows.append({**row, "status": str(Status.skipped(f"{ctx.rel(paths[mnn_artifact(v)][component])} missing"))})
                continue
            mnn, upsample = paths[mnn_artifact(v)][component], None
            if spec.shape_inputs:  # the fixed-shape graph, converted with this variant's flags
                mnn, upsample = _mnn_decoder(ctx, v, paths[SIM_ONNX][component], fixed[component], d)
                if isinstance(mnn, str):
                    rows.append({**row, "status": str(Status.failed(mnn))})
                    continue
            jobs.append((component, "mnn", mnn_artifact(v), str(mnn), upsample))
    return jobs


def _op_rows(base: dict, r: dict, gflops_peak: float, workload: str) -> list[dict]:
    """One profile.csv row per op type of one profiled model, set against the matmul rate."""
    rows = []
    for op in r["ops"]:
        gflop = 2 * op["mflop"] / 1e3  # MNN counts a multiply-add as one; the matmul rate counts two
        gf = gflop / (op["ms"] / 1e3) if op["ms"] > 0 and gflop == gflop else float("nan")
        rows.append({**base, "op_type": op["type"], "count": op["count"],
                     "ms": round(op["ms"], 3), "share_pct": round(100 * op["ms"] / r["ops_ms"], 2),
                     "gflop": gflop, "gflops": gf, "matmul_gflops": gflops_peak,
                     "roofline_frac": gf / gflops_peak, "ops_total_ms": round(r["ops_ms"], 2),
                     "wall_ms": round(r["wall_ms"], 2), "graph_ops": r["graph_ops"],
                     "workload": workload, "status": str(Status.ok())})
    return rows


def markdown(model: str, rows: list[dict], peak: float, threads: int) -> str:
    import pandas as pd

    df = pd.DataFrame([r for r in rows if Status.read(r.get("status")) == Status.ok()])
    out = [f"# {model}: per-op time profile ({threads} threads)\n",
           f"Dense fp32 matmul rate here: {peak:.0f} GFLOP/s. MNN: Session API with per-op callbacks (MNN's "
           "FLOP counts, a multiply-add as 2 FLOP like the matmul rate); onnxruntime: its profiler, node times only. "
           "`wall` is one whole run; `ops` the sum of op times. Full table: profile.csv.\n"]
    if any(r.get("upsample") == "fp32" for r in rows):
        out.append(f"MNN's decoder is profiled as MnnRuntime runs it (upsample fp32): the graph cut at low_res_masks "
                   f"and iou_predictions, plus the numpy resize to the full-size masks, timed beside it as the op "
                   f"row `{UPSAMPLE_OP}` and counted in `wall` and `ops`. onnxruntime's decoder runs whole, its "
                   f"`Resize` included. Both as the bench times them.\n")
    for r in rows:
        if Status.read(r.get("status", "ok")) != Status.ok():
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
            top = pd.concat([top, a[(a["op_type"] == UPSAMPLE_OP) & ~a.index.isin(top.index)]])  # always shown
            out.append(f"\n{artifact}: top op types\n\n| op type | count | ms | share % | GFLOP/s | of matmul rate |\n|---|---|---|---|---|---|")
            out += [f"| {r.op_type} | {r.count} | {r.ms:.1f} | {r.share_pct:.1f} | "
                    f"{'' if r.gflops != r.gflops else f'{r.gflops:.0f}'} | "
                    f"{'' if r.roofline_frac != r.roofline_frac else f'{100 * r.roofline_frac:.0f}%'} |"
                    for r in top.itertuples()]
    return "\n".join(out) + "\n"
