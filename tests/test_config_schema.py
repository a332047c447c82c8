"""The pydantic config schemas keep the hand-written checker's rules: strict scalars, numbers as list-item
strings, the builder list, and stage-param values (lock files stay valid)."""

from __future__ import annotations

import pickle

import pytest

from conftest import write_config
from stages.config import (
    BUILDER_NAMES,
    BenchConfig,
    QuantVariant,
    error_text,
    get_param,
    load_model_config,
    load_sweep,
)
from stages.core.errors import ConfigError


def test_builder_names_are_the_builders():
    from stages.sam.models import BUILDERS

    assert list(BUILDER_NAMES) == list(BUILDERS)


@pytest.mark.parametrize("key,value,needle", [
    ("export.opset", True, "export.opset: expected an integer, got bool True"),
    ("export.opset", 17.0, "export.opset: expected an integer, got float 17.0"),
    ("simplify.check_atol", "1", "simplify.check_atol: expected a number, got str '1'"),
    ("simplify.onnxsim_optimize", 1, "simplify.onnxsim_optimize: expected true or false, got int 1"),
    ("checkpoint", 5, "checkpoint: expected str | None, got int 5"),
    ("convert", 5, "convert: expected a mapping of variants, extra_args, timeout_s, got int"),
    ("source", "x", "unknown key 'source'; allowed keys here: name, builder,"),
    ("parity.thresholds", {"fp32": {"cosin": 1}}, "unknown key 'parity.thresholds.fp32.cosin'; allowed keys here: cosine"),
])
def test_strict_types_and_keys(tmp_path, key, value, needle):
    with pytest.raises(ConfigError) as e:
        load_model_config(str(write_config(tmp_path / "c.yaml", **{key: value})))
    assert needle in str(e.value)


def test_numbers_in_flag_lists_become_strings_and_floats_widen(tmp_path):
    cfg = load_model_config(str(write_config(tmp_path / "c.yaml", **{
        "convert.variants": {"fp32": [], "w": ["--weightQuantBits", 8]}, "simplify.check_atol": 1})))
    assert cfg.convert.variants["w"] == ["--weightQuantBits", "8"]
    assert get_param(cfg, "simplify.check_atol") == 1.0 and isinstance(cfg.simplify.check_atol, float)
    assert "source" not in get_param(cfg, "quantize") and pickle.loads(pickle.dumps(cfg)) == cfg


def test_sweep_errors_and_direct_construction(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text('{"threads": [1, "x"]}')
    with pytest.raises(ConfigError, match=r"threads: expected list\[int\] \| str, got list \[1, 'x'\]"):
        load_sweep(str(path))
    assert pickle.loads(pickle.dumps(load_sweep("default"))).timing == load_sweep("default").timing
    with pytest.raises(ValueError) as e:
        BenchConfig("default", "astronaut", ["arm64"])
    assert error_text(e.value, BenchConfig).startswith("bench.targets[0]: 'arm64' is emulated")
    assert QuantVariant("onnxruntime", "static").format == "onnx"
