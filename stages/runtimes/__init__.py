"""One small interface to run a model: load once, run(feeds) -> outputs. One module per runtime.

base.py holds the interface (Runtime) and what cells share; onnxruntime.py, mnn.py and torch.py one runtime each.
Parity, bench and profile reach them through RUNTIMES and never branch on a runtime's name. Each class also
says which backends and precisions it knows (to reject a sweep with a typo) and whether a backend is
really there (to turn a missing one into a skipped row, not a silent CPU run).
"""

from __future__ import annotations

from stages.ondevice.mnn_settings import (
    DEFAULT_UPSAMPLE,
    MNN_BACKENDS,
    MNN_MODES,
    MNN_PRECISIONS,
    UPSAMPLE,
    mnn_schedule,
)
from stages.runtimes.base import DEVICES, SAME, Runtime, Same, identical_skip, plain
from stages.runtimes.mnn import MnnRuntime, external_hint
from stages.runtimes.onnxruntime import ORT_PROVIDERS, OrtRuntime
from stages.runtimes.torch import TorchRuntime

RUNTIMES: dict[str, type[Runtime]] = {"onnxruntime": OrtRuntime, "mnn": MnnRuntime, "torch": TorchRuntime}

__all__ = ["DEFAULT_UPSAMPLE", "DEVICES", "MNN_BACKENDS", "MNN_MODES", "MNN_PRECISIONS", "ORT_PROVIDERS", "RUNTIMES", "SAME", "UPSAMPLE",
           "MnnRuntime", "OrtRuntime", "Runtime", "Same", "TorchRuntime", "external_hint", "identical_skip",
           "mnn_schedule", "plain"]
