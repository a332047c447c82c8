"""Small ONNX helpers shared by the export and simplify stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from stages.errors import PipelineError

# Protobuf cannot hold one message past 2 GB: bigger models keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise PipelineError(f"{path} is not a readable ONNX model: {e}") from None


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
