"""The report's plots: latency against threads, accuracy against latency with the Pareto front, and the MNN
variants' size, accuracy and speed."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.ticker
import pandas as pd

from stages.report.choose import COMPONENTS, heaviest, pareto_points, timed, with_modes, workload
from stages.report.figures import plt, save_figure


def plot_threads(lat: pd.DataFrame, path: Path) -> None:
    lat = with_modes(lat)
    ok = lat[timed(lat)]
    comps = [c for c in COMPONENTS if (ok["component"] == c).any()]
    if not comps:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no cell ran: see the status column of latency.csv", ha="center", va="center")
        ax.axis("off")
        save_figure(fig, path)
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
        sub = heaviest(ok[ok["component"] == component], component)
        for (runtime, artifact, precision, backend, mode), g in sub.groupby(["runtime", "artifact", "precision", "backend", "mode"]):
            g = g.sort_values("threads")
            ax.plot(g["threads"], g["p50_ms"], marker=markers[mode], color=colors[g["series"].iloc[0]], ls=styles[precision],
                    label=f"{runtime} {artifact}@{precision}{'' if mode == 'default' else '~' + mode} ({backend})")
        ax.set_title(f"{component} ({workload(sub.iloc[0])})")
        ax.set_xlabel("threads")
        ax.set_ylabel("p50 latency, ms")
        ax.set_xticks(sorted(sub["threads"].unique()))
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("Latency against threads (lower is better)")
    save_figure(fig, path)


def label_points(ax, points: pd.DataFrame, fontsize: int = 8) -> None:
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
        label_points(ax, df[df["pareto"]])  # the rest are listed in summary.md
        # enough decimals for the axis's span (cosines of 0.9999997 and 1.0 printed as "1" before), no offset
        span = float(df["accuracy"].max() - df["accuracy"].min())
        digits = min(9, max(3, math.ceil(-math.log10(span)) + 1)) if span > 0 else 6
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter(f"%.{digits}f"))
        front = df[df["pareto"]].sort_values("p50_ms")
        ax.step(front["p50_ms"], front["accuracy"], where="post", color="k", lw=1, ls="--", label="Pareto front")
        ax.set_xlabel(f"p50 latency at {int(lat['threads'].max())} threads, ms")
        ax.set_ylabel("embedding cosine vs PyTorch" if component == "encoder" else "worst mask IoU vs PyTorch")
        ax.set_title(component)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy against latency (up and left is better; Pareto points labelled)")
    save_figure(fig, path)


def plot_variants(points: pd.DataFrame, path: Path, threads) -> None:
    """Size against end-to-end accuracy, coloured by encoder latency: the size/accuracy/speed trade at a glance."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if points.empty:
        ax.text(0.5, 0.5, "no MNN variant with parity and size data", ha="center", va="center")
        ax.axis("off")
        save_figure(fig, path)
        return
    timed = points.dropna(subset=["encoder_p50_ms"])
    sc = ax.scatter(timed["size_mb"], timed["e2e_mask_iou"], c=timed["encoder_p50_ms"], cmap="viridis_r", s=60,
                    edgecolors=["k" if p else "r" for p in timed["passes"]])
    untimed = points[points["encoder_p50_ms"].isna()]
    ax.scatter(untimed["size_mb"], untimed["e2e_mask_iou"], facecolors="none", edgecolors="0.5", s=60,
               label="not timed in this sweep")
    if not timed.empty:
        fig.colorbar(sc, ax=ax, label=f"encoder p50 at {threads} thread(s), ms (MNN CPU, precision normal)")
    label_points(ax, points.rename(columns={"size_mb": "p50_ms", "e2e_mask_iou": "accuracy"}))
    ax.set_xlabel("encoder + decoder file size, MB")
    ax.set_ylabel("worst end-to-end mask IoU vs PyTorch")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.6g"))
    ax.grid(alpha=0.3)
    if not untimed.empty:
        ax.legend(fontsize=8)
    ax.set_title("MNN variants x memory mode: size, accuracy, speed (red edge: fails parity)")
    save_figure(fig, path)
