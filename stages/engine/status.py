"""`python -m stages status`: per stage, up to date or why it would run (the params, inputs or code files that
changed, or the stale stage it comes after), with its last run's time and peak memory from reports/<model>/runs.csv.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stages.config import ModelConfig
from stages.engine.graph import (
    PIPELINE_FILE,
    Stage,
    StageContext,
    build_dir,
    load_pipeline,
    makers,
    optional_input,
    reports_dir,
    upstream,
)
from stages.engine.lock import Lock, stage_state, why_stale
from stages.engine.run import read_runs
from stages.sam.models import weights_tag


def status_lines(cfg: ModelConfig, root: Path, pipeline_file: Path | None = None) -> Iterator[str]:
    """One line per stage of the pipeline, in order."""
    stages = load_pipeline(pipeline_file or PIPELINE_FILE, cfg, root)
    build, reports = build_dir(root, cfg), reports_dir(root, cfg)
    lock = Lock(build, root)
    weights = weights_tag(cfg, root)
    made_by = makers(stages)
    by_name = {s.name: s for s in stages}
    runs = read_runs(reports)
    stale: set[str] = set()  # stages a plain run would run (on-demand ones are not run by it)
    for s in stages:
        if s.on_demand and s.name not in lock.stages:
            yield f"{s.name:<16} on demand: runs only when named (`python -m stages run --model M {s.name}`)"
            continue
        missing = [d for d in s.deps if not d.exists() and not optional_input(d, made_by, stages)]
        if missing:
            stale.add(s.name)
            yield f"{s.name:<16} needs {missing[0]}"
            continue
        ctx = StageContext(s, cfg, root, build, reports, weights)
        reason = why_stale(s, stage_state(s, ctx, lock), lock)
        after = [u for u in upstream(s, made_by) if u in stale and not by_name[u].on_demand]
        if reason is None and after:
            reason = f"after {', '.join(after)} (when that changes its inputs)"
        if reason is not None and not s.on_demand:
            stale.add(s.name)
        yield f"{s.name:<16} {'up to date' if reason is None else 'will run: ' + reason}{_last_run(s, runs)}"


def _last_run(stage: Stage, runs: dict[str, dict[str, str]]) -> str:
    last = runs.get(stage.name, {})
    try:
        return f"  (last run {float(last['seconds']):.0f} s, peak {float(last['peak_rss_mb']):.0f} MB)"
    except (KeyError, ValueError, TypeError):
        return ""
