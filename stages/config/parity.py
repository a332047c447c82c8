"""Parity sections of a model config: precision tiers' thresholds, the host parity stage, and the cells checked
on a target (the target_parity stage)."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from stages.config.schema import check_choice, schema

MEMORY_MODES = ("normal", "low", "high")


@schema
class Thresholds:
    """Pass/fail limits for one precision tier. Encoder: embeddings; decoder: masks from the same
    (PyTorch) embeddings; e2e: the artifact's own encoder feeding its own decoder."""

    cosine: float = 0.9999  # encoder embeddings cosine similarity, at least
    rel_l2: float = 0.01  # encoder ||a-b|| / ||b||, at most
    mask_iou: float = 0.99  # decoder masks thresholded at 0, IoU at least
    # a mask logit is "within tolerance" when |a-b| <= logit_rtol * max|reference logits|: relative, since
    # logit scales differ by orders of magnitude between trained and seeded random weights
    logit_rtol: float = 0.01
    logits_within_tol: float = 0.99  # fraction of mask logits within tolerance, at least
    iou_pred_abs: float = 0.01  # |delta iou_predictions|, at most
    e2e_mask_iou: float = 0.99  # end-to-end mask IoU, at least
    why: str = ""  # where the numbers come from
    # false: a target, not a gate. Rows are still checked (pass=False, failed_checks say by how much) and
    # such artifacts are never recommended, but they do not fail the parity stage or `make all`.
    gate: bool = True


DEFAULT_PARITY_IMAGES = ["astronaut", "coffee", "chelsea", "rocket"]


def parse_cell_key(key: str, where: str) -> tuple[str, str, str]:
    """'mnn-wint8@low~memory-low' -> ('wint8', 'low', 'low'): variant, precision, memory."""
    from stages.runtimes import MNN_PRECISIONS

    head, _, memory = key.partition("~memory-")
    artifact, _, precision = head.partition("@")
    if not artifact.startswith("mnn-") or not precision:
        raise ValueError(f"{where}: {key!r} is not an MNN parity cell; expected mnn-<variant>@<precision>"
                         f"[~memory-<mode>], e.g. mnn-fp32@low or mnn-wint8@low~memory-low")
    check_choice(where, precision, MNN_PRECISIONS)
    check_choice(where, memory or "normal", MEMORY_MODES)
    return artifact[4:], precision, memory or "normal"


@schema
class TargetParityConfig:
    """Parity of MNN cells computed on a target (stages/runtimes/targets.py): the target_parity stage, `make arm`,
    held to parity.thresholds.
    An emulated ARM64 encoder run takes minutes (vit_t: about 100 s at precision normal, 350 s at low), so
    the cells, photos and prompts are a chosen few. The same cells also run on the host, for comparison."""

    target: str = "arm64"  # host | arm64 | arm64:<cpu> (QEMU CPU model; max has fp16, sdot, i8mm) | ssh://[user@]host[:port]
    # parity cells as parity.csv names them: mnn-<variant>@<precision>[~memory-<mode>]
    cells: list[str] = field(default_factory=lambda: ["mnn-fp32@normal", "mnn-fp32@low"])
    images: list[str] = field(default_factory=lambda: ["astronaut"])
    prompts: list[str] = field(default_factory=lambda: ["one_point", "box"])
    threads: int = 2
    timeout_s: int = 3600  # per runner call (one component of one cell)

    def __post_init__(self) -> None:
        from stages.runtimes.targets import parse_target
        from stages.sam.samples import PROMPTS

        parse_target(self.target, "targets.*.target")  # a ConfigError: passes through pydantic as it is
        if not self.cells or not self.images or not self.prompts:
            raise ValueError("targets.*: cells, images and prompts must each list at least one entry")
        for c in self.cells:
            parse_cell_key(c, "targets.*.cells")
        for p in self.prompts:
            check_choice("targets.*.prompts", p, PROMPTS)
        if "mask_feedback" in self.prompts and "one_point" not in self.prompts[: self.prompts.index("mask_feedback")]:
            raise ValueError("targets.*.prompts: mask_feedback feeds back one_point's mask: list one_point before it")
        if self.threads <= 0 or self.timeout_s <= 0:
            raise ValueError("targets.*: threads and timeout_s must be > 0")


DEFAULT_MNN_PRECISIONS = {v: ["normal", "high", "low", "Low_BF16"] for v in ("fp32", "fp16", "wint8")}


@schema
class ParityConfig:
    # skimage photo names, image files or folders of images
    images: list[str] = field(default_factory=lambda: list(DEFAULT_PARITY_IMAGES))
    threads: int = 2
    # MNN runtime precisions each converted variant is checked under
    mnn_precisions: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_MNN_PRECISIONS.items()})
    # MNN memory modes each variant is checked under (default: normal). memory low on a weight-quantized
    # variant computes with int8 activations (MNN's dynamic quantization): a different computation, so a cell
    # of its own, `mnn-<variant>@<precision>~memory-low`
    mnn_memory: dict[str, list[str]] = field(default_factory=dict)
    # tier -> limits. A cell's tier is "variant@precision" if listed, else its variant (fp32 for ONNX).
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: {"fp32": Thresholds()})
    timeout_s: int = 1800
    # a setting that computes exactly what another does on this machine (MNN precision low on a CPU without
    # fp16 arithmetic is precision normal): skip (a row says so) or run it anyway
    identical_settings: Literal["skip", "run"] = "skip"

    def __post_init__(self) -> None:
        from stages.runtimes import MNN_PRECISIONS

        if self.threads <= 0:
            raise ValueError(f"parity.threads must be >= 1, got {self.threads}")
        if not self.images:
            raise ValueError("parity.images is empty: expected photo names, image files or folders")
        for variant, precs in self.mnn_precisions.items():
            for p in precs:
                check_choice(f"parity.mnn_precisions.{variant}", p, MNN_PRECISIONS)
        for variant, modes in self.mnn_memory.items():
            for m in modes:
                check_choice(f"parity.mnn_memory.{variant}", m, MEMORY_MODES)
        if "fp32" not in self.thresholds:
            raise ValueError("parity.thresholds needs an 'fp32' entry (used for ONNX and MNN fp32 cells)")

    def tier(self, variant: str, precision: str, memory: str = "normal") -> str:
        """The thresholds entry a cell is held to: the most specific of variant@precision~memory-M,
        variant~memory-M (memory other than normal), variant@precision, variant, each also for the variant's
        family (its name up to the first '-': wint4-b64 -> wint4); else fp32."""
        keys = []
        for v in dict.fromkeys([variant, variant.split("-")[0]]):
            if memory != "normal":
                keys += [f"{v}@{precision}~memory-{memory}", f"{v}~memory-{memory}"]
            keys += [f"{v}@{precision}", v]
        return next((k for k in keys if k in self.thresholds), "fp32")
