"""SAM's mask geometry in fp32 numpy, shared by the MNN runner on a target and the host's preprocessing:
the resize of an image's longest side to 1024 and the upsampling of low_res_masks to the original size.
numpy only (it ships to a device beside stages/ondevice/mnn_runner.py)."""

from __future__ import annotations

import functools

import numpy as np

IMAGE_SIZE = 1024  # SAM's input side


def resized_shape(h: int, w: int, target: int = IMAGE_SIZE) -> tuple[int, int]:
    """(new_h, new_w) with the longest side scaled to `target`, rounded as SAM rounds."""
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two taps of torch's F.interpolate(mode="bilinear", align_corners=False) along one axis, per output:
    (i0, i1, w0, w1) with source position (i + 0.5) * n_in / n_out - 0.5, clamped at 0; no antialiasing."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = src - i0
    return i0, np.minimum(i0 + 1, n_in - 1), (1.0 - w1).astype(np.float32), w1.astype(np.float32)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of those two taps."""
    i0, i1, w0, w1 = _bilinear_taps(n_in, n_out)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), w0)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m


def _then_bilinear(m: np.ndarray, n_out: int) -> np.ndarray:
    """_bilinear_matrix(len(m), n_out) @ m without the dense product: each output row mixes two rows of m
    (building the 1800x1024 matrix and multiplying took most of a 23-27 ms first upsample)."""
    i0, i1, w0, w1 = _bilinear_taps(m.shape[0], n_out)
    return w0[:, None] * m[i0] + w1[:, None] * m[i1]


def _blocks(m: np.ndarray, chunk: int = 64) -> list[tuple[int, int, int, int, np.ndarray]]:
    """A sparse [n_out, n_in] matrix as blocks of `chunk` rows over only the columns they use."""
    out = []
    for j0 in range(0, m.shape[0], chunk):
        rows = m[j0 : j0 + chunk]
        nz = np.flatnonzero(rows.any(axis=0))
        out.append((j0, j0 + len(rows), int(nz[0]), int(nz[-1]) + 1, np.ascontiguousarray(rows[:, nz[0] : nz[-1] + 1])))
    return out


@functools.lru_cache(maxsize=8)
def _upsample_blocks(h: int, w: int, lh: int, lw: int, target: int) -> tuple[list, list]:
    """Row and column blocks of SAM's two bilinear steps (to target, crop, to h x w) as one matrix per axis."""
    ph, pw = resized_shape(h, w, target)
    rows = _then_bilinear(_bilinear_matrix(lh, target)[:ph], h)  # [h, lh]: both steps, one matrix
    cols = _then_bilinear(_bilinear_matrix(lw, target)[:pw], w)  # [w, lw]
    return _blocks(rows), _blocks(cols)


def upsample_masks(low_res: np.ndarray, orig_hw, target: int = IMAGE_SIZE) -> np.ndarray:
    """SAM's mask postprocessing in fp32 numpy (SamOnnxModel.mask_postprocessing without torch): low_res_masks
    [..., 256, 256] -> bilinear to target x target, crop the padding, bilinear to the original size. Both steps
    per axis are one matrix, applied in blocks over the few inputs each output reaches (about 2 ms for
    1200x1800 on 2 cores; the dense product took 16-25 ms). Used where the decoder's in-graph resize is slow or
    cannot be trusted (MNN computes it in fp16 at precision low on ARM)."""
    h, w = (int(v) for v in np.asarray(orig_hw).ravel()[:2])
    row_blocks, col_blocks = _upsample_blocks(h, w, *low_res.shape[-2:], target)
    x = low_res.astype(np.float32, copy=False)
    y = np.empty((*x.shape[:-1], w), np.float32)
    for j0, j1, lo, hi, m in col_blocks:
        y[..., j0:j1] = x[..., lo:hi] @ m.T
    out = np.empty((*x.shape[:-2], h, w), np.float32)
    for j0, j1, lo, hi, m in row_blocks:
        out[..., j0:j1, :] = m @ y[..., lo:hi, :]
    return out


