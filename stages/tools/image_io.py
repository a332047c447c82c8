"""Image files in and out for MNN-only segmentation, with MNN's own cv module (no PIL, no torch), and the overlay
of a mask and its prompt on the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError
from stages.tools.image_check import ImageFileError, check_image_file

# MNN.cv.imread crashes the process (SIGSEGV) when it reads a file it cannot decode, so each file's structure is
# checked first (image_check.py): a truncated or damaged file is a one-line error naming what is wrong.
MAX_MEGAPIXELS = 50  # a larger photo is refused before decoding (SAM sees it at 1024 px on the long side anyway)


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, read by MNN.cv (grayscale is expanded and alpha dropped by imread)."""
    import MNN.cv as cv

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"image {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        check_image_file(path, MAX_MEGAPIXELS)
    except (ImageFileError, OSError) as e:
        raise PipelineError(f"image {path}: {e}") from None
    var = cv.imread(str(path))
    arr = None if var is None else np.asarray(var.read())
    if arr is None or arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PipelineError(f"{path} is not an image MNN can read (expected a JPEG, PNG or BMP file)")
    return np.ascontiguousarray(arr[..., 2::-1])  # BGR -> RGB


def write_image(path: Path, rgb: np.ndarray) -> None:
    import MNN.cv as cv
    import MNN.expr as F

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 else np.ascontiguousarray(rgb[..., None])
    var = F.const(bgr, list(bgr.shape), F.NHWC, F.uint8)
    if not cv.imwrite(str(path), var):
        raise PipelineError(f"cannot write {path}")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Documented handling: grayscale HxW or HxWx1 is repeated to 3 channels, RGBA drops alpha."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise PipelineError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise PipelineError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def overlay(image: np.ndarray, mask: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
    """The image with the mask tinted blue, foreground points green, background points red, the box yellow."""
    out = image.copy()
    tint = np.array([30, 144, 255], np.uint16)
    out[mask] = ((out[mask].astype(np.uint16) + tint) // 2).astype(np.uint8)
    h, w = mask.shape
    r = max(4, min(h, w) // 60)
    for (x, y), lab in zip(np.asarray(points if points is not None else np.zeros((0, 2))).reshape(-1, 2),
                           np.asarray(labels if labels is not None else []).ravel(), strict=False):
        x0, y0 = max(int(x) - r, 0), max(int(y) - r, 0)  # only the disc's square, not the whole image
        yy, xx = np.ogrid[y0 : min(int(y) + r + 1, h), x0 : min(int(x) + r + 1, w)]
        out[y0 : y0 + yy.shape[0], x0 : x0 + xx.shape[1]][(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = (
            (0, 200, 0) if lab == 1 else (220, 0, 0))
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        t = max(2, r // 2)
        x0, x1 = np.clip([x0, x1], 0, w - 1)
        y0, y1 = np.clip([y0, y1], 0, h - 1)
        for ys, xs in ((slice(y0, y0 + t), slice(x0, x1)), (slice(y1 - t + 1, y1 + 1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(x1 - t + 1, x1 + 1))):
            out[ys, xs] = (255, 215, 0)
    return out
