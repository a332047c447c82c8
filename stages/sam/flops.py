"""FLOPs of each component, counted by torch's flop counter on the meta device (no compute, any model size). What
runs is the component's own hook (stages/sam/spec.py: ComponentSpec.meta_call)."""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from stages.sam.models import BUILDERS
from stages.sam.spec import SPECS


@functools.lru_cache(maxsize=4)
def _meta_model(builder: str) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            return BUILDERS[builder]().eval()
    except RuntimeError:  # TinyViT calls .item() while building: build on the CPU, then drop the weights
        return BUILDERS[builder]().eval().to("meta")


@functools.lru_cache(maxsize=64)
def component_flops(builder: str, component: str, points: int = 0) -> float:
    """FLOPs of one run of `component` with `points` prompt points (the decoder's final resize to the output
    size is not counted)."""
    model = _meta_model(builder)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        SPECS[component].meta_call(model, torch.device("meta"), points)
    return float(fc.get_total_flops())
