"""Tasks that run one runtime in a child process (stages/core/isolate.py): `infer` (parity, quantize), `profile`
(the profile stage), `mnn_probe` (MnnRuntime.unavailable). Light at import: the child imports this module."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident memory (the runner's account, which a target gives too)."""
    from stages.ondevice.mnn_runner import process_stats

    return process_stats()["peak_rss_mb"]


def infer(req: dict) -> dict:
    """Load a model with one runtime and run every case of a feeds .npz ("case::input" keys) through it."""
    from stages.ondevice.mnn_runner import load_cases
    from stages.runtimes import RUNTIMES
    from stages.runtimes.settings import RunSettings

    settings = RunSettings.from_json(req["settings"])
    t0 = time.perf_counter()
    rt = RUNTIMES[settings.runtime](Path(req["model"]), **settings.load_kwargs())
    load_seconds = time.perf_counter() - t0
    cases = load_cases(Path(req["feeds"]))
    outs = {}
    t0 = time.perf_counter()
    for case, feeds in cases.items():
        for name, value in rt.run(feeds).items():
            outs[f"{case}::{name}"] = value
    run_seconds = time.perf_counter() - t0
    np.savez(req["out"], **outs)
    return {"load_seconds": load_seconds, "run_seconds": run_seconds, "cases": len(cases)}


def profile(req: dict) -> dict:
    """Per-op-type time of one model with its runtime's own profiler (Runtime.profile)."""
    from stages.runtimes import RUNTIMES

    feeds = dict(np.load(req["feeds"]))
    times = RUNTIMES[req["runtime"]].profile(Path(req["model"]), feeds, req["threads"], req["runs"],
                                             Path(req["result_file"]).with_suffix(""))
    summary = times.summary()
    if req.get("upsample"):  # a decoder cut at low_res_masks: its masks are made outside the graph, as MnnModel does
        ms = _upsample_ms(req["upsample"]["low_res_shape"], req["upsample"]["orig_hw"], req["runs"])
        summary["ops"].append({"type": UPSAMPLE_OP, "count": 1, "mflop": float("nan"), "ms": ms})
        summary["ops"].sort(key=lambda o: -o["ms"])
        summary["ops_ms"] += ms
        summary["wall_ms"] += ms
    return summary


UPSAMPLE_OP = "Upsample (numpy fp32, outside the graph)"


def _upsample_ms(low_res_shape: list[int], orig_hw: list[int], runs: int) -> float:
    """Median ms of upsample_masks (one BLAS thread, as MnnModel runs it) after one warm-up that builds its
    matrices; its cost does not depend on the values."""
    from stages.ondevice.masks import upsample_masks
    from stages.ondevice.process import single_threaded_blas

    low_res = np.zeros(low_res_shape, np.float32)
    times = []
    with single_threaded_blas():
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            upsample_masks(low_res, orig_hw)
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])) * 1000


def mnn_probe(req: dict) -> dict:
    """Open an MNN runtime on a backend (MNN prints "Can't Find type=" when its build lacks it)."""
    import MNN.nn as nn

    from stages.ondevice.mnn_settings import mnn_schedule

    rm = nn.create_runtime_manager((mnn_schedule(req["backend"], 1, "normal"),))
    sys.stdout.flush()
    return {"created": rm is not None}
