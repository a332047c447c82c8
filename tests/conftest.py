"""Shared fixtures: a tiny SAM (real modules, small widths) run through the real pipeline once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from stages.config import load_model_config
from stages.pipeline import run_pipeline

HERE = Path(__file__).resolve().parent
ROOT_DIR = HERE.parent
TINY = HERE / "configs" / "tiny_vit_t.yaml"


def write_config(path: Path, base: Path = TINY, **overrides) -> Path:
    """A copy of a model config with dotted keys overridden, e.g. {"export.opset": 16}."""
    data = yaml.safe_load(base.read_text())
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def statuses(results) -> dict[str, str]:
    return {r.stage: r.status for r in results}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Root, config and results of one full pipeline run on the tiny vit_t."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = load_model_config(str(TINY))
    results = run_pipeline(cfg, root)
    return root, cfg, results


@pytest.fixture
def fp32_only(tmp_path):
    """A fresh root and a tiny config with only the fp32 variant (for tests that re-run stages)."""
    cfg_path = write_config(tmp_path / "tiny_fp32.yaml", **{"convert.variants": {"fp32": []}, "name": "tiny_fp32",
                                                            "parity.images": ["chelsea"],
                                                            "parity.mnn_precisions": {"fp32": ["normal"]},
                                                            "quantize.variants": {}})
    root = tmp_path / "root"
    root.mkdir()
    return root, cfg_path


@pytest.fixture
def copy_tree():
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy
