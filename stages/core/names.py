"""How artifacts are named, in one place: the name a row of latency.csv / parity.csv gives an artifact, and the
file each is built into (pipeline.yaml's outs spell the same files).

  artifact         runtime       file under build/MODEL/
  torch            torch         (the PyTorch model itself)
  onnx             onnxruntime   onnx/{component}.onnx
  onnx-sim         onnxruntime   onnx/{component}.sim.onnx
  mnn-{variant}    mnn           mnn/{component}.{variant}.mnn          (convert.variants)
  mnn-{name}       mnn           int8/{component}.{name}.mnn            (quantize.variants, runtime mnn)
  {name}           onnxruntime   int8/{component}.{name}.onnx           (quantize.variants, runtime onnxruntime)
"""

from __future__ import annotations

import json

RAW_ONNX, SIM_ONNX = "onnx", "onnx-sim"
# the float artifact a runtime's full-int8 artifacts are compared with
FLOAT_ARTIFACT = {"mnn": "mnn-fp32", "onnxruntime": SIM_ONNX}


def artifact_name(runtime: str, variant: str) -> str:
    """A runtime's variant (a sweep's, convert.variants' or quantize.variants' name) -> its artifact name."""
    return {"torch": "torch", "onnxruntime": variant}.get(runtime, f"{runtime}-{variant}")


def mnn_artifact(variant: str) -> str:
    """A convert.variants (or MNN quantize.variants) entry -> its artifact name: mnn-<variant>."""
    return artifact_name("mnn", variant)


def mnn_file(component: str, variant: str) -> str:
    """The file name of a component's MNN variant (in build/MODEL/mnn, or int8 for full int8)."""
    return f"{component}.{variant}.mnn"


def file_artifact(path, component: str) -> str | None:
    """The artifact a component's file is (the table above, read backwards), or None for any other file."""
    folder, name = path.parent.name, path.name
    if not name.startswith(f"{component}."):
        return None
    rest = name[len(component) + 1:]
    if folder == "onnx":
        return {"onnx": RAW_ONNX, "sim.onnx": SIM_ONNX}.get(rest)
    variant, _, ext = rest.rpartition(".")
    if not variant or folder not in ("mnn", "int8") or ext not in ("mnn", "onnx"):
        return None
    return artifact_name("mnn" if ext == "mnn" else "onnxruntime", variant)


def artifact_paths(cells, quant: dict | None = None) -> dict:
    """{artifact: {component: path}} from the deps of a stage's cells (parity, bench, profile, target_parity
    declare the raw and simplified ONNX, the MNN variant and the full-int8 variant in pipeline.yaml), each
    named by its file (file_artifact). The full-int8 files count only with `quant` (quantize.variants)."""
    paths: dict[str, dict] = {}
    for c in cells:
        comp = c.values["component"]
        for dep in c.deps:
            art = file_artifact(dep, comp)
            if art is None or (dep.parent.name == "int8" and (quant is None or c.values.get("quant") is None)):
                continue
            paths.setdefault(art, {})[comp] = dep
    return paths


def options_text(opts: dict) -> str:
    """A mode's options as the rows' mode_options spell them (`shape_mutable=False hints={"CPU_CORE_IDS":[0,1]}`):
    one word per option, a mapping as compact JSON; parse_options reads it back."""
    def text(v) -> str:
        return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)

    return " ".join(f"{k}={text(v)}" for k, v in opts.items()) or "-"


def parse_options(text: str) -> dict[str, object]:
    """options_text's words (recommended.csv's mode_options) -> runtime keyword arguments."""
    out: dict[str, object] = {}
    for kv in str(text).split():
        if "=" in kv:
            k, v = kv.split("=", 1)
            out[k] = json.loads(v) if v[:1] and v[0] in "{[" else {"True": True, "False": False}.get(v, v)
    return out
