"""Model building: seeded random weights, strict checkpoint loading, clear errors for the wrong file."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, write_config
from stages.config import load_model_config
from stages.errors import PipelineError
from stages.models import BUILDERS, build_model, weights_tag


def _cfg(tmp_path, **kw):
    return load_model_config(str(write_config(tmp_path / "c.yaml", **kw)))


def test_tiny_models_keep_sams_io_shapes():
    for name in ("tiny.vit_t", "tiny.vit_b"):
        model = BUILDERS[name]()
        with torch.no_grad():
            emb = model.image_encoder(torch.zeros(1, 3, 1024, 1024))
        assert emb.shape == (1, 256, 64, 64), name


def test_seed_decides_the_random_weights(tmp_path):
    a, tag = build_model(_cfg(tmp_path, seed=3), tmp_path)
    b, _ = build_model(_cfg(tmp_path, seed=3), tmp_path)
    c, _ = build_model(_cfg(tmp_path, seed=4), tmp_path)
    assert tag == "random-seed-3"
    w = "mask_decoder.iou_token.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_checkpoint_is_loaded_and_tagged_by_hash(tmp_path):
    cfg = load_model_config(str(TINY))
    source, _ = build_model(_cfg(tmp_path, seed=7), tmp_path)
    (tmp_path / "weights").mkdir()
    torch.save(source.state_dict(), tmp_path / "weights" / "tiny_vit_t.pt")
    model, tag = build_model(cfg, tmp_path)
    assert tag.startswith("ckpt-") and tag == weights_tag(cfg, tmp_path)
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    cfg = load_model_config(str(TINY))
    other = BUILDERS["tiny.vit_b"]()
    (tmp_path / "weights").mkdir()
    torch.save(other.state_dict(), tmp_path / "weights" / "tiny_vit_t.pt")
    with pytest.raises(PipelineError, match=r"does not fit the tiny.vit_t architecture.*missing keys: image_encoder\."):
        build_model(cfg, tmp_path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    cfg = load_model_config(str(TINY))
    source, _ = build_model(cfg, tmp_path)
    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / "tiny_vit_t.pt"
    torch.save(source.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PipelineError, match=r"tiny_vit_t.pt cannot be loaded with torch.load\(weights_only=True\)"):
        build_model(cfg, tmp_path)
