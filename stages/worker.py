"""Child-process side of isolate.py: the tasks that call native code which may crash.

Never import MNN.tools here (it pip-installs a package and sends usage data): `_tools` is the C extension.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def mnnconvert(req: dict) -> dict:
    """Convert ONNX -> MNN, then prove the file loads and runs once on the given feeds."""
    import _tools

    dst = Path(req["dst"])
    t0 = time.perf_counter()
    _tools.mnnconvert(req["argv"])  # returns True even when conversion failed: check the file
    seconds = time.perf_counter() - t0
    sys.stdout.flush()
    if not dst.exists() or dst.stat().st_size == 0:
        return {"error": "MNN converter wrote no model (see its output: 'Converted Failed!' or unsupported ops)",
                "convert_seconds": seconds}
    return {"convert_seconds": seconds, **smoke_run(req)}


def smoke_run(req: dict) -> dict:
    from stages.runtimes import MnnRuntime

    feeds = dict(np.load(req["feeds"]))
    rt = MnnRuntime(Path(req["dst"]), threads=req.get("threads", 1), precision=req.get("precision", "normal"))
    t0 = time.perf_counter()
    outs = rt.run(feeds)
    seconds = time.perf_counter() - t0
    bad = [k for k, v in outs.items() if not np.all(np.isfinite(v))]
    shapes = {k: list(v.shape) for k, v in outs.items()}
    if bad:
        return {"error": f"MNN model runs but gives NaN/Inf in {', '.join(bad)}", "shapes": shapes}
    return {"run_seconds": seconds, "shapes": shapes, "inputs": rt.input_names, "outputs": rt.output_names}


def infer(req: dict) -> dict:
    """Load a model with one runtime and run every case of a feeds .npz ("case::input" keys) through it."""
    from stages.runtimes import RUNTIMES

    t0 = time.perf_counter()
    rt = RUNTIMES[req["runtime"]](Path(req["model"]), threads=req["threads"], precision=req["precision"])
    load_seconds = time.perf_counter() - t0
    data = np.load(req["feeds"])
    cases: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        case, name = key.rsplit("::", 1)
        cases.setdefault(case, {})[name] = data[key]
    outs = {}
    t0 = time.perf_counter()
    for case, feeds in cases.items():
        for name, value in rt.run(feeds).items():
            outs[f"{case}::{name}"] = value
    run_seconds = time.perf_counter() - t0
    np.savez(req["out"], **outs)
    return {"load_seconds": load_seconds, "run_seconds": run_seconds, "cases": len(cases)}


TASKS = {"mnnconvert": mnnconvert, "mnn_smoke": smoke_run, "infer": infer}


def main() -> None:
    task, req_path = sys.argv[1], sys.argv[2]
    req = json.loads(Path(req_path).read_text())
    try:
        result = TASKS[task](req)
    except Exception as e:  # reported through the result file; a native crash never gets here
        result = {"error": f"{type(e).__name__}: {e}"}
    Path(req["result_file"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
