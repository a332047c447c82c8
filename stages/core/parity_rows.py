"""Reading parity.csv's verdicts: which rows were checked, and whether an artifact passes at a precision and memory
mode (its own component and end to end). The report recommends by it; a sweep with `candidates: passing` times by it."""

from __future__ import annotations

import pandas as pd

from stages.core.status import SKIPPED, has_kind


def with_checked(parity: pd.DataFrame | None) -> pd.DataFrame | None:
    """parity.csv with a memory column (older files: normal) and `checked`: the row's cell ran. A cell skipped
    by design (a setting identical to another here) has no verdict: it neither passes nor fails."""
    if parity is None:
        return None
    parity = parity.assign(memory=parity["memory"].fillna("normal") if "memory" in parity.columns else "normal")
    checked = (~has_kind(parity["status"], SKIPPED) if "status" in parity.columns
               else pd.Series(True, index=parity.index))
    passed = parity["pass"] == True if "pass" in parity.columns else checked  # noqa: E712 (NaN: not passed)
    return parity.assign(checked=checked, passed=checked & passed)


def passes(parity: pd.DataFrame | None, artifact: str, precision: str, component: str,
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
