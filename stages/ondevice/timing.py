"""The timing loop and its statistics: warm up, then measure until both a minimum count and a minimum
time are reached (optimum-benchmark / LoadGen style), capped by a maximum time."""

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
    max_seconds: float = 60.0  # stop measuring after this long even below min_runs (then valid=False)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.min_seconds < 0 or self.max_seconds <= 0:
            raise ValueError(f"timing: need warmup >= 0, min_runs >= 1, min_seconds >= 0, max_seconds > 0; got {self}")


@dataclass
class Timing:
    first_run_s: float
    samples_s: list[float] = field(default_factory=list)
    valid: bool = True  # False when max_seconds cut the run short of min_runs


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
            return Timing(first, samples, True)
        if elapsed >= rule.max_seconds:
            return Timing(first, samples, len(samples) >= rule.min_runs)


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
        return {k: math.nan for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "cv_pct", "min_ms", "max_ms")} | {"runs": 0}
    mean = statistics.fmean(ms)
    stdev = statistics.stdev(ms) if len(ms) > 1 else 0.0
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": mean, "stdev_ms": stdev, "cv_pct": 100 * stdev / mean if mean else math.nan,
            "min_ms": ms[0], "max_ms": ms[-1], "runs": len(ms)}
