"""What a latency cell of the regression gate is timed from, per side: the artifact bytes its lock file
records, the code its timing runs (the bench's modules but the runtimes' own, plus its runtime's module and
what that imports), library versions, the model config and the sweep. Equal fingerprints on both sides: the
cell is not timed again (stages/tools/regress.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stages.core.names import SIM_ONNX, file_artifact
from stages.sam.spec import SPECS, parts
from stages.tools.ab_stats import INPUTS


def pipeline_stages(tree: Path) -> dict[str, dict]:
    """The stage entries of a source tree's own pipeline.yaml (the base side's may differ from this tree's)."""
    import yaml

    return yaml.safe_load((tree / "pipeline.yaml").read_text())["stages"]


LIBRARIES = ("MNN", "onnxruntime", "torch", "numpy")  # one venv runs both sides: equal, and recorded


@dataclass
class TimedInputs:
    """What one side's latency cells are timed from, sha256 by input: per runtime, the code its timing runs
    (the bench stage's modules but the runtimes' own, plus that runtime's module and what it imports); per
    (component, artifact), the files as the side's lock file recorded them; and what every cell shares
    (library versions, model config, sweep file)."""

    common: dict[str, str]
    code: dict[str, dict[str, str]]
    files: dict[tuple[str, str], dict[str, str]]

    def of(self, component: str, runtime: str, artifact: str) -> dict[str, str]:
        keys = [(s.name, artifact) for s in parts(component)]
        if component == "decoder":  # its runs are fed embeddings the bench makes with the simplified encoder
            keys.append(("encoder", SIM_ONNX))
        files = {k: v for key in keys for k, v in self.files.get(key, {}).items()}
        return {**self.common, **self.code.get(runtime, {"code": f"no runtime {runtime!r}"}), **files}


def timed_inputs(tree: Path, root: Path, model: str, name: str, sweep: Path) -> TimedInputs:
    """The side's timed inputs, read from its own tree (code, model config) and build (the artifacts its lock
    file names)."""
    import importlib.metadata

    from stages.core.artifacts import file_sha256
    from stages.engine.lock import Lock, code_files
    from stages.runtimes import RUNTIMES

    pkg, own = tree / "stages", {rt: cls.__module__ for rt, cls in RUNTIMES.items()}
    bench = pipeline_stages(tree)["bench"]["module"]
    shared = code_files(bench, pkg, exclude=set(own.values()))

    def hashes(files: list[Path]) -> dict[str, str]:
        return {f"code:{f.relative_to(tree).as_posix()}": file_sha256(f) for f in files}

    config = Path(model) if Path(model).is_absolute() else tree / "configs" / "models" / f"{model}.yaml"
    libs = {}
    for lib in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs[f"library:{lib}"] = importlib.metadata.version(lib)
    common = {"config": file_sha256(config) if config.exists() else "absent", "sweep": file_sha256(sweep),
              **libs}
    files: dict[tuple[str, str], dict[str, str]] = {}
    lock = Lock(root / "build" / name, root)  # the artifacts its stages made, hashed now (cached)
    for entry in lock.stages.values():
        for key in entry.get("outs") or []:
            for comp in SPECS:
                if (art := file_artifact(Path(key), comp)) and lock.resolve(key).exists():
                    files.setdefault((comp, art), {})[f"artifact:{key}"] = lock.file_hash(lock.resolve(key))
    # a runtime's code: its module and what that imports, but the other runtimes' modules (their cells' code)
    code = {rt: hashes([*shared, *code_files(mod, pkg, exclude=set(own.values()) - {mod})])
            for rt, mod in own.items()}
    return TimedInputs(common, code, files)


def fingerprints(cells: pd.DataFrame, base: TimedInputs, new: TimedInputs) -> dict[str, list[str]]:
    """Per latency row, each side's fingerprint of its timed inputs (16 hex digits), and the inputs that
    differ."""
    out: dict[str, list[str]] = {c: [] for c in INPUTS}
    for r in cells[["component", "runtime", "artifact"]].to_dict("records"):
        a, b = base.of(**r), new.of(**r)
        differ = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
        out["inputs_base"].append(fingerprint(a))
        out["inputs_new"].append(fingerprint(b))
        more = f" (+{len(differ) - 4} more)" if len(differ) > 4 else ""
        out["inputs_changed"].append(" ".join(differ[:4]) + more)
    return out


def fingerprint(inputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
