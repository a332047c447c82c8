"""MNN's converter driven from Python: its argv, `--saveStaticModel` with an input config written from the ONNX,
a pinned model UUID (the same conversion gives the same bytes), and the child-process tasks that convert and run
a model once."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from pathlib import Path

import numpy as np


def converter_argv(src: Path, dst: Path, flags: list[str]) -> list[str]:
    return ["mnnconvert", "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(dst), "--bizCode", "MNN", *flags]


STATIC = "--saveStaticModel"


def output_names(src: Path) -> list[str]:
    """The ONNX's output names; [] when it cannot be read (the converter then says why it failed)."""
    import onnx

    try:
        return [o.name for o in onnx.load(str(src), load_external_data=False).graph.output]
    except Exception:
        return []


def input_shapes(src: Path) -> dict[str, list[int | str]]:
    """Each graph input's shape; a dynamic dim is its name (e.g. 'num_points')."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input if i.name not in inits}


def static_flags(src: Path, flags: list[str], workdir: Path) -> tuple[list[str], str]:
    """`--saveStaticModel` without an `--inputConfigFile`: write MNN's input config from the ONNX's fixed
    input shapes, so the converter precomputes every shape and layout op (the vit_t encoder goes from about
    990 ops to about 370). A model with a dynamic input (the decoder's num_points, its orig_im_size whose
    values set the output shape) cannot be static: it is converted without the flag, and the row says why."""
    if STATIC not in flags or "--inputConfigFile" in flags:
        return flags, "yes" if STATIC in flags else "no"
    shapes = input_shapes(src)
    dynamic = {n: s for n, s in shapes.items() if any(isinstance(d, str) or d <= 0 for d in s)}
    if dynamic:
        name, shape = next(iter(dynamic.items()))
        return [f for f in flags if f != STATIC], f"no: input {name} has dynamic shape {shape}"
    conf = workdir / f"{src.stem}.inputs.txt"
    conf.write_text(f"input_size = {len(shapes)}\ninput_names = {','.join(shapes)}\n"
                    f"input_dims = {','.join('x'.join(map(str, s)) for s in shapes.values())}\n")
    return [*flags, "--inputConfigFile", str(conf)], "yes"


_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pin_uuid(path: Path) -> None:
    """MNN's converter stamps each model with a random UUID, so the same conversion gives a new sha256 every
    time and everything downstream would re-run. Replace it with one derived from the rest of the file."""
    data = bytearray(path.read_bytes())
    m = _UUID.search(data, 0, 4096)
    if m is None:
        return
    rest = hashlib.sha256(bytes(data[: m.start()]) + bytes(data[m.end() :])).digest()
    data[m.start() : m.end()] = str(uuid.UUID(bytes=rest[:16], version=5)).encode()
    path.write_bytes(bytes(data))


# tasks for a child process (stages/core/isolate.py): native code that may crash. Never import MNN.tools here (it
# pip-installs a package and sends usage data): `_tools` is the C extension.

def mnnconvert(req: dict) -> dict:
    """Convert ONNX -> MNN, then prove the file loads and runs once on the given feeds."""
    import sys

    import _tools

    dst = Path(req["dst"])
    t0 = time.perf_counter()
    _tools.mnnconvert(req["argv"])  # returns True even when conversion failed: check the file
    seconds = time.perf_counter() - t0
    sys.stdout.flush()
    if not dst.exists() or dst.stat().st_size == 0:
        return {"error": "MNN converter wrote no model (see its output: 'Converted Failed!' or unsupported ops)",
                "convert_seconds": seconds}
    result = {"convert_seconds": seconds, **smoke_run(req)}
    lost = [n for n in req.get("outputs", []) if "error" not in result and n not in result["outputs"]]
    if lost:  # seen: --saveStaticModel on SAM's decoder cut at low_res_masks ("Can't find low_res_masks output, skip")
        result["error"] = f"MNN's converter dropped output(s) {', '.join(lost)} of the ONNX (see its output)"
    return result


def smoke_run(req: dict) -> dict:
    """Load the MNN model at req["dst"] and run it once on req["feeds"]: its outputs' shapes, or why not."""
    from stages.runtimes import MnnRuntime, external_hint

    feeds = dict(np.load(req["feeds"]))
    rt = MnnRuntime(Path(req["dst"]), threads=req.get("threads", 1), precision=req.get("precision", "normal"))
    t0 = time.perf_counter()
    outs = rt.run(feeds)
    seconds = time.perf_counter() - t0
    bad = [k for k, v in outs.items() if not np.all(np.isfinite(v))]
    shapes = {k: list(v.shape) for k, v in outs.items()}
    if bad:
        hint = req.get("nan_hint") or external_hint(Path(req["dst"]))
        return {"error": f"MNN model runs but gives NaN/Inf in {', '.join(bad)}" + hint,
                "shapes": shapes}
    return {"run_seconds": seconds, "shapes": shapes, "inputs": rt.input_names, "outputs": rt.output_names}


def output_check(want: dict[str, list[int]], got: dict[str, list[int]]) -> dict:
    """What a quantized model lost against its float source: outputs, or output shapes."""
    missing = [k for k in want if k not in got]
    shapes = [f"{k} {got[k]} (float {want[k]})" for k in want if k in got and got[k] != want[k]]
    return {"missing_outputs": ", ".join(missing), "shape_mismatch": "; ".join(shapes)}
