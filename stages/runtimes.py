"""One small interface to run a model: load once, run(feeds) -> outputs. One class per runtime.

Parity and bench reach these through RUNTIMES and never branch on a runtime's name. Each class also
says which backends and precisions it knows (to reject a sweep with a typo) and whether a backend is
really there (to turn a missing one into a skipped row, not a silent CPU run).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from stages.errors import PipelineError

MNN_PRECISIONS = ("normal", "high", "low", "Low_BF16")
MNN_BACKENDS = {"CPU": 0, "Metal": 1, "CUDA": 2, "OpenCL": 3, "OpenGL": 6, "Vulkan": 7}
ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
                 "OpenVINOExecutionProvider", "DnnlExecutionProvider", "CoreMLExecutionProvider",
                 "XnnpackExecutionProvider", "ROCMExecutionProvider")


class Runtime:
    """Base: a loaded model with named inputs and outputs."""

    name = "base"
    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def version(cls) -> str:
        raise NotImplementedError

    @classmethod
    def check_sweep(cls, backends: list[str], precisions: list[str]) -> None:
        """Reject backends or precisions this runtime has never heard of (a typo in a sweep file)."""
        for b in backends:
            if b not in cls.backends:
                raise ValueError(f"runtimes.{cls.name}.backends: {b!r} is not one of {', '.join(cls.backends)}")
        for p in precisions:
            if p not in cls.precisions:
                raise ValueError(f"runtimes.{cls.name}.precisions: {p!r} is not one of {', '.join(cls.precisions)}")

    # load/run options a sweep mode may set: name -> allowed values
    mode_options: dict[str, tuple] = {}

    @classmethod
    def check_mode(cls, where: str, opts: dict) -> None:
        """Reject a mode option this runtime does not have, or a value it would silently ignore."""
        for k, v in opts.items():
            if k not in cls.mode_options:
                known = ", ".join(cls.mode_options) or "none"
                raise ValueError(f"{where}: {k!r} is not a {cls.name} option (options: {known})")
            if v not in cls.mode_options[k]:
                raise ValueError(f"{where}.{k}: {v!r} is not one of {', '.join(map(str, cls.mode_options[k]))}")

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        """None when `backend` can run here, else why not."""
        return None


class OrtRuntime(Runtime):
    name = "onnxruntime"
    backends = ORT_PROVIDERS

    def __init__(self, path: Path, threads: int = 1, precision: str = "fp32",
                 backend: str = "CPUExecutionProvider", **_):
        import onnxruntime as ort

        why = self.unavailable(backend)
        if why:
            raise PipelineError(why)
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

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        import onnxruntime as ort

        have = ort.get_available_providers()
        if backend not in have:
            return f"onnxruntime execution provider {backend} is not installed (installed: {', '.join(have)})"
        return None


def external_hint(path: Path) -> str:
    """MNN loads a model converted with --saveExternalData without its `.weight` file and runs it to NaN,
    saying only "Can't open file" on stdout: name the file when it is missing."""
    weight = Path(path).with_name(Path(path).name + ".weight")
    if weight.exists():
        return ""
    return (f"; if it was converted with --saveExternalData, its weights file {weight} must sit beside it "
            f"(copy both files together)")


class MnnRuntime(Runtime):
    name = "mnn"
    backends = tuple(MNN_BACKENDS)
    precisions = MNN_PRECISIONS
    # memory/power: the runtime config's modes. shape_mutable=False: the module keeps the shapes of its
    # first run (inputs of a new shape trigger a resize); rearrange=True: weights are laid out once at load.
    mode_options = {"memory": ("low", "normal", "high"), "power": ("low", "normal", "high"),
                    "shape_mutable": (True, False), "rearrange": (True, False)}

    def __init__(self, path: Path, threads: int = 1, precision: str = "normal", backend: str = "CPU",
                 memory: str = "normal", power: str = "normal", shape_mutable: bool = True,
                 rearrange: bool = False, **_):
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
        self.path = Path(path)
        config = {"backend": backend, "numThread": threads, "precision": precision, "memory": memory, "power": power}
        try:
            self.runtime_manager = nn.create_runtime_manager((config,))
        except Exception as e:  # e.g. "backend not support" for a GPU backend absent from this build
            raise PipelineError(f"MNN backend {backend} is not available in this MNN build ({e.__cause__ or e})") from None
        try:
            self.module = nn.load_module_from_file(str(path), [], [], runtime_manager=self.runtime_manager,
                                                   shape_mutable=shape_mutable, rearrange=rearrange)
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

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        return _mnn_backend_probe(backend)


class TorchRuntime(Runtime):
    """PyTorch eager, the reference: `path` is the model config YAML; the model is built as the pipeline builds it."""

    name = "torch"
    backends = ("cpu", "cuda")

    def __init__(self, path: Path, threads: int = 1, precision: str = "fp32", backend: str = "cpu",
                 component: str = "encoder", root: str = ".", **_):
        import torch

        from stages.config import load_model_config
        from stages.export_decoder import INPUTS, OUTPUTS, onnx_decoder
        from stages.models import build_model

        why = self.unavailable(backend)
        if why:
            raise PipelineError(why)
        torch.set_num_threads(threads)
        cfg = load_model_config(str(path))
        model, _ = build_model(cfg, Path(root))
        self.device = torch.device(backend)
        if component == "encoder":
            self.module = model.image_encoder.to(self.device)
            self.input_names, self.output_names = ["image"], ["image_embeddings"]
        else:
            self.module = onnx_decoder(model, cfg.export.multimask_output).to(self.device)
            self.input_names, self.output_names = list(INPUTS), list(OUTPUTS)
        self._torch = torch

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            outs = self.module(*(torch.from_numpy(feeds[n]).to(self.device) for n in self.input_names))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {n: o.cpu().numpy() for n, o in zip(self.output_names, outs, strict=True)}

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version("torch")

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        import torch

        if backend == "cuda" and not torch.cuda.is_available():
            return "torch: no CUDA device on this machine"
        return None


_PROBED: dict[str, str | None] = {}


def _mnn_backend_probe(backend: str) -> str | None:
    """Ask a child process to open an MNN runtime on `backend`. MNN either raises or prints
    "Can't Find type=N backend, use 0 instead" and silently runs on the CPU: both mean unavailable."""
    if backend == "CPU":
        return None
    if backend not in _PROBED:
        import tempfile

        from stages.isolate import run_isolated

        with tempfile.TemporaryDirectory() as d:
            res = run_isolated("mnn_probe", {"backend": backend}, Path(d) / "probe.log", timeout_s=60)
        if "Can't Find type=" in res.log_tail:
            _PROBED[backend] = f"MNN backend {backend} is not in this MNN build (MNN falls back to the CPU)"
        elif not res.ok:
            _PROBED[backend] = f"MNN backend {backend} is not available: {res.why}"
        else:
            _PROBED[backend] = None
    return _PROBED[backend]


RUNTIMES: dict[str, type[Runtime]] = {"onnxruntime": OrtRuntime, "mnn": MnnRuntime, "torch": TorchRuntime}

