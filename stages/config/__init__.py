"""Typed model configs (configs/models/*.yaml), checked when loaded.

Every error names the file, the key and what was expected, so a user can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.core.errors import ConfigError
from stages.ondevice.timing import StopRule

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# Converter flags per MNN variant. Weight-only int8 changes storage only (see PITFALLS.md).
DEFAULT_VARIANTS = {
    "fp32": [],
    "fp16": ["--fp16"],
    "wint8": ["--weightQuantBits", "8"],
}


@dataclass
class ExportConfig:
    opset: int = 17
    # False: SamOnnxModel returns the single best mask; True: the three multimask outputs.
    multimask_output: bool = False
    # Sizes used for the decoder's example inputs when tracing (N stays dynamic).
    example_points: int = 2
    # ONNX weights past this many MB go to one `<name>.onnx.data` beside the model (ONNX external data):
    # protobuf cannot hold a file past 2 GB (vit_h's encoder is 2.5 GB). 0: always.
    external_data_mb: int = 1800


@dataclass
class SimplifyConfig:
    tool: str = "onnxslim"  # onnxslim | onnxsim | none
    # onnxsim's optimizer fuses attention into com.microsoft.Attention, which MNN cannot convert.
    onnxsim_optimize: bool = False
    # Simplified vs raw ONNX on onnxruntime: both are fp32 graphs of the same math.
    check_atol: float = 1e-3
    check_rtol: float = 1e-3

    def __post_init__(self) -> None:
        _check_choice("simplify.tool", self.tool, ("onnxslim", "onnxsim", "none"))


@dataclass
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


@dataclass
class Thresholds:
    """Pass/fail limits for one precision tier. Encoder: embeddings; decoder: masks from the same
    (PyTorch) embeddings; e2e: the artifact's own encoder feeding its own decoder."""

    cosine: float = 0.9999  # encoder embeddings cosine similarity, at least
    rel_l2: float = 0.01  # encoder ||a-b|| / ||b||, at most
    mask_iou: float = 0.99  # decoder masks thresholded at 0, IoU at least
    # a mask logit is "within tolerance" when |a-b| <= logit_rtol * max|reference logits|: relative, since
    # logit scales differ by orders of magnitude between trained and seeded random weights
    logit_rtol: float = 0.01
    logits_within_tol: float = 0.99  # fraction of mask logits within tolerance, at least
    iou_pred_abs: float = 0.01  # |delta iou_predictions|, at most
    e2e_mask_iou: float = 0.99  # end-to-end mask IoU, at least
    why: str = ""  # where the numbers come from
    # false: a target, not a gate. Rows are still checked (pass=False, failed_checks say by how much) and
    # such artifacts are never recommended, but they do not fail the parity stage or `make all`.
    gate: bool = True


DEFAULT_PARITY_IMAGES = ["astronaut", "coffee", "chelsea", "rocket"]


@dataclass
class TargetParityConfig:
    """Parity of MNN cells computed on a target (stages/runtimes/targets.py): the target_parity stage, `make arm`,
    held to parity.thresholds.
    An emulated ARM64 encoder run takes minutes (vit_t: about 100 s at precision normal, 350 s at low), so
    the cells, photos and prompts are a chosen few. The same cells also run on the host, for comparison."""

    target: str = "arm64"  # host | arm64 | arm64:<cpu> (QEMU CPU model; max has fp16, sdot, i8mm) | ssh://[user@]host[:port]
    # parity cells as parity.csv names them: mnn-<variant>@<precision>[~memory-<mode>]
    cells: list[str] = field(default_factory=lambda: ["mnn-fp32@normal", "mnn-fp32@low"])
    images: list[str] = field(default_factory=lambda: ["astronaut"])
    prompts: list[str] = field(default_factory=lambda: ["one_point", "box"])
    threads: int = 2
    timeout_s: int = 3600  # per runner call (one component of one cell)

    def __post_init__(self) -> None:
        from stages.runtimes.targets import parse_target
        from stages.sam.samples import PROMPTS

        parse_target(self.target, "targets.*.target")
        if not self.cells or not self.images or not self.prompts:
            raise ValueError("targets.*: cells, images and prompts must each list at least one entry")
        for c in self.cells:
            parse_cell_key(c, "targets.*.cells")
        for p in self.prompts:
            _check_choice("targets.*.prompts", p, PROMPTS)
        if "mask_feedback" in self.prompts and "one_point" not in self.prompts[: self.prompts.index("mask_feedback")]:
            raise ValueError("targets.*.prompts: mask_feedback feeds back one_point's mask: list one_point before it")
        if self.threads <= 0 or self.timeout_s <= 0:
            raise ValueError("targets.*: threads and timeout_s must be > 0")


def parse_cell_key(key: str, where: str) -> tuple[str, str, str]:
    """'mnn-wint8@low~memory-low' -> ('wint8', 'low', 'low'): variant, precision, memory."""
    from stages.runtimes import MNN_PRECISIONS

    head, _, memory = key.partition("~memory-")
    artifact, _, precision = head.partition("@")
    if not artifact.startswith("mnn-") or not precision:
        raise ValueError(f"{where}: {key!r} is not an MNN parity cell; expected mnn-<variant>@<precision>"
                         f"[~memory-<mode>], e.g. mnn-fp32@low or mnn-wint8@low~memory-low")
    _check_choice(where, precision, MNN_PRECISIONS)
    _check_choice(where, memory or "normal", ("normal", "low", "high"))
    return artifact[4:], precision, memory or "normal"
DEFAULT_MNN_PRECISIONS = {v: ["normal", "high", "low", "Low_BF16"] for v in ("fp32", "fp16", "wint8")}


@dataclass
class ParityConfig:
    # skimage photo names, image files or folders of images
    images: list[str] = field(default_factory=lambda: list(DEFAULT_PARITY_IMAGES))
    threads: int = 2
    # MNN runtime precisions each converted variant is checked under
    mnn_precisions: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_MNN_PRECISIONS.items()})
    # MNN memory modes each variant is checked under (default: normal). memory low on a weight-quantized
    # variant computes with int8 activations (MNN's dynamic quantization): a different computation, so a cell
    # of its own, `mnn-<variant>@<precision>~memory-low`
    mnn_memory: dict[str, list[str]] = field(default_factory=dict)
    # tier -> limits. A cell's tier is "variant@precision" if listed, else its variant (fp32 for ONNX).
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: {"fp32": Thresholds()})
    timeout_s: int = 1800
    # a setting that computes exactly what another does on this machine (MNN precision low on a CPU without
    # fp16 arithmetic is precision normal): skip (a row says so) or run it anyway
    identical_settings: str = "skip"

    def __post_init__(self) -> None:
        from stages.runtimes import MNN_PRECISIONS

        _check_choice("parity.identical_settings", self.identical_settings, ("skip", "run"))
        if self.threads <= 0:
            raise ValueError(f"parity.threads must be >= 1, got {self.threads}")
        if not self.images:
            raise ValueError("parity.images is empty: expected photo names, image files or folders")
        for variant, precs in self.mnn_precisions.items():
            for p in precs:
                _check_choice(f"parity.mnn_precisions.{variant}", p, MNN_PRECISIONS)
        for variant, modes in self.mnn_memory.items():
            for m in modes:
                _check_choice(f"parity.mnn_memory.{variant}", m, ("normal", "low", "high"))
        if "fp32" not in self.thresholds:
            raise ValueError("parity.thresholds needs an 'fp32' entry (used for ONNX and MNN fp32 cells)")

    def tier(self, variant: str, precision: str, memory: str = "normal") -> str:
        """The thresholds entry a cell is held to: the most specific of variant@precision~memory-M,
        variant~memory-M (memory other than normal), variant@precision, variant, each also for the variant's
        family (its name up to the first '-': wint4-b64 -> wint4); else fp32."""
        keys = []
        for v in dict.fromkeys([variant, variant.split("-")[0]]):
            if memory != "normal":
                keys += [f"{v}@{precision}~memory-{memory}", f"{v}~memory-{memory}"]
            keys += [f"{v}@{precision}", v]
        return next((k for k in keys if k in self.thresholds), "fp32")


@dataclass
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


@dataclass
class ProfileConfig:
    """Per-op time profile of the MNN and onnxruntime artifacts (stages/profile.py)."""

    variants: list[str] = field(default_factory=lambda: ["fp32"])  # MNN variants profiled; "all": every one
    threads: int = 2
    runs: int = 3  # profiled runs after one warm-up; per-op times are the median over runs
    decoder_points: int = 1
    decoder_out_size: list[int] = field(default_factory=lambda: [1200, 1800])
    timeout_s: int = 900

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 1 or self.decoder_points < 1:
            raise ValueError("profile.threads, profile.runs and profile.decoder_points must be >= 1")
        if len(self.decoder_out_size) != 2 or min(self.decoder_out_size) < 1:
            raise ValueError(f"profile.decoder_out_size: expected [height, width], got {self.decoder_out_size}")


QUANT_METHODS = {"mnn": ("EMA", "KL", "ADMM"), "onnxruntime": ("dynamic", "static")}


@dataclass
class QuantVariant:
    """One full-int8 artifact: weights and activations in int8, made by a runtime's own quantizer."""

    runtime: str = "mnn"  # mnn: MNN's quantizer on the fp32 .mnn; onnxruntime: its quantizer on the .sim.onnx
    # mnn: EMA | KL | ADMM (feature_quantize_method); onnxruntime: dynamic (activation ranges at run time)
    # | static (ranges from the calibration set, QDQ format)
    method: str = "EMA"
    weight_method: str = "MAX_ABS"  # mnn: MAX_ABS | ADMM
    per_channel: bool = True  # onnxruntime static: per-channel weight scales
    skip_ops: list[str] = field(default_factory=list)  # op / node names left in float
    tier: str = "int8"  # parity.thresholds entry its rows are checked against

    def __post_init__(self) -> None:
        _check_choice("runtime", self.runtime, tuple(QUANT_METHODS))
        _check_choice("method", self.method, QUANT_METHODS[self.runtime])
        _check_choice("weight_method", self.weight_method, ("MAX_ABS", "ADMM"))

    @property
    def format(self) -> str:
        """File extension of the artifact."""
        return "mnn" if self.runtime == "mnn" else "onnx"

    def artifact(self, name: str) -> str:
        """Its name in parity.csv / latency.csv: mnn-<name> like the converted MNN variants, or <name>."""
        return f"mnn-{name}" if self.runtime == "mnn" else name


# Photos for calibration: bundled with scikit-image and none of them a parity photo, so parity measures
# the quantized models on images they were not calibrated on.
DEFAULT_CALIBRATION_IMAGES = ["camera", "coins", "clock", "immunohistochemistry", "hubble_deep_field", "retina"]


@dataclass
class CalibrationConfig:
    images: list[str] = field(default_factory=lambda: list(DEFAULT_CALIBRATION_IMAGES))
    prompts_per_image: int = 4  # decoder: sampled prompts per calibration image (points, boxes, mask feedback)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("images is empty: expected photo names, image files or folders")
        if self.prompts_per_image < 1:
            raise ValueError(f"prompts_per_image must be >= 1, got {self.prompts_per_image}")


def _default_quant_variants() -> dict[str, QuantVariant]:
    return {"int8": QuantVariant(), "ort-int8-dynamic": QuantVariant("onnxruntime", "dynamic"),
            "ort-int8-static": QuantVariant("onnxruntime", "static")}


@dataclass
class QuantizeConfig:
    """Full int8 (stages/quantize.py): calibrated post-training quantization with MNN's and onnxruntime's tools.
    `variants: {}` makes none (parity and bench then have no int8 rows)."""

    variants: dict[str, QuantVariant] = field(default_factory=_default_quant_variants)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    threads: int = 2  # onnxruntime calibration and the embeddings of the decoder's calibration set
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        if self.threads < 1 or self.timeout_s <= 0:
            raise ValueError("threads must be >= 1 and timeout_s > 0")


@dataclass
class ModelConfig:
    name: str
    # family.arch: mobile_sam.vit_t, segment_anything.vit_b, ... or tiny.vit_t / tiny.vit_b for tests
    builder: str
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

    # where it was loaded from (not a YAML key)
    source: Path | None = field(default=None, compare=False)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        from stages.sam.models import BUILDERS  # late: models imports torch

        _check_choice("builder", self.builder, tuple(BUILDERS))
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

    def checkpoint_path(self, root: Path) -> Path | None:
        if not self.checkpoint:
            return None
        p = Path(self.checkpoint)
        return p if p.is_absolute() else root / p


_NOT_YAML_KEYS = {"source", "raw"}


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float). Raise ConfigError-ready ValueError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError:
                pass
        raise ValueError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping of {', '.join(_fields(tp))}, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("]"):
            return str(value)  # converter flags like ["--weightQuantBits", 8]
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_YAML_KEYS]


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    allowed = _fields(cls)
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ValueError(f"unknown key '{prefix}{unknown[0]}'; allowed keys here: {', '.join(allowed)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in _NOT_YAML_KEYS or f.name not in data:
            if f.name not in _NOT_YAML_KEYS and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"missing required key '{prefix}{f.name}'")
            continue
        kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
    try:
        return cls(**kwargs)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(prefix) or not prefix else f"{prefix}{msg}") from None


def read_yaml(path: Path) -> Any:
    """safe_load a YAML file; a syntax error names the file and line."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


def known_models(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (config_dir / "models").glob("*.yaml"))


def resolve_model_path(model: str, config_dir: Path = CONFIG_DIR) -> Path:
    """MODEL is a name under configs/models/ or a path to a YAML file."""
    p = Path(model)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"model config {p} does not exist")
        return p
    path = config_dir / "models" / f"{model}.yaml"
    if not path.exists():
        known = ", ".join(known_models(config_dir)) or "(none)"
        raise ConfigError(f"unknown MODEL {model!r}: no {path}. Known models: {known}.")
    return path


def load_model_config(model: str, config_dir: Path = CONFIG_DIR) -> ModelConfig:
    path = resolve_model_path(model, config_dir)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = _build(ModelConfig, data)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg.source = path
    cfg.raw = data
    return cfg


def load_typed(cls: type, data: Any, source: Path, prefix: str = "") -> Any:
    """Build any config dataclass from YAML data, with errors naming `source`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    try:
        return _build(cls, data, prefix)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def get_param(cfg: ModelConfig, dotted: str) -> Any:
    """Value of a dotted key (export.opset) in the effective config, for hashing stage params."""
    obj: Any = cfg
    for part in dotted.split("."):
        if dataclasses.is_dataclass(obj):
            if part not in _fields(type(obj)):
                raise KeyError(dotted)
            obj = getattr(obj, part)
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            raise KeyError(dotted)
    return _plain(obj)


def _plain(obj: Any) -> Any:
    """Config values as plain data (dicts, lists, scalars): what the lock file records and hashes."""
    if dataclasses.is_dataclass(obj):
        return {k: v for k, v in dataclasses.asdict(obj).items() if k not in _NOT_YAML_KEYS}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- sweeps (configs/sweeps/*.yaml)


@dataclass
class DecoderWorkload:
    points: list[int] = field(default_factory=lambda: [1, 5])
    out_sizes: list[list[int]] = field(default_factory=lambda: [[1200, 1800]])  # orig_im_size (h, w)

    def __post_init__(self) -> None:
        if not self.points or any(p < 1 for p in self.points):
            raise ValueError(f"decoder.points must be counts >= 1, got {self.points}")
        if not self.out_sizes or any(len(s) != 2 or min(s) < 1 for s in self.out_sizes):
            raise ValueError(f"decoder.out_sizes must be [height, width] pairs, got {self.out_sizes}")


@dataclass
class RuntimeSweep:
    backends: list[str]
    variants: list[str]  # torch: fp32; onnxruntime: onnx, onnx-sim; mnn: convert variants
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    # named sets of load/run options, each timed as its own cell (e.g. MNN's fixed-shape module loading,
    # memory and power modes); "default" is the runtime's own defaults
    modes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})


@dataclass
class RooflineConfig:
    matmul_n: int = 2048
    min_seconds: float = 1.0


@dataclass
class SweepConfig:
    components: list[str] = field(default_factory=lambda: ["encoder", "decoder", "e2e"])
    decoder: DecoderWorkload = field(default_factory=DecoderWorkload)
    e2e_points: int = 1
    runtimes: dict[str, RuntimeSweep] = field(default_factory=dict)
    threads: list[int] | str = "auto"  # a list, or "auto": 1, 2, 4, ... up to the machine's cores
    timing: StopRule = field(default_factory=StopRule)
    roofline: RooflineConfig = field(default_factory=RooflineConfig)
    timeout_s: int = 900  # one child process (one runtime, variant, precision, threads, component)
    # a setting that computes exactly what another does on this machine (MNN precision low on a CPU without
    # fp16 arithmetic is precision normal): skip (a row says so) or time it anyway
    identical_settings: str = "skip"

    source: Path | None = field(default=None, compare=False)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        from stages.runtimes import RUNTIMES

        _check_choice("identical_settings", self.identical_settings, ("skip", "run"))
        for c in self.components:
            _check_choice("components", c, ("encoder", "decoder", "e2e"))
        for name, rs in self.runtimes.items():
            _check_choice("runtimes", name, tuple(RUNTIMES))
            RUNTIMES[name].check_sweep(rs.backends, rs.precisions)
            for mode, opts in rs.modes.items():
                RUNTIMES[name].check_mode(f"runtimes.{name}.modes.{mode}", opts)
        if isinstance(self.threads, str):
            _check_choice("threads", self.threads, ("auto",))
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
