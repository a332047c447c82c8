"""Segment with MNN alone: image and prompt in, mask out. Needs only MNN and numpy at run time.

MnnSamPredictor mirrors segment_anything's SamPredictor: set_image() runs the encoder once, predict()
runs only the decoder, so many prompts on one image cost one encoder run. Images are read and written
with MNN's own cv module; preprocessing is numpy (stages.sam.preprocess), identical to SamPredictor's.
Importing this module imports no torch, onnx or onnxruntime.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError
from stages.core.names import parse_options
from stages.runtimes import DEFAULT_UPSAMPLE, MnnRuntime, external_hint
from stages.sam.preprocess import Scratch, numpy_resize, preprocess_image
from stages.sam.spec import SPECS, decoder_feeds
from stages.tools.image_io import as_rgb, overlay, read_image, write_image

log = logging.getLogger(__name__)


@dataclass
class ImageState:
    """What the decoder needs of one image: its embeddings and original size (and what encoding it took)."""

    embeddings: np.ndarray
    original_size: tuple[int, int]
    encoder_ms: float = 0.0


@dataclass
class Prediction:
    masks: np.ndarray  # [C, H, W] bool at the original size
    iou_predictions: np.ndarray  # [C]
    low_res_masks: np.ndarray  # [C, 256, 256] logits, to feed back as mask_input
    timings_ms: dict[str, float] = field(default_factory=dict)


# What each component's file must take and give (the exported interface: stages/sam/spec.py)
COMPONENT_IO = {c: (s.input_names, s.output_names) for c, s in SPECS.items()}


def check_interface(rt: MnnRuntime, component: str) -> None:
    """A model given as the wrong component (the decoder as --encoder) fails here, naming what it has."""
    want_in, want_out = COMPONENT_IO[component]
    if set(want_in) <= set(rt.input_names) and set(want_out) <= set(rt.output_names):
        return
    other = next((c for c, (i, o) in COMPONENT_IO.items() if c != component and set(i) <= set(rt.input_names)
                  and set(o) <= set(rt.output_names)), None)
    raise PipelineError(
        f"{rt.path} is not a SAM {component}: it takes {', '.join(rt.input_names)} and gives "
        f"{', '.join(rt.output_names)}; a {component} takes {', '.join(want_in)} and gives {', '.join(want_out)}"
        + (f". It looks like the {other}: pass it as --{other}" if other else ""))


def check_models_exist(*paths: Path) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise PipelineError(f"MNN model {p} does not exist: run `make all` first, or pass its path")


class MnnSamPredictor:
    """SamPredictor's interface over the converted MNN encoder and decoder."""

    def __init__(self, encoder: Path, decoder: Path, threads: int = 2, precision: str = "normal", backend: str = "CPU",
                 options: dict[str, dict] | None = None, upsample: str = DEFAULT_UPSAMPLE):
        """upsample: "fp32" (default) loads the decoder without its in-graph resize and upsamples low_res_masks
        to the image size in fp32 numpy: faster on MNN, and exact where MNN computes the decoder in fp16
        (precision low on an ARMv8.2 CPU, GPU backends), whose in-graph resize in fp16 flips mask pixels (the
        ARM64 target measured full-size IoU 0.820 for vit_t's decoder, 0.991 upsampled in fp32). "graph": the
        decoder's own full-size masks (MnnModel checks the value; a decoder without low_res_masks runs whole)."""
        check_models_exist(encoder, decoder)
        t0 = time.perf_counter()
        options = options or {}  # per component: MnnRuntime keywords (precision, shape_mutable, ...)
        self.encoder = MnnRuntime(Path(encoder), threads=threads, backend=backend,
                                  **{"precision": precision, **options.get("encoder", {})})
        self.decoder = MnnRuntime(Path(decoder), threads=threads, backend=backend, component="decoder",
                                  **{"precision": precision, **options.get("decoder", {}), "upsample": upsample})
        for component, rt in (("encoder", self.encoder), ("decoder", self.decoder)):
            check_interface(rt, component)
        self.timings_ms = {"load": (time.perf_counter() - t0) * 1000}
        self.image: ImageState | None = None
        self.scratch = Scratch()  # preprocessing's work buffers, kept between photos

    def set_image(self, image: np.ndarray) -> None:
        """Run the encoder on an HxWx3 uint8 RGB image (grayscale and RGBA are converted)."""
        image = as_rgb(image)
        t0 = time.perf_counter()
        x = preprocess_image(image, resize=numpy_resize, scratch=self.scratch)
        self.timings_ms["preprocess"] = (time.perf_counter() - t0) * 1000
        self.image = self.encode(x, image.shape[:2])
        self.timings_ms["encoder"] = self.image.encoder_ms

    def encode(self, x: np.ndarray, original_size: tuple[int, int]) -> ImageState:
        """The encoder on a preprocessed [1, 3, 1024, 1024] input; the predictor's own state is left alone, so one
        predictor serves several images (the demo keeps one ImageState per browser session)."""
        t0 = time.perf_counter()
        emb = self.encoder.run({"image": x})["image_embeddings"]
        if not np.all(np.isfinite(emb)):
            raise PipelineError(f"MNN encoder {self.encoder.path} gives NaN/Inf embeddings" + external_hint(self.encoder.path))
        return ImageState(emb, tuple(int(v) for v in original_size), (time.perf_counter() - t0) * 1000)

    @property
    def embeddings(self) -> np.ndarray | None:
        return None if self.image is None else self.image.embeddings

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = False, image: ImageState | None = None) -> Prediction:
        """Masks for a prompt in original-image pixels: points (N x 2, labels 1 = foreground, 0 = background),
        a box (x0, y0, x1, y1), and/or a previous low_res_masks entry as mask_input. `image`: an encode()
        result to use instead of the one set_image() left."""
        image = image or self.image
        if image is None:
            raise PipelineError("call set_image() before predict()")
        size = image.original_size
        pts, labels, box = self.check_prompt(point_coords, point_labels, box, mask_input, size)
        t0 = time.perf_counter()
        feeds = decoder_feeds(image.embeddings, pts, labels, size, box=box, mask_input=mask_input)
        out = self.decoder.run(feeds)
        t1 = time.perf_counter()
        masks, iou, low = out["masks"][0], out["iou_predictions"][0], out["low_res_masks"][0]
        if multimask_output and masks.shape[0] == 1:
            raise PipelineError("this decoder was exported with a single mask output "
                                "(export.multimask_output: false); re-export it to get several masks")
        if not multimask_output and masks.shape[0] > 1:
            best = int(np.argmax(iou))
            masks, iou, low = masks[best : best + 1], iou[best : best + 1], low[best : best + 1]
        timings = {**self.timings_ms, "decoder": (t1 - t0) * 1000}
        if self.decoder.model.upsample == "fp32":  # part of the decoder's time above: masks made outside the graph
            timings["upsample_fp32"] = self.decoder.model.upsample_seconds * 1000
        return Prediction(masks > 0.0, iou, low, timings)

    @staticmethod
    def check_prompt(point_coords, point_labels, box, mask_input, size):
        """A prompt for an image of `size` (h, w) as arrays, or a PipelineError naming the value that is wrong."""
        h, w = size
        if point_coords is None and box is None and mask_input is None:
            raise PipelineError("no prompt: give points (with labels), a box, or a previous mask")
        pts = np.zeros((0, 2), np.float32) if point_coords is None else np.asarray(point_coords, np.float32)
        if pts.ndim == 1 and pts.size == 2:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise PipelineError(f"points must be N x 2 (x, y) pairs, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise PipelineError(f"points must be finite numbers, got {pts.tolist()}")
        labels = np.ones(len(pts), np.float32) if point_labels is None else np.asarray(point_labels, np.float32).ravel()
        if len(labels) != len(pts):
            raise PipelineError(f"{len(pts)} points but {len(labels)} labels: give one label per point")
        if np.any((labels != 0) & (labels != 1)):
            raise PipelineError(f"point labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
        outside = [(float(x), float(y)) for x, y in pts if not (0 <= x < w and 0 <= y < h)]
        if outside:
            raise PipelineError(f"points {outside} lie outside the {w}x{h} image (x in [0, {w}), y in [0, {h}))")
        if box is not None:
            box = np.asarray(box, np.float32).ravel()
            if box.size != 4:
                raise PipelineError(f"box must be x0, y0, x1, y1, got {box.tolist()}")
            if not np.all(np.isfinite(box)):
                raise PipelineError(f"box must be four finite numbers, got {box.tolist()}")
            x0, y0, x1, y1 = box
            if x1 <= x0 or y1 <= y0:
                raise PipelineError(f"box must have x0 < x1 and y0 < y1, got {box.tolist()}")
        if mask_input is not None and np.asarray(mask_input).size != 256 * 256:
            raise PipelineError(f"mask_input must be one 256x256 low-res mask, got shape {np.asarray(mask_input).shape}")
        return pts, labels, box


def parse_points(text: str | None) -> np.ndarray | None:
    """"500,375" or "500,375;620,400" -> N x 2."""
    if not text:
        return None
    try:
        return np.array([[float(v) for v in p.split(",")] for p in text.replace(" ", ";").split(";") if p], np.float32)
    except ValueError:
        raise PipelineError(f"points {text!r}: expected x,y pairs separated by ';', e.g. 500,375;620,400") from None


def parse_floats(text: str | None, what: str) -> np.ndarray | None:
    if not text:
        return None
    try:
        return np.array([float(v) for v in text.replace(";", ",").split(",") if v], np.float32)
    except ValueError:
        raise PipelineError(f"{what} {text!r}: expected comma-separated numbers") from None


def recommended_models(root: Path, model: str, pick: str = "fastest") -> dict[str, dict] | None:
    """The MNN rows of reports/MODEL/recommended.csv (pick `fastest`: the fastest variant of each component that
    passes parity; `smallest`: the smallest file that passes): component -> {path, precision, options (memory
    mode included), upsample (fp32 unless the row ran the decoder's in-graph resize)}. None when there is no such
    file or row."""
    import csv

    path = Path(root) / "reports" / model / "recommended.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        mine = [r for r in csv.DictReader(f) if r.get("runtime") == "mnn" and r.get("pick", "fastest") == pick]
    rows = {r["component"]: r for r in sorted(mine, key=lambda r: int(float(r.get("threads") or 0)))}  # the most threads
    if not {"encoder", "decoder"} <= set(rows):
        return None
    return {c: {"path": Path(root) / rows[c]["path"], "precision": rows[c]["precision"],
                "options": parse_options(rows[c].get("mode_options", "")),
                "upsample": rows[c].get("upsample") or DEFAULT_UPSAMPLE} for c in ("encoder", "decoder")}


def segment_file(image_path: Path, out_dir: Path, encoder: Path, decoder: Path, points=None, labels=None, box=None,
                 threads: int = 2, precision: str = "normal", options: dict[str, dict] | None = None,
                 upsample: str = DEFAULT_UPSAMPLE) -> dict[str, object]:
    """Read an image, segment it, write <stem>.mask.png and <stem>.overlay.jpg; return paths and phase times."""
    check_models_exist(encoder, decoder)  # what is wrong is said before seconds of loading: models, image, prompt
    t0 = time.perf_counter()
    image = read_image(image_path)
    read_ms = (time.perf_counter() - t0) * 1000
    MnnSamPredictor.check_prompt(points, labels, box, None, image.shape[:2])
    predictor = MnnSamPredictor(encoder, decoder, threads=threads, precision=precision, options=options,
                                upsample=upsample)
    predictor.set_image(image)
    pred = predictor.predict(points, labels, box)
    mask = pred.masks[0]
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_path = out_dir / f"{Path(image_path).stem}.mask.png"
    overlay_path = out_dir / f"{Path(image_path).stem}.overlay.jpg"
    write_image(mask_path, np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2))
    write_image(overlay_path, overlay(image, mask, points, labels, box))
    write_ms = (time.perf_counter() - t0) * 1000
    return {"mask": mask_path, "overlay": overlay_path, "mask_fraction": float(mask.mean()),
            "iou_prediction": float(pred.iou_predictions[0]), "image_size": image.shape[:2],
            "timings_ms": {"read": read_ms, **pred.timings_ms, "write": write_ms}}
