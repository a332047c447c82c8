"""Model building: seeded random weights, strict checkpoint loading, clear errors for the wrong file."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, write_config
from stages.config import load_model_config
from stages.core.errors import PipelineError
from stages.sam.models import BUILDERS, build_model, weights_tag


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


def test_random_build_has_no_all_zero_norm_scales(tmp_path):
    """TinyViT zero-initialises each MBConv's last BatchNorm; a random build must not keep it (int8
    calibration divides by the range of those all-zero outputs), and a checkpoint must not be touched."""
    fresh = BUILDERS["tiny.vit_t"]()
    zero = [n for n, m in fresh.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not torch.any(m.weight)]
    assert zero, "TinyViT no longer zero-initialises a BatchNorm: this test no longer tests anything"
    model, _ = build_model(_cfg(tmp_path, seed=3), tmp_path)
    mods = dict(model.named_modules())
    for n in zero:
        assert torch.any(mods[n].weight), n
    again, _ = build_model(_cfg(tmp_path, seed=3), tmp_path)
    assert torch.equal(dict(again.named_modules())[zero[0]].weight, mods[zero[0]].weight)
    (tmp_path / "weights").mkdir()
    torch.save(fresh.state_dict(), tmp_path / "weights" / "tiny_vit_t.pt")
    loaded, _ = build_model(load_model_config(str(TINY)), tmp_path)
    assert not torch.any(dict(loaded.named_modules())[zero[0]].weight)


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


def _official_cfg(tmp_path, model: str, ckpt):
    """configs/models/MODEL.yaml with its checkpoint key pointing at `ckpt`."""
    from stages.config import CONFIG_DIR, read_yaml

    data = read_yaml(CONFIG_DIR / "models" / f"{model}.yaml")
    data["checkpoint"] = str(ckpt)
    path = tmp_path / f"{model}.yaml"
    path.write_text(__import__("yaml").safe_dump(data))
    return load_model_config(str(path))


@pytest.mark.parametrize("model", ["vit_t", "vit_b"])
def test_official_key_layout_loads(tmp_path, model):
    """The official checkpoints are Sam.state_dict(); one saved from the seeded model loads strictly."""
    torch.manual_seed(11)
    source = BUILDERS[f"{'mobile_sam' if model == 'vit_t' else 'segment_anything'}.{model}"]()
    state = source.state_dict()
    assert any(k.startswith("image_encoder.") for k in state) and any(k.startswith("mask_decoder.") for k in state)
    torch.save(state, tmp_path / "official.pth")
    model_, tag = build_model(_official_cfg(tmp_path, model, tmp_path / "official.pth"), tmp_path)
    assert tag.startswith("ckpt-")
    for k in ("image_encoder.patch_embed.proj.weight" if model == "vit_b" else
              "image_encoder.patch_embed.seq.0.c.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(model_.state_dict()[k], state[k]), k
    # also as a training checkpoint ({"model": state_dict})
    torch.save({"model": state, "epoch": torch.tensor(3)}, tmp_path / "train.pth")
    model_, _ = build_model(_official_cfg(tmp_path, model, tmp_path / "train.pth"), tmp_path)
    assert torch.equal(model_.state_dict()["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"])


@pytest.mark.parametrize("have,want", [("vit_b", "vit_h"), ("vit_t", "vit_l"), ("vit_b", "vit_t")])
def test_checkpoint_of_the_wrong_model_type_names_the_expected_type(tmp_path, have, want):
    torch.manual_seed(0)
    builder = f"{'mobile_sam' if have == 'vit_t' else 'segment_anything'}.{have}"
    torch.save(BUILDERS[builder]().state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(PipelineError) as err:
        build_model(_official_cfg(tmp_path, want, tmp_path / "wrong.pth"), tmp_path)
    msg = str(err.value)
    assert f"is a {have} checkpoint" in msg and f"expected a {want} checkpoint" in msg and "wrong.pth" in msg


def test_checkpoint_that_is_not_a_state_dict_says_what_was_expected(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(PipelineError, match=r"tensor.pth: expected a state dict of tensors \(the official SAM layout"):
        build_model(_official_cfg(tmp_path, "vit_b", tmp_path / "tensor.pth"), tmp_path)
