"""How report rows are matched between runs: the cell keys of latency.csv and parity.csv, and which int8
kernels a parity row's int8 arithmetic ran on (a baseline holds one row per kernel class where they differ)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.core.errors import PipelineError
from stages.runtimes import RUNTIMES

LAT_KEY = ["component", "runtime", "backend", "artifact", "precision", "mode", "threads", "points", "out_h", "out_w"]
PAR_KEY = ["artifact", "precision", "memory", "component"]
# what a report must have to be compared (older reports lack mode / target / memory: filled in by the readers)
NEEDED = {"latency": ["component", "runtime", "artifact", "threads", "status", "p50_ms"],
          "parity": ["artifact", "precision", "component", "pass"]}


def read_report(path: Path, kind: str) -> pd.DataFrame:
    """reports/.../{kind}.csv as a table; an empty, unreadable or foreign file is a PipelineError naming it and
    the columns a {kind}.csv has."""
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise PipelineError(f"{path} is not a readable {kind}.csv ({type(e).__name__}: {str(e).strip()[:120]}); "
                            f"expected the CSV a pipeline run writes, with columns {', '.join(NEEDED[kind])}") from None
    missing = [c for c in NEEDED[kind] if c not in df.columns]
    if missing:
        raise PipelineError(f"{path} lacks the column(s) {', '.join(missing)}: not a {kind}.csv from a pipeline "
                            f"run (expected columns {', '.join(NEEDED[kind])})")
    return df


def _key(df: pd.DataFrame, cols: list[str], drop: set[str]) -> pd.Series:
    use = [c for c in cols if c not in drop and c in df.columns]
    if df.empty:  # agg over no rows gives a DataFrame, not a Series
        return pd.Series([], index=df.index, dtype=str)
    key = df[use].astype(str).agg("/".join, axis=1)
    if "target" in df.columns and "target" not in drop:  # an SSH target's rows: only ever matched with its own
        target = df["target"].fillna("host").astype(str)
        key = key.where(target == "host", target + "/" + key)
    return key


# the latency key's columns a row per reason (stages/bench/skips.py) is matched on: each holds one value (runtime,
# backend: a row per runtime and backend) or its cells' values space-joined
COVERED = ("component", "runtime", "backend", "artifact", "precision", "mode")


def covering_status(lat: pd.DataFrame | None, row) -> str | None:
    """The status of the skipped row of `lat` that stands for `row`'s cell (a row per reason, `cells` > 1: the
    values it lists, `threads` 0 for several), or None. A cell the bench did not time has no row of its own."""
    if lat is None or "cells" not in lat.columns:
        return None
    for _, s in lat[lat["cells"].notna()].iterrows():
        if all(str(row.get(c)) in str(s[c]).split() for c in COVERED) and int(s["threads"]) in (0, int(row["threads"])):
            if str(s.get("target", "host")) == str(row.get("target", "host")):
                return str(s["status"])
    return None


def int8_kernels(row: pd.Series) -> str:
    """The int8 kernels a parity row's int8 arithmetic ran on, where the runtime says they change the result
    (onnxruntime on x86: VNNI or saturating AVX2); "" for float rows and kernel-independent runtimes. Rows from
    before the int8_kernels column are classed from their cpu_flags."""
    if str(row.get("int8_compute", "no")) != "yes":
        return ""
    k = row.get("int8_kernels")
    if isinstance(k, str) and k:
        return k
    rt = RUNTIMES.get(str(row.get("runtime", "")))
    flags = row.get("cpu_flags")
    return rt.int8_kernels(set(flags.split())) if rt is not None and isinstance(flags, str) else ""


def merge_baseline(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """The new parity baseline: every row of this run, plus the old baseline's rows of int8 cells computed on
    other int8 kernels than this run's, for the same file (same artifact_sha256): another kind of machine's
    rows stay until that kind refreshes them, and go when the file they measured changed."""
    if old is None or not len(old):
        return new
    have = {(k, int8_kernels(r)) for k, (_, r) in zip(_key(new, PAR_KEY, set()), new.iterrows(), strict=True)}

    def files(df: pd.DataFrame) -> dict[str, str]:  # per artifact, the hashes of all its rows (e2e: both files)
        if "artifact_sha256" not in df.columns:
            return {}
        return {a: " ".join(sorted(g["artifact_sha256"].astype(str))) for a, g in df.groupby("artifact")}

    now, before = files(new), files(old)
    keep = [i for i, (k, (_, r)) in enumerate(zip(_key(old, PAR_KEY, set()), old.iterrows(), strict=True))
            if int8_kernels(r) and (k, int8_kernels(r)) not in have
            and now.get(r.get("artifact")) == before.get(r.get("artifact"))]
    return pd.concat([new, old.iloc[keep]], ignore_index=True) if keep else new


def pick(rows: list[pd.Series] | None, like: pd.Series | None) -> pd.Series | None:
    """Of a cell's baseline rows (one per int8 kernel class a baseline was made on), the one computed on the
    kernels `like` was; else the first."""
    if not rows:
        return None
    want = int8_kernels(like) if like is not None else None
    return next((r for r in rows if int8_kernels(r) == want), rows[0])
