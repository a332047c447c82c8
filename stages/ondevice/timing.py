"""The timing loop and its statistics: warm up, then measure until a minimum count and a minimum time are reached
and, with `ci_pct`, until the median is known well enough (its 95% interval within +-ci_pct % of it, as MLPerf
LoadGen and optimum-benchmark stop on tight statistics), capped by a time budget (max_seconds)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StopRule:
    warmup: int = 2
    min_runs: int = 5
    min_seconds: float = 2.0
    max_seconds: float = 60.0  # the budget: stop measuring after this long even below min_runs (then valid=False)
    # > 0: also measure until the 95% interval of the median lies within +-ci_pct % of the median (0: counts only)
    ci_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.min_seconds < 0 or self.max_seconds <= 0 or self.ci_pct < 0:
            raise ValueError(f"timing: need warmup >= 0, min_runs >= 1, min_seconds >= 0, max_seconds > 0, ci_pct >= 0; "
                             f"got {self}")


    def share(self, workloads: int) -> StopRule:
        """The rule for each of a cell's `workloads`: max_seconds is the cell's budget, split evenly."""
        return StopRule(self.warmup, self.min_runs, self.min_seconds, self.max_seconds / max(1, workloads), self.ci_pct)


@dataclass
class Timing:
    first_run_s: float
    samples_s: list[float] = field(default_factory=list)
    valid: bool = True  # False when max_seconds cut the run short of min_runs
    stopped_by: str = "runs"  # "runs": count and time reached; "ci": and the median's interval tight; "budget"


def measure(fn: Callable[[], object], rule: StopRule, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time fn(): the first call (cold) separately, then warm-ups, then samples until the stop rule holds."""
    t0 = clock()
    fn()
    first = clock() - t0
    for _ in range(max(0, rule.warmup - 1)):
        fn()
    samples: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= rule.min_runs and elapsed >= rule.min_seconds:
            if not rule.ci_pct:
                return Timing(first, samples, True)
            if ci_halfwidth_pct(samples) <= rule.ci_pct:
                return Timing(first, samples, True, "ci")
        if elapsed >= rule.max_seconds:
            return Timing(first, samples, len(samples) >= rule.min_runs, "budget")


def median_ci(sorted_values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The distribution-free interval of the median: order statistics x(k) and x(n+1-k), k the largest with
    P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2 (so it covers the median with at least `confidence`). Needs
    6 values at 95%; fewer give (nan, nan)."""
    n, tail = len(sorted_values), (1 - confidence) / 2
    k, below = 0, 0.0
    while k < n and below + math.comb(n, k) / 2 ** n <= tail:  # below: P(X < k + 1) once k is counted
        below += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        return math.nan, math.nan
    return sorted_values[k - 1], sorted_values[n - k]


def ci_halfwidth_pct(samples: list[float]) -> float:
    """The 95% interval of the median as +-% of the median (its wider side); inf when there are too few values."""
    ms = sorted(samples)
    lo, hi = median_ci(ms)
    med = percentile(ms, 50)
    if lo != lo or not med:
        return math.inf
    return 100 * max(med - lo, hi - med) / med


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values, q in [0, 100]."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/stdev/CV%/min/max in milliseconds, and the count."""
    ms = sorted(s * 1000 for s in samples_s)
    if not ms:
        return {k: math.nan for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "cv_pct", "min_ms", "max_ms",
                                      "ci95_pct")} | {"runs": 0}
    mean = statistics.fmean(ms)
    stdev = statistics.stdev(ms) if len(ms) > 1 else 0.0
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": mean, "stdev_ms": stdev, "cv_pct": 100 * stdev / mean if mean else math.nan,
            "min_ms": ms[0], "max_ms": ms[-1], "runs": len(ms), "ci95_pct": ci_halfwidth_pct(ms)}


def timing_columns(timing: Timing, first_run_s: float | None = None) -> dict:
    """One workload's timed columns, as the bench's rows and the A/B gate's samples read them."""
    first = timing.first_run_s if first_run_s is None else first_run_s
    return {**summarize(timing.samples_s), "first_run_ms": first * 1000, "valid": timing.valid,
            "stopped_by": timing.stopped_by, "samples_ms": [round(x * 1000, 4) for x in timing.samples_s]}
