"""Real inputs for tracing and checks: photographs bundled with scikit-image, preprocessed the SAM way."""

from __future__ import annotations

import functools

import numpy as np

from stages.preprocess import decoder_feeds, preprocess_image

# name -> (loader in skimage.data, a prompt point inside the subject, (x, y) in original pixels)
PHOTOS = {
    "astronaut": ("astronaut", (260.0, 170.0)),  # 512x512
    "coffee": ("coffee", (300.0, 200.0)),  # 400x600
    "chelsea": ("chelsea", (220.0, 140.0)),  # 300x451
    "rocket": ("rocket", (320.0, 200.0)),  # 427x640
}


@functools.lru_cache(maxsize=8)
def photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, PHOTOS[name][0])()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def encoder_example(name: str = "astronaut") -> np.ndarray:
    return preprocess_image(photo(name))


def decoder_example(embeddings: np.ndarray, name: str = "astronaut", num_points: int = 2) -> dict[str, np.ndarray]:
    """Decoder feeds for `num_points` foreground points around the photo's prompt point (one is padding)."""
    img = photo(name)
    x, y = PHOTOS[name][1]
    n = max(1, num_points - 1)
    pts = np.array([[x + 15 * i, y + 10 * i] for i in range(n)], dtype=np.float32)
    return decoder_feeds(embeddings, pts, np.ones(n, np.float32), img.shape[:2])


def component_example(component: str, seed: int = 0, num_points: int = 2) -> dict[str, np.ndarray]:
    """Feeds for an exported component: a real photo for the encoder; seeded embeddings + real prompt for the decoder."""
    if component == "encoder":
        return {"image": encoder_example()}
    emb = np.random.default_rng(seed).standard_normal((1, 256, 64, 64)).astype(np.float32)
    return decoder_example(emb, num_points=num_points)
