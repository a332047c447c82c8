"""Writing outputs safely and describing them: atomic renames, hashes, provenance columns, CSV reports."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL_MARK = ".partial"
SAMPLES_CSV = "latency_samples.csv"  # beside latency.csv: every timed run of every ok cell (bench writes it)
TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "MNN")
# Files that belong to an artifact and sit beside it: ONNX external data (a model past protobuf's 2 GB
# keeps its weights in `<name>.data`) and MNN external weights (`--saveExternalData` writes `<name>.weight`,
# which MNN finds by the model's file name at load time).
SIDECARS = (".data", ".weight")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def cached_file_sha256(path: Path) -> str:
    """file_sha256, cached by path, size and mtime: an artifact copied to targets is hashed once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def sidecars(path: Path) -> list[Path]:
    """The side files of an artifact that exist (external weights), in a fixed order."""
    return [q for q in (path.with_name(path.name + s) for s in SIDECARS) if q.exists()]


def artifact_bytes(path: Path) -> int:
    """Size of an artifact with its side files: what a deployment ships."""
    return path.stat().st_size + sum(q.stat().st_size for q in sidecars(path))


def partial_name(path: Path) -> Path:
    """Temp path for `path`: the same file name inside a hidden folder beside it that never looks finished.
    Tools that write side files named after the model (ONNX external data, MNN's `.weight`) write them
    there too, and the names they record stay right after the move."""
    return path.parent / f".{path.name}{PARTIAL_MARK}{os.getpid()}" / path.name


def remove_partials(directory: Path) -> list[Path]:
    """Delete temp files and folders an interrupted run left behind in `directory`."""
    gone = []
    if directory.is_dir():
        for p in directory.glob(f".*{PARTIAL_MARK}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; move it (and its side files) onto `path` only if the block finishes
    without error. Side files go first and the file itself last, so a finished-looking file is whole;
    side files of an older artifact at `path` that the new one lacks are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    shutil.rmtree(tmp.parent, ignore_errors=True)
    tmp.parent.mkdir()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp} was not written")
        new = {q.name for q in sidecars(tmp)}
        for q in sidecars(path):
            if q.name not in new:
                q.unlink()
        for q in sidecars(tmp):
            os.replace(q, path.with_name(q.name))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[f"{name.lower()}_version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[f"{name.lower()}_version"] = "absent"
    return out


def with_machine(rows: list[dict]) -> list[dict]:
    """Rows with this machine's and the tools' columns added (what every report row carries), their own kept."""
    extra = {**machine(), **tool_versions()}
    return [{**r, **{k: v for k, v in extra.items() if k not in r}} for r in rows]


# CPU features that change which kernels runtimes pick (x86 vector/matrix units, ARM fp16/dot-product/i8mm)
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimdhp", "asimddp", "i8mm", "fphp",
                "sve", "sve2", "sme", "sme2", "avx_vnni")
# recorded in cpu_flags (onnxruntime's int8 kernels depend on it) but not in machine_class, which stays as it was
NOT_IN_CLASS = ("avx_vnni",)


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, object]:
    """This machine as report rows name it; machine_class groups machines whose latencies compare."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    cores = os.cpu_count() or 0
    kernel_flags = [f for f in KERNEL_FLAGS if f in flags]
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)|cpu|processor|@.*", "", cpu.lower())).strip("-")
    return {"machine": f"{platform.node()}", "cpu": cpu, "cores": cores, "cpu_flags": " ".join(kernel_flags),
            "machine_class": "_".join([slug or platform.machine(), f"{cores}c",
                                       *(f for f in kernel_flags if f not in NOT_IN_CLASS)])}


def describe_file(path: Path) -> dict[str, object]:
    """bytes and sha256 of an artifact (empty when it does not exist)."""
    if not path.exists():
        return {"path": str(path), "bytes": None, "sha256": ""}
    side = sidecars(path)
    row: dict[str, object] = {"path": str(path), "bytes": artifact_bytes(path), "sha256": file_sha256(path)}
    if side:  # external weights: the hash above covers the graph file, this one the weights
        row["external_data"] = ", ".join(q.name for q in side)
        row["external_sha256"] = "+".join(file_sha256(q)[:16] for q in side)
    return row


def write_csv(path: Path, rows: list[dict], first: list[str] | None = None) -> None:
    """Write rows as a CSV in one go (never appended to), columns in first-seen order, atomically."""
    import pandas as pd  # here: task modules that a child process imports (stages/conversion/mnn.py) import this module

    cols: list[str] = list(first or [])
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    df = pd.DataFrame(rows, columns=cols)
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False)
