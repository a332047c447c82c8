"""One small interface to run a model: load once, run(feeds) -> outputs. One class per runtime.

Parity and bench reach these through RUNTIMES and never branch on a runtime's name. Each class also
says which backends and precisions it knows (to reject a sweep with a typo) and whether a backend is
really there (to turn a missing one into a skipped row, not a silent CPU run).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError

# MNN's settings as the integers pymnn reads: defined in the runner that also runs on targets (one copy)
from stages.ondevice.mnn_runner import (  # noqa: F401
    MNN_BACKENDS,
    MNN_MODES,
    MNN_PRECISIONS,
    UPSAMPLE,
    MnnModel,
    RunnerError,
    mnn_schedule,
)

DEVICES = {"cuda": "gpu", "CUDAExecutionProvider": "gpu", "TensorrtExecutionProvider": "gpu", "ROCMExecutionProvider": "gpu",
           "CUDA": "gpu", "OpenCL": "gpu", "Vulkan": "gpu", "Metal": "gpu", "OpenGL": "gpu",
           "NN": "npu", "CoreMLExecutionProvider": "npu"}
ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
                 "OpenVINOExecutionProvider", "DnnlExecutionProvider", "CoreMLExecutionProvider",
                 "XnnpackExecutionProvider", "ROCMExecutionProvider")


SAME = "computes exactly what"  # in the status of a cell skipped because another cell computes the same


@dataclass(frozen=True)
class Same:
    """The setting a cell repeats on this machine: its precision and load options, and why."""

    precision: str
    options: dict = field(default_factory=dict)
    why: str = ""

    def timed_in(self, precisions, modes: dict[str, dict]) -> bool:
        """Whether a sweep with these precisions and modes has the cell this one repeats."""
        return self.precision in precisions and any(plain(m) == plain(self.options) for m in modes.values())


def plain(options: dict) -> dict:
    """Load options without the ones at their default (memory/power normal): {} and {memory: normal} are one mode."""
    return {k: v for k, v in options.items() if not (k in ("memory", "power") and v == "normal")}


def identical_skip(status) -> bool:
    """A row skipped by design: its setting computes exactly what another cell does here (no verdict)."""
    return str(status).startswith("skipped: ") and SAME in str(status)


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

    @classmethod
    def device(cls, backend: str) -> str:
        """cpu, gpu or npu: the kind of device a backend computes on (speed-ups and rooflines compare like with
        like). Unknown backends (DNNL, OpenVINO, XNNPACK providers) run on the CPU."""
        return DEVICES.get(backend, "cpu")

    @classmethod
    def arithmetic(cls, backend: str, precision: str, options: dict, kind: str, cpu_flags: set[str]) -> dict:
        """What a cell really computes in: fp16_compute and int8_compute (yes / no) and compute_note (why).
        kind: float | weight-int8 | full-int8 (see ModelConfig.variant_kind)."""
        int8 = kind == "full-int8"
        return {"fp16_compute": "no", "int8_compute": "yes" if int8 else "no",
                "compute_note": "int8 model" if int8 else f"{precision} as requested"}

    @classmethod
    def identical_to(cls, precision: str, options: dict, kind: str, backend: str, cpu_flags: set[str]) -> Same | None:
        """The setting this one is bit-identical to on this machine (so a cell for it measures nothing new), or
        None."""
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
    precisions = tuple(MNN_PRECISIONS)
    # memory/power: the runtime config's modes. shape_mutable=False: the module keeps the shapes of its
    # first run (inputs of a new shape trigger a resize); rearrange=True: weights are laid out once at load.
    # upsample: where a decoder's full-size masks are made: "fp32" (the default) loads the decoder without its
    # in-graph resize and upsamples low_res_masks in fp32 numpy (mnn_runner.upsample_masks); "graph" runs it.
    mode_options = {"memory": ("low", "normal", "high"), "power": ("low", "normal", "high"),
                    "shape_mutable": (True, False), "rearrange": (True, False), "upsample": UPSAMPLE}

    def __init__(self, path: Path, threads: int = 1, precision: str = "normal", backend: str = "CPU",
                 memory: str = "normal", power: str = "normal", shape_mutable: bool = True,
                 rearrange: bool = False, component: str = "", upsample: str = "fp32", **_):
        """component "decoder": `upsample` applies (default fp32: masks made outside the graph); otherwise the
        model runs whole."""
        upsample = upsample if component == "decoder" else "graph"
        try:  # the same loader the targets run (stages/ondevice/mnn_runner.py)
            self.model = MnnModel(path, threads, precision, backend, memory, power, shape_mutable, rearrange, upsample)
        except RunnerError as e:
            raise PipelineError(str(e)) from None
        self.path, self.settings = self.model.path, self.model.settings
        self.module = self.model.module
        self.input_names, self.output_names = self.model.input_names, self.model.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(feeds)

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version("MNN")

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        return _mnn_backend_probe(backend)

    @classmethod
    def arithmetic(cls, backend: str, precision: str, options: dict, kind: str, cpu_flags: set[str]) -> dict:
        """MNN's CPU computes fp16 only at precision low on an ARMv8.2 CPU with fp16 arithmetic (asimdhp), bf16
        only with SME2; its GPU backends compute fp16 unless precision is high. A weight-quantized model
        computes int8 (dynamic: activations quantized at run time) only at memory low; otherwise its weights
        are expanded to float at load and only the file is smaller."""
        notes = []
        if backend != "CPU":
            fp16 = precision != "high"
            notes.append(f"GPU backend {'fp16' if fp16 else 'fp32'}")
        elif precision == "low":
            fp16 = "asimdhp" in cpu_flags
            notes.append("precision low in fp16" if fp16 else "precision low computes fp32 on this CPU (no fp16 arithmetic)")
        elif precision == "Low_BF16":
            fp16 = False
            notes.append("bf16" if "sme2" in cpu_flags else "Low_BF16 computes fp32 on this CPU (MNN's bf16 kernels need SME2)")
        else:
            fp16 = False
            notes.append(f"precision {precision}: fp32")
        memory = options.get("memory", "normal")
        if kind == "full-int8":
            int8 = True
            notes.append("full int8 model")
        elif kind == "weight-int8":
            int8 = memory == "low"
            notes.append("dynamic int8 (memory low)" if int8 else "int8 weights expanded to float at load (memory "
                         f"{memory})")
        else:
            int8 = False
        return {"fp16_compute": "yes" if fp16 else "no", "int8_compute": "yes" if int8 else "no",
                "compute_note": "; ".join(notes)}

    @classmethod
    def identical_to(cls, precision: str, options: dict, kind: str, backend: str, cpu_flags: set[str]) -> Same | None:
        """On a CPU without fp16 arithmetic, precision low computes exactly what normal does (measured: outputs
        bit-identical); Low_BF16 likewise without SME2. On such a CPU (x86) memory low on a float model computes
        what memory normal does (measured on vit_t's fp32, fp16 and fp32-static encoders: bit-identical); it
        changes the arithmetic of weight-quantized models only (dynamic int8)."""
        if backend != "CPU":
            return None
        if precision == "low" and "asimdhp" not in cpu_flags:
            return Same("normal", options, "precision low computes exactly what precision normal does")
        if precision == "Low_BF16" and "sme2" not in cpu_flags:
            return Same("normal", options, "precision Low_BF16 computes exactly what precision normal does")
        if options.get("memory") == "low" and kind == "float" and "asimdhp" not in cpu_flags:
            return Same(precision, {k: v for k, v in options.items() if k != "memory"},
                        "memory low computes exactly what memory normal does for a float model")
        return None


class TorchRuntime(Runtime):
    """PyTorch eager, the reference: `path` is the model config YAML; the model is built as the pipeline builds it."""

    name = "torch"
    backends = ("cpu", "cuda")

    def __init__(self, path: Path, threads: int = 1, precision: str = "fp32", backend: str = "cpu",
                 component: str = "encoder", root: str = ".", **_):
        import torch

        from stages.config import load_model_config
        from stages.export_decoder import INPUTS, OUTPUTS, onnx_decoder
        from stages.sam.models import build_model

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

        from stages.core.isolate import run_isolated

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

