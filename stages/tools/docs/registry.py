"""Block name -> renderer (root, argument) -> Markdown."""

from __future__ import annotations

from stages.tools.docs import sweeps, tables, topics

RENDERERS = {
    "results": tables.results,
    "paired": tables.paired,
    "paired-summary": tables.paired_summary,
    "workloads": tables.workloads,
    "rewrites": tables.rewrites,
    "variants": topics.variants,
    "int8": topics.int8,
    "profile-decoder": topics.profile_decoder,
    "times": topics.times,
    "time": topics.time,
    "picks": sweeps.picks,
    "picks-summary": sweeps.picks_summary,
}
