"""One I/O spec per exported component (encoder, decoder), read by export, FLOP counting, samples, quantization
calibration, parity, bench and profile instead of hard-coded shapes and `if component == ...` branches.

A shape holds ints and symbolic dims (str). A symbolic dim of an input is a dynamic axis of the export
(num_points); one that only an output has is set by an input's values or the export's options (orig_h, orig_w
from orig_im_size; num_masks from multimask_output). numpy only at import: torch and mobile_sam load inside the
hooks, so checking a config stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.sam.preprocess import IMAGE_SIZE, bench_prompt, preprocess_image, transform_coords
from stages.sam.samples import PHOTOS, photo

EMBED_DIM = 256  # channels of the image embeddings and prompt tokens
EMBED_SIZE = IMAGE_SIZE // 16  # side of the embedding grid (64)
LOW_RES = 4 * EMBED_SIZE  # side of low_res_masks and mask_input (256)
E2E = ("encoder", "decoder")  # the bench's e2e component: both in turn


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete(self, **dims: int) -> tuple[int, ...]:
        """The shape with its symbolic dims filled in from `dims`."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class ComponentSpec:
    """What one exported component takes and gives, and the hooks every stage uses on it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    upstream: str | None = None  # the component whose output this one takes (calibrated on its real outputs)
    makes_masks: bool = False  # full-size masks, which MNN may make outside the graph (upsample)
    shape_inputs: tuple[str, ...] = ()  # inputs whose values set output shapes (a static MNN Session fixes them)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's dynamic_axes: every symbolic dim of an input."""
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs if any(isinstance(d, str) for d in t.shape)}

    def shape(self, name: str, **dims: int) -> tuple[int, ...]:
        (t,) = [t for t in (*self.inputs, *self.outputs) if t.name == name]
        return t.concrete(**dims)

    def dims(self, feeds: dict[str, np.ndarray], multimask_output: bool = False) -> dict[str, int]:
        """The symbolic dims that `feeds` give (inputs' shapes, and values for the outputs' own dims)."""
        out = {d: feeds[t.name].shape[i] for t in self.inputs for i, d in enumerate(t.shape) if isinstance(d, str)}
        return {**out, **self._value_dims(feeds, multimask_output)}

    # hooks each component defines
    def _value_dims(self, feeds: dict[str, np.ndarray], multimask_output: bool) -> dict[str, int]:
        return {}

    def module(self, model: Any, multimask_output: bool = False) -> Any:
        """The torch module export traces (and TorchRuntime runs), inputs in `input_names` order."""
        raise NotImplementedError

    def example(self, seed: int = 0, num_points: int = 2, name: str = "astronaut") -> dict[str, np.ndarray]:
        """Real sample inputs: a bundled photo; the decoder on seeded embeddings with a prompt on that photo."""
        raise NotImplementedError

    def workload_feeds(self, image: np.ndarray, embeddings: np.ndarray, points: int, out_hw) -> dict[str, np.ndarray]:
        """Feeds for a bench or profile workload: the preprocessed photo, or real embeddings with `points`
        points at output size `out_hw`."""
        raise NotImplementedError

    def workload(self, points: int, out_hw) -> str:
        """The workload in words (profile.csv's column)."""
        raise NotImplementedError

    def fixed_inputs(self, points: int, out_hw) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """For a graph of static shapes: the shape inputs' values and the symbolic dims at a workload."""
        return {}, {}

    def meta_call(self, model: Any, device: Any, points: int) -> None:
        """Run the component on zeros of its shapes on `device` (the FLOP counter's hook: stages/sam/flops.py)."""
        raise NotImplementedError


class EncoderSpec(ComponentSpec):
    def module(self, model: Any, multimask_output: bool = False) -> Any:
        return model.image_encoder

    def example(self, seed: int = 0, num_points: int = 2, name: str = "astronaut") -> dict[str, np.ndarray]:
        return {"image": encoder_example(name)}

    def workload_feeds(self, image: np.ndarray, embeddings: np.ndarray, points: int, out_hw) -> dict[str, np.ndarray]:
        return {"image": image}

    def workload(self, points: int, out_hw) -> str:
        _, _, h, w = self.shape("image")
        return f"{h}x{w}"

    def meta_call(self, model: Any, device: Any, points: int) -> None:
        import torch

        model.image_encoder(torch.zeros(self.shape("image"), device=device))


class DecoderSpec(ComponentSpec):
    def _value_dims(self, feeds: dict[str, np.ndarray], multimask_output: bool) -> dict[str, int]:
        h, w = (int(v) for v in feeds["orig_im_size"])
        return {"orig_h": h, "orig_w": w, "num_masks": 4 if multimask_output else 1}

    def module(self, model: Any, multimask_output: bool = False) -> Any:
        return onnx_decoder(model, multimask_output)

    def example(self, seed: int = 0, num_points: int = 2, name: str = "astronaut") -> dict[str, np.ndarray]:
        return decoder_example(seeded_embeddings(seed), name=name, num_points=num_points)

    def workload_feeds(self, image: np.ndarray, embeddings: np.ndarray, points: int, out_hw) -> dict[str, np.ndarray]:
        pts, labels = bench_prompt(points, out_hw)
        return decoder_feeds(embeddings, pts, labels, tuple(out_hw))

    def workload(self, points: int, out_hw) -> str:
        h, w = out_hw
        return f"{int(points)} pt -> {int(h)}x{int(w)}"

    def fixed_inputs(self, points: int, out_hw) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        return {"orig_im_size": np.array(out_hw, np.float32)}, {"num_points": points + 1}  # + the padding point

    def meta_call(self, model: Any, device: Any, points: int) -> None:
        """Prompt encoder + mask decoder (the final resize to the output size is not counted)."""
        import torch

        emb = self.shape("image_embeddings")
        model.mask_decoder(
            image_embeddings=torch.zeros(emb, device=device),
            image_pe=torch.zeros(emb, device=device),
            sparse_prompt_embeddings=torch.zeros(1, points + 1, EMBED_DIM, device=device),  # + the padding point
            dense_prompt_embeddings=torch.zeros(emb, device=device),
            multimask_output=False,
        )


ENCODER = EncoderSpec(
    "encoder",
    inputs=(TensorSpec("image", (1, 3, IMAGE_SIZE, IMAGE_SIZE)),),
    outputs=(TensorSpec("image_embeddings", (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE)),),
)
DECODER = DecoderSpec(
    "decoder",
    inputs=(TensorSpec("image_embeddings", (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE)),
            TensorSpec("point_coords", (1, "num_points", 2)),
            TensorSpec("point_labels", (1, "num_points")),
            TensorSpec("mask_input", (1, 1, LOW_RES, LOW_RES)),
            TensorSpec("has_mask_input", (1,)),
            TensorSpec("orig_im_size", (2,))),
    outputs=(TensorSpec("masks", (1, "num_masks", "orig_h", "orig_w")),
             TensorSpec("iou_predictions", (1, "num_masks")),
             TensorSpec("low_res_masks", (1, "num_masks", LOW_RES, LOW_RES))),
    upstream="encoder", makes_masks=True, shape_inputs=("orig_im_size",),
)
SPECS: dict[str, ComponentSpec] = {"encoder": ENCODER, "decoder": DECODER}

# the decoder's interface by its old names (TorchRuntime, parity)
INPUTS = DECODER.input_names
OUTPUTS = DECODER.output_names


def parts(component: str) -> tuple[ComponentSpec, ...]:
    """The specs a bench component runs: one, or both in turn for e2e."""
    return tuple(SPECS[c] for c in E2E) if component == "e2e" else (SPECS[component],)


def onnx_decoder(model: Any, multimask_output: bool) -> Any:
    # mobile_sam's SamOnnxModel for every family: segment_anything's version crops with int(tensor),
    # which tracing freezes to the example's orig_im_size.
    from mobile_sam.utils.onnx import SamOnnxModel

    return SamOnnxModel(model, return_single_mask=not multimask_output).eval()


def seeded_embeddings(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DECODER.shape("image_embeddings")).astype(np.float32)


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
    return SPECS[component].example(seed=seed, num_points=num_points)


def decoder_feeds(
    embeddings: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    orig_hw: tuple[int, int],
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Inputs of the exported decoder (SamOnnxModel) for one prompt, coordinates in original-image pixels.

    A box becomes two points labelled 2 and 3; with no box, a padding point labelled -1 is added, as
    SamPredictor does for the ONNX model.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    lab = np.asarray(labels, dtype=np.float32).reshape(-1)
    if box is not None:
        pts = np.concatenate([pts, np.asarray(box, dtype=np.float32).reshape(2, 2)])
        lab = np.concatenate([lab, np.array([2, 3], dtype=np.float32)])
    else:
        pts = np.concatenate([pts, np.zeros((1, 2), dtype=np.float32)])
        lab = np.concatenate([lab, np.array([-1], dtype=np.float32)])
    mask_shape = DECODER.shape("mask_input")
    return {
        "image_embeddings": embeddings.astype(np.float32),
        "point_coords": transform_coords(pts, orig_hw)[None],
        "point_labels": lab[None],
        "mask_input": (np.zeros(mask_shape, np.float32) if mask_input is None
                       else np.asarray(mask_input, np.float32).reshape(mask_shape)),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], dtype=np.float32),
        "orig_im_size": np.array(orig_hw, dtype=np.float32),
    }
