"""SAM's image and prompt preprocessing in numpy (no torch), shared by the pipeline and the MNN-only runtime.

Matches segment_anything's ResizeLongestSide + Sam.preprocess: resize the longest side to 1024
(bilinear, as PIL does it), normalize with ImageNet pixel statistics, pad bottom-right with zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

# SAM's mask postprocessing lives in the runner that also runs on targets (one copy); re-exported here
from stages.ondevice.masks import IMAGE_SIZE, resized_shape, upsample_masks  # noqa: F401

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

Resize = Callable[[np.ndarray, tuple[int, int]], np.ndarray]  # (HxWx3 uint8, (new_h, new_w)) -> uint8


def _resample_block(n_in: int, n_out: int, j0: int, j1: int) -> tuple[int, int, np.ndarray]:
    """Rows j0:j1 of PIL's bilinear resampling matrix [n_out, n_in], restricted to the input range [lo, hi) they
    reach: a triangle filter widened by the downscale factor (so shrinking averages, i.e. antialiases), rows
    normalized. Returns (lo, hi, weights [j1 - j0, hi - lo])."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(j0, j1) + 0.5) * scale
    lo = max(int(np.floor(centers[0] - support)), 0)
    hi = min(int(np.ceil(centers[-1] + support)) + 1, n_in)
    x = np.arange(lo, hi)[None, :] + 0.5 - centers[:, None]
    w = np.clip(1.0 - np.abs(x) / support, 0.0, None)
    return lo, hi, w / w.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=16)
def _bands(n_in: int, n_out: int, chunk: int = 32) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The resampling matrix as blocks of `chunk` output rows, each over only the inputs its filter reaches:
    (out_lo, out_hi, in_lo, in_hi, float32 weights). An 1800 -> 1024 pass multiplies about 60 inputs per 32
    outputs, not 1800: the dense matrix cost 120+ ms per photo. Measured on an 1800x1200 photo, 2 cores:
    blocks of 64 outputs 37 ms for the whole preprocess, 32: 26 ms, 16: 29 ms, 8: 33 ms."""
    out = []
    for j0 in range(0, n_out, chunk):
        j1 = min(j0 + chunk, n_out)
        lo, hi, w = _resample_block(n_in, n_out, j0, j1)
        out.append((j0, j1, lo, hi, w.astype(np.float32)))
    return tuple(out)


class Scratch:
    """Work buffers kept between photos of one size. A fresh 40 MB of numpy arrays per 1800x1200 photo is
    mmapped anew each time and page-faulted in: measured 13 ms of a 39 ms preprocess (2 cores). Whoever
    preprocesses photo after photo (MnnSamPredictor, the demo) keeps one; the buffers go with it."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The buffer `name`, made anew when the shape changed (one size kept per buffer)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape:
            buf = self._bufs[name] = np.empty(shape, np.float32)
        return buf


STRIPE_ROWS = 256  # input rows converted to float32 at a time (5.5 MB for an 1800-wide photo, not 26 MB)
OUT_ROWS = 16  # output rows per product of the vertical pass


def _resize_chw(image: np.ndarray, size: tuple[int, int], out: np.ndarray, scratch: Scratch | None = None) -> None:
    """HxWxC uint8 -> out [C, h, w] float32 holding uint8 values: PIL's bilinear resize, horizontal pass then
    vertical, each rounded as PIL rounds (weights are >= 0 and sum to 1, so no clip is needed). Laid out [row,
    channel, column] (a cheap transpose of the uint8 image), the horizontal pass is a matrix product per block
    of output columns, and the vertical one a product per block of output rows over contiguous rows holding all
    three channels. The photo is converted to float32 in stripes of STRIPE_ROWS rows: a fresh 26 MB copy of
    the whole photo is what made a cold preprocess slow, sometimes 44-105 ms (numbers in the README)."""
    h, w = size
    hin, win, c = image.shape
    scratch = scratch or Scratch()
    stripe = scratch.get("stripe", (min(STRIPE_ROWS, hin), c, win))
    y = scratch.get("y", (hin * c, w))
    for r0 in range(0, hin, STRIPE_ROWS):
        r1 = min(r0 + STRIPE_ROWS, hin)
        x = stripe[:r1 - r0]
        np.copyto(x, image[r0:r1].transpose(0, 2, 1))  # transpose and convert in one pass
        x = x.reshape((r1 - r0) * c, win)
        for j0, j1, lo, hi, m in _bands(win, w):
            np.matmul(x[:, lo:hi], m.T, out=y[r0 * c:r1 * c, j0:j1])
    np.rint(y, out=y)
    y = y.reshape(hin, c * w)
    blocks = scratch.get("block", (OUT_ROWS, c * w))
    for j0, j1, lo, hi, m in _bands(hin, h, OUT_ROWS):
        block = blocks[:j1 - j0]
        np.matmul(m, y[lo:hi], out=block)
        out[:, j0:j1] = block.reshape(j1 - j0, c, w).transpose(1, 0, 2)
    np.rint(out, out=out)


def numpy_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's Image.resize(BILINEAR) in numpy (uint8 HxWxC in and out). Lets the MNN-only runtime preprocess
    exactly as SamPredictor does, without PIL or torch."""
    out = np.empty((image.shape[2], *size), np.float32)
    _resize_chw(image, size, out)
    return out.transpose(1, 2, 0).astype(np.uint8)


def pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def preprocess_image(image: np.ndarray, resize: Resize = pil_resize, target: int = IMAGE_SIZE,
                     scratch: Scratch | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB -> [1,3,target,target] float32, normalized and zero-padded bottom-right. `scratch`: work
    buffers to reuse (numpy_resize only)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    h, w = resized_shape(*image.shape[:2], target)
    out = np.zeros((1, 3, target, target), dtype=np.float32)
    if resize is numpy_resize:  # straight into the NCHW buffer (about 25 ms for an 1800x1200 photo on 2 cores)
        x = out[0, :, :h, :w]
        _resize_chw(image, (h, w), x, scratch)
        x -= PIXEL_MEAN[:, None, None]
        x /= PIXEL_STD[:, None, None]
        return out
    x = (resize(image, (h, w)).astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    out[0, :, :h, :w] = x.transpose(2, 0, 1)
    return out


def transform_coords(coords: np.ndarray, orig_hw: tuple[int, int], target: int = IMAGE_SIZE) -> np.ndarray:
    """Point (x, y) coordinates in the original image -> coordinates in the resized 1024 frame."""
    h, w = orig_hw
    nh, nw = resized_shape(h, w, target)
    out = np.asarray(coords, dtype=np.float32).copy()
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out


def bench_prompt(points: int, out_hw) -> tuple[np.ndarray, np.ndarray]:
    """The bench's prompt for a decoder workload: `points` foreground points across the middle of the photo."""
    h, w = out_hw
    pts = np.array([[w * (0.3 + 0.4 * i / max(1, points)), h * 0.5] for i in range(points)], np.float32)
    return pts, np.ones(points, np.float32)
