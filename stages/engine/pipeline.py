"""The runner: reads pipeline.yaml, orders stages, skips the ones whose hash is unchanged, runs the rest.

A stage's hash covers its params (dotted keys of the model config), its input files and its own code
(the stage module and every `stages.*` module it imports). The lock file in the build folder records
the hashes and the outputs of every finished stage, as DVC's dvc.lock does.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import itertools
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.config import ModelConfig, get_param, read_yaml, sweep_path
from stages.core import artifacts
from stages.core.artifacts import file_sha256
from stages.core.errors import ConfigError, PipelineError
from stages.sam.models import weights_tag

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
STAGE_KEYS = {"module", "params", "deps", "outs", "matrix", "desc", "report", "on_demand"}


@dataclass
class Cell:
    """One point of a stage's matrix (e.g. component=encoder, variant=fp16) with its own deps and outs."""

    values: dict[str, str]
    deps: list[Path]
    outs: list[Path]

    @property
    def key(self) -> str:
        return "-".join(self.values.values()) or "all"


@dataclass
class Stage:
    name: str
    module: str
    params: list[str]
    cells: list[Cell]
    desc: str = ""
    report: Path = Path()  # reports/<model>/<stage>.csv, or the name given by `report:`
    # on_demand: run only when named (`run --model M target_parity`), never as part of a plain run or as
    # another stage's input; a stage that reads its outputs takes them when they are there
    on_demand: bool = False

    @property
    def deps(self) -> list[Path]:
        return _unique(p for c in self.cells for p in c.deps)

    @property
    def outs(self) -> list[Path]:
        return _unique(p for c in self.cells for p in c.outs)

    @property
    def all_outs(self) -> list[Path]:
        """Outputs and the stage's CSV, which later stages may read too."""
        return [*self.outs, self.report]


@dataclass
class StageContext:
    """What a stage's run() gets: its config, folders, cells and the weights tag for its rows."""

    stage: Stage
    cfg: ModelConfig
    root: Path
    build: Path
    reports: Path
    weights: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        return self.stage.cells

    def rel(self, path: Path) -> str:
        """A path as reports show it: relative to the run's root when it lies under it."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def describe(self, path: Path) -> dict[str, Any]:
        """path (relative), bytes and sha256 of an artifact, for a report row."""
        return {**artifacts.describe_file(path), "path": self.rel(path)}


def _unique(paths) -> list[Path]:
    seen: dict[Path, None] = {}
    for p in paths:
        seen.setdefault(p, None)
    return list(seen)


# ---------------------------------------------------------------- loading pipeline.yaml

_VAR = re.compile(r"\$\{(\w+)\}")
_CELL = re.compile(r"\{(\w+(?:\.\w+)?)\}")  # {variant}, or {variant.format}: a field of its config entry


def load_pipeline(path: Path, cfg: ModelConfig, root: Path) -> list[Stage]:
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ConfigError(f"{path}: expected a top-level 'stages:' mapping of stage name to its definition")
    variables = {"build": str(build_dir(root, cfg)), "reports": str(reports_dir(root, cfg)), "model": cfg.name,
                 "sweep_file": str(sweep_path(cfg.bench.sweep))}
    stages = []
    for name, spec in data["stages"].items():
        where = f"{path}: stage {name!r}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(sorted(STAGE_KEYS))}")
        unknown = set(spec) - STAGE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(STAGE_KEYS))}")
        if not isinstance(spec.get("module"), str):
            raise ConfigError(f"{where}: 'module' must name a Python module, e.g. stages.{name}")
        for key in ("params", "deps", "outs"):
            if not isinstance(spec.get(key, []), list):
                raise ConfigError(f"{where}: {key!r} must be a list")
        for p in spec.get("params", []):
            if p == "weights":
                continue
            try:
                get_param(cfg, p)
            except KeyError:
                raise ConfigError(f"{where}: param {p!r} is not a key of the model config {cfg.source}") from None
        matrix, entries = _matrix(spec.get("matrix", {}), cfg, where)
        empty = {k for k, v in matrix.items() if not v}  # a config mapping left empty (quantize.variants: {})
        matrix = {k: v for k, v in matrix.items() if v}
        # deps and outs of an empty key do not exist for this model: dropped, not expanded
        kept = {key: [t for t in spec.get(key, []) if not any(f"{{{k}}}" in t or f"{{{k}." in t for k in empty)]
                for key in ("deps", "outs")}
        cells = []
        for combo in itertools.product(*matrix.values()):
            values = dict(zip(matrix, combo, strict=True))
            fields = {**values, **{f"{k}.{f}": str(getattr(entries[k][v], f)) for k, v in values.items()
                                   if k in entries for f in _attributes(entries[k][v])}}
            deps = [_expand(d, variables, fields, root, where) for d in kept["deps"]]
            outs = [_expand(o, variables, fields, root, where) for o in kept["outs"]]
            cells.append(Cell(values, deps, outs))
        if not isinstance(spec.get("on_demand", False), bool):
            raise ConfigError(f"{where}: 'on_demand' must be true or false")
        stages.append(Stage(name, spec["module"], list(spec.get("params", [])), cells, spec.get("desc", ""),
                            reports_dir(root, cfg) / spec.get("report", f"{name}.csv"), spec.get("on_demand", False)))
    _check_graph(stages, path)
    return stages


def _expand(template: str, variables: dict[str, str], values: dict[str, str], root: Path, where: str) -> Path:
    """`${build}/mnn/{component}.mnn` -> a path under root, for one matrix cell."""
    s = _VAR.sub(lambda m: variables.get(m.group(1), m.group(0)), template)
    try:
        s = _CELL.sub(lambda m: values[m.group(1)], s)
    except KeyError as e:
        raise ConfigError(f"{where}: {{{e.args[0]}}} in {template!r} is not a matrix key of this stage") from None
    p = Path(s)
    return p if p.is_absolute() else root / p


def _attributes(entry: Any) -> list[str]:
    """Fields and properties of a config entry usable as {key.field} in deps and outs."""
    cls = type(entry)
    return [n for n in dir(cls) if not n.startswith("_") and isinstance(getattr(cls, n, None), property)] + \
        [f.name for f in dataclasses.fields(entry)] if dataclasses.is_dataclass(entry) else []


def _matrix(spec: Any, cfg: ModelConfig, where: str) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """The matrix's values per key, and for a key bound to a config mapping, its entries by name."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: 'matrix' must map a name to a list or to a config key holding one")
    out, entries = {}, {}
    for k, v in spec.items():
        if isinstance(v, str):
            try:
                get_param(cfg, v)  # KeyError for a key the config does not have
                v = _config_value(cfg, v)
            except KeyError:
                raise ConfigError(f"{where}: matrix {k!r} names {v!r}, which is not a key of {cfg.source}") from None
        from_config = isinstance(spec[k], str)
        if isinstance(v, dict):
            entries[k] = {str(name): e for name, e in v.items()}
            v = list(v)
        if isinstance(v, list) and not v and from_config:
            out[k] = []  # the model config has none of these: the key's deps and outs are dropped
            continue
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: matrix {k!r} must be a non-empty list, got {v!r}")
        out[k] = [str(x) for x in v]
    return out, entries


def _config_value(cfg: ModelConfig, dotted: str) -> Any:
    """The config object at a dotted key (entries stay dataclasses, unlike get_param's plain values)."""
    obj: Any = cfg
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _check_graph(stages: list[Stage], path: Path) -> None:
    makers: dict[Path, str] = {}
    for s in stages:
        for o in s.all_outs:
            if o in makers:
                raise ConfigError(f"{path}: {o} is an output of both {makers[o]!r} and {s.name!r}")
            makers[o] = s.name
    done: set[str] = set()
    for s in stages:
        for d in s.deps:
            if d in makers and makers[d] not in done:
                raise ConfigError(
                    f"{path}: stage {s.name!r} reads {d}, made by {makers[d]!r}, which must be listed before it"
                )
        done.add(s.name)


def build_dir(root: Path, cfg: ModelConfig) -> Path:
    return root / "build" / cfg.name


def reports_dir(root: Path, cfg: ModelConfig) -> Path:
    return root / "reports" / cfg.name


def report_path(ctx: StageContext) -> Path:
    return ctx.stage.report


# ---------------------------------------------------------------- hashing


def code_files(module: str) -> list[Path]:
    """The stage module and every stages.* module it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen or not mod.startswith("stages"):
            continue
        rel = mod.split(".")[1:]
        file = PACKAGE_DIR.joinpath(*rel).with_suffix(".py") if rel else PACKAGE_DIR / "__init__.py"
        if not file.exists():
            file = PACKAGE_DIR.joinpath(*rel, "__init__.py")
            if not file.exists():
                continue
        seen[mod] = file
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    base = ".".join(mod.split(".")[: -node.level] + [node.module])
                todo.append(base)
                todo.extend(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names)
    return sorted(seen.values())


class Lock:
    """build/<model>/pipeline.lock.json: per finished stage its hashes and outputs; plus a file-hash cache.

    Paths under the run's root are stored relative to it (as dvc.lock does), so a project folder that is
    moved or copied stays up to date; paths outside the root (a sweep file elsewhere) stay absolute."""

    def __init__(self, path: Path, root: Path):
        self.path = path
        self.root = Path(root)
        self.data: dict[str, Any] = {"stages": {}, "files": {}}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                log.warning("lock file %s is unreadable; every stage will re-run", path)
        self.data.setdefault("stages", {})
        self.data.setdefault("files", {})

    def key(self, path: Path) -> str:
        """How the lock file names a path: relative to the root when under it."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, key: str) -> Path:
        """The file a lock-file key names in this root."""
        p = Path(key)
        return p if p.is_absolute() else self.root / p

    def file_hash(self, path: Path) -> str:
        """sha256 of a file; for an artifact with external weights beside it, of the file and those."""
        side = artifacts.sidecars(path)
        if not side:
            return self._one_hash(path)
        return hashlib.sha256("+".join(self._one_hash(q) for q in [path, *side]).encode()).hexdigest()

    def _one_hash(self, path: Path) -> str:
        st = path.stat()
        key = self.key(path)
        hit = self.data["files"].get(key)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        h = file_sha256(path)
        self.data["files"][key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h}
        return h

    def save(self) -> None:
        with artifacts.atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))


def stage_state(stage: Stage, ctx: StageContext, lock: Lock, report: Path) -> dict[str, Any]:
    params = {p: (ctx.weights if p == "weights" else get_param(ctx.cfg, p)) for p in stage.params}
    code = {str(f.relative_to(PACKAGE_DIR.parent)): file_sha256(f) for f in code_files(stage.module)}
    return {
        "params": params,
        "code": code,
        "deps": {lock.key(d): lock.file_hash(d) for d in stage.deps if d.exists()},
        "outs": sorted({lock.key(o) for o in stage.outs + [report]}),
    }


def why_stale(stage: Stage, state: dict[str, Any], lock: Lock) -> str | None:
    """None when the stage is up to date, else the reason it must run."""
    old = lock.data["stages"].get(stage.name)
    if old is None:
        return "never finished"
    for key in ("code", "params", "deps"):
        if old.get(key) != state[key]:
            if key == "params":
                changed = [k for k in state["params"] if old["params"].get(k) != state["params"][k]]
                return f"params changed: {', '.join(changed) or 'set of params'}"
            before, now = old.get(key) if isinstance(old.get(key), dict) else {}, state[key]
            changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
            return f"{key} changed: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"
    for out in state["outs"]:
        p = lock.resolve(out)
        rec = old.get("out_files", {}).get(out)
        if not p.exists():
            return f"output {p} is missing"
        if rec is None or lock.file_hash(p) != rec:
            return f"output {p} changed since it was made"
    return None


# ---------------------------------------------------------------- running


@contextlib.contextmanager
def run_lock(build: Path) -> Iterator[None]:
    """One run per model at a time: a second one fails at once with a clear message."""
    build.mkdir(parents=True, exist_ok=True)
    path = build / ".run.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise PipelineError(
                f"another run on {build} is in progress ({holder}); wait for it to finish or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class StageResult:
    stage: str
    status: str  # ran | cached | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    peak_rss_mb: float = float("nan")  # the largest peak resident memory of the stage's process or a worker
    peak_tree_mb: float = float("nan")  # the peak of their sum, sampled every 0.25 s


def provenance(ctx: StageContext) -> dict[str, Any]:
    return {"model": ctx.cfg.name, "weights": ctx.weights, "stage": ctx.stage.name}


def finish_rows(ctx: StageContext, rows: list[dict]) -> list[dict]:
    prov = provenance(ctx)
    extra = {**artifacts.machine(), **artifacts.tool_versions()}
    return [{**prov, **r, **{k: v for k, v in extra.items() if k not in r}} for r in rows]


def _select(stages: list[Stage], targets: list[str] | None, single: bool, path: Path) -> list[Stage]:
    if not targets:
        return [s for s in stages if not s.on_demand]
    by_name = {s.name: s for s in stages}
    for t in targets:
        if t not in by_name:
            raise PipelineError(f"unknown stage {t!r} in {path}; stages: {', '.join(by_name)}")
    if single:
        return [s for s in stages if s.name in targets]
    makers = {o: s.name for s in stages for o in s.all_outs}
    want = set(targets)
    for s in reversed(stages):
        if s.name in want:
            want.update(makers[d] for d in s.deps if d in makers and not by_name[makers[d]].on_demand)
    return [s for s in stages if s.name in want]


def optional_input(path: Path, makers: dict[Path, str], stages: list[Stage]) -> bool:
    """An input made by an on-demand stage: used when it is there, not needed when it is not."""
    by_name = {s.name: s for s in stages}
    return path in makers and by_name[makers[path]].on_demand


def run_pipeline(
    cfg: ModelConfig,
    root: Path,
    pipeline_file: Path | None = None,
    targets: list[str] | None = None,
    single: bool = False,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> list[StageResult]:
    """Run the stages (targets and what they need, or all) in order; return one result per stage."""
    from stages.sam.models import warn_if_random

    pipeline_file = pipeline_file or PACKAGE_DIR.parent / "pipeline.yaml"
    all_stages = load_pipeline(pipeline_file, cfg, root)
    stages = _select(all_stages, targets, single, pipeline_file)
    makers = {o: s.name for s in all_stages for o in s.all_outs}
    build, reports = build_dir(root, cfg), reports_dir(root, cfg)
    weights = weights_tag(cfg, root)  # a required checkpoint that is missing stops here, before any folder is made
    for folder in (build, reports):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise PipelineError(f"cannot write to output folder {folder}: {e.strerror or e}. "
                                f"Pass --root with a writable folder.") from None
    results: list[StageResult] = []
    with run_lock(build):
        warn_if_random(cfg, root)
        lock = Lock(build / "pipeline.lock.json", root)
        failed: set[str] = set()
        for stage in stages:
            ctx = StageContext(stage, cfg, root, build, reports, weights, dict(options or {}))
            report = report_path(ctx)
            upstream_failed = sorted({makers[d] for d in stage.deps if d in makers and makers[d] in failed})
            # a failed stage leaves either fresh outputs or none: run on what it made if all of it is there
            if upstream_failed and any(not d.exists() for d in stage.deps):
                failed.add(stage.name)
                results.append(StageResult(stage.name, "skipped", detail=f"upstream failed: {', '.join(upstream_failed)}"))
                log.error("[%s] skipped: upstream stage %s failed", stage.name, ", ".join(upstream_failed))
                continue
            missing = [d for d in stage.deps if not d.exists() and not optional_input(d, makers, all_stages)]
            if missing:
                d = missing[0]
                who = f"it is made by stage {makers[d]!r}; run that stage first (drop --single)" if d in makers else \
                    "no stage makes it; create it or fix the deps in pipeline.yaml"
                raise PipelineError(f"stage {stage.name!r} needs input {d}, which is missing: {who}")
            state = stage_state(stage, ctx, lock, report)
            reason = "forced" if force else why_stale(stage, state, lock)
            if reason is None:
                results.append(StageResult(stage.name, "cached"))
                log.info("[%s] up to date, skipped", stage.name)
                continue
            for d in {o.parent for o in stage.outs}:
                for p in artifacts.remove_partials(d):
                    log.info("[%s] removed partial file %s left by an interrupted run", stage.name, p)
            log.info("[%s] running (%s)", stage.name, reason)
            results.append(_run_stage(stage, ctx, state, lock, report))
            if results[-1].status == "failed":
                failed.add(stage.name)
    return results


# Heavy modules the stage processes start from: imported once by multiprocessing's fork server, so each
# stage process forks from it in about 0.1 s instead of importing torch again (about 3 s).
_PRELOAD = ["torch", "onnx", "onnxruntime", "numpy", "pandas", "stages.sam.models", "stages.core.artifacts"]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def peak_rss_mb() -> float:
    """Peak resident memory of this process or of any child it waited for (the stage's workers), in MB."""
    import resource

    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(kib / 1024, 1)


def _stage_child(module_name: str, ctx: StageContext, queue, env: dict[str, str], level: int) -> None:
    """Body of a stage's own process: run the module, send log records and the outcome to the parent."""
    import logging.handlers
    import signal

    os.environ.clear()
    os.environ.update(env)  # the parent's environment now, not the fork server's from when it started
    signal.signal(signal.SIGTERM, _raise_interrupt)  # unwind: temp files are removed on the way out
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(queue)]
    root.setLevel(level)
    try:
        rows = importlib.import_module(module_name).run(ctx)
        queue.put(("ok", rows, "", peak_rss_mb()))
    except PipelineError as e:
        queue.put(("error", str(e), "", peak_rss_mb()))
    except KeyboardInterrupt:
        queue.put(("interrupted", "", "", peak_rss_mb()))
    except Exception as e:  # a bug or a tool's exception: the stage fails, the run goes on
        queue.put(("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=-3), peak_rss_mb()))


def _in_own_process(stage: Stage, ctx: StageContext) -> tuple[str, Any, str, float]:
    """Run the stage in its own process, so its memory is freed when it ends and its peak is its own, and a
    native crash or the kernel's OOM killer fails this stage instead of the whole run."""
    import multiprocessing
    import queue as queue_mod

    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(_PRELOAD)
    q = mp.Queue()
    proc = mp.Process(target=_stage_child, name=f"stage-{stage.name}",
                      args=(stage.module, ctx, q, dict(os.environ), logging.getLogger().getEffectiveLevel()))
    proc.start()
    sampler = TreeMemory(proc.pid)
    outcome = None
    try:
        while outcome is None:
            try:
                item = q.get(timeout=0.2)
            except queue_mod.Empty:
                if not proc.is_alive():
                    try:
                        item = q.get(timeout=1.0)
                    except queue_mod.Empty:
                        break
                else:
                    continue
            if isinstance(item, logging.LogRecord):
                logging.getLogger(item.name).handle(item)
            else:
                outcome = item
        proc.join()
    except BaseException:  # Ctrl-C / SIGTERM here: stop the stage the same way, then go on unwinding
        if proc.is_alive():
            proc.terminate()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for d in {o.parent for o in stage.outs}:
            artifacts.remove_partials(d)
        raise
    finally:
        q.close()
        sampler.stop()
    if outcome is None:
        from stages.core.isolate import describe_exit

        why = describe_exit(proc.exitcode)
        if proc.exitcode == -9:
            why += " (SIGKILL: often the kernel's out-of-memory killer; see `dmesg`)"
        return "error", f"stage process {why}", "", float("nan"), sampler.peak_mb
    if outcome[0] == "interrupted":
        raise KeyboardInterrupt
    return (*outcome, sampler.peak_mb)


class TreeMemory:
    """Samples the summed resident memory of a process and all its descendants (a stage and its workers
    run at the same time: the PyTorch reference in the stage, a runtime in a worker), every `every` s."""

    def __init__(self, pid: int, every: float = 0.25):
        import threading

        self.peak_mb = 0.0
        self._pid, self._every = pid, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"memory-{pid}")
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            total = 0
            for p in [root, *self._children(root)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, round(total / 2**20, 1))
            self._done.wait(self._every)

    @staticmethod
    def _children(root) -> list:
        import psutil

        try:
            return root.children(recursive=True)
        except psutil.Error:
            return []

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _run_stage(stage: Stage, ctx: StageContext, state: dict, lock: Lock, report: Path) -> StageResult:
    t0 = time.perf_counter()
    lock.data["stages"].pop(stage.name, None)  # a stage that starts is not finished until it says so
    lock.save()
    kind, rows, tb, peak, tree = _in_own_process(stage, ctx)
    memory = {"stage_peak_rss_mb": peak, "stage_peak_tree_mb": tree}
    if kind == "error":
        log.error("[%s] failed: %s%s", stage.name, rows, f"\n{tb}" if tb else "")
        _write_failure_report(ctx, report, rows, memory)
        return StageResult(stage.name, "failed", time.perf_counter() - t0, rows, peak, tree)
    seconds = time.perf_counter() - t0
    rows = finish_rows(ctx, [{**r, **memory} for r in rows])
    artifacts.write_csv(report, rows, first=["model", "weights", "stage"])
    bad = [r for r in rows if str(r.get("status", "ok")).startswith("failed")]
    below = [r for r in rows if r.get("pass") is False and r.get("gate", True) and r not in bad]
    missing = [o for o in stage.outs if not o.exists()]
    if bad or below or missing:
        failed_cells = list(dict.fromkeys(f"{r.get('cell', r.get('path', '?'))}: {r['status']}" for r in bad))
        detail = "; ".join(failed_cells[:3] + ([f"... {len(failed_cells) - 3} more"] if len(failed_cells) > 3 else [])
                           + ([f"{len(below)} rows fail their thresholds (pass=False in {ctx.rel(report)})"]
                              if below else [])
                           + [f"output {o} was not made" for o in missing if not bad])
        log.error("[%s] failed: %s", stage.name, detail)
        return StageResult(stage.name, "failed", seconds, detail, peak, tree)
    state = dict(state)
    state["out_files"] = {o: lock.file_hash(lock.resolve(o)) for o in state["outs"]}
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    state["seconds"] = round(seconds, 2)
    state["peak_rss_mb"] = peak
    state["peak_tree_mb"] = tree
    lock.data["stages"][stage.name] = state
    lock.save()
    log.info("[%s] done in %.1f s, peak memory %.0f MB (one process), %.0f MB (stage and workers together) -> %s",
             stage.name, seconds, peak, tree, report)
    return StageResult(stage.name, "ran", seconds, peak_rss_mb=peak, peak_tree_mb=tree)


def _write_failure_report(ctx: StageContext, report: Path, why: str, memory: dict | None = None) -> None:
    """A stage that raised still leaves a report saying so (its artifacts stay as they were)."""
    rows = finish_rows(ctx, [{"cell": c.key, "status": f"failed: {why}", **(memory or {})} for c in ctx.cells])
    artifacts.write_csv(report, rows, first=["model", "weights", "stage"])


def summary_table(results: list[StageResult]) -> str:
    lines = [f"{'stage':<16} {'status':<8} {'seconds':>8} {'peak MB':>8} {'all MB':>8}  detail"]
    for r in results:
        peak, tree = ("" if v != v else f"{v:.0f}" for v in (r.peak_rss_mb, r.peak_tree_mb))
        lines.append(f"{r.stage:<16} {r.status:<8} {r.seconds:>8.1f} {peak:>8} {tree:>8}  {r.detail[:200]}")
    lines.append("peak MB: the largest process of the stage (kernel's maxrss); all MB: the stage and its workers "
                 "summed (sampled)")
    return "\n".join(lines)
