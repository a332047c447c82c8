"""Stage report: reports/<model>/summary.md and its plots, from latency.csv and parity.csv.

Per component, the fastest cell of each runtime with its speed-up over PyTorch and its parity verdict;
latency against threads; accuracy against latency with the Pareto front; what was skipped and why.
choose.py picks the rows (recommended.csv, which `make segment` and the demo load), plots.py draws,
summary.py writes summary.md, targets.py the SSH targets' section; figures.py holds what they share.
"""

from __future__ import annotations

import logging

import pandas as pd

from stages.core.artifacts import atomic_output
from stages.core.status import Status
from stages.report import targets as report_targets
from stages.report.choose import read_paired, recommended, variant_points, with_modes
from stages.report.plots import plot_pareto, plot_threads, plot_variants
from stages.report.summary import summary_markdown

log = logging.getLogger(__name__)


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
    rec = recommended(lat, parity, ctx.root, read_paired(ctx.reports))
    with atomic_output(rec_path) as tmp:
        rec.to_csv(tmp, index=False)
    summary = ctx.reports / "summary.md"
    with atomic_output(summary) as tmp:
        host_part = summary_markdown(ctx, lat, parity, plots) if not lat.empty else report_targets.no_host(ctx, remote)
        tmp.write_text(host_part + report_targets.section(lat, remote, plots.get("targets")))
    log.info("summary: %s", summary)
    return [{"cell": p.name, **ctx.describe(p), "status": str(Status.ok())} for p in [summary, rec_path, *plots.values()]]
