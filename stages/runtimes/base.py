"""The interface every runtime implements (see stages/runtimes/__init__.py), and the rules cells share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.status import Status

DEVICES = {"cuda": "gpu", "CUDAExecutionProvider": "gpu", "TensorrtExecutionProvider": "gpu", "ROCMExecutionProvider": "gpu",
           "CUDA": "gpu", "OpenCL": "gpu", "Vulkan": "gpu", "Metal": "gpu", "OpenGL": "gpu",
           "NN": "npu", "CoreMLExecutionProvider": "npu"}

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
    s = Status.read(status)
    return s is not None and s.is_skipped and SAME in s.reason


class Runtime:
    """Base: a loaded model with named inputs and outputs."""

    name = "base"
    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    cpu_backend = ""  # the backend that is the host's CPU (where parity checks; a row on another says so)
    fixed_precision: str | None = None  # the one precision parity checks this runtime at (None: each cell's own)
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def version(cls) -> str:
        raise NotImplementedError

    @classmethod
    def parity_precision(cls, precision: str) -> str:
        """The precision parity.csv names a cell of this runtime by, for a cell timed at `precision`."""
        return cls.fixed_precision or precision

    @classmethod
    def check_sweep(cls, backends: list[str], precisions: list[str]) -> None:
        """Reject backends or precisions this runtime has never heard of (a typo in a sweep file)."""
        for b in backends:
            if b not in cls.backends:
                raise ValueError(f"runtimes.{cls.name}.backends: {b!r} is not one of {', '.join(cls.backends)}")
        for p in precisions:
            if p not in cls.precisions:
                raise ValueError(f"runtimes.{cls.name}.precisions: {p!r} is not one of {', '.join(cls.precisions)}")

    # True: the model is built from the model config, which the caller loads and passes as `config=` (a runtime
    # loads no YAML itself: the config schema is a layer above); False: it is loaded from the file at `path`
    builds_from_config = False

    # load/run options a sweep mode may set: name -> allowed values, or a check returning what is wrong (None: ok)
    mode_options: dict[str, tuple | Callable[[object], str | None]] = {}

    @classmethod
    def check_mode(cls, where: str, opts: dict) -> None:
        """Reject a mode option this runtime does not have, or a value it would silently ignore."""
        for k, v in opts.items():
            if k not in cls.mode_options:
                known = ", ".join(cls.mode_options) or "none"
                raise ValueError(f"{where}: {k!r} is not a {cls.name} option (options: {known})")
            allowed = cls.mode_options[k]
            if callable(allowed):
                if why := allowed(v):
                    raise ValueError(f"{where}.{k}: {why}")
            elif v not in allowed:
                raise ValueError(f"{where}.{k}: {v!r} is not one of {', '.join(map(str, cls.mode_options[k]))}")

    @classmethod
    def shares_process_why(cls, opts: dict) -> str | None:
        """None when this runtime, loaded with mode options `opts`, leaves the cores free between its calls, so
        another runtime's calls alternated with it in one process (the bench's paired mode) are timed fairly;
        else why not."""
        return None

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
    def int8_kernels(cls, cpu_flags: set[str]) -> str:
        """Which int8 kernels this runtime computes with on a CPU with these flags, when that changes the result
        (two machines of different kernels are not comparable in int8 accuracy); "" when it does not."""
        return ""

    @classmethod
    def identical_to(cls, precision: str, options: dict, kind: str, backend: str, cpu_flags: set[str]) -> Same | None:
        """The setting this one is bit-identical to on this machine (so a cell for it measures nothing new), or
        None."""
        return None

    @classmethod
    def profile(cls, path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int, scratch: Path) -> OpTimes:
        """Time of each op type over `runs` runs after one warm-up, with this runtime's own profiler (the profile
        stage). `scratch`: a path prefix for the profiler's files."""
        raise NotImplementedError(f"{cls.name} has no per-op profiler here")


@dataclass
class OpTimes:
    """What a runtime's profiler measured: per run, seconds per op type; per op type how many ops the graph has
    and their MFLOP (NaN where the runtime counts none); each run's wall time; the graph's op count."""

    per_run: list[dict[str, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    mflop: dict[str, float] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    graph_ops: int = 0

    def summary(self) -> dict:
        """The profile task's result: op types by median time (ms), their sum, the median wall time."""
        ops = [{"type": k, "count": self.counts[k], "mflop": self.mflop[k],
                "ms": float(np.median([r.get(k, 0.0) for r in self.per_run])) * 1000} for k in self.counts]
        ops.sort(key=lambda o: -o["ms"])
        return {"ops": ops, "ops_ms": sum(o["ms"] for o in ops), "wall_ms": float(np.median(self.walls)) * 1000,
                "graph_ops": self.graph_ops}
