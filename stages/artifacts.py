"""Writing outputs safely and describing them: atomic renames, hashes, provenance columns, CSV reports."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from stages.models import file_sha256

PARTIAL_MARK = ".partial"
TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "MNN")


def partial_name(path: Path) -> Path:
    """Temp name beside `path` that keeps its suffix (tools look at it) and never looks finished."""
    return path.with_name(f".{path.stem}{PARTIAL_MARK}{os.getpid()}{path.suffix}")


def remove_partials(directory: Path) -> list[Path]:
    """Delete temp files an interrupted run left behind in `directory`."""
    gone = []
    if directory.is_dir():
        for p in directory.glob(f".*{PARTIAL_MARK}*"):
            if p.is_file():
                p.unlink()
                gone.append(p)
    return gone


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; rename it onto `path` only if the block finishes without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp} was not written")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[f"{name.lower()}_version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[f"{name.lower()}_version"] = "absent"
    return out


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": f"{platform.node()}", "cpu": cpu, "cores": os.cpu_count() or 0}


def describe_file(path: Path) -> dict[str, object]:
    """bytes and sha256 of an artifact (empty when it does not exist)."""
    if not path.exists():
        return {"path": str(path), "bytes": None, "sha256": ""}
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_csv(path: Path, rows: list[dict], first: list[str] | None = None) -> None:
    """Write rows as a CSV in one go (never appended to), columns in first-seen order, atomically."""
    cols: list[str] = list(first or [])
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    df = pd.DataFrame(rows, columns=cols)
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False)


def artifact_paths(cells) -> dict[str, dict[str, Path]]:
    """{artifact: {component: path}} from the cells of a stage whose deps are, per (component, variant):
    raw ONNX, simplified ONNX, MNN variant (parity and bench declare them so in pipeline.yaml)."""
    paths: dict[str, dict[str, Path]] = {}
    for c in cells:
        raw, sim, mnn = c.deps[:3]
        comp, variant = c.values["component"], c.values["variant"]
        paths.setdefault("onnx", {})[comp] = raw
        paths.setdefault("onnx-sim", {})[comp] = sim
        paths.setdefault(f"mnn-{variant}", {})[comp] = mnn
    return paths
