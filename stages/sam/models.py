"""Build the real SAM / MobileSAM architectures, load a checkpoint or seed random weights.

`tiny.*` builders use the very same modules (TinyViT, ImageEncoderViT, PromptEncoder, MaskDecoder,
TwoWayTransformer) with small widths and depths, so tests export and convert the real code paths fast.
All builders keep SAM's I/O contract: image [1,3,1024,1024] -> embeddings [1,256,64,64].
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from stages.core.artifacts import file_sha256
from stages.core.errors import PipelineError
from stages.sam.spec import EMBED_DIM, EMBED_SIZE, IMAGE_SIZE

log = logging.getLogger(__name__)

# mobile_sam imports timm's deprecated registry and re-registers TinyViT names: noise, not news.
warnings.filterwarnings("ignore", message=r"Importing from timm\.", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"Overwriting tiny_vit_", category=UserWarning)


def _mobile_sam(arch: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from mobile_sam import sam_model_registry

        return sam_model_registry[arch](checkpoint=None)

    return build


def _segment_anything(arch: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from segment_anything import sam_model_registry

        return sam_model_registry[arch](checkpoint=None)

    return build


def _prompt_and_decoder(sam_mod, depth: int, mlp_dim: int, heads: int):
    prompt = sam_mod.PromptEncoder(
        embed_dim=EMBED_DIM,
        image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mask_in_chans=16,
    )
    decoder = sam_mod.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sam_mod.TwoWayTransformer(depth=depth, embedding_dim=EMBED_DIM, mlp_dim=mlp_dim, num_heads=heads),
        transformer_dim=EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=64,
    )
    return prompt, decoder


def _tiny_vit_t() -> torch.nn.Module:
    from mobile_sam import modeling as m

    # TinyViT hard-codes a 64x64 token grid at its neck (so the image stays 1024x1024) and a stride-1
    # last merge only for widths 320/448/576, so the last width stays 320.
    encoder = m.TinyViT(
        img_size=IMAGE_SIZE, in_chans=3, num_classes=10,
        embed_dims=[8, 16, 24, 320], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
        window_sizes=[7, 7, 14, 7], mlp_ratio=2.0, drop_rate=0.0, drop_path_rate=0.0,
        use_checkpoint=False, mbconv_expand_ratio=2.0, local_conv_size=3, layer_lr_decay=0.8,
    )
    prompt, decoder = _prompt_and_decoder(m, depth=1, mlp_dim=64, heads=2)
    sam = m.Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


def _tiny_vit_b() -> torch.nn.Module:
    from segment_anything import modeling as m

    encoder = m.ImageEncoderViT(
        depth=2, embed_dim=32, img_size=IMAGE_SIZE, mlp_ratio=2,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=[1], window_size=14, out_chans=EMBED_DIM,
    )
    prompt, decoder = _prompt_and_decoder(m, depth=1, mlp_dim=64, heads=2)
    sam = m.Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "mobile_sam.vit_t": _mobile_sam("vit_t"),
    "segment_anything.vit_b": _segment_anything("vit_b"),
    "segment_anything.vit_l": _segment_anything("vit_l"),
    "segment_anything.vit_h": _segment_anything("vit_h"),
    "tiny.vit_t": _tiny_vit_t,
    "tiny.vit_b": _tiny_vit_b,
}


def weights_tag(cfg, root: Path) -> str:
    """Provenance of the weights every artifact is made from: `ckpt-<sha256[:16]>` or `random-seed-N`."""
    ckpt = cfg.checkpoint_path(root)
    if ckpt is not None and ckpt.exists():
        if not ckpt.is_file():
            raise PipelineError(f"{cfg.source}: checkpoint {cfg.checkpoint!r} is {ckpt}, which is not a file; "
                                "expected a checkpoint file (.pt / .pth) saved by torch.save")
        try:
            return f"ckpt-{file_sha256(ckpt)[:16]}"
        except OSError as e:
            raise PipelineError(f"{cfg.source}: checkpoint {ckpt} cannot be read ({e.strerror}); expected a "
                                "readable checkpoint file") from None
    if cfg.require_checkpoint:
        raise PipelineError(
            f"{cfg.source}: checkpoint {cfg.checkpoint!r} is required (require_checkpoint: true) but "
            f"{ckpt} does not exist. Put the checkpoint there, fix the 'checkpoint' key, or set "
            f"require_checkpoint: false to run with seeded random weights."
        )
    return f"random-seed-{cfg.seed}"


def warn_if_random(cfg, root: Path) -> None:
    tag = weights_tag(cfg, root)
    if tag.startswith("random"):
        where = f"no checkpoint at {cfg.checkpoint_path(root)}" if cfg.checkpoint else "no 'checkpoint' in config"
        log.warning(
            "\n" + "!" * 78 + f"\n!! {cfg.name}: {where}.\n!! Using the real {cfg.builder} architecture with SEEDED "
            f"RANDOM WEIGHTS (seed {cfg.seed}).\n!! Parity and latency are real; masks are meaningless. Every "
            f"report row says weights={tag}.\n" + "!" * 78
        )


# The official checkpoints (sam_vit_{b,l,h}_*.pth, mobile_sam.pt) are Sam.state_dict(): keys
# image_encoder.*, prompt_encoder.*, mask_decoder.*. The image encoder's first layer tells the type apart.
SAM_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"  # ViT: [embed_dim, 3, 16, 16]
SAM_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
TINYVIT_STEM = "image_encoder.patch_embed.seq.0.c.weight"  # MobileSAM's TinyViT conv stem


def unwrap_state(state: object, source: str) -> dict:
    """The state dict inside a checkpoint: as saved, or under a "model" key (training checkpoints)."""
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict) and not any(
        k.startswith(("image_encoder.", "mask_decoder.")) for k in state
    ):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"checkpoint {source}: expected a state dict of tensors (the official SAM layout: "
                            f"image_encoder.*, prompt_encoder.*, mask_decoder.*), got {type(state).__name__}")
    return state


def checkpoint_type(state: dict) -> tuple[str | None, str]:
    """(model type, evidence) of a state dict in the official layout; (None, "") when it cannot tell."""
    if SAM_PATCH_EMBED in state and state[SAM_PATCH_EMBED].ndim == 4:
        width = int(state[SAM_PATCH_EMBED].shape[0])
        found = SAM_WIDTHS.get(width)
        return found, f"{SAM_PATCH_EMBED} is {width} wide" if found else ""
    if TINYVIT_STEM in state:
        return "vit_t", f"it has MobileSAM's TinyViT stem ({TINYVIT_STEM})"
    return None, ""


def expected_type(builder: str) -> str | None:
    """vit_b for segment_anything.vit_b etc.; None for test builders."""
    family, _, arch = builder.partition(".")
    return arch if family in ("segment_anything", "mobile_sam") else None


def check_checkpoint_type(state: dict, source: str, builder: str) -> None:
    """Fail before building anything when a checkpoint is plainly of another model type."""
    want = expected_type(builder)
    found, evidence = checkpoint_type(state)
    if want and found and found != want:
        raise PipelineError(
            f"checkpoint {source} is a {found} checkpoint ({evidence}), but this config builds {want} "
            f"({builder}): expected a {want} checkpoint. Point 'checkpoint' at a {want} file, or run "
            f"the model config for {found} (configs/models/{found}.yaml)."
        )


def load_state_dict_strict(model: torch.nn.Module, state: dict, source: str, builder: str) -> None:
    """Strict load whose error names missing and unexpected keys and shape mismatches."""
    state = unwrap_state(state, source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {some(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {some(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {some(shapes)}")
        raise PipelineError(
            f"checkpoint {source} does not fit the {builder} architecture (is it a checkpoint of another "
            f"model type?): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def _load_checkpoint(path: Path) -> object:
    """torch.load(weights_only=True), memory-mapped when the file's format allows (a vit_h checkpoint is
    2.5 GB: mapped, its tensors are not held twice while they are copied into the model)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zipfile) format


def build_model(cfg, root: Path) -> tuple[torch.nn.Module, str]:
    """The configured SAM in eval mode, and its weights tag."""
    tag = weights_tag(cfg, root)
    state = None
    if tag.startswith("ckpt-"):
        ckpt = cfg.checkpoint_path(root)
        try:
            state = _load_checkpoint(ckpt)
        except Exception as e:  # truncated file, pickle with code, not a torch file
            raise PipelineError(f"checkpoint {ckpt} cannot be loaded with torch.load(weights_only=True): {e}") from None
        state = unwrap_state(state, str(ckpt))
        check_checkpoint_type(state, str(ckpt), cfg.builder)  # before building a 2.5 GB model for nothing
    torch.manual_seed(cfg.seed)
    model = BUILDERS[cfg.builder]()
    if state is not None:
        load_state_dict_strict(model, state, str(cfg.checkpoint_path(root)), cfg.builder)
        del state
    else:
        wake_zero_branches(model, cfg.seed)
    return model.eval(), tag


def wake_zero_branches(model: torch.nn.Module, seed: int) -> int:
    """Seeded BatchNorm scales for the norms a fresh model initialises to zero. TinyViT starts each MBConv's
    last BatchNorm at weight 0 (a training trick: every residual branch begins as the identity), so a
    random vit_t has 12 branches whose output is exactly zero. A trained checkpoint has none; with them,
    int8 calibration sees a tensor of range 0, MNN's quantizer gives it scale 0 and the encoder runs to
    NaN. Such a model would measure quantization on a network no one ships, so random builds get small
    seeded scales (0.1 * N(0, 1)) there instead. TinyViT's attention biases start at zero too: the exported
    graph then loses their Add (constant folding drops `+ 0`), an op over every attention matrix that a
    trained checkpoint's graph has; they get seeded values as well (eval() then rebuilds the `ab` buffer).
    Returns how many tensors were changed (0 for SAM's ViTs)."""
    gen = torch.Generator().manual_seed(seed + 1)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.weight is not None and not torch.any(m.weight):
                m.weight.copy_(0.1 * torch.randn(m.weight.shape, generator=gen))
                n += 1
            bias = getattr(m, "attention_biases", None)
            if isinstance(bias, torch.nn.Parameter) and not torch.any(bias):
                bias.copy_(torch.randn(bias.shape, generator=gen))
                n += 1
    return n
