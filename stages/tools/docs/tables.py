"""The renderers of the generated blocks: each reads committed CSVs (reports/measured/,
reports/baselines/) and returns Markdown. Nothing here reads build/ or this machine's reports."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

from stages.core.parity_rows import passes
from stages.report.choose import recommended, timed, with_modes, workload

FAST = Path("reports/measured/vit_t-fast-mnn")  # the committed run the results and MNN findings quote
BASE = Path("reports/baselines/vit_t")
RUNS = Path("reports/measured/runs.csv")
TIMES = Path("reports/measured/command_times.csv")


@lru_cache(maxsize=64)
def _read(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


def csv(root: Path, rel: Path | str) -> pd.DataFrame:
    path = root / rel
    return _read(str(path), path.stat().st_mtime).copy()


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def run_info(root: Path, run: Path) -> pd.Series:
    runs = csv(root, RUNS)
    return runs[runs["run"] == str(run)].iloc[0]


def machine(lat: pd.DataFrame) -> str:
    r = lat.iloc[0]
    return f"{r['cpu']}, {int(r['cores'])} cores (`{r['machine_class']}`)"


def mb(conv: pd.DataFrame, component: str, variant: str) -> float:
    row = conv[(conv["component"] == component) & (conv["variant"] == variant)]
    return float(row["bytes"].iloc[0]) / 1e6


def load_options(precision: str, mode: str) -> str:
    return f"precision {precision}, `{mode}` loading"


def _e2e_row(lat: pd.DataFrame, par: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The fastest end-to-end MNN cell whose artifact passes parity, and onnxruntime's, at the top threads."""
    lat = with_modes(lat)
    e2e = lat[timed(lat) & (lat["component"] == "e2e")]
    e2e = e2e[e2e["threads"] == e2e["threads"].max()].sort_values("p50_ms")
    mnn = next(
        r
        for _, r in e2e[e2e["runtime"] == "mnn"].iterrows()
        if passes(par, r["artifact"], r["precision"], "e2e", r["memory"]) is not None
    )
    return mnn, e2e[e2e["runtime"] == "onnxruntime"].iloc[0]


RESULTS_HEAD = ["component (workload)", "MNN file", "load options", "MNN p50 ms", "onnxruntime p50 ms", "MNN / ort",
                "accuracy vs PyTorch (worst case)", "MB"]


def results(root: Path, arg: str = "") -> str:
    """The README's one table: per component the recommended MNN file against onnxruntime (fast-mnn run)."""
    lat, par, conv = (
        csv(root, FAST / "latency.csv"),
        csv(root, FAST / "parity.csv"),
        csv(root, FAST / "convert.csv"),
    )
    # sizes come from convert.csv, never from files on this machine: the pick is recommended.csv's rule
    rec = recommended(lat, par, Path(os.devnull), csv(root, FAST / "paired.csv"))
    rec = rec[(rec["pick"] == "fastest") & (rec["threads"] == rec["threads"].max())]  # the run's top thread count
    ort = {r.component: r for r in rec[rec["runtime"] == "onnxruntime"].itertuples()}
    rows = []
    for r in rec[rec["runtime"] == "mnn"].itertuples():
        o = ort[r.component]
        acc = f"cosine {r.cosine:.4f}" if r.component == "encoder" else f"mask IoU {r.mask_iou:.4f}"
        out = "" if r.component == "encoder" else "; outputs `low_res_masks`, `iou_predictions`"
        rows.append(
            [
                f"{r.component} ({r.workload})",
                f"`{r.component}.{r.variant}.mnn`",
                load_options(r.precision, r.mode) + out,
                f"{r.p50_ms:.1f}",
                f"{o.p50_ms:.1f}",
                f"**{r.p50_ms / o.p50_ms:.2f}x**",
                f"{acc}; e2e {r.e2e_mask_iou:.4f}",
                f"{mb(conv, r.component, r.variant):.1f}",
            ]
        )
    m, o = _e2e_row(lat, par)
    e2e_iou = passes(par, m["artifact"], m["precision"], "e2e", m["memory"])["mask_iou"]
    rows.append(
        [
            f"end to end ({workload(m)}, preprocess + both)",
            f"`{m['variant']}` (both files)",
            load_options(m["precision"], m["mode"]),
            f"{m['p50_ms']:.1f}",
            f"{o['p50_ms']:.1f}",
            f"{m['p50_ms'] / o['p50_ms']:.2f}x",
            f"mask IoU {e2e_iou:.4f}",
            "",
        ]
    )
    info, first = run_info(root, FAST), lat.iloc[0]
    fixed = (
        "; `fixed` loading: MNN's module config `shape_mutable=False`, `rearrange=True`"
        if (rec["mode"] == "fixed").any() or m["mode"] == "fixed"
        else ""
    )
    return (
        table(RESULTS_HEAD, rows) + "\n\n"
        f"Measured {info['date']} on {machine(lat)}, {int(first['threads'])} threads,"
        f" MNN {first['mnn_version']},"
        f" onnxruntime {first['onnxruntime_version']} (its `onnx-sim` model), weights **{first['weights']}**"
        " (seeded random: latency is real, masks are not meaningful)."
        f" p50 over {int(first['processes'])} fresh"
        " processes per cell; accuracy is the worst over 4 photos x 5 prompts."
        f" Reproduce with `{info['command']}`;"
        f" sources: `{FAST}/latency.csv`, `parity.csv`, `convert.csv`{fixed}."
    )


def paired(root: Path, arg: str = "") -> str:
    """The same-process A/B comparisons of the fast-mnn run, one row per comparison, a column per workload."""
    p = csv(root, FAST / "paired.csv")
    p["w"] = [workload(r) if r["component"] == "decoder" else "1024x1024" for _, r in p.iterrows()]
    rows = []
    for comp, g in p.groupby("comparison", sort=False):
        cells = [
            f"{w}: {r.ratio_b_a:.3f} ({int(r.b_faster_pairs)} of {int(r.pairs)}, p {r.p_value:.1g})"
            for w, r in zip(g["w"], g.itertuples(), strict=True)
        ]
        verdicts = sorted(set(g["verdict"]))
        rows.append([comp, "; ".join(cells), ", ".join(verdicts)])
    r0 = p.iloc[0]
    return (
        table(
            ["comparison (b vs a)", "median b / a over call pairs (pairs b won, sign-test p)", "verdict"],
            rows,
        )
        + f"\n\n{int(r0['processes'])} processes, {int(r0['threads'])} threads, {r0['cpu']}; source:"
        f" `{FAST}/paired.csv` ({run_info(root, FAST)['date']})."
    )


def paired_summary(root: Path, arg: str) -> str:
    """One sentence for one comparison ('fp32-lean-t vs fp32-lean'): its ratio range and verdicts."""
    p = csv(root, FAST / "paired.csv")
    g = p[p["comparison"].str.endswith(arg)]
    verdict = " / ".join(sorted(set(g["verdict"])))
    return (
        f"Same-process A/B, {arg}: median b / a {g['ratio_b_a'].min():.2f}-{g['ratio_b_a'].max():.2f} at"
        f" {len(g)} workloads, verdict *{verdict}* (p <= {g['p_value'].max():.1g}; `{FAST}/paired.csv`)."
    )


def workloads(root: Path, arg: str = "") -> str:
    """Per workload of the fast-mnn run: onnxruntime, the best MNN cell, the range over MNN cells."""
    lat = with_modes(csv(root, FAST / "latency.csv"))
    lat = lat[timed(lat)]
    rows = []
    for (comp, *_), g in lat.groupby(["component", "points", "out_h", "out_w"], sort=False):
        ort, mnn = g[g["runtime"] == "onnxruntime"].iloc[0], g[g["runtime"] == "mnn"]
        best = mnn.loc[mnn["p50_ms"].idxmin()]
        name = comp if comp == "encoder" else f"{comp} {workload(best)}"
        rows.append(
            [
                name,
                f"{ort['p50_ms']:.1f}",
                f"{best['p50_ms']:.1f} ({best['variant']} / {best['mode']})",
                f"**{best['p50_ms'] / ort['p50_ms']:.2f}x**",
                f"{mnn['p50_ms'].min() / ort['p50_ms']:.2f}-{mnn['p50_ms'].max() / ort['p50_ms']:.2f}x",
                str(best["process_p50_ms"]).replace(" ", ", "),
            ]
        )
    return (
        table(
            [
                "workload",
                "onnxruntime p50 ms",
                "best MNN (variant / loading)",
                "ratio",
                "all MNN cells",
                "each process's p50 of the best cell",
            ],
            rows,
        )
        + f"\n\nSource: `{FAST}/latency.csv` ({run_info(root, FAST)['date']}, {machine(lat)})."
    )


def rewrites(root: Path, arg: str = "") -> str:
    """Per variant with ONNX rewrites: the sites each rewrite changed in the encoder and the decoder."""
    conv = csv(root, FAST / "convert.csv")
    conv = conv[conv["rewrites"].notna()]
    rows = [
        [f"`{v}`", *(g.set_index("component")["rewrites"].get(c, "") for c in ("encoder", "decoder"))]
        for v, g in conv.groupby("variant", sort=False)
    ]
    return table(["variant", "encoder", "decoder"], rows) + f"\n\nSource: `{FAST}/convert.csv`."
