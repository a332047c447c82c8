"""A model config (configs/models/*.yaml): its sections and the checks across them."""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path
from typing import Literal

from stages.config.parity import ParityConfig, TargetParityConfig
from stages.config.quantize import QuantizeConfig
from stages.config.schema import schema
from stages.core.errors import ConfigError
from stages.ondevice.mnn_settings import DEFAULT_UPSAMPLE

# stages.sam.models.BUILDERS' names (tests/test_config_schema.py keeps the two equal): that module imports torch,
# which checking a config must not
BUILDER_NAMES = ("mobile_sam.vit_t", "segment_anything.vit_b", "segment_anything.vit_l", "segment_anything.vit_h",
                 "tiny.vit_t", "tiny.vit_b")

MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # a model's name: one path component, no '..' start

# Converter flags per MNN variant. Weight-only int8 changes storage only (see PITFALLS.md).
DEFAULT_VARIANTS = {
    "fp32": [],
    "fp16": ["--fp16"],
    "wint8": ["--weightQuantBits", "8"],
}

# converter flags that change only how weights are stored (value count after each): MNN expands them to fp32 at load
STORAGE_FLAGS = {"--fp16": 0, "--weightQuantBits": 1, "--weightQuantBlock": 1, "--hqq": 0}


@schema
class ExportConfig:
    opset: int = 17
    # False: SamOnnxModel returns the single best mask; True: the three multimask outputs.
    multimask_output: bool = False
    # Sizes used for the decoder's example inputs when tracing (N stays dynamic).
    example_points: int = 2
    # ONNX weights past this many MB go to one `<name>.onnx.data` beside the model (ONNX external data):
    # protobuf cannot hold a file past 2 GB (vit_h's encoder is 2.5 GB). 0: always.
    external_data_mb: int = 1800


@schema
class SimplifyConfig:
    tool: Literal["onnxslim", "onnxsim", "none"] = "onnxslim"
    # onnxsim's optimizer fuses attention into com.microsoft.Attention, which MNN cannot convert.
    onnxsim_optimize: bool = False
    # Simplified vs raw ONNX on onnxruntime: both are fp32 graphs of the same math.
    check_atol: float = 1e-3
    check_rtol: float = 1e-3


@schema
class ConvertConfig:
    # variant name -> extra converter flags
    variants: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_VARIANTS.items()})
    # flags added to every conversion
    extra_args: list[str] = field(default_factory=list)
    timeout_s: int = 900

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("convert.variants is empty: expected at least one variant, e.g. fp32: []")
        if self.timeout_s <= 0:
            raise ValueError(f"convert.timeout_s must be > 0, got {self.timeout_s}")
        from stages.runtimes.onnx_rewrites import split_flags

        for name, flags in self.variants.items():  # `--rewrite NAME` is ours (an ONNX rewrite), the rest MNN's
            split_flags(flags, f"convert.variants.{name}")


@schema
class BenchConfig:
    sweep: str = "default"  # configs/sweeps/<sweep>.yaml, or a path to one
    image: str = "astronaut"  # the photo timed (bundled name or file)
    # where the cells are timed: host (every runtime) and ssh://[user@]host[:port] devices (their MNN cells, all
    # targets in parallel, each target's cells one at a time). `make bench TARGET="host ssh://pi@pi.local"`
    targets: list[str] = field(default_factory=lambda: ["host"])

    def __post_init__(self) -> None:
        from stages.runtimes.targets import parse_target

        if not self.targets:
            raise ValueError("bench.targets: name at least one target (host, ssh://[user@]host[:port])")
        names = []
        for i, t in enumerate(self.targets):
            try:
                target = parse_target(t, f"bench.targets[{i}]")
            except ConfigError as e:  # raised again with the file's name by the loader
                raise ValueError(str(e)) from None
            if target.emulated:
                raise ValueError(f"bench.targets[{i}]: {t!r} is emulated: its times are not latencies (use it in "
                                 f"targets: for parity, `make arm`)")
            if target.name in names:  # rows are keyed by the name (ssh://user@host:port, options aside)
                raise ValueError(f"bench.targets[{i}]: {t!r} names target {target.name} twice")
            names.append(target.name)


@schema
class ProfileConfig:
    """Per-op time profile of the MNN and onnxruntime artifacts (stages/profile.py)."""

    variants: list[str] = field(default_factory=lambda: ["fp32"])  # MNN variants profiled; "all": every one
    threads: int = 2
    runs: int = 3  # profiled runs after one warm-up; per-op times are the median over runs
    decoder_points: int = 1
    decoder_out_size: list[int] = field(default_factory=lambda: [1200, 1800])
    # MNN's decoder as MnnRuntime runs it by default: "fp32" profiles the graph cut at low_res_masks and times
    # the numpy upsample beside it; "graph" profiles the whole graph, in-graph resize included
    decoder_upsample: Literal["fp32", "graph"] = DEFAULT_UPSAMPLE
    timeout_s: int = 900

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 1 or self.decoder_points < 1:
            raise ValueError("profile.threads, profile.runs and profile.decoder_points must be >= 1")
        if len(self.decoder_out_size) != 2 or min(self.decoder_out_size) < 1:
            raise ValueError(f"profile.decoder_out_size: expected [height, width], got {self.decoder_out_size}")


@schema
class ModelConfig:
    name: str
    # family.arch: mobile_sam.vit_t, segment_anything.vit_b, ... or tiny.vit_t / tiny.vit_b for tests
    builder: Literal[BUILDER_NAMES]
    checkpoint: str | None = None
    require_checkpoint: bool = False
    seed: int = 0
    export: ExportConfig = field(default_factory=ExportConfig)
    simplify: SimplifyConfig = field(default_factory=SimplifyConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    # name -> MNN cells checked on a target as it computes them (the target_parity stage; `make arm`)
    targets: dict[str, TargetParityConfig] = field(default_factory=dict)

    # where it was loaded from (set by the loader, not a YAML key)
    source: Path | None = field(default=None, init=False, compare=False)
    raw: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(MODEL_NAME, self.name):  # it names build/NAME and reports/NAME
            raise ValueError(f"name: {self.name!r} is not a plain model name: expected letters, digits, '.', "
                             "'_' or '-', starting with a letter or digit (it names build/NAME and reports/NAME)")
        clash = set(self.quantize.variants) & set(self.convert.variants)
        if clash:
            raise ValueError(f"quantize.variants: {sorted(clash)[0]!r} is also a convert.variants name; "
                             "expected distinct names (both become artifacts in parity.csv and latency.csv)")
        if "fp32" not in self.convert.variants and any(q.runtime == "mnn" for q in self.quantize.variants.values()):
            raise ValueError("quantize.variants: MNN's quantizer starts from the fp32 MNN model, but "
                             "convert.variants has no 'fp32' entry")

    def variant_kind(self, variant: str) -> str:
        """What an artifact stores: full-int8 (a quantize variant), weight-int8 (--weightQuantBits), or float."""
        if variant in self.quantize.variants:
            return "full-int8"
        return "weight-int8" if "--weightQuantBits" in self.convert.variants.get(variant, []) else "float"

    def float_twin(self, variant: str) -> str | None:
        """The convert variant whose file holds this one's graph with fp32 weights, when this one differs from it only
        in how the weights are stored (--fp16, --weightQuantBits/--weightQuantBlock/--hqq): MNN expands such weights
        to fp32 at load (at memory normal), so both run the same graph with the same kernels. None otherwise."""
        flags, rest = list(self.convert.variants.get(variant, [])), []
        while flags:
            flag = flags.pop(0)
            if flag in STORAGE_FLAGS:
                del flags[:STORAGE_FLAGS[flag]]  # its value
            else:
                rest.append(flag)
        if rest == list(self.convert.variants.get(variant, [])):
            return None
        return next((name for name, f in self.convert.variants.items() if list(f) == rest and name != variant), None)

    def checkpoint_path(self, root: Path) -> Path | None:
        if not self.checkpoint:
            return None
        p = Path(self.checkpoint)
        return p if p.is_absolute() else root / p
