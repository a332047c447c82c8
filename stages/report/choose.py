"""Choosing rows from latency.csv and parity.csv: parity verdicts, the recommended variants (which `make segment`
and the demo load), the fastest cell per runtime, full int8 against float, and the points the plots draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.artifacts import artifact_bytes
from stages.core.names import FLOAT_ARTIFACT
from stages.core.parity_rows import passes, with_checked
from stages.core.status import OK, has_kind
from stages.runtimes import RUNTIMES

COMPONENTS = ("encoder", "decoder", "e2e")


def parity_precision(runtime: str, precision: str) -> str:
    """The precision parity.csv names a cell by (the runtime class says: onnxruntime's are fp32)."""
    rt = RUNTIMES.get(runtime)
    return rt.parity_precision(precision) if rt else precision


def on_cpu(rows: pd.DataFrame) -> pd.Series:
    """Which rows ran on their runtime's CPU backend (the runtime class names it)."""
    cpu = rows["runtime"].map(lambda r: RUNTIMES[r].cpu_backend if r in RUNTIMES else None)
    return rows["backend"] == cpu


def timed(lat: pd.DataFrame) -> pd.Series:
    """The rows whose cell ran (status ok, with or without a note)."""
    return has_kind(lat["status"], OK)


def heaviest(sub: pd.DataFrame, component: str) -> pd.DataFrame:
    """One workload per component: the decoder's heaviest (most points, then largest output)."""
    if component != "decoder":
        return sub
    top = sub.sort_values(["points", "out_h"], ascending=False).iloc[0]
    return sub[(sub["points"] == top["points"]) & (sub["out_h"] == top["out_h"]) & (sub["out_w"] == top["out_w"])]


def with_modes(lat: pd.DataFrame) -> pd.DataFrame:
    """Mode columns (latency.csv from before sweep modes existed ran every cell in the default mode), and the
    MNN memory mode each cell ran with, read from its mode options (memory=low), as parity.csv names it."""
    lat = lat.assign(**{c: lat[c] if c in lat.columns else d
                        for c, d in (("mode", "default"), ("mode_options", "-"), ("device", "cpu"))})
    memory = [next((t.split("=", 1)[1] for t in str(o).split() if t.startswith("memory=")), "normal")
              for o in lat["mode_options"]]
    return lat.assign(memory=memory)


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
    precision = parity_precision(row["runtime"], row["precision"])
    v = verdicts.get((row["artifact"], precision, row.get("memory", "normal"), row["component"]))
    if v is None:
        return "not checked"
    rt = RUNTIMES.get(row["runtime"])
    if rt is None or row["backend"] != rt.cpu_backend:
        return f"{v} (checked on CPU)"
    return v


def mode_suffix(r) -> str:
    return "" if r.get("mode", "default") == "default" else f"~{r['mode']}"


def workload(r) -> str:
    if r["component"] == "encoder":
        return "1024x1024"
    return f"{int(r['points'])} pt -> {int(r['out_h'])}x{int(r['out_w'])}"


def fastest_table(lat: pd.DataFrame, verdicts) -> pd.DataFrame:
    lat = with_modes(lat)
    ok = lat[timed(lat)].copy()
    rows = []
    for component in COMPONENTS:
        sub = ok[ok["component"] == component]
        if sub.empty:
            continue
        sub = heaviest(sub, component)
        # CPU and GPU cells apart: a GPU row's speed-up is against torch cuda, a CPU row's against torch cpu
        for (runtime, device), g in sub.groupby(["runtime", "device"], sort=False):
            best = g.loc[g["p50_ms"].idxmin()]
            rows.append({"component": component, "workload": workload(best),
                         "runtime": runtime if device == "cpu" else f"{runtime} ({device})",
                         "fastest cell": f"{best['artifact']}@{best['precision']}{mode_suffix(best)} {best['backend']} t{best['threads']}",
                         "p50 ms": round(best["p50_ms"], 1), "cv %": round(best["cv_pct"], 1),
                         "speed-up vs PyTorch": round(best["speedup_vs_torch"], 2),
                         "roofline %": round(100 * best["roofline_frac"], 1),
                         "peak RSS MB": round(best["peak_rss_mb"]),
                         "fp16 / int8 arithmetic": f"{best.get('fp16_compute', '?')} / {best.get('int8_compute', '?')}",
                         "parity": verdict_for(best, verdicts)})
    return pd.DataFrame(rows)


def _passing(g: pd.DataFrame, parity, component: str, runtime: str, root: Path) -> list[dict]:
    """A runtime's cells of one component whose artifact passes parity, fastest first, as recommended.csv rows."""
    out = []
    for r in g.sort_values("p50_ms").itertuples():
        par = passes(parity, r.artifact, parity_precision(runtime, r.precision), component, getattr(r, "memory", "normal"))
        if par is None:
            continue
        path = root / str(par["artifact_path"])
        out.append({"component": component, "runtime": runtime, "artifact": r.artifact,
                    "variant": r.variant, "precision": r.precision, "mode": getattr(r, "mode", "default"),
                    "mode_options": getattr(r, "mode_options", "-"), "threads": r.threads,
                    "workload": workload(r._asdict()), "p50_ms": round(r.p50_ms, 1),
                    "cosine": par.get("cosine"), "mask_iou": par.get("mask_iou"),
                    "e2e_mask_iou": par.get("e2e_mask_iou"),
                    "size_mb": round(artifact_bytes(path) / 1e6, 2) if path.is_file() else float("nan"),
                    "fp16_compute": getattr(r, "fp16_compute", ""), "int8_compute": getattr(r, "int8_compute", ""),
                    # where the row's masks were made (RunSettings.masks_made): make segment does the same
                    "upsample": getattr(r, "upsample", ""),
                    "path": str(par["artifact_path"]), "candidates": len(g)})
    return out


def read_paired(reports: Path) -> pd.DataFrame | None:
    """The bench's same-process A/B rows (paired.csv) of a reports folder; None when it wrote none."""
    path = reports / "paired.csv"
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else None


def _proven_faster(paired: pd.DataFrame | None, x: dict, y: dict) -> str | None:
    """The comparison of paired.csv that proves passing cell `y` faster than `x` (same component, runtime,
    precision, mode and threads; its verdict on every workload it timed), else None."""
    if paired is None or paired.empty or x["mode"] != y["mode"] or x["precision"] != y["precision"]:
        return None
    p = paired[(paired["component"] == x["component"]) & (paired["runtime"] == x["runtime"])
               & (paired["threads"] == x["threads"]) & (paired["mode"] == x["mode"])
               & (paired["precision"] == x["precision"])]
    if "b_runtime" in p.columns:  # a pair of two runtimes ranks runtimes, not variants
        p = p[p["b_runtime"].isna() | (p["b_runtime"] == x["runtime"])]
    if "b_mode" in p.columns:  # a pair of two modes (MNN's hints against its defaults) ranks modes, not variants
        p = p[p["b_mode"].isna() | (p["b_mode"] == x["mode"])]
    for (a, b), g in p.groupby(["a", "b"]):
        want = {(x["variant"], y["variant"]): "b faster", (y["variant"], x["variant"]): "b slower"}.get((a, b))
        if want and (g["status"] == "ok").all() and (g["verdict"] == want).all():
            return str(g["comparison"].iloc[0])
    return None


def recommended(lat: pd.DataFrame, parity: pd.DataFrame | None, root: Path = Path("."),
                paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per component, thread count (1 and the highest swept) and runtime: the fastest benchmarked cell whose
    artifact passes parity (its own component and end to end, at the memory mode it was timed in), for the decoder
    at the heaviest workload (pick `fastest`); for MNN also the smallest passing file (pick `smallest`, the fastest
    cell of that file). A passing cell that a same-process A/B (`paired`, the bench's paired.csv) proves faster
    than the p50's pick replaces it; `chosen_by` says which decided. The highest thread count's rows come last
    (what `make segment` loads)."""
    lat = with_modes(lat)
    ok = lat[timed(lat) & lat["component"].isin(["encoder", "decoder"]) & on_cpu(lat)]
    rows = []
    for component, threads in ((c, t) for c in ("encoder", "decoder")
                               for t in sorted({1, ok["threads"].max()} & set(ok["threads"]))):
        sub = ok[(ok["component"] == component) & (ok["threads"] == threads)]
        if sub.empty:
            continue
        sub = heaviest(sub, component)
        for runtime, g in sub.groupby("runtime", sort=False):
            passing = [] if runtime == "torch" else _passing(g, parity, component, runtime, root)
            if not passing:
                continue
            best, why = passing[0], "p50"
            for _ in passing:  # follow proofs; bounded, so contradictory rows cannot loop
                better = next(((y, c) for y in passing if y is not best and (c := _proven_faster(paired, best, y))),
                              None)
                if better is None:
                    break
                best, why = better[0], f"A/B: {better[1]}"
            rows.append({"pick": "fastest", **best, "chosen_by": why})
            if runtime == "mnn":  # the smallest file that passes, in its fastest passing cell
                sized = [x for x in passing if x["size_mb"] == x["size_mb"]]  # NaN: the file is gone
                if sized:
                    rows.append({"pick": "smallest", **min(sized, key=lambda x: (x["size_mb"], x["p50_ms"])),
                                 "chosen_by": "size"})
    return pd.DataFrame(rows)


def int8_table(lat: pd.DataFrame, parity: pd.DataFrame | None, quant: dict, root: Path = Path(".")) -> pd.DataFrame:
    """Each full-int8 artifact against the float artifact of its runtime (mnn-fp32, onnx-sim): accuracy from
    parity.csv, the encoder's p50 at the top thread count (best mode) from latency.csv, size on disk."""
    if parity is None or not quant:
        return pd.DataFrame()
    lat = with_modes(lat)
    # the float and int8 artifacts' CPU rows: PyTorch's thread counts do not set the top one
    enc = lat[timed(lat) & (lat["component"] == "encoder") & on_cpu(lat) & (lat["runtime"] != "torch")]
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
        by = {c: p[p["component"] == c].iloc[0] for c in COMPONENTS if (p["component"] == c).any()}
        ref = FLOAT_ARTIFACT[q.runtime]
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


def pareto_points(lat: pd.DataFrame, parity: pd.DataFrame | None, component: str) -> pd.DataFrame:
    """Fastest latency per (artifact, precision, mode) at the highest thread count, with its parity mask IoU."""
    lat = with_modes(lat)
    ok = lat[timed(lat) & (lat["component"] == component)]
    if ok.empty:
        return pd.DataFrame()
    ok = heaviest(ok[ok["threads"] == ok["threads"].max()], component)
    pts = []
    parity = with_checked(parity)
    for (runtime, artifact, precision, mode, memory), g in ok.groupby(["runtime", "artifact", "precision", "mode", "memory"]):
        acc = 1.0 if runtime == "torch" else np.nan
        if parity is not None and runtime != "torch":
            p = parity[(parity["artifact"] == artifact) & (parity["component"] == component) & parity["checked"]
                       & (parity["memory"] == memory) & (parity["precision"] == parity_precision(runtime, precision))]
            if not p.empty:
                acc = float(p["mask_iou"].iloc[0] if component != "encoder" else p["cosine"].iloc[0])
        pts.append({"label": f"{artifact}@{precision}{'' if mode == 'default' else '~' + mode}", "runtime": runtime,
                    "p50_ms": g["p50_ms"].min(), "accuracy": acc})
    df = pd.DataFrame(pts).dropna(subset=["accuracy"])
    df["pareto"] = [not ((df["p50_ms"] <= r.p50_ms) & (df["accuracy"] >= r.accuracy)
                         & ((df["p50_ms"] < r.p50_ms) | (df["accuracy"] > r.accuracy))).any()
                    for r in df.itertuples()]
    return df.sort_values("p50_ms")


def variant_points(lat: pd.DataFrame, parity: pd.DataFrame | None, root: Path) -> pd.DataFrame:
    """One point per MNN variant x memory mode (precision normal): encoder + decoder file size, worst end-to-end
    mask IoU from parity.csv, and the encoder's fastest p50 at the top thread count (any mode, same memory)."""
    if parity is None:
        return pd.DataFrame()
    parity, lat = with_checked(parity), with_modes(lat)
    par = parity[(parity["runtime"] == "mnn") & (parity["precision"] == "normal") & parity["checked"]]
    enc = lat[timed(lat) & (lat["component"] == "encoder") & (lat["runtime"] == "mnn")
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
