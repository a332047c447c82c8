"""Typed configs: model configs (configs/models/*.yaml) and latency sweeps (configs/sweeps/*.yaml), checked when
loaded by pydantic schemas (stages/config/schema.py).

Every error names the file, the key and what was expected, so a user can fix it without reading code.
"""

from stages.config.loading import (
    CONFIG_DIR,
    _plain,
    get_param,
    known_models,
    load_model_config,
    load_typed,
    read_yaml,
    resolve_model_path,
)
from stages.config.messages import error_text
from stages.config.model import (
    BUILDER_NAMES,
    DEFAULT_VARIANTS,
    BenchConfig,
    ConvertConfig,
    ExportConfig,
    ModelConfig,
    ProfileConfig,
    SimplifyConfig,
)
from stages.config.parity import (
    DEFAULT_MNN_PRECISIONS,
    DEFAULT_PARITY_IMAGES,
    ParityConfig,
    TargetParityConfig,
    Thresholds,
    parse_cell_key,
)
from stages.config.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    QUANT_METHODS,
    CalibrationConfig,
    QuantizeConfig,
    QuantVariant,
)
from stages.config.schema import check_choice, schema
from stages.config.sweep import (
    DecoderWorkload,
    RooflineConfig,
    RuntimeSweep,
    SweepConfig,
    load_sweep,
    sweep_path,
)

__all__ = [
    "BUILDER_NAMES", "CONFIG_DIR", "DEFAULT_CALIBRATION_IMAGES", "DEFAULT_MNN_PRECISIONS", "DEFAULT_PARITY_IMAGES",
    "DEFAULT_VARIANTS", "QUANT_METHODS", "BenchConfig", "CalibrationConfig", "ConvertConfig", "DecoderWorkload",
    "ExportConfig", "ModelConfig", "ParityConfig", "ProfileConfig", "QuantVariant", "QuantizeConfig",
    "RooflineConfig", "RuntimeSweep", "SimplifyConfig", "SweepConfig", "TargetParityConfig", "Thresholds",
    "_plain", "check_choice", "error_text", "get_param", "known_models", "load_model_config", "load_sweep",
    "load_typed", "parse_cell_key", "read_yaml", "resolve_model_path", "schema", "sweep_path",
]
