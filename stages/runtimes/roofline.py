"""The roofline every timed cell is set against: the dense fp32 matmul rate at a thread count (bench, profile).
`matmul_rate` is a task for a child process (stages/core/isolate.py): each measure gets its own thread count."""

from __future__ import annotations


def matmul_rate(req: dict) -> dict:
    """Dense fp32 matmul GFLOP/s at a thread count: the roofline each cell is compared to."""
    import torch

    from stages.ondevice.timing import StopRule, measure, summarize

    torch.set_num_threads(req["threads"])
    n = req["n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    timing = measure(lambda: a @ b, StopRule(warmup=2, min_runs=5, min_seconds=req["min_seconds"], max_seconds=30))
    p50 = summarize(timing.samples_s)["p50_ms"] / 1000
    return {"gflops": 2 * n**3 / p50 / 1e9, "threads_seen": torch.get_num_threads()}
