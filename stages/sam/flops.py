"""FLOPs of each component, counted by torch's flop counter on the meta device (no compute, any model size)."""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from stages.sam.models import BUILDERS


@functools.lru_cache(maxsize=4)
def _meta_model(builder: str) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            return BUILDERS[builder]().eval()
    except RuntimeError:  # TinyViT calls .item() while building: build on the CPU, then drop the weights
        return BUILDERS[builder]().eval().to("meta")


@functools.lru_cache(maxsize=8)
def encoder_flops(builder: str) -> float:
    model = _meta_model(builder)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.image_encoder(torch.zeros(1, 3, 1024, 1024, device="meta"))
    return float(fc.get_total_flops())


@functools.lru_cache(maxsize=32)
def decoder_flops(builder: str, points: int) -> float:
    """Prompt encoder + mask decoder (matmuls and convs; the final resize to the output size is not counted)."""
    model = _meta_model(builder)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.mask_decoder(
            image_embeddings=torch.zeros(1, 256, 64, 64, device="meta"),
            image_pe=torch.zeros(1, 256, 64, 64, device="meta"),
            sparse_prompt_embeddings=torch.zeros(1, points + 1, 256, device="meta"),
            dense_prompt_embeddings=torch.zeros(1, 256, 64, 64, device="meta"),
            multimask_output=False,
        )
    return float(fc.get_total_flops())
