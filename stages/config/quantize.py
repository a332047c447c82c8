"""The quantize section of a model config: full-int8 variants made by a runtime's own quantizer, and their
calibration set."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from stages.config.schema import check_choice, schema

QUANT_METHODS = {"mnn": ("EMA", "KL", "ADMM"), "onnxruntime": ("dynamic", "static")}


@schema
class QuantVariant:
    """One full-int8 artifact: weights and activations in int8, made by a runtime's own quantizer."""

    runtime: Literal["mnn", "onnxruntime"] = "mnn"  # mnn: MNN's quantizer on the fp32 .mnn; onnxruntime: its quantizer on the .sim.onnx
    # mnn: EMA | KL | ADMM (feature_quantize_method); onnxruntime: dynamic (activation ranges at run time)
    # | static (ranges from the calibration set, QDQ format)
    method: str = "EMA"
    weight_method: Literal["MAX_ABS", "ADMM"] = "MAX_ABS"  # mnn: MAX_ABS | ADMM
    per_channel: bool = True  # onnxruntime static: per-channel weight scales
    skip_ops: list[str] = field(default_factory=list)  # op / node names left in float
    tier: str = "int8"  # parity.thresholds entry its rows are checked against

    def __post_init__(self) -> None:
        check_choice("method", self.method, QUANT_METHODS[self.runtime])

    @property
    def format(self) -> str:
        """File extension of the artifact."""
        return "mnn" if self.runtime == "mnn" else "onnx"

    def artifact(self, name: str) -> str:
        """Its name in parity.csv / latency.csv: mnn-<name> like the converted MNN variants, or <name>."""
        from stages.core.names import artifact_name

        return artifact_name(self.runtime, name)


# Photos for calibration: bundled with scikit-image and none of them a parity photo, so parity measures
# the quantized models on images they were not calibrated on.
DEFAULT_CALIBRATION_IMAGES = ["camera", "coins", "clock", "immunohistochemistry", "hubble_deep_field", "retina"]


@schema
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


@schema
class QuantizeConfig:
    """Full int8 (stages/quantize/): calibrated post-training quantization with MNN's and onnxruntime's tools.
    `variants: {}` makes none (parity and bench then have no int8 rows)."""

    variants: dict[str, QuantVariant] = field(default_factory=_default_quant_variants)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    threads: int = 2  # onnxruntime calibration and the embeddings of the decoder's calibration set
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        if self.threads < 1 or self.timeout_s <= 0:
            raise ValueError("threads must be >= 1 and timeout_s > 0")
