"""What the demo can run: the model's MNN variants, each with its precision, memory mode and parity verdict.

Read from what the pipeline left (build/MODEL, reports/MODEL) with the csv module only: no torch, no pandas.
- recommended / smallest: reports/MODEL/recommended.csv (what `make segment` runs by default);
- every MNN cell parity checked: reports/MODEL/parity.csv (artifact x precision x memory, pass or fail);
- every MNN file not in parity.csv (parity not run yet): precision normal, memory normal, "not checked".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import PipelineError
from stages.core.names import mnn_artifact, mnn_file
from stages.core.status import Status
from stages.runtimes import DEFAULT_UPSAMPLE
from stages.tools.segment import recommended_models


@dataclass
class Variant:
    id: str
    label: str
    encoder: Path
    decoder: Path
    options: dict[str, dict] = field(default_factory=dict)  # per component: MnnRuntime keywords
    upsample: str = DEFAULT_UPSAMPLE
    parity: str = "not checked"

    def public(self, root: Path) -> dict:
        def rel(p: Path) -> str:
            return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

        return {"id": self.id, "label": self.label, "encoder": rel(self.encoder),
                "decoder": rel(self.decoder), "options": self.options, "upsample": self.upsample,
                "parity": self.parity}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _mode(options: dict) -> str:
    return f"precision {options.get('precision', 'normal')}, memory {options.get('memory', 'normal')}"


def _recommended(root: Path, model: str) -> list[Variant]:
    out = []
    for pick, what in (("fastest", "fastest"), ("smallest", "smallest files")):
        rec = recommended_models(root, model, pick)
        if rec is None:
            continue
        options = {c: {"precision": r["precision"], **r["options"]} for c, r in rec.items()}
        enc, dec = rec["encoder"], rec["decoder"]
        label = (f"recommended ({what} passing parity): encoder {enc['path'].stem.split('.', 1)[1]} "
                 f"({_mode(options['encoder'])}), decoder {dec['path'].stem.split('.', 1)[1]} "
                 f"({_mode(options['decoder'])})")
        out.append(Variant("recommended" if pick == "fastest" else "smallest", label, enc["path"],
                           dec["path"], options, dec["upsample"], "pass"))
    return out


def _checked(root: Path, model: str) -> list[Variant]:
    """One variant per MNN parity cell that ran, in parity.csv's order."""
    cells: dict[str, dict[str, dict[str, str]]] = {}
    for r in _read_csv(root / "reports" / model / "parity.csv"):
        if (r.get("runtime") == "mnn" and Status.read(r.get("status")) == Status.ok()
                and r.get("component") in ("encoder", "decoder", "e2e")):
            cells.setdefault(r["cell"], {})[r["component"]] = r
    out = []
    for cell, rows in cells.items():
        if not {"encoder", "decoder"} <= set(rows):
            continue
        enc, dec = rows["encoder"], rows["decoder"]
        memory = enc.get("memory", "normal")
        opts = {"precision": enc["precision"], **({"memory": memory} if memory != "normal" else {})}
        verdicts = [rows[c].get("pass") == "True" for c in ("encoder", "decoder", "e2e") if c in rows]
        parity = "pass" if all(verdicts) else "fail"
        compute = [f"{k} {enc[f'{k}_compute']}" for k in ("fp16", "int8") if enc.get(f"{k}_compute") == "yes"]
        computes = ", computes " + " ".join(compute) if compute else ""
        label = f"{enc['variant']} ({_mode(opts)}{computes}), parity {parity}"
        out.append(Variant(cell, label, root / enc["artifact_path"], root / dec["artifact_path"],
                           {"encoder": opts, "decoder": dict(opts)},
                           dec.get("upsample") or DEFAULT_UPSAMPLE, parity))
    return out


def _unchecked(root: Path, model: str, known: set[Path]) -> list[Variant]:
    out = []
    for folder in ("mnn", "int8"):
        for enc in sorted((root / "build" / model / folder).glob(mnn_file("encoder", "*"))):
            name = enc.name[len("encoder."):-len(".mnn")]
            dec = enc.with_name(mnn_file("decoder", name))
            if dec.is_file() and enc not in known:
                out.append(Variant(f"{mnn_artifact(name)}@normal",
                                   f"{name} (precision normal, memory normal), parity not checked", enc, dec))
    return out


def find_variants(root: Path, model: str) -> list[Variant]:
    """The recommended pair first, then every parity-checked cell, then files parity has not seen."""
    variants = _recommended(root, model) + _checked(root, model)
    variants += _unchecked(root, model, {v.encoder for v in variants})
    variants = [v for v in variants if v.encoder.is_file() and v.decoder.is_file()]
    if not variants:
        raise PipelineError(f"no MNN models for {model} under {root / 'build' / model}: "
                            f"run `make all MODEL={model}` (or at least "
                            f"`python -m stages run --model {model} convert`) first")
    return variants


def weights(root: Path, model: str) -> str:
    """The weights every artifact was made from, as the export stage recorded them: `random-seed-N` or
    `ckpt-...`."""
    rows = _read_csv(root / "reports" / model / "export_encoder.csv")
    return rows[0].get("weights", "unknown") if rows else "unknown"
