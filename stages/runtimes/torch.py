"""PyTorch eager behind the Runtime interface: the reference every other runtime is compared to."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError
from stages.runtimes.base import Runtime


class TorchRuntime(Runtime):
    """PyTorch eager, the reference: the model is built as the pipeline builds it, from the model config (a
    ModelConfig, given as `config`: builds_from_config); `path` is that config's file and only names the model."""

    name = "torch"
    backends = ("cpu", "cuda")
    cpu_backend = "cpu"
    builds_from_config = True

    def __init__(self, path: Path, threads: int = 1, precision: str = "fp32", backend: str = "cpu",
                 component: str = "encoder", root: str = ".", config=None, **_):
        import torch

        from stages.sam.models import build_model
        from stages.sam.spec import SPECS

        if config is None:
            raise PipelineError(f"torch: no model config given for {path} (the caller loads it: builds_from_config)")
        why = self.unavailable(backend)
        if why:
            raise PipelineError(why)
        torch.set_num_threads(threads)
        cfg = config
        model, _ = build_model(cfg, Path(root))
        self.device = torch.device(backend)
        spec = SPECS[component]
        self.module = spec.module(model, cfg.export.multimask_output).to(self.device)
        self.input_names, self.output_names = spec.input_names, spec.output_names
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
