"""Stage report: reports/<model>/summary.md and its plots, from latency.csv and parity.csv.

Per component, the fastest cell of each runtime with its speed-up over PyTorch and its parity verdict;
latency against threads; accuracy against latency with the Pareto front; what was skipped and why.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd

from stages.core.artifacts import artifact_bytes, atomic_output
from stages.report import targets as report_targets
from stages.report.figures import _md, _save, plt
from stages.runtimes import identical_skip

log = logging.getLogger(__name__)
COMPONENTS = ("encoder", "decoder", "e2e")


def with_modes(lat: pd.DataFrame) -> pd.DataFrame:
    """Mode columns (latency.csv from before sweep modes existed ran every cell in the default mode), and the
    MNN memory mode each cell ran with, read from its mode options (memory=low), as parity.csv names it."""
    lat = lat.assign(**{c: lat[c] if c in lat.columns else d
                        for c, d in (("mode", "default"), ("mode_options", "-"), ("device", "cpu"))})
    memory = [next((t.split("=", 1)[1] for t in str(o).split() if t.startswith("memory=")), "normal")
              for o in lat["mode_options"]]
    return lat.assign(memory=memory)


def with_checked(parity: pd.DataFrame | None) -> pd.DataFrame | None:
    """parity.csv with a memory column (older files: normal) and `checked`: the row's cell ran. A cell skipped
    by design (a setting identical to another here) has no verdict: it neither passes nor fails."""
    if parity is None:
        return None
    parity = parity.assign(memory=parity["memory"].fillna("normal") if "memory" in parity.columns else "normal")
    checked = (~parity["status"].astype(str).str.startswith("skipped") if "status" in parity.columns
               else pd.Series(True, index=parity.index))
    passed = parity["pass"] == True if "pass" in parity.columns else checked  # noqa: E712 (NaN: not passed)
    return parity.assign(checked=checked, passed=checked & passed)


def parity_verdicts(parity: pd.DataFrame | None) -> dict[tuple[str, str, str, str], str]:
    """(artifact, precision, memory, component) -> 'pass' / 'FAIL (...)' / 'not run (...)' from parity.csv."""
    out: dict[tuple[str, str, str, str], str] = {}
    if parity is None:
        return out
    for _, r in with_checked(parity).iterrows():
        verdict = ("pass" if r["passed"] else f"FAIL ({r['failed_checks'] or r['status']})") if r["checked"] \
            else "not run (identical setting)"
        out[(r["artifact"], r["precision"], r["memory"], r["component"])] = verdict
    return out


def verdict_for(row, verdicts) -> str:
    if row["runtime"] == "torch":
        return "reference"
    precision = "fp32" if row["runtime"] == "onnxruntime" else row["precision"]
    v = verdicts.get((row["artifact"], precision, row.get("memory", "normal"), row["component"]))
    if v is None:
        return "not checked"
    if row["backend"] not in ("CPU", "CPUExecutionProvider", "cpu"):
        return f"{v} (checked on CPU)"
    return v


def fastest_table(lat: pd.DataFrame, verdicts) -> pd.DataFrame:
    lat = with_modes(lat)
    ok = lat[lat["status"].str.startswith("ok")].copy()
    rows = []
    for component in COMPONENTS:
        sub = ok[ok["component"] == component]
        if sub.empty:
            continue
        # one workload per component: the heaviest decoder workload
        if component == "decoder":
            top = sub.sort_values(["points", "out_h"], ascending=False).iloc[0]
            sub = sub[(sub["points"] == top["points"]) & (sub["out_h"] == top["out_h"]) & (sub["out_w"] == top["out_w"])]
        # CPU and GPU cells apart: a GPU row's speed-up is against torch cuda, a CPU row's against torch cpu
        for (runtime, device), g in sub.groupby(["runtime", "device"], sort=False):
            best = g.loc[g["p50_ms"].idxmin()]
            rows.append({"component": component, "workload": _workload(best),
                         "runtime": runtime if device == "cpu" else f"{runtime} ({device})",
                         "fastest cell": f"{best['artifact']}@{best['precision']}{_mode(best)} {best['backend']} t{best['threads']}",
                         "p50 ms": round(best["p50_ms"], 1), "cv %": round(best["cv_pct"], 1),
                         "speed-up vs PyTorch": round(best["speedup_vs_torch"], 2),
                         "roofline %": round(100 * best["roofline_frac"], 1),
                         "peak RSS MB": round(best["peak_rss_mb"]),
                         "fp16 / int8 arithmetic": f"{best.get('fp16_compute', '?')} / {best.get('int8_compute', '?')}",
                         "parity": verdict_for(best, verdicts)})
    return pd.DataFrame(rows)


def _passes(parity: pd.DataFrame | None, artifact: str, precision: str, component: str,
            memory: str = "normal") -> pd.Series | None:
    """The parity row of (artifact, precision, memory, component) when it and the artifact's e2e row both pass."""
    if parity is None:
        return None
    parity = with_checked(parity)
    p = parity[(parity["artifact"] == artifact) & (parity["precision"] == precision) & (parity["memory"] == memory)]
    own, e2e = p[p["component"] == component], p[p["component"] == "e2e"]
    if own.empty or e2e.empty or not own["passed"].iloc[0] or not e2e["passed"].iloc[0]:
        return None
    return own.iloc[0].combine_first(e2e.iloc[0].rename({"mask_iou": "e2e_mask_iou"}))


def recommended(lat: pd.DataFrame, parity: pd.DataFrame | None, root: Path = Path(".")) -> pd.DataFrame:
    """Per component and runtime: the fastest benchmarked cell whose artifact passes parity (its own
    component and end to end, at the memory mode it was timed in), at the highest thread count swept and, for
    the decoder, the heaviest workload (pick `fastest`); for MNN also the smallest passing file (pick
    `smallest`, the fastest cell of that file)."""
    lat = with_modes(lat)
    ok = lat[lat["status"].str.startswith("ok") & lat["component"].isin(["encoder", "decoder"])
             & lat["backend"].isin(["CPU", "CPUExecutionProvider", "cpu"])]
    rows = []
    for component in ("encoder", "decoder"):
        sub = ok[ok["component"] == component]
        if sub.empty:
            continue
        sub = sub[sub["threads"] == sub["threads"].max()]
        if component == "decoder":
            top = sub.sort_values(["points", "out_h"], ascending=False).iloc[0]
            sub = sub[(sub["points"] == top["points"]) & (sub["out_h"] == top["out_h"]) & (sub["out_w"] == top["out_w"])]
        for runtime, g in sub.groupby("runtime", sort=False):
            if runtime == "torch":
                continue
            passing = []
            for r in g.sort_values("p50_ms").itertuples():
                precision = "fp32" if runtime == "onnxruntime" else r.precision
                par = _passes(parity, r.artifact, precision, component, getattr(r, "memory", "normal"))
                if par is None:
                    continue
                path = root / str(par["artifact_path"])
                passing.append({"component": component, "runtime": runtime, "artifact": r.artifact,
                                "variant": r.variant, "precision": r.precision, "mode": getattr(r, "mode", "default"),
                                "mode_options": getattr(r, "mode_options", "-"), "threads": r.threads,
                                "workload": _workload(r._asdict()), "p50_ms": round(r.p50_ms, 1),
                                "cosine": par.get("cosine"), "mask_iou": par.get("mask_iou"),
                                "e2e_mask_iou": par.get("e2e_mask_iou"),
                                "size_mb": round(artifact_bytes(path) / 1e6, 2) if path.is_file() else float("nan"),
                                "fp16_compute": getattr(r, "fp16_compute", ""), "int8_compute": getattr(r, "int8_compute", ""),
                                # where the row's masks were made (bench.masks_made): make segment does the same
                                "upsample": getattr(r, "upsample", ""),
                                "path": str(par["artifact_path"]), "candidates": len(g)})
            if not passing:
                continue
            rows.append({"pick": "fastest", **passing[0]})
            if runtime == "mnn":  # the smallest file that passes, in its fastest passing cell
                sized = [x for x in passing if x["size_mb"] == x["size_mb"]]  # NaN: the file is gone
                if sized:
                    rows.append({"pick": "smallest", **min(sized, key=lambda x: (x["size_mb"], x["p50_ms"]))})
    return pd.DataFrame(rows)


def int8_table(lat: pd.DataFrame, parity: pd.DataFrame | None, quant: dict, root: Path = Path(".")) -> pd.DataFrame:
    """Each full-int8 artifact against the float artifact of its runtime (mnn-fp32, onnx-sim): accuracy from
    parity.csv, the encoder's p50 at the top thread count (best mode) from latency.csv, size on disk."""
    if parity is None or not quant:
        return pd.DataFrame()
    lat = with_modes(lat)
    enc = lat[lat["status"].str.startswith("ok") & (lat["component"] == "encoder")
              & lat["backend"].isin(["CPU", "CPUExecutionProvider"])]
    top = enc["threads"].max() if not enc.empty else None
    enc = enc[enc["threads"] == top]

    def p50(artifact: str) -> float:
        g = enc[enc["artifact"] == artifact]
        return float(g["p50_ms"].min()) if not g.empty else float("nan")

    def size_mb(artifact: str) -> float:
        rows = parity[(parity["artifact"] == artifact) & parity["component"].isin(["encoder", "decoder"])]
        paths = [root / str(x) for x in rows.drop_duplicates("component")["artifact_path"]]
        return round(sum(artifact_bytes(x) for x in paths) / 1e6, 1) if paths and all(x.is_file() for x in paths) else float("nan")

    rows = []
    for name, q in quant.items():
        art = q.artifact(name)
        p = parity[parity["artifact"] == art]
        if p.empty:
            continue
        by = {c: p[p["component"] == c].iloc[0] for c in ("encoder", "decoder", "e2e") if (p["component"] == c).any()}
        ref = "mnn-fp32" if q.runtime == "mnn" else "onnx-sim"
        mine, theirs = p50(art), p50(ref)
        rows.append({"artifact": art, "runtime": q.runtime, "method": q.method,
                     "encoder cosine": round(float(by["encoder"]["cosine"]), 4) if "encoder" in by else float("nan"),
                     "decoder mask IoU": round(float(by["decoder"]["mask_iou"]), 3) if "decoder" in by else float("nan"),
                     "e2e mask IoU min / mean": f"{by['e2e']['mask_iou']:.3f} / {by['e2e']['mean_mask_iou']:.3f}"
                     if "e2e" in by else "",
                     "target met": "yes" if all(r["pass"] == True for r in by.values()) else "no",  # noqa: E712
                     f"encoder p50 ms (t{top})": round(mine, 1), "float artifact": ref,
                     "float p50 ms": round(theirs, 1),
                     "speed-up": round(theirs / mine, 2) if mine and mine == mine else float("nan"),
                     "MB (enc+dec)": size_mb(art), "float MB": size_mb(ref)})
    return pd.DataFrame(rows)


def _mode(r) -> str:
    return "" if r.get("mode", "default") == "default" else f"~{r['mode']}"


def _workload(r) -> str:
    if r["component"] == "encoder":
        return "1024x1024"
    return f"{int(r['points'])} pt -> {int(r['out_h'])}x{int(r['out_w'])}"


def plot_threads(lat: pd.DataFrame, path: Path) -> None:
    lat = with_modes(lat)
    ok = lat[lat["status"].str.startswith("ok")]
    comps = [c for c in COMPONENTS if (ok["component"] == c).any()]
    if not comps:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no cell ran: see the status column of latency.csv", ha="center", va="center")
        ax.axis("off")
        _save(fig, path)
        return
    # colour: the artifact (torch, onnx-sim, mnn-fp32, ...); line style: the runtime precision;
    palette = plt.get_cmap("tab10").colors
    ok = ok.assign(series=[a if d == "cpu" else f"{a} ({d})" for a, d in zip(ok["artifact"], ok["device"], strict=True)])
    colors = {a: palette[i % 10] for i, a in enumerate(sorted(ok["series"].unique()))}  # torch cpu != torch cuda
    dashes = ["-", "--", ":", "-."]
    styles = {p: dashes[i % 4] for i, p in enumerate(sorted(ok["precision"].unique()))}
    # marker: the runtime mode (load/run options)
    modes = ["default", *sorted(set(ok["mode"]) - {"default"})]
    markers = {m: "osD^vP*X"[i % 8] for i, m in enumerate(modes)}
    fig, axes = plt.subplots(1, len(comps), figsize=(6 * len(comps), 4.8), squeeze=False)
    for ax, component in zip(axes[0], comps, strict=True):
        sub = ok[ok["component"] == component]
        if component == "decoder":
            top = sub.sort_values(["points", "out_h"], ascending=False).iloc[0]
            sub = sub[(sub["points"] == top["points"]) & (sub["out_h"] == top["out_h"])]
        for (runtime, artifact, precision, backend, mode), g in sub.groupby(["runtime", "artifact", "precision", "backend", "mode"]):
            g = g.sort_values("threads")
            ax.plot(g["threads"], g["p50_ms"], marker=markers[mode], color=colors[g["series"].iloc[0]], ls=styles[precision],
                    label=f"{runtime} {artifact}@{precision}{'' if mode == 'default' else '~' + mode} ({backend})")
        ax.set_title(f"{component} ({_workload(sub.iloc[0])})")
        ax.set_xlabel("threads")
        ax.set_ylabel("p50 latency, ms")
        ax.set_xticks(sorted(sub["threads"].unique()))
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("Latency against threads (lower is better)")
    _save(fig, path)


def pareto_points(lat: pd.DataFrame, parity: pd.DataFrame | None, component: str) -> pd.DataFrame:
    """Fastest latency per (artifact, precision, mode) at the highest thread count, with its parity mask IoU."""
    lat = with_modes(lat)
    ok = lat[lat["status"].str.startswith("ok") & (lat["component"] == component)]
    if ok.empty:
        return pd.DataFrame()
    ok = ok[ok["threads"] == ok["threads"].max()]
    if component == "decoder":
        top = ok.sort_values(["points", "out_h"], ascending=False).iloc[0]
        ok = ok[(ok["points"] == top["points"]) & (ok["out_h"] == top["out_h"])]
    pts = []
    parity = with_checked(parity)
    for (runtime, artifact, precision, mode, memory), g in ok.groupby(["runtime", "artifact", "precision", "mode", "memory"]):
        acc = 1.0 if runtime == "torch" else np.nan
        if parity is not None and runtime != "torch":
            p = parity[(parity["artifact"] == artifact) & (parity["component"] == component) & parity["checked"]
                       & (parity["memory"] == memory)
                       & (parity["precision"] == ("fp32" if runtime == "onnxruntime" else precision))]
            if not p.empty:
                acc = float(p["mask_iou"].iloc[0] if component != "encoder" else p["cosine"].iloc[0])
        pts.append({"label": f"{artifact}@{precision}{'' if mode == 'default' else '~' + mode}", "runtime": runtime, "p50_ms": g["p50_ms"].min(), "accuracy": acc})
    df = pd.DataFrame(pts).dropna(subset=["accuracy"])
    df["pareto"] = [not ((df["p50_ms"] <= r.p50_ms) & (df["accuracy"] >= r.accuracy)
                         & ((df["p50_ms"] < r.p50_ms) | (df["accuracy"] > r.accuracy))).any()
                    for r in df.itertuples()]
    return df.sort_values("p50_ms")


def _label_points(ax, points: pd.DataFrame, fontsize: int = 8) -> None:
    """Label each point beside it, trying offsets below, above, then further out until the label's box
    (estimated from its length, in points) overlaps no label placed before: close points get readable
    labels instead of overprinted ones."""
    ax.autoscale_view()
    to_pt = 72 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    tries = [(4, -10), (4, 4)] + [(4, dy) for k in range(1, 8) for dy in (-10 - 11 * k, 4 + 11 * k)]
    for r in points.sort_values("p50_ms").itertuples():
        x, y = (v * to_pt for v in ax.transData.transform((r.p50_ms, r.accuracy)))
        w, h = 0.55 * fontsize * len(r.label), fontsize + 1
        for dx, dy in tries:
            box = (x + dx, y + dy, x + dx + w, y + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(r.label, (r.p50_ms, r.accuracy), fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if abs(dy) > 12 else None)


def plot_pareto(lat: pd.DataFrame, parity: pd.DataFrame | None, path: Path) -> None:
    comps = [c for c in ("encoder", "e2e") if (lat["component"] == c).any()] or ["encoder"]
    fig, axes = plt.subplots(1, len(comps), figsize=(6.5 * len(comps), 5), squeeze=False)
    for ax, component in zip(axes[0], comps, strict=True):
        df = pareto_points(lat, parity, component)
        if df.empty:
            ax.set_title(f"{component}: no timed cell with parity data")
            ax.axis("off")
            continue
        for runtime, g in df.groupby("runtime"):
            ax.scatter(g["p50_ms"], g["accuracy"], label=runtime, s=40)
        _label_points(ax, df[df["pareto"]])  # the rest are listed in summary.md
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.6g"))  # no "1e-5+9.999e-1" offset
        front = df[df["pareto"]].sort_values("p50_ms")
        ax.step(front["p50_ms"], front["accuracy"], where="post", color="k", lw=1, ls="--", label="Pareto front")
        ax.set_xlabel(f"p50 latency at {int(lat['threads'].max())} threads, ms")
        ax.set_ylabel("embedding cosine vs PyTorch" if component == "encoder" else "worst mask IoU vs PyTorch")
        ax.set_title(component)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy against latency (up and left is better; Pareto points labelled)")
    _save(fig, path)


def variant_points(lat: pd.DataFrame, parity: pd.DataFrame | None, root: Path) -> pd.DataFrame:
    """One point per MNN variant x memory mode (precision normal): encoder + decoder file size, worst end-to-end
    mask IoU from parity.csv, and the encoder's fastest p50 at the top thread count (any mode, same memory)."""
    if parity is None:
        return pd.DataFrame()
    parity, lat = with_checked(parity), with_modes(lat)
    par = parity[(parity["runtime"] == "mnn") & (parity["precision"] == "normal") & parity["checked"]]
    enc = lat[lat["status"].str.startswith("ok") & (lat["component"] == "encoder") & (lat["runtime"] == "mnn")
              & (lat["precision"] == "normal") & (lat["device"] == "cpu")]
    enc = enc[enc["threads"] == enc["threads"].max()] if not enc.empty else enc
    pts = []
    for (artifact, memory), g in par.groupby(["artifact", "memory"]):
        files = [root / str(x) for x in g[g["component"].isin(["encoder", "decoder"])].drop_duplicates("component")["artifact_path"]]
        e2e = g[g["component"] == "e2e"]
        t = enc[(enc["artifact"] == artifact) & (enc["memory"] == memory)]["p50_ms"]
        if e2e.empty or not files or not all(f.is_file() for f in files):
            continue
        pts.append({"label": artifact.removeprefix("mnn-") + ("" if memory == "normal" else f"~memory-{memory}"),
                    "size_mb": round(sum(artifact_bytes(f) for f in files) / 1e6, 2),
                    "e2e_mask_iou": float(e2e["mask_iou"].iloc[0]), "encoder_p50_ms": float(t.min()) if len(t) else np.nan,
                    "int8_compute": g["int8_compute"].iloc[0] if "int8_compute" in g.columns else "",
                    "passes": bool(g["passed"].all())})
    return pd.DataFrame(pts)


def plot_variants(points: pd.DataFrame, path: Path, threads) -> None:
    """Size against end-to-end accuracy, coloured by encoder latency: the size/accuracy/speed trade at a glance."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if points.empty:
        ax.text(0.5, 0.5, "no MNN variant with parity and size data", ha="center", va="center")
        ax.axis("off")
        _save(fig, path)
        return
    timed = points.dropna(subset=["encoder_p50_ms"])
    sc = ax.scatter(timed["size_mb"], timed["e2e_mask_iou"], c=timed["encoder_p50_ms"], cmap="viridis_r", s=60,
                    edgecolors=["k" if p else "r" for p in timed["passes"]])
    untimed = points[points["encoder_p50_ms"].isna()]
    ax.scatter(untimed["size_mb"], untimed["e2e_mask_iou"], facecolors="none", edgecolors="0.5", s=60,
               label="not timed in this sweep")
    if not timed.empty:
        fig.colorbar(sc, ax=ax, label=f"encoder p50 at {threads} thread(s), ms (MNN CPU, precision normal)")
    _label_points(ax, points.rename(columns={"size_mb": "p50_ms", "e2e_mask_iou": "accuracy"}))
    ax.set_xlabel("encoder + decoder file size, MB")
    ax.set_ylabel("worst end-to-end mask IoU vs PyTorch")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.6g"))
    ax.grid(alpha=0.3)
    if not untimed.empty:
        ax.legend(fontsize=8)
    ax.set_title("MNN variants x memory mode: size, accuracy, speed (red edge: fails parity)")
    _save(fig, path)


def what_computed(lat: pd.DataFrame, parity: pd.DataFrame | None, first) -> str:
    """A plain statement of which arithmetic ran here, and which settings had no effect on this machine."""
    flags = first.get("cpu_flags", "") if "cpu_flags" in lat.columns else "not recorded"
    flags = "" if flags != flags else str(flags)  # NaN: no flag of note
    same = lat[lat["status"].map(identical_skip)]
    par_same = (parity[parity["status"].map(identical_skip)]["cell"].nunique()
                if parity is not None and "status" in parity.columns else 0)
    ran = lat[lat["status"].astype(str).str.startswith("ok")]  # a skipped row computed nothing
    mnn = ran[ran["runtime"] == "mnn"]
    fp16 = int((mnn.get("fp16_compute", pd.Series(dtype=str)) == "yes").sum())
    int8 = ran[ran.get("int8_compute", pd.Series("no", index=ran.index)) == "yes"]
    text = [f"\n**What computed these numbers.** CPU features that pick kernels here: {flags or 'none of note'}."]
    if len(same) or par_same:
        mem = int(same["status"].astype(str).str.contains("memory low computes").sum())
        text.append(f" MNN's precision low (and Low_BF16) computes fp32 on this CPU, exactly what precision normal "
                    f"computes (MNN's CPU fp16 arithmetic is ARMv8.2 only; its bf16 kernels need SME2), and memory "
                    f"low on a float model computes what memory normal does: {len(same)} latency cells ({mem} of "
                    f"them memory low on a float model) and {par_same} parity cells for those settings were not run "
                    f"a second time, and their rows say so. fp16 accuracy must be checked where fp16 runs (ARM).")
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
                     "verdict": ("pass" if all(g["pass"] == True) else "FAIL") if status == "ok"  # noqa: E712
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
           _md(table.astype(object).fillna(""))]
    arm = tp[(tp["emulated"] == True) & (tp["status"] == "ok") & (tp["component"] == "e2e")]  # noqa: E712
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
    skipped = tp[tp["status"].astype(str).str.startswith("skipped")].drop_duplicates("cell")
    for _, r in skipped.iterrows():
        out.append(f"\n- Not checked: {r['cell']} on {r['target']}: {str(r['status'])[len('skipped: '):]}")
    return "\n".join(out) + "\n"


def summary_markdown(ctx, lat: pd.DataFrame, parity: pd.DataFrame | None, plots: dict[str, Path]) -> str:
    first = lat.iloc[0]
    verdicts = parity_verdicts(parity)
    out = [f"# {ctx.cfg.name}: which variant to ship\n"]
    if str(first["weights"]).startswith("random"):
        out.append(f"> **Weights: {first['weights']}** - the real architecture with seeded random weights (no checkpoint). "
                   "Latency and parity are real; masks are not meaningful.\n")
    else:
        out.append(f"Weights: {first['weights']}\n")
    out.append(f"Machine: {first['cpu']}, {first['cores']} cores. torch {first['torch_version']}, onnxruntime "
               f"{first['onnxruntime_version']}, MNN {first['mnn_version']}. Image: {first['image']}.\n")
    out.append(what_computed(lat, parity, first))
    out.append("## Recommended: the fastest variant that passes parity\n")
    out.append("Per component and runtime, at the highest thread count swept (reports/"
               f"{ctx.cfg.name}/recommended.csv; `make segment` loads the MNN rows' files and options).\n\n")
    rec = recommended(lat, parity, ctx.root).drop(columns=["path", "candidates", "variant"], errors="ignore")
    out.append(_md(rec.round({"cosine": 6, "mask_iou": 4, "e2e_mask_iou": 4}).astype(object).fillna("")))
    int8 = int8_table(lat, parity, ctx.cfg.quantize.variants, ctx.root)
    if not int8.empty:
        th = ctx.cfg.parity.thresholds.get(next(iter(ctx.cfg.quantize.variants.values())).tier)
        target = (f"end-to-end mask IoU >= {th.e2e_mask_iou:g}, encoder cosine >= {th.cosine:g}"
                  + ("" if th.gate else "; a target, not a gate: rows that miss it say pass=False in parity.csv "
                     "and are never recommended")) if th else "the fp32 thresholds"
        out.append("\n## Full int8 (weights and activations)\n")
        out.append(f"Calibrated on {', '.join(ctx.cfg.quantize.calibration.images)} (not parity's photos). "
                   f"Target: {target}. reports/{ctx.cfg.name}/quantize.csv says how each was made.\n\n")
        out.append(_md(int8.astype(object).fillna("")))
    out.append("\n## Fastest cell of each runtime\n")
    out.append(_md(fastest_table(lat, verdicts)))
    rates = lat.dropna(subset=["matmul_gflops"]).groupby("threads")["matmul_gflops"].first()
    out.append("\nRoofline: dense fp32 matmul " + ", ".join(f"{v:.0f} GFLOP/s at {t} thread(s)" for t, v in rates.items())
               + ". `roofline %` is the share of that rate a cell reached (component FLOPs / p50).\n")
    out.append(f"\n## Latency against threads\n\n![latency against threads](plots/{plots['threads'].name})\n")
    out.append(f"\n## Accuracy against latency\n\n![accuracy against latency](plots/{plots['pareto'].name})\n")
    variants = variant_points(lat, parity, ctx.root)
    out.append(f"\n## MNN variants: size, accuracy, speed\n\n![size, accuracy, speed](plots/{plots['variants'].name})\n\n"
               "Each MNN variant at precision normal, per memory mode (memory low on a weight-quantized variant "
               "computes with int8 activations: `int8_compute`).\n\n" + _md(variants.round({"encoder_p50_ms": 1, "e2e_mask_iou": 4})))
    for component in ("encoder", "e2e"):
        df = pareto_points(lat, parity, component)
        if not df.empty:
            df = df.assign(p50_ms=df["p50_ms"].round(1), accuracy=df["accuracy"].round(5))
            out.append(f"\n{component} (Pareto front marked):\n\n" + _md(df[["label", "runtime", "p50_ms", "accuracy", "pareto"]]))
    if parity is not None:
        parity = with_checked(parity)
        bad = parity[parity["checked"] & ~parity["passed"]]
        skipped = parity[~parity["checked"]]
        out.append(f"\n## Parity\n\n{int(parity['passed'].sum())} of {len(parity)} rows pass, {len(bad)} fail, "
                   f"{len(skipped)} not run (reports/{ctx.cfg.name}/parity.csv).\n")
        if not bad.empty:
            out.append(_md(bad[["cell", "component", "failed_checks", "status"]]))
    else:
        out.append("\n## Parity\n\nNo parity.csv yet: run the parity stage.\n")
    tp_path = ctx.reports / "target_parity.csv"
    if tp_path.exists():
        tp = pd.read_csv(tp_path)
        if "target" in tp.columns:  # not a failure report of the stage
            out.append(target_section(ctx, tp))
    notrun = lat[~lat["status"].str.startswith("ok")]
    out.append(f"\n## Cells not run\n\n{len(notrun)} of {len(lat)} cells did not run:\n\n")
    if not notrun.empty:
        reasons = notrun.groupby("status").agg(cells=("cell", "count"), example=("cell", "first")).reset_index()
        out.append(_md(reasons[["cells", "status", "example"]]))
    return "\n".join(out)


def run(ctx) -> list[dict]:
    lat_path = ctx.reports / "latency.csv"
    par_path = ctx.reports / "parity.csv"
    # the tables below are the host's (what parity checked, where roofline and speed-ups are measured); SSH
    # targets' rows get a section of their own
    lat, remote = report_targets.split(with_modes(pd.read_csv(lat_path)))
    parity = pd.read_csv(par_path) if par_path.exists() else None
    plots = {"threads": ctx.reports / "plots" / "latency_vs_threads.png",
             "pareto": ctx.reports / "plots" / "accuracy_vs_latency.png",
             "variants": ctx.reports / "plots" / "size_accuracy_latency.png"}
    targets_plot = ctx.reports / "plots" / "latency_per_target.png"
    if not remote.empty and report_targets.plot(lat, remote, targets_plot):
        plots["targets"] = targets_plot
    plot_threads(lat, plots["threads"])
    plot_pareto(lat, parity, plots["pareto"])
    plot_variants(variant_points(lat, parity, ctx.root), plots["variants"], lat["threads"].max())
    rec_path = ctx.reports / "recommended.csv"
    rec = recommended(lat, parity, ctx.root)
    with atomic_output(rec_path) as tmp:
        rec.to_csv(tmp, index=False)
    summary = ctx.reports / "summary.md"
    with atomic_output(summary) as tmp:
        host_part = summary_markdown(ctx, lat, parity, plots) if not lat.empty else report_targets.no_host(ctx, remote)
        tmp.write_text(host_part + report_targets.section(lat, remote, plots.get("targets")))
    log.info("summary: %s", summary)
    return [{"cell": p.name, **ctx.describe(p), "status": "ok"} for p in [summary, rec_path, *plots.values()]]
