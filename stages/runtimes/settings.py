"""How one cell runs, as one typed value: RunSettings. Built once (from a sweep cell, or a parity cell) and passed
unchanged host -> child process -> runtime, or -> the MNN runner on a target; to_json / from_json are its one
wire form, and each setting's default is defined once (the runtime's own, or DEFAULT_UPSAMPLE beside the runner)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from stages.ondevice.mnn_settings import DEFAULT_UPSAMPLE
from stages.sam.spec import parts


@dataclass(frozen=True)
class RunSettings:
    runtime: str  # a key of stages.runtimes.RUNTIMES
    backend: str  # the runtime's backend (MNN's CPU, onnxruntime's CPUExecutionProvider, ...)
    precision: str
    threads: int
    # the mode's options (Runtime.mode_options: MNN's memory, power, loading, hints, upsample; onnxruntime's spinning)
    options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunSettings:
        return cls(**data)

    def load_kwargs(self) -> dict:
        """The runtime class's keyword arguments (a Runtime subclass takes threads, precision, backend and its
        mode options)."""
        return {"threads": self.threads, "precision": self.precision, "backend": self.backend, **self.options}

    def masks_made(self, component: str) -> str:
        """Where a row's full-size masks come from: "fp32" (upsampled in numpy, MNN's default), "graph" (the
        decoder's own resize), "" for a component that makes none (the encoder)."""
        if not any(s.makes_masks for s in parts(component)):
            return ""
        return self.options.get("upsample", DEFAULT_UPSAMPLE) if self.runtime == "mnn" else "graph"

    def runner_settings(self, component: str) -> dict:
        """The MNN runner's settings (stages/ondevice/mnn_runner.py, MnnModel's keywords) for `component`."""
        out = {k: v for k, v in self.load_kwargs().items() if k != "upsample"}
        if made := self.masks_made(component):
            out["upsample"] = made
        return out
