"""Parity metrics between an artifact's outputs and PyTorch's. Any NaN or Inf makes a metric fail."""

from __future__ import annotations

import numpy as np


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def finite(*arrays: np.ndarray) -> bool:
    return all(np.all(np.isfinite(a)) for a in arrays)


def tensor_metrics(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max/mean |diff|, cosine similarity and relative L2 of two tensors of one shape."""
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} != reference {ref.shape}")
    if not finite(got):
        return {"max_abs": np.nan, "mean_abs": np.nan, "cosine": np.nan, "rel_l2": np.nan}
    a, b = _f64(got), _f64(ref)
    d = np.abs(a - b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "cosine": cos,
            "rel_l2": float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))}


def mask_iou(got: np.ndarray, ref: np.ndarray, threshold: float = 0.0) -> float:
    """IoU of the masks logits > threshold; two empty masks agree fully."""
    if not finite(got):
        return np.nan
    a, b = got > threshold, ref > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def within_tol(got: np.ndarray, ref: np.ndarray, rtol: float) -> float:
    """Fraction of elements with |got - ref| <= rtol * max|ref|."""
    if not finite(got):
        return np.nan
    b = _f64(ref)
    return float(np.mean(np.abs(_f64(got) - b) <= rtol * np.abs(b).max()))


def worst(values: list[float], lower_is_worse: bool = True) -> float:
    """Worst value over cases; NaN (a non-finite output) wins."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return np.nan
    if np.isnan(arr).any():
        return np.nan
    return float(arr.min() if lower_is_worse else arr.max())
