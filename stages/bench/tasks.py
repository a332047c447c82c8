"""The bench's task for a child process (stages/core/isolate.py): time one cell's workloads. Only the bench stage
(stages/bench/__init__.py) runs it. Light at import: the child imports this module, not the bench stage."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def bench(req: dict) -> dict:
    """Time one cell's workloads: load the runtime(s), then the stop rule per workload. See stages/bench/__init__.py."""
    import psutil

    from stages.ondevice.timing import StopRule, measure, timing_columns
    from stages.runtimes import RUNTIMES
    from stages.runtimes.settings import RunSettings
    from stages.runtimes.tasks import peak_rss_mb

    cls = RUNTIMES[RunSettings.from_json(req["settings"]).runtime]
    data = dict(np.load(req["feeds"]))
    rule = StopRule(**req["timing"]).share(len(req["workloads"]))  # the budget is the cell's
    t0 = time.perf_counter()
    enc, dec = load_models(cls, req)
    load_seconds = time.perf_counter() - t0
    results = []
    for w in req["workloads"]:
        timing = measure(workload(req["component"], enc, dec, data, w), rule)
        results.append({**w, **timing_columns(timing)})
    return {"load_seconds": load_seconds, "workloads": results,
            "upsample": getattr(getattr(dec, "model", None), "upsample", None),  # MNN: where the masks were made
            "peak_rss_mb": peak_rss_mb(),
            "os_threads": psutil.Process().num_threads(), "runtime_version": cls.version()}


def load_models(cls, req: dict) -> tuple:
    """The cell's encoder and decoder (None for a component the cell does not time). A runtime that builds its model
    from the model config (cls.builds_from_config: PyTorch) gets it loaded from the config file it names."""
    from stages.runtimes.settings import RunSettings

    opts = {**RunSettings.from_json(req["settings"]).load_kwargs(), "root": req.get("root", ".")}
    if cls.builds_from_config:
        from stages.config import load_model_config

        opts["config"] = load_model_config(req["config"])
    component = req["component"]
    enc = cls(Path(req["encoder"]), component="encoder", **opts) if component in ("encoder", "e2e") else None
    dec = cls(Path(req["decoder"]), component="decoder", **opts) if component in ("decoder", "e2e") else None
    return enc, dec


def workload(component: str, enc, dec, data: dict[str, np.ndarray], w: dict):
    """The function one timed run calls for workload `w` (its prompt points and output size)."""
    from stages.sam.preprocess import bench_prompt, preprocess_image
    from stages.sam.spec import ENCODER, SPECS, decoder_feeds

    if component in SPECS:  # one component on its workload's feeds (the photo's image or real embeddings)
        model = {"encoder": enc, "decoder": dec}[component]
        feeds = SPECS[component].workload_feeds(data["image"], data["embeddings"], w["points"], w["out_size"])
        return lambda: model.run(feeds)
    photo = data["photo"]
    pts, labels = bench_prompt(w["points"], w["out_size"])
    (image,), (embeddings,) = ENCODER.input_names, ENCODER.output_names

    def e2e():  # the photo's preprocessing, the encoder, then the decoder at the photo's size
        emb = enc.run({image: preprocess_image(photo)})[embeddings]
        return dec.run(decoder_feeds(emb, pts, labels, photo.shape[:2]))
    return e2e


def paired(req: dict) -> dict:
    """Time two variants of one component in this process, their calls interleaved (a b, then b a, ...), after
    `warmup` calls each: per workload, each side's call times in ms, in call order. req["b_first"] loads b and
    starts with it (every other process does); calls are even (the sweep checks), so each side goes first in half the
    pairs of a process."""
    from stages.runtimes import RUNTIMES
    from stages.runtimes.settings import RunSettings

    data = dict(np.load(req["feeds"]))
    order = ["b", "a"] if req["b_first"] else ["a", "b"]
    # each side its own run settings: runtime, backend, precision, options (MNN against onnxruntime)
    cls = {side: RUNTIMES[RunSettings.from_json(req["sides"][side]["settings"]).runtime] for side in order}
    models = {side: load_models(cls[side], {**req, **req["sides"][side]}) for side in order}
    results = []
    for w in req["workloads"]:
        fns = {side: workload(req["component"], *models[side], data, w) for side in order}
        for side in order:
            for _ in range(max(1, req["warmup"])):
                fns[side]()
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(req["calls"]):
            for side in (order if i % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                fns[side]()
                times[side].append(round((time.perf_counter() - t0) * 1000, 4))
        results.append({**w, "a_ms": times["a"], "b_ms": times["b"]})
    return {"workloads": results, "runtime_version": " ".join(dict.fromkeys(cls[s].version() for s in ("a", "b")))}
