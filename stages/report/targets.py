"""summary.md's "Latency per target": the bench's MNN cells on each target (the host and every SSH device), a
table per target naming its CPU, cores, MNN version and backends, and one plot with a line per target."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.core.status import OK, has_kind
from stages.report.figures import markdown_table, plt, save_figure

COLUMNS = ["component", "artifact", "precision", "mode", "threads", "points", "out_h", "out_w", "p50_ms", "p90_ms",
           "runs", "fp16_compute", "int8_compute", "status"]


def no_host(ctx, remote: pd.DataFrame) -> str:
    """summary.md's head when the bench timed no cell on the host (`TARGET=ssh://...` alone)."""
    first = remote.iloc[0]
    weights = str(first.get("weights", ""))
    note = (f"> **Weights: {weights}** - the real architecture with seeded random weights (no checkpoint). Latency "
            "and parity are real; masks are not meaningful.\n" if weights.startswith("random") else f"Weights: {weights}\n")
    return (f"# {ctx.cfg.name}: latency on the targets\n\n{note}\nThis run timed no cell on the host (bench.targets: "
            f"{', '.join(sorted(remote['target'].unique()))}): the host's tables (fastest per runtime, Pareto, "
            f"recommended.csv) come from a run that names `host` among its targets.\n")


def split(lat: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """latency.csv as (host rows, SSH-target rows); a latency.csv from before targets is all host."""
    if "target" not in lat.columns:
        return lat, lat.iloc[0:0]
    host = lat["target"].fillna("host").astype(str) == "host"
    return lat[host], lat[~host]


def _best(rows: pd.DataFrame) -> pd.DataFrame:
    """Each target's fastest MNN cell per (component, workload, threads): the line the plot draws."""
    ok = rows[has_kind(rows["status"], OK) & (rows["runtime"] == "mnn")]
    if ok.empty:
        return ok
    return ok.loc[ok.groupby(["target", "component", "points", "out_h", "out_w", "threads"])["p50_ms"].idxmin()]


def plot(host: pd.DataFrame, remote: pd.DataFrame, path: Path) -> bool:
    """Best MNN p50 against threads, one line per target, a panel per component (decoder: its largest workload)."""
    best = _best(pd.concat([host.assign(target="host") if not host.empty else host, remote]))
    if best.empty:
        return False
    comps = [c for c in ("encoder", "decoder") if (best["component"] == c).any()]
    fig, axes = plt.subplots(1, len(comps), figsize=(6 * len(comps), 4.5), squeeze=False)
    for ax, comp in zip(axes[0], comps, strict=True):
        sub = best[best["component"] == comp]
        top = sub.sort_values(["points", "out_h"], ascending=False).iloc[0]
        sub = sub[(sub["points"] == top["points"]) & (sub["out_h"] == top["out_h"]) & (sub["out_w"] == top["out_w"])]
        for target, g in sub.groupby("target", sort=True):
            g = g.sort_values("threads")
            ax.plot(g["threads"], g["p50_ms"], marker="o", label=f"{target} ({g['cpu'].iloc[0]}, {g['cores'].iloc[0]} cores)"
                    if "cpu" in g else target)
        ax.set_title(f"{comp}" + ("" if comp == "encoder" else f" ({int(top['points'])} pt -> {int(top['out_h'])}x{int(top['out_w'])})"))
        ax.set_xlabel("threads")
        ax.set_ylabel("best MNN p50, ms")
        ax.set_xticks(sorted(sub["threads"].unique()))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Fastest MNN cell per target (each measured on its own CPU)")
    save_figure(fig, path)
    return True


def _table(g: pd.DataFrame) -> str:
    ok = g[has_kind(g["status"], OK) & (g["runtime"] == "mnn")]
    cols = [c for c in COLUMNS if c in g.columns]
    if ok.empty:
        return "(no MNN cell timed)\n"
    t = ok[cols].sort_values(["component", "threads", "p50_ms"]).round(2)
    for c in ("threads", "points", "out_h", "out_w", "runs"):
        if c in t.columns:
            t[c] = t[c].astype("Int64")
    return markdown_table(t)


def section(host: pd.DataFrame, remote: pd.DataFrame, plot_path: Path | None) -> str:
    """The markdown section: the host's MNN cells and each SSH target's; empty when no SSH target was benched."""
    if remote.empty:
        return ""
    out = ["\n## Latency per target\n\n",
           "The sweep's MNN cells on each target: SSH targets timed by the runner there (same stop rule and "
           "statistics) on their own CPU and MNN build; no matmul roofline is measured there (roofline: none). A "
           "target's rows are compared only with that target's rows (`make compare`, `make regress`).\n\n"]
    if plot_path is not None:
        out.append(f"![latency per target](plots/{plot_path.name})\n")
    if not host.empty and (host["runtime"] == "mnn").any():
        first = host.iloc[0]
        out.append(f"\n### host\n\n{first.get('cpu', '?')}, {first.get('cores', '?')} cores (the tables above "
                   f"are this machine's).\n\n" + _table(host))
    for target, g in remote.groupby("target", sort=True):
        first = g.iloc[0]
        ok = has_kind(g["status"], OK)
        out.append(f"\n### {target}\n\n{first.get('cpu', '?')}, {first.get('cores', '?')} cores, "
                   f"{first.get('target_machine', '?')}, MNN {first.get('target_mnn', '?')}, backends: "
                   f"{first.get('target_backends', '') or 'none answered'}. {ok.sum()} of {len(g)} rows timed.\n\n")
        out.append(_table(g))
        for status, n in g[~ok]["status"].value_counts().items():
            out.append(f"- {n} rows: {status}\n")
    return "".join(out)
