"""Real images and prompts for tracing and checks: photographs bundled with scikit-image, image files and folders,
parity's prompts, and many runs' feeds in one file. A component's sample inputs: stages/sam/spec.py."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError

# name -> (loader in skimage.data, a prompt point inside the subject, (x, y) in original pixels)
PHOTOS = {
    "astronaut": ("astronaut", (260.0, 170.0)),  # 512x512
    "coffee": ("coffee", (300.0, 200.0)),  # 400x600
    "chelsea": ("chelsea", (220.0, 140.0)),  # 300x451
    "rocket": ("rocket", (320.0, 200.0)),  # 427x640
    # calibration photos for int8 (quantize.calibration.images): none of them is a parity photo
    "camera": ("camera", (250.0, 200.0)),  # 512x512 grayscale
    "coins": ("coins", (190.0, 150.0)),  # 303x384 grayscale
    "clock": ("clock", (200.0, 150.0)),  # 300x400 grayscale
    "immunohistochemistry": ("immunohistochemistry", (256.0, 256.0)),  # 512x512
    "hubble_deep_field": ("hubble_deep_field", (500.0, 436.0)),  # 872x1000
    "retina": ("retina", (705.0, 705.0)),  # 1411x1411
}


@functools.lru_cache(maxsize=8)
def photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, PHOTOS[name][0])()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grayscale and RGBA converted); a clear error for anything else."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise PipelineError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise PipelineError(f"{path} is not a readable image ({e})") from None


def load_images(entries: list[str], root: Path) -> list[tuple[str, np.ndarray]]:
    """Each entry: a bundled photo name (a key of PHOTOS), an image file or a folder of them."""
    out = []
    for entry in entries:
        if entry in PHOTOS:
            out.append((entry, photo(entry)))
            continue
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise PipelineError(f"image folder {path} is empty: expected {', '.join(IMAGE_SUFFIXES)} files")
            out.extend((f.stem, read_image(f)) for f in files)
        elif path.exists():
            out.append((path.stem, read_image(path)))
        else:
            raise PipelineError(f"image entry {entry!r} is neither a bundled photo ({', '.join(PHOTOS)}) "
                                f"nor an existing file or folder ({path})")
    return out


PROMPTS = ("one_point", "points", "box", "box_point", "mask_feedback")


def prompt(name: str, hw: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """A prompt in original-image pixels, placed by fractions of the image size so it fits any photo.

    mask_feedback is one_point plus the previous low_res_masks, which the caller supplies.
    """
    h, w = hw

    def px(fx: float, fy: float) -> list[float]:
        return [fx * w, fy * h]

    box = np.array(px(0.25, 0.2) + px(0.75, 0.85), np.float32)
    empty = np.zeros((0, 2), np.float32)
    table = {
        "one_point": (np.array([px(0.5, 0.45)], np.float32), np.array([1], np.float32), None),
        "points": (np.array([px(0.5, 0.45), px(0.6, 0.6), px(0.05, 0.05)], np.float32),
                   np.array([1, 1, 0], np.float32), None),
        "box": (empty, np.zeros(0, np.float32), box),
        "box_point": (np.array([px(0.5, 0.45)], np.float32), np.array([1], np.float32), box),
        "mask_feedback": (np.array([px(0.5, 0.45)], np.float32), np.array([1], np.float32), None),
    }
    points, labels, b = table[name]
    return {"points": points, "labels": labels, "box": b}
