"""Small ONNX helpers shared by the export and simplify stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from stages.core.errors import PipelineError


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise PipelineError(f"{path} is not a readable ONNX model: {e}") from None


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: Path, external_mb: float) -> bool:
    """Save a model; when its weights pass `external_mb` MB they go to one side file `<name>.data` beside it
    (ONNX external data, which onnxruntime, onnx and MNN's converter read). Returns whether they did."""
    if initializer_bytes(model) <= external_mb * 1e6 and external_mb > 0:
        onnx.save(model, str(path))
        return False
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{Path(path).name}.data", size_threshold=1024)
    return True


def stored_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights, inline or external, from a model loaded without its external data."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += t.ByteSize()
    return total


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def resave_export(path: Path, external_mb: float) -> bool:
    """torch.onnx.export writes a model past 2 GB as one file per weight beside it: re-save the export with
    its weights inline or in one `<name>.data` (the per-weight files stay in the temp folder they were
    written to, which is removed). Returns whether the weights are external."""
    return save_onnx(onnx.load(str(path)), path, external_mb)


def check_onnx(path: Path) -> None:
    """Run onnx's checker on a freshly written model (by path, so >2 GB models work)."""
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise PipelineError(f"{path}: exported ONNX fails onnx.checker: {e}") from None


def foreign_ops(model: onnx.ModelProto) -> list[str]:
    """Ops outside the default ONNX domain (e.g. com.microsoft.Attention), which MNN cannot convert."""
    found = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            found.append(f"{node.domain}::{node.op_type}")
    return sorted(set(found))


def ort_outputs(path: Path, feeds: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    from stages.runtimes import OrtRuntime

    return OrtRuntime(path, threads=threads).run(feeds)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
