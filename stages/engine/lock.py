"""What a stage was built from: its code files, its params, its inputs' and outputs' hashes (the lock file).

build/<model>/pipeline.lock.json holds provenance only, as DVC's dvc.lock does: per finished stage its params
values and the hashes of each input, each output and each code file, with paths relative to the run's root (the
code's relative to the source tree). The file-hash cache (size and mtime -> sha256, which spares re-reading
gigabytes) lives apart in build/<model>/.file_hashes.json, as DVC keeps it in its state database; run timings
live in reports/<model>/runs.csv (stages/engine/run.py).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from stages.config import get_param
from stages.core import artifacts
from stages.core.artifacts import file_sha256
from stages.engine.graph import Stage, StageContext

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_DIR = PACKAGE_DIR.parent  # the source tree: pipeline.yaml, configs/, stages/
SOURCE = "${source}/"  # how the lock file names a path under the source tree but outside the run's root
LOCK_FILE = "pipeline.lock.json"
HASH_CACHE = ".file_hashes.json"


def _module_file(mod: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    rel = mod.split(".")[1:]
    file = package_dir.joinpath(*rel).with_suffix(".py") if rel else package_dir / "__init__.py"
    if not file.exists():
        file = package_dir.joinpath(*rel, "__init__.py")
    return file if file.exists() else None


def _imported(mod: str, file: Path) -> list[str]:
    """Every module an import statement of the file names (also inside functions), and its candidates
    `package.name` for `from package import name`."""
    names = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:
                package = mod.split(".") if file.name == "__init__.py" else mod.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names.extend(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def code_files(module: str, package_dir: Path = PACKAGE_DIR, exclude: Collection[str] = ()) -> list[Path]:
    """The files a stage's code runs: its module and every stages.* module it imports, transitively, also by
    imports inside functions. A package's __init__.py counts where it is imported by name (`from stages.bench
    import x`, `import stages.bench`), not where a module in it is (`from stages.bench.cells import y`).
    `package_dir`: the stages/ of another source tree (the regression gate's base worktree); `exclude`:
    modules neither counted nor followed (the gate counts each runtime's module apart from the bench's)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen or mod in exclude or not (mod == "stages" or mod.startswith("stages.")):
            continue
        file = _module_file(mod, package_dir)
        if file is None:
            continue
        seen[mod] = file
        todo.extend(_imported(mod, file))
    return sorted(seen.values())


def code_hashes(module: str) -> dict[str, str]:
    """sha256 of each code file of a stage, by its path relative to the source tree (stages/bench/tasks.py)."""
    return {f.relative_to(PACKAGE_DIR.parent).as_posix(): file_sha256(f) for f in code_files(module)}


class FileHashes:
    """The file-hash cache: sha256 by path, reused while a file's size and mtime are unchanged."""

    def __init__(self, path: Path, lock: Lock):
        self.path, self._lock, self.dirty = path, lock, False
        self.data: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                log.warning("file-hash cache %s is unreadable; files will be hashed again", path)

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = self._lock.key(path)
        hit = self.data.get(key)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        h = file_sha256(path)
        self.data[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h}
        self.dirty = True
        return h

    def save(self) -> None:
        if self.dirty:
            with artifacts.atomic_output(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            self.dirty = False


class Lock:
    """build/<model>/pipeline.lock.json: per finished stage what it was built from and what it made.

    Paths under the run's root are stored relative to it (as dvc.lock does), so a project folder that is
    moved or copied stays up to date; a path under the source tree but outside the root (a sweep file of
    configs/ with --root elsewhere) as ${source}/configs/..., so a copy of the source tree is the same build;
    other paths stay absolute."""

    def __init__(self, build: Path, root: Path):
        self.path = build / LOCK_FILE
        self.root = Path(root)
        self.hashes = FileHashes(build / HASH_CACHE, self)
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.stages = dict(json.loads(self.path.read_text()).get("stages", {}))
            except (json.JSONDecodeError, OSError, AttributeError):
                log.warning("lock file %s is unreadable; every stage will re-run", self.path)

    def key(self, path: Path) -> str:
        """How the lock file names a path: relative to the root when under it."""
        for base, prefix in ((self.root, ""), (SOURCE_DIR, SOURCE)):
            try:
                return prefix + Path(path).relative_to(base).as_posix()
            except ValueError:
                continue
        return str(path)

    def resolve(self, key: str) -> Path:
        """The file a lock-file key names in this root."""
        if key.startswith(SOURCE):
            return SOURCE_DIR / key[len(SOURCE):]
        p = Path(key)
        return p if p.is_absolute() else self.root / p

    def file_hash(self, path: Path) -> str:
        """sha256 of a file; for an artifact with external weights beside it, of the file and those."""
        side = artifacts.sidecars(path)
        if not side:
            return self.hashes.sha256(path)
        return hashlib.sha256("+".join(self.hashes.sha256(q) for q in [path, *side]).encode()).hexdigest()

    def save(self) -> None:
        with artifacts.atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps({"stages": self.stages}, indent=1, sort_keys=True))
        self.hashes.save()


def stage_state(stage: Stage, ctx: StageContext, lock: Lock) -> dict[str, Any]:
    """What the stage would be built from now; "outs" names the outputs it must make (hashed once made)."""
    return {
        "params": {p: (ctx.weights if p == "weights" else get_param(ctx.cfg, p)) for p in stage.params},
        "code": code_hashes(stage.module),
        "deps": {lock.key(d): lock.file_hash(d) for d in stage.deps if d.exists()},
        "outs": sorted({lock.key(o) for o in stage.all_outs}),
    }


_NONE = object()


def _changed(before: Any, now: dict[str, Any]) -> list[str]:
    """Keys whose values differ, in the order of `now`, then the ones that are gone."""
    before = before if isinstance(before, dict) else {}
    return [k for k in dict.fromkeys([*now, *before]) if before.get(k, _NONE) != now.get(k, _NONE)]


def changes(old: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """What differs from the finished run: "code changed: FILE, ...", "params changed: KEY, ...",
    "deps changed: PATH, ..." (each kind that differs, code first)."""
    out = []
    for key in ("code", "params", "deps"):
        changed = _changed(old.get(key), state[key])
        if key != "params":
            changed = sorted(changed)
        if changed:
            out.append(f"{key} changed: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}")
    return out


def why_stale(stage: Stage, state: dict[str, Any], lock: Lock) -> str | None:
    """None when the stage is up to date, else the reason it must run."""
    old = lock.stages.get(stage.name)
    if old is None:
        return "never finished"
    differ = changes(old, state)
    if differ:
        return "; ".join(differ)
    made = old.get("outs") if isinstance(old.get("outs"), dict) else {}
    for out in state["outs"]:
        p = lock.resolve(out)
        if not p.exists():
            return f"output {p} is missing"
        if made.get(out) is None or lock.file_hash(p) != made[out]:
            return f"output {p} changed since it was made"
    return None
