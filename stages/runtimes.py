"""One small interface to run a model file: load once, run(feeds) -> outputs. One class per runtime.

Parity and bench use these through RUNTIMES and never branch on a runtime's name.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from stages.errors import PipelineError

MNN_PRECISIONS = ("normal", "high", "low", "Low_BF16")
MNN_BACKENDS = {"CPU": 0, "Metal": 1, "CUDA": 2, "OpenCL": 3, "OpenGL": 6, "Vulkan": 7}


class Runtime:
    """Base: a loaded model with named inputs and outputs."""

    name = "base"
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def version(cls) -> str:
        raise NotImplementedError


class OrtRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1, precision: str = "fp32", backend: str = "CPUExecutionProvider"):
        import onnxruntime as ort

        if backend not in ort.get_available_providers():
            raise PipelineError(f"onnxruntime execution provider {backend} is not installed "
                                f"(available: {', '.join(ort.get_available_providers())})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=[backend])
        except Exception as e:
            raise PipelineError(f"onnxruntime cannot load {path}: {e}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version("onnxruntime")


class MnnRuntime(Runtime):
    name = "mnn"

    def __init__(self, path: Path, threads: int = 1, precision: str = "normal", backend: str = "CPU",
                 memory: str = "normal", power: str = "normal"):
        import MNN.expr as F
        import MNN.nn as nn

        if precision not in MNN_PRECISIONS:
            # MNN treats an unknown string as "normal" without a word: refuse it here instead.
            raise PipelineError(f"MNN precision {precision!r} is not one of {', '.join(MNN_PRECISIONS)}")
        if backend not in MNN_BACKENDS:
            raise PipelineError(f"MNN backend {backend!r} is not one of {', '.join(MNN_BACKENDS)}")
        if not Path(path).is_file():
            raise PipelineError(f"MNN model {path} does not exist")
        self._F = F
        config = {"backend": backend, "numThread": threads, "precision": precision, "memory": memory, "power": power}
        self.runtime_manager = nn.create_runtime_manager((config,))
        try:
            self.module = nn.load_module_from_file(str(path), [], [], runtime_manager=self.runtime_manager)
        except Exception:  # MNN raises SystemError for a truncated or foreign file
            self.module = None
        if self.module is None:
            raise PipelineError(f"MNN cannot load {path} (not an MNN model, or truncated)")
        info = self.module.get_info()
        self.input_names = list(info["inputNames"])
        self.output_names = list(info["outputNames"])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        F = self._F
        inputs = [F.const(np.ascontiguousarray(feeds[n], dtype=np.float32), list(feeds[n].shape), F.NCHW)
                  for n in self.input_names]
        outs = self.module.forward(inputs)
        result = {}
        for name, var in zip(self.output_names, outs, strict=True):
            if var.data_format == F.NC4HW4:
                var = F.convert(var, F.NCHW)
            result[name] = np.array(var.read(), copy=True)
        return result

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version("MNN")


RUNTIMES: dict[str, type[Runtime]] = {"onnxruntime": OrtRuntime, "mnn": MnnRuntime}
