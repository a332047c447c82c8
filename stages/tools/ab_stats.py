"""The latency A/B's table (its statistics: stages/core/ab.py): per cell, the two sides' pooled timed runs and each round's, a one-sided
Mann-Whitney U test, the factor, and the rule that a change must show in every round (a code change slows
every round; a disturbance of a shared machine slows one: "not reproduced"); cells whose timed inputs are the
same on both sides (timed_inputs.py) are "same inputs: not re-timed". Rows in compare.py's format."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages.core.ab import ab_verdict
from stages.core.status import OK, Status, has_kind, is_failed, is_skipped
from stages.tools.cells import LAT_KEY, _key, covering_status

SAME_INPUTS = "same inputs: not re-timed"  # the verdict of a cell whose timed inputs are equal on both sides
INPUTS = ["inputs_base", "inputs_new", "inputs_changed"]  # ab.csv: each side's fingerprint, and what differs


def status_of(lat: pd.DataFrame) -> dict[str, str]:
    return dict(zip(_keys(lat), lat["status"].astype(str), strict=True))


def _keys(df: pd.DataFrame) -> pd.Series:
    return _key(df, LAT_KEY, set())


def same_inputs_rows(cells: pd.DataFrame) -> pd.DataFrame:
    """The ok latency rows of cells whose timed inputs are the same on both sides, as A/B rows: not timed
    again, never a regression (new_p50_ms is the new side's own run's)."""
    ok = cells[has_kind(cells["status"], OK)]
    rows = ok[[*LAT_KEY, *INPUTS]].assign(cell=_keys(ok), new_p50_ms=ok["p50_ms"], status=str(Status.ok()),
                                          verdict=SAME_INPUTS)
    return rows[["cell", *LAT_KEY, "new_p50_ms", "verdict", "status", *INPUTS]]


def with_inputs(table: pd.DataFrame, cells: pd.DataFrame, same: pd.DataFrame) -> pd.DataFrame:
    """The A/B rows of `table` with the INPUTS of `cells` (the new run's latency rows) joined, less the rows of
    `same` cells (timed only because a restricted sweep is a grid). A row of no cell of the new run stays:
    "missing in b" is a verdict of its own."""
    if not len(table):
        return table
    inputs = cells.assign(cell=_keys(cells)).drop_duplicates("cell").set_index("cell")[INPUTS]
    kept = table[~table["cell"].isin(set(_keys(same)))]
    return kept.join(inputs, on="cell").fillna({c: "" for c in INPUTS})


def _rounds(b: pd.DataFrame, n: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each round's (base, new) runs of one cell, for the rounds both sides timed it in."""
    if "round" not in b.columns or "round" not in n.columns:
        return []
    both = sorted(set(b["round"]) & set(n["round"]))
    return [(b.loc[b["round"] == r, "ms"].to_numpy(), n.loc[n["round"] == r, "ms"].to_numpy()) for r in both]


def compare_samples(base: pd.DataFrame, new: pd.DataFrame, base_status: dict[str, str], new_status: dict[str, str],
                    factor: float, confidence: float, new_latency: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell timed on either side (a cell the new side skipped in a collapsed row of `new_latency` is
    "not run in b" with that row's reason)."""
    base, new = base.assign(key=_keys(base)), new.assign(key=_keys(new))
    rows = []
    for key in dict.fromkeys([*base["key"], *new["key"]]):
        b, n = base[base["key"] == key], new[new["key"] == key]
        row = {"cell": key, **{k: (b if len(b) else n).iloc[0][k] for k in LAT_KEY}}
        if not len(n):
            st = new_status.get(key) or covering_status(new_latency, row) or "absent"
            verdict = ("newly failing" if is_failed(st) else
                       "not run in b" if is_skipped(st) else "missing in b")  # skipped: the row says why
            rows.append({**row, "base_p50_ms": float(b["ms"].median()), "status": st, "verdict": verdict})
            continue
        if not len(b):
            rows.append({**row, "new_p50_ms": float(n["ms"].median()), "status": base_status.get(key, "absent"),
                         "verdict": "new in b"})
            continue
        res = ab_verdict(b["ms"].to_numpy(), n["ms"].to_numpy(), factor, confidence, _rounds(b, n))
        per_run = bool(b["per_run"].all() and n["per_run"].all())
        rows.append({**row, **res, "status": str(Status.ok()), "samples": "every timed run" if per_run else
                     "one p50 per round (the base side has no latency_samples.csv)"})
    return pd.DataFrame(rows)


def ab_rows(table: pd.DataFrame, gate) -> pd.DataFrame:
    """The A/B table in the comparison format of compare.py (kind, cell, metric, a, b, allowed, verdict, note)."""
    rows = []
    for r in table.to_dict("records"):
        ok = Status.read(r["status"]) == Status.ok() and "ratio" in r and pd.notna(r.get("ratio"))
        rows.append({"kind": "latency", "cell": r["cell"], "metric": "median ms, A/B",
                     "a": r.get("base_p50_ms"), "b": r.get("new_p50_ms"),
                     "allowed": (f"<= x{gate.factor}, or not slower at {gate.confidence:.0%} confidence, or not in every round"
                                 if ok else None),
                     "verdict": r["verdict"], "confidence": r.get("confidence_slower") if ok else None,
                     "note": _note(r, ok, gate.factor)})
    return pd.DataFrame(rows)


def _note(r: dict, ok: bool, factor: float) -> str:
    if r["verdict"] == SAME_INPUTS:
        return (f"timed inputs the same on both sides (fingerprint {r['inputs_new']}): not re-timed; b is "
                f"this tree's own run")
    note = (f"x{r['ratio']:.2f}; {r['confidence_slower']:.1%} confident slower (Mann-Whitney U, "
            f"{r['base_runs']:.0f} vs {r['new_runs']:.0f} runs, {r['samples']})" + _round_note(r, factor)) \
        if ok else str(r["status"])
    changed = r.get("inputs_changed")
    if isinstance(changed, str) and changed:
        note += f"; timed because its inputs differ: {changed}"
    return note


def _round_note(r: dict, factor: float) -> str:
    ratios = r.get("round_ratios")
    if not isinstance(ratios, str) or not ratios:
        return ""
    if r["verdict"] == "not reproduced":
        return (f"; per round {ratios}: past x{factor} (or 1/x{factor}) in some rounds only, so the machine, not "
                f"the code, is taken to have changed")
    return f"; per round {ratios}"
