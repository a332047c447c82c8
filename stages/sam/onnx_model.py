"""The decoder as exported to ONNX (SamOnnxModel) and its I/O names: defined with the component specs in
stages/sam/spec.py (one copy); these names stay importable from here."""

from __future__ import annotations

from stages.sam.spec import INPUTS, OUTPUTS, onnx_decoder

__all__ = ["INPUTS", "OUTPUTS", "onnx_decoder"]
