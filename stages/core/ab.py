"""A/B statistics, in one place: the bench's same-process comparison (paired call times, a sign test) and the
regression gate's (two sides' independent runs, a one-sided Mann-Whitney U test) share one rule: a difference is
a verdict only when the test says so *and* every group (a fresh process of the paired bench, a round of the
gate) shows it on its own. A code change shows in every group; a disturbance of a shared machine (a neighbour on
the VM, a process in MNN's slow mode) shows in one."""

from __future__ import annotations

import statistics

import numpy as np

P_MAX = 0.01  # the paired bench's sign-test level for a verdict


def every_group(group_ratios: list[float], past: float, slower: bool) -> bool:
    """Each group's median ratio (b / a) is past `past`: above it for `slower`, below 1 / `past` otherwise."""
    return all(r > past for r in group_ratios) if slower else all(r < 1 / past for r in group_ratios)


def compare_calls(a_ms: list[list[float]], b_ms: list[list[float]]) -> dict:
    """The paired bench's statistics of one comparison: per process, the call times of each side in call order
    (paired by index). Ratios are b / a per call pair; the sign test counts the pairs where b was faster (ties
    dropped). "b faster" / "b slower" need p < P_MAX and every process's median ratio on that side of 1."""
    from scipy.stats import binomtest

    ratios = [[b / a for a, b in zip(pa, pb, strict=True)] for pa, pb in zip(a_ms, b_ms, strict=True)]
    flat = sorted(r for rs in ratios for r in rs)
    faster = sum(r < 1 for r in flat)
    decided = sum(r != 1 for r in flat)
    p = binomtest(faster, decided, 0.5).pvalue if decided else 1.0
    per_process = [statistics.median(rs) for rs in ratios]
    median = statistics.median(flat)
    if p < P_MAX and median < 1 and every_group(per_process, 1.0, slower=False):
        verdict = "b faster"
    elif p < P_MAX and median > 1 and every_group(per_process, 1.0, slower=True):
        verdict = "b slower"
    else:
        verdict = "no difference shown"
    q = statistics.quantiles(flat, n=4, method="inclusive") if len(flat) > 1 else [median, median, median]
    return {"processes": len(ratios), "calls": len(ratios[0]) if ratios else 0,
            "a_p50_ms": statistics.median(x for xs in a_ms for x in xs),
            "b_p50_ms": statistics.median(x for xs in b_ms for x in xs), "ratio_b_a": median, "ratio_p25": q[0],
            "ratio_p75": q[2], "b_faster_pairs": faster, "ties": len(flat) - decided, "pairs": len(flat), "p_value": p,
            "process_ratios": " ".join(f"{r:.3f}" for r in per_process), "verdict": verdict}


def ab_verdict(base_ms: np.ndarray, new_ms: np.ndarray, factor: float, confidence: float,
               rounds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """The gate's statistics of one cell: medians, their ratio, and the one-sided Mann-Whitney U p-values; worse
    only past the factor and the noise. rounds: each round's (base, new) runs; past the factor and the noise is
    "worse" (or "better") only when every round's median ratio is past the factor too, else "not reproduced"."""
    from scipy.stats import mannwhitneyu

    mb, mn = float(np.median(base_ms)), float(np.median(new_ms))
    ratio = mn / mb
    if len(base_ms) >= 2 and len(new_ms) >= 2:
        p_slower = float(mannwhitneyu(new_ms, base_ms, alternative="greater").pvalue)
        p_faster = float(mannwhitneyu(new_ms, base_ms, alternative="less").pvalue)
    else:
        p_slower = p_faster = 1.0
    alpha = 1.0 - confidence
    verdict = ("worse" if ratio > factor and p_slower < alpha else
               "better" if ratio < 1 / factor and p_faster < alpha else "same")
    per_round = [float(np.median(n) / np.median(b)) for b, n in (rounds or []) if len(b) and len(n)]
    if verdict in ("worse", "better") and not every_group(per_round, factor, slower=verdict == "worse"):
        verdict = "not reproduced"
    return {"base_p50_ms": mb, "new_p50_ms": mn, "ratio": ratio, "p_slower": p_slower,
            "confidence_slower": 1.0 - p_slower, "base_runs": len(base_ms), "new_runs": len(new_ms),
            "round_ratios": " ".join(f"x{r:.2f}" for r in per_round), "verdict": verdict}
