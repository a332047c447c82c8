"""Latency sweeps (configs/sweeps/*.yaml): which runtimes, variants, precisions, thread counts and workloads
the bench times, and how long."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from stages.config.loading import CONFIG_DIR, load_typed, read_yaml
from stages.config.schema import check_choice, schema
from stages.core.errors import ConfigError
from stages.core.names import RAW_ONNX, SIM_ONNX
from stages.ondevice.timing import StopRule

COMPONENTS = ("encoder", "decoder", "e2e")


@schema
class DecoderWorkload:
    points: list[int] = field(default_factory=lambda: [1, 5])
    out_sizes: list[list[int]] = field(default_factory=lambda: [[1200, 1800]])  # orig_im_size (h, w)

    def __post_init__(self) -> None:
        if not self.points or any(p < 1 for p in self.points):
            raise ValueError(f"decoder.points must be counts >= 1, got {self.points}")
        if not self.out_sizes or any(len(s) != 2 or min(s) < 1 for s in self.out_sizes):
            raise ValueError(f"decoder.out_sizes must be [height, width] pairs, got {self.out_sizes}")


@schema
class RuntimeSweep:
    backends: list[str]
    variants: list[str]  # torch: fp32; onnxruntime: onnx, onnx-sim; mnn: convert variants
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    # named sets of load/run options, each timed as its own cell (e.g. MNN's fixed-shape module loading,
    # memory and power modes); "default" is the runtime's own defaults
    modes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})


@schema
class PairedComparison:
    """Two variants of one component timed in the same process, calls interleaved (a b, b a, ...), in `processes`
    fresh processes: a difference far smaller than the spread between processes shows (MNN's 2-thread decoder
    here is fast or about 2x slower by process and phase; the two calls of a pair share the phase)."""

    component: str
    runtime: str
    a: str  # variant names, as in runtimes.<runtime>.variants
    b: str
    mode: str = "default"  # a mode of runtimes.<runtime>.modes, for both sides
    calls: int = 20  # timed calls per side, per workload, per process (even: each side first in half the pairs)
    # b's runtime when it is another (MNN against onnxruntime on the same inputs): its first backend and precision
    # in the sweep, b_mode of its modes; None: both sides are `runtime`
    b_runtime: str | None = None
    b_mode: str = "default"

    def side(self, which: str) -> tuple[str, str, str]:
        """(runtime, variant, mode) of side a or b."""
        if which == "a":
            return self.runtime, self.a, self.mode
        return (self.b_runtime, self.b, self.b_mode) if self.b_runtime else (self.runtime, self.b, self.mode)


@schema
class RooflineConfig:
    matmul_n: int = 2048
    min_seconds: float = 1.0


@schema
class SweepConfig:
    components: list[str] = field(default_factory=lambda: list(COMPONENTS))
    decoder: DecoderWorkload = field(default_factory=DecoderWorkload)
    e2e_points: int = 1
    runtimes: dict[str, RuntimeSweep] = field(default_factory=dict)
    threads: list[int] | str = "auto"  # a list, or "auto": 1, 2, 4, ... up to the machine's cores
    # the device-side StopRule (stages/ondevice, stdlib only), checked as a strict copy of the same name
    timing: StopRule = field(default_factory=StopRule)
    roofline: RooflineConfig = field(default_factory=RooflineConfig)
    timeout_s: int = 900  # one child process (one runtime, variant, precision, threads, component)
    # fresh processes per cell on the host, their timed runs pooled: MNN at 2 threads here is bimodal per process
    # (the same file's p50 65-91 ms in 8 processes), so one process says little about a difference under ~30%
    processes: int = 1
    # same-process A/B comparisons at the sweep's highest thread count, in `processes` processes: paired.csv
    paired: list[PairedComparison] = field(default_factory=list)
    # a setting that computes exactly what another does on this machine (MNN precision low on a CPU without
    # fp16 arithmetic is precision normal): skip (a row says so) or time it anyway
    identical_settings: Literal["skip", "run"] = "skip"
    # passing: a cell whose artifact fails parity (parity.csv, at its precision and memory mode) is not timed, one row
    # says so (the question is the fastest passing cell); all: every cell is timed
    candidates: Literal["all", "passing"] = "all"

    source: Path | None = field(default=None, init=False, compare=False)
    raw: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        from stages.runtimes import RUNTIMES

        for c in self.components:
            check_choice("components", c, COMPONENTS)
        for name, rs in self.runtimes.items():
            check_choice("runtimes", name, tuple(RUNTIMES))
            RUNTIMES[name].check_sweep(rs.backends, rs.precisions)
            for mode, opts in rs.modes.items():
                RUNTIMES[name].check_mode(f"runtimes.{name}.modes.{mode}", opts)
        if self.processes < 1:
            raise ValueError(f"processes: expected a count >= 1, got {self.processes}")
        for i, pc in enumerate(self.paired):
            check_choice(f"paired[{i}].component", pc.component, COMPONENTS)
            check_choice(f"paired[{i}].runtime", pc.runtime, tuple(self.runtimes))
            check_choice(f"paired[{i}].mode", pc.mode, tuple(self.runtimes[pc.runtime].modes))
            if pc.b_runtime is not None:
                check_choice(f"paired[{i}].b_runtime", pc.b_runtime, tuple(self.runtimes))
                check_choice(f"paired[{i}].b_mode", pc.b_mode, tuple(self.runtimes[pc.b_runtime].modes))
                if pc.b_runtime != pc.runtime:
                    for side, (rt, _, mode) in (("mode", pc.side("a")), ("b_mode", pc.side("b"))):
                        why = RUNTIMES[rt].shares_process_why(self.runtimes[rt].modes[mode])
                        if why:
                            raise ValueError(f"paired[{i}].{side} {mode!r} ({rt}): {why}")
            if pc.side("a") == pc.side("b") or pc.calls < 2 or pc.calls % 2:
                raise ValueError(f"paired[{i}]: a and b must differ and calls be even and >= 2, got a={pc.a!r} "
                                 f"b={pc.b!r} calls={pc.calls}")
        if isinstance(self.threads, str):
            check_choice("threads", self.threads, ("auto",))
        elif not self.threads or any(t < 1 for t in self.threads):
            raise ValueError(f"threads: each thread count must be >= 1, got {self.threads}")

    def thread_counts(self, cores: int | None = None) -> list[int]:
        """The sweep's thread counts; auto: 1, 2, 4, ... up to `cores` (default this machine's; a target's own)."""
        if isinstance(self.threads, list):
            return list(self.threads)
        import os

        cores = cores or os.cpu_count() or 1
        out, t = [], 1
        while t < cores:
            out.append(t)
            t *= 2
        return out + [cores]


def sweep_path(name: str, config_dir: Path = CONFIG_DIR) -> Path:
    """A sweep name under configs/sweeps/, or a path to a sweep YAML."""
    if Path(name).suffix in (".yaml", ".yml"):
        return Path(name) if Path(name).is_absolute() else config_dir.parent / name  # relative to the repository
    return config_dir / "sweeps" / f"{name}.yaml"


def load_sweep(name: str, config_dir: Path = CONFIG_DIR) -> SweepConfig:
    path = sweep_path(name, config_dir)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in (config_dir / "sweeps").glob("*.yaml")))
        raise ConfigError(f"unknown sweep {name!r}: no {path}. Known sweeps: {known}.")
    data = read_yaml(path)
    sweep = load_typed(SweepConfig, data, path)
    sweep.source, sweep.raw = path, data
    return sweep


ALL_VARIANTS = {"torch": ["fp32"], "onnxruntime": [RAW_ONNX, SIM_ONNX]}


def expand_variants(runtime: str, variants: list[str], convert_variants, quant: dict | None = None) -> list[str]:
    """`all` in a sweep's variants: every artifact of that runtime (for MNN, every convert.variants entry),
    and its full-int8 quantize.variants; `int8`: only those. A variant added to the model config is timed
    without editing the sweep."""
    int8 = [name for name, q in (quant or {}).items() if q.runtime == runtime]
    out: list[str] = []
    for v in variants:
        if v == "all":
            out.extend([*ALL_VARIANTS.get(runtime, list(convert_variants)), *int8])
        else:
            out.extend(int8 if v == "int8" else [v])
    return list(dict.fromkeys(out))
