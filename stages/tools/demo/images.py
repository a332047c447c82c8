"""Images in and out of the demo: uploads checked before they are decoded, masks as PNG. Pillow, no torch.

Pillow reads an image's size from its header without decoding it, so an oversized or foreign file is refused
before it costs memory, and a damaged one raises an error rather than crashing the process.
"""

from __future__ import annotations

import functools
import io
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.core.errors import PipelineError
from stages.tools.image_io import MAX_MEGAPIXELS

MAX_UPLOAD_MB = 64  # the default; $SAM_DEMO_MAX_UPLOAD_MB overrides it (limits.py)
FORMATS = ("JPEG", "PNG")
BUNDLED = ("astronaut", "coffee", "chelsea", "rocket")  # the parity photos (stages/sam/samples.py)
TINT = (30, 144, 255, 128)  # the mask overlay: SAM's demo blue at half opacity

Image.MAX_IMAGE_PIXELS = None  # the size check below is ours, with a message naming the limit


class RequestError(PipelineError):
    """A request the demo refuses: a message for the page and the HTTP status to send it with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes | BinaryIO, name: str) -> np.ndarray:
    """JPEG or PNG bytes (or a binary file of them: an upload's size is capped as it arrives, limits.py)
    -> HxWx3 uint8 RGB, EXIF orientation applied (as the browser shows it)."""
    try:
        im = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (UnidentifiedImageError, OSError):
        raise RequestError(f"{name} is not a JPEG or PNG image (its content is not an image format Pillow "
                           f"knows; a renamed file?)") from None
    if im.format not in FORMATS:
        raise RequestError(f"{name} is a {im.format} image; the demo takes {' or '.join(FORMATS)}")
    w, h = im.size
    if w * h > MAX_MEGAPIXELS * 1e6:
        raise RequestError(f"{name} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is {MAX_MEGAPIXELS} "
                           f"megapixels: downscale it first", 413)
    try:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # what Pillow raises on a damaged file (OSError, SyntaxError, struct.error, ...)
        raise RequestError(f"{name} could not be decoded ({e}): a damaged or truncated file?") from None


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_pngs(mask: np.ndarray) -> tuple[bytes, bytes]:
    """A boolean HxW mask -> (RGBA overlay: tinted where the mask is, transparent elsewhere; the mask as a
    black-and-white PNG to download)."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = TINT
    return encode_png(rgba), encode_png(mask.astype(np.uint8) * 255)


@functools.lru_cache(maxsize=len(BUNDLED))
def photo_png(name: str) -> bytes:
    """A bundled photo (scikit-image's data) as PNG bytes."""
    if name not in BUNDLED:
        raise RequestError(f"unknown photo {name!r}: the bundled photos are {', '.join(BUNDLED)}", 404)
    from stages.sam.samples import photo

    return encode_png(photo(name))
