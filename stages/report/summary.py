"""summary.md: which variant to ship (recommended.csv's rows), full int8 against float, the fastest cell of each
runtime, the plots, parity, the ARM target's accuracy, and the cells that did not run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.core.parity_rows import with_checked
from stages.core.status import SKIPPED, Status, has_kind
from stages.report.choose import (
    fastest_table,
    int8_table,
    pareto_points,
    parity_verdicts,
    read_paired,
    recommended,
    timed,
    variant_points,
    workload,
)
from stages.report.figures import markdown_table
from stages.runtimes import identical_skip


def cells(rows: pd.DataFrame) -> int:
    """How many cells latency rows stand for: a skipped row per reason its `cells`, other rows one per cell (a
    decoder cell has a row per workload)."""
    one = rows[rows["cells"].isna()] if "cells" in rows.columns else rows
    return int(rows["cells"].sum() if "cells" in rows.columns else 0) + one["cell"].nunique()


def what_computed(lat: pd.DataFrame, parity: pd.DataFrame | None, first) -> str:
    """A plain statement of which arithmetic ran here, and which settings had no effect on this machine."""
    flags = first.get("cpu_flags", "") if "cpu_flags" in lat.columns else "not recorded"
    flags = "" if flags != flags else str(flags)  # NaN: no flag of note
    same = lat[lat["status"].map(identical_skip)]
    files = same[same["status"].astype(str).str.contains("same file as")]
    same = same.drop(files.index)
    par_same = (parity[parity["status"].map(identical_skip)]["cell"].nunique()
                if parity is not None and "status" in parity.columns else 0)
    ran = lat[timed(lat)]  # a skipped row computed nothing
    mnn = ran[ran["runtime"] == "mnn"]
    fp16 = int((mnn.get("fp16_compute", pd.Series(dtype=str)) == "yes").sum())
    int8 = ran[ran.get("int8_compute", pd.Series("no", index=ran.index)) == "yes"]
    text = [f"\n**What computed these numbers.** CPU features that pick kernels here: {flags or 'none of note'}."]
    if len(same) or par_same:
        mem = cells(same[same["status"].astype(str).str.contains("memory low computes")])
        text.append(f" MNN's precision low (and Low_BF16) computes fp32 on this CPU, exactly what precision normal "
                    f"computes (MNN's CPU fp16 arithmetic is ARMv8.2 only; its bf16 kernels need SME2), and memory "
                    f"low on a float model computes what memory normal does: {cells(same)} latency cells ({mem} of "
                    f"them memory low on a float model) and {par_same} parity cells for those settings were not run "
                    f"a second time, and their rows say so. fp16 accuracy must be checked where fp16 runs (ARM).")
    if len(files):
        text.append(f" {cells(files)} latency cells time a file byte for byte identical to another variant's (a "
                    f"rewrite that found nothing to rewrite in that component): not timed twice, their rows say so.")
    text.append(f" MNN cells timed here that computed in fp16: {fp16}. Cells that computed with int8 arithmetic: {len(int8)} "
                f"(full int8 models, and weight-quantized MNN variants at memory low: dynamic int8); a "
                f"weight-quantized variant at memory normal computes in float (only its file is smaller).\n")
    return "".join(text)


def target_table(tp: pd.DataFrame) -> pd.DataFrame:
    """target_parity.csv as one line per (cell, target): what each target computed and how close it came."""
    rows = []
    for (cell, target), g in tp.groupby(["cell", "target"], sort=False):
        by = {r["component"]: r for _, r in g.iterrows()}
        enc, dec, e2e = by.get("encoder"), by.get("decoder"), by.get("e2e")
        status = str(g["status"].iloc[0])

        def num(r, col, nd=4):
            v = r.get(col) if r is not None else None
            return "" if v is None or v != v else round(float(v), nd)

        rows.append({"cell": cell, "target": target, "cpu_features": g["cpu_features"].iloc[0],
                     "fp16": g["fp16_compute"].iloc[0], "int8": g["int8_compute"].iloc[0],
                     "enc_cosine": num(enc, "cosine", 5), "dec_mask_iou": num(dec, "mask_iou"),
                     "dec_iou_fp32_up": num(dec, "mask_iou_fp32_upsample"), "e2e_mask_iou": num(e2e, "mask_iou"),
                     "e2e_iou_fp32_up": num(e2e, "mask_iou_fp32_upsample"),
                     "verdict": ("pass" if all(g["pass"] == True) else "FAIL") if Status.read(status) == Status.ok()  # noqa: E712
                     else status[:160]})
    return pd.DataFrame(rows)


def target_section(ctx, tp: pd.DataFrame) -> str:
    """summary.md's "host vs ARM": accuracy per variant x precision on each target, what could not be checked,
    and when to upsample masks in fp32."""
    table = target_table(tp)
    out = ["\n## Host vs ARM: accuracy as the target computes it\n",
           f"`make arm MODEL={ctx.cfg.name}` (reports/{ctx.cfg.name}/target_parity.csv): the same MNN files and "
           "settings run through the same runner on the host and on the emulated ARM64 target (MNN's aarch64 "
           "kernels under QEMU user mode; accuracy is exact there, timing is not measured). "
           f"{tp['images'].iloc[0]} photo(s), prompts: {tp['prompts'].iloc[0]}. `fp16`/`int8`: the arithmetic "
           "that ran; `*_fp32_up`: masks made by upsampling the cell's low_res_masks in fp32 on the host.\n\n",
           markdown_table(table.astype(object).fillna(""))]
    ok = tp["status"].map(lambda s: Status.read(s) == Status.ok()).astype(bool)  # no note
    arm = tp[(tp["emulated"] == True) & ok & (tp["component"] == "e2e")]  # noqa: E712
    if not arm.empty and "mask_iou_fp32_upsample" in arm.columns:
        gain = arm.assign(gain=arm["mask_iou_fp32_upsample"] - arm["mask_iou"]).sort_values("gain", ascending=False)
        top = gain.iloc[0]
        if top["gain"] > 0.01:
            out.append(f"\n**Upsample masks in fp32 where the decoder computes fp16.** On the ARM target, "
                       f"{top['cell']} gives end-to-end mask IoU {top['mask_iou']:.4f} with the decoder's own "
                       f"full-size masks and {top['mask_iou_fp32_upsample']:.4f} when its low_res_masks are upsampled "
                       f"in fp32: the in-graph bilinear resize loses the accuracy in fp16. That is why MNN decoders "
                       f"run without it by default here (upsample fp32: MnnRuntime, make segment, make demo); "
                       f"do not ship them with `UPSAMPLE=graph`.\n")
    skipped = tp[has_kind(tp["status"], SKIPPED)].drop_duplicates("cell")
    for _, r in skipped.iterrows():
        out.append(f"\n- Not checked: {r['cell']} on {r['target']}: {Status.parse(r['status']).reason}")
    return "\n".join(out) + "\n"


def _head(ctx, lat: pd.DataFrame, parity: pd.DataFrame | None) -> list[str]:
    """The title, the weights, the machine and what computed the numbers."""
    first = lat.iloc[0]
    out = [f"# {ctx.cfg.name}: which variant to ship\n"]
    if str(first["weights"]).startswith("random"):
        out.append(f"> **Weights: {first['weights']}** - the real architecture with seeded random weights (no checkpoint). "
                   "Latency and parity are real; masks are not meaningful.\n")
    else:
        out.append(f"Weights: {first['weights']}\n")
    out.append(f"Machine: {first['cpu']}, {first['cores']} cores. torch {first['torch_version']}, onnxruntime "
               f"{first['onnxruntime_version']}, MNN {first['mnn_version']}. Image: {first['image']}.\n")
    out.append(what_computed(lat, parity, first))
    return out


def _choices(ctx, lat: pd.DataFrame, parity: pd.DataFrame | None) -> list[str]:
    """Recommended, full int8 and the fastest cell of each runtime, with the roofline."""
    out = ["## Recommended: the fastest variant that passes parity\n",
           "Per component, thread count (1 and the highest swept) and runtime; for MNN also the smallest passing "
           f"file (reports/{ctx.cfg.name}/recommended.csv; `make segment` loads the MNN rows' files and options "
           "at the highest thread count).\n\n"]
    rec = recommended(lat, parity, ctx.root, read_paired(ctx.reports)).drop(columns=["path", "candidates", "variant"], errors="ignore")
    out.append(markdown_table(rec.round({"cosine": 6, "mask_iou": 4, "e2e_mask_iou": 4}).astype(object).fillna("")))
    int8 = int8_table(lat, parity, ctx.cfg.quantize.variants, ctx.root)
    if not int8.empty:
        th = ctx.cfg.parity.thresholds.get(next(iter(ctx.cfg.quantize.variants.values())).tier)
        target = (f"end-to-end mask IoU >= {th.e2e_mask_iou:g}, encoder cosine >= {th.cosine:g}"
                  + ("" if th.gate else "; a target, not a gate: rows that miss it say pass=False in parity.csv "
                     "and are never recommended")) if th else "the fp32 thresholds"
        out.append("\n## Full int8 (weights and activations)\n")
        out.append(f"Calibrated on {', '.join(ctx.cfg.quantize.calibration.images)} (not parity's photos). "
                   f"Target: {target}. reports/{ctx.cfg.name}/quantize.csv says how each was made.\n\n")
        out.append(markdown_table(int8.astype(object).fillna("")))
    out.append("\n## Fastest cell of each runtime\n")
    out.append(markdown_table(fastest_table(lat, parity_verdicts(parity)).astype(object).fillna("")))  # no torch: ""
    rates = lat.dropna(subset=["matmul_gflops"]).groupby("threads")["matmul_gflops"].first()
    out.append("\nRoofline: dense fp32 matmul " + ", ".join(f"{v:.0f} GFLOP/s at {t} thread(s)" for t, v in rates.items())
               + ". `roofline %` is the share of that rate a cell reached (component FLOPs / p50).\n")
    return out


def _plots(ctx, lat: pd.DataFrame, parity: pd.DataFrame | None, plots: dict[str, Path]) -> list[str]:
    """The plots, each with the table of what it draws."""
    out = [f"\n## Latency against threads\n\n![latency against threads](plots/{plots['threads'].name})\n",
           f"\n## Accuracy against latency\n\n![accuracy against latency](plots/{plots['pareto'].name})\n"]
    variants = variant_points(lat, parity, ctx.root)
    out.append(f"\n## MNN variants: size, accuracy, speed\n\n![size, accuracy, speed](plots/{plots['variants'].name})\n\n"
               "Each MNN variant at precision normal, per memory mode (memory low on a weight-quantized variant "
               "computes with int8 activations: `int8_compute`).\n\n"
               + markdown_table(variants.round({"encoder_p50_ms": 1, "e2e_mask_iou": 4})))
    for component in ("encoder", "e2e"):
        df = pareto_points(lat, parity, component)
        if not df.empty:
            df = df.assign(p50_ms=df["p50_ms"].round(1), accuracy=df["accuracy"].round(5))
            out.append(f"\n{component} (Pareto front marked):\n\n"
                       + markdown_table(df[["label", "runtime", "p50_ms", "accuracy", "pareto"]]))
    return out


def _parity(ctx, parity: pd.DataFrame | None) -> list[str]:
    if parity is None:
        return ["\n## Parity\n\nNo parity.csv yet: run the parity stage.\n"]
    parity = with_checked(parity)
    bad = parity[parity["checked"] & ~parity["passed"]]
    skipped = parity[~parity["checked"]]
    out = [f"\n## Parity\n\n{int(parity['passed'].sum())} of {len(parity)} rows pass, {len(bad)} fail, "
           f"{len(skipped)} not run (reports/{ctx.cfg.name}/parity.csv).\n"]
    if not bad.empty:
        out.append(markdown_table(bad[["cell", "component", "failed_checks", "status"]]))
    return out


def _not_run(lat: pd.DataFrame) -> list[str]:
    notrun = lat[~timed(lat)]
    out = [f"\n## Cells not run\n\n{cells(notrun)} of {cells(lat)} cells did not run (a skipped row stands for "
           f"the `cells` it covers):\n\n"]
    if not notrun.empty:
        reasons = pd.DataFrame([{"cells": cells(g), "status": st, "example": g["cell"].iloc[0]}
                                for st, g in notrun.groupby("status")])
        out.append(markdown_table(reasons[["cells", "status", "example"]]))
    return out


def _paired(ctx) -> list[str]:
    """The sweep's same-process A/B comparisons (bench: paired.csv), when it had any."""
    df = read_paired(ctx.reports)
    if df is None or df.empty:
        return []
    df = df.assign(workload=[workload(r) for _, r in df.iterrows()])
    statement = _runtime_vs_runtime(df)
    cols = ["comparison", "workload", "threads", "a_p50_ms", "b_p50_ms", "ratio_b_a", "b_faster_pairs", "ties",
            "pairs", "p_value", "process_ratios", "verdict", "status"]
    df = df.reindex(columns=cols)
    return [*statement, "\n## Same-process A/B\n\n"
            "Each comparison loads both variants in one process and alternates their calls, in several fresh "
            "processes (paired.csv). `ratio_b_a` is the median of b / a over call pairs; a verdict needs the sign "
            "test (p < 0.01, ties dropped) and every process's median ratio on the same side of 1; it is not the "
            "ratio of the two p50s.\n\n",
            markdown_table(df[cols].round({"a_p50_ms": 1, "b_p50_ms": 1, "ratio_b_a": 3})
                           .astype({"b_faster_pairs": "Int64", "ties": "Int64", "pairs": "Int64"})
                           .assign(p_value=[f"{v:.2g}" if v == v else "" for v in df["p_value"]])
                           .astype(object).fillna(""))]


def _runtime_vs_runtime(df: pd.DataFrame) -> list[str]:
    """The "MNN vs onnxruntime" statement: only from same-process comparisons of the two runtimes, on this run's
    machine class (another class's run says its own)."""
    if "b_runtime" not in df.columns:
        return []
    mixed = df[(df["b_runtime"].notna()) & (df["b_runtime"] != df["runtime"]) & (df["status"] == "ok")]
    if mixed.empty:
        return []
    lines = [f"- {r['comparison']}, {r['workload']}, {int(r['threads'])} threads: b / a {r['ratio_b_a']:.3f} "
             f"({r['verdict']}, p {r['p_value']:.2g})" for _, r in mixed.iterrows()]
    return [f"\n## MNN against onnxruntime on this machine ({mixed['machine_class'].iloc[0]})\n\n"
            "Same inputs, calls alternated in one process (paired.csv); a verdict holds for this machine class "
            "only:\n\n" + "\n".join(lines) + "\n"]


def summary_markdown(ctx, lat: pd.DataFrame, parity: pd.DataFrame | None, plots: dict[str, Path]) -> str:
    out = [*_head(ctx, lat, parity), *_choices(ctx, lat, parity), *_plots(ctx, lat, parity, plots), *_parity(ctx, parity),
           *_paired(ctx)]
    tp_path = ctx.reports / "target_parity.csv"
    if tp_path.exists():
        tp = pd.read_csv(tp_path)
        if "target" in tp.columns:  # not a failure report of the stage
            out.append(target_section(ctx, tp))
    out.extend(_not_run(lat))
    return "\n".join(out)
