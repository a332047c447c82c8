"""Bad input gets one clear paragraph naming the file, key or value, a non-zero exit and no traceback."""

from __future__ import annotations

import pytest

from conftest import TINY, write_config
from stages.__main__ import main
from stages.config import known_models, load_model_config
from stages.core.errors import ConfigError


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("name", ["vit_t", "vit_b", "vit_l", "vit_h"])
def test_shipped_model_configs_load(name):
    cfg = load_model_config(name)
    assert cfg.name == name and cfg.export.opset == 17
    assert {"fp32", "fp16", "wint8"} <= set(cfg.convert.variants)


def test_unknown_model_lists_known_ones(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--model", "vit_x", "--root", str(tmp_path))
    assert code == 2
    assert "unknown MODEL 'vit_x'" in err
    for name in known_models():
        assert name in err


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbuilder: tiny.vit_t\nexport:\n  opset: [17\n  multimask_output: false\n")
    code, err = run_cli(capsys, "run", "--model", str(bad), "--root", str(tmp_path))
    assert code == 2
    assert str(bad) in err and "malformed YAML at line" in err


def test_unknown_key_is_named_with_the_allowed_ones(tmp_path):
    path = write_config(tmp_path / "c.yaml", **{"export.opsett": 17})
    with pytest.raises(ConfigError, match=r"unknown key 'export\.opsett'.*allowed keys here: opset"):
        load_model_config(str(path))


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write_config(tmp_path / "c.yaml", **{"export.opset": "seventeen"})
    with pytest.raises(ConfigError, match=r"export\.opset: expected an integer, got str 'seventeen'") as e:
        load_model_config(str(path))
    assert str(path) in str(e.value)


def test_unknown_choice_lists_allowed_values(tmp_path):
    path = write_config(tmp_path / "c.yaml", **{"simplify.tool": "onnx-sim"})
    with pytest.raises(ConfigError, match=r"simplify\.tool: 'onnx-sim' is not one of onnxslim, onnxsim, none"):
        load_model_config(str(path))
    path = write_config(tmp_path / "c.yaml", **{"profile.decoder_upsample": "numpy"})
    with pytest.raises(ConfigError, match=r"profile\.decoder_upsample: 'numpy' is not one of fp32, graph"):
        load_model_config(str(path))


def test_unknown_builder_lists_builders(tmp_path):
    path = write_config(tmp_path / "c.yaml", builder="mobile_sam.vit_z")
    with pytest.raises(ConfigError, match=r"builder: 'mobile_sam.vit_z' is not one of .*mobile_sam.vit_t"):
        load_model_config(str(path))


def test_required_checkpoint_missing_is_an_error(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--model", str(TINY), "--root", str(tmp_path), "--require-checkpoint")
    assert code == 2
    assert "weights/tiny_vit_t.pt" in err and "require_checkpoint" in err
    assert not (tmp_path / "reports").exists()  # nothing ran


def test_required_checkpoint_in_config(capsys, tmp_path):
    path = write_config(tmp_path / "c.yaml", require_checkpoint=True)
    code, err = run_cli(capsys, "run", "--model", str(path), "--root", str(tmp_path))
    assert code == 2 and "is required" in err


def test_missing_stage_input_names_it_and_its_maker(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--model", str(TINY), "--root", str(tmp_path), "simplify", "--single")
    assert code == 2
    assert "stage 'simplify' needs input" in err and "encoder.onnx" in err
    assert "made by stage 'export_encoder'" in err


def test_unknown_stage_is_named(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--model", str(TINY), "--root", str(tmp_path), "simplfy")
    assert code == 2 and "unknown stage 'simplfy'" in err and "simplify" in err


def test_unknown_rewrite_in_a_variant_is_named_with_the_file(tmp_path):
    path = write_config(tmp_path / "c.yaml", **{"convert.variants": {"fp32": [], "fast": ["--rewrite", "nope"]}})
    with pytest.raises(ConfigError, match=r"convert.variants.fast: --rewrite 'nope' is not a rewrite") as e:
        load_model_config(str(path))
    assert str(path) in str(e.value)


def test_yaml_merge_keys_are_read_and_a_key_given_twice_is_not(tmp_path):
    from stages.config import read_yaml

    ok = tmp_path / "ok.yaml"
    ok.write_text("base: &b {threads: 1, runs: 3}\nx: {<<: *b, threads: 2}\n")
    assert read_yaml(ok)["x"] == {"threads": 2, "runs": 3}
    twice = tmp_path / "twice.yaml"
    twice.write_text("x: {threads: 1, threads: 2}\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: malformed YAML at line 1.*duplicate key 'threads'"):
        read_yaml(twice)
