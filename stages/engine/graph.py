"""The stage graph: pipeline.yaml read into stages, each a list of matrix cells with its own inputs and outputs.

load_pipeline checks the file (keys, params that the model config has, matrix keys) and the graph (one maker per
output, makers listed before their readers); StageContext is what a stage's run(ctx) gets.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.config import ModelConfig, get_param, read_yaml, sweep_path
from stages.core import artifacts
from stages.core.errors import ConfigError

PIPELINE_FILE = Path(__file__).resolve().parents[2] / "pipeline.yaml"  # the repository's stage graph
STAGE_KEYS = {"module", "params", "deps", "outs", "matrix", "desc", "report", "on_demand", "timeout_s"}
# A stage still running after this many seconds is stopped and fails (its cleanup runs, as at Ctrl-C); a
# stage's `timeout_s` in pipeline.yaml sets its own. vit_h's slowest stages take under an hour on 2 cores.
DEFAULT_STAGE_TIMEOUT_S = 4 * 3600

@dataclass
class MatrixPoint:
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
    cells: list[MatrixPoint]
    desc: str = ""
    report: Path = Path()  # reports/<model>/<stage>.csv, or the name given by `report:`
    # on_demand: run only when named (`run --model M target_parity`), never as part of a plain run or as
    # another stage's input; a stage that reads its outputs takes them when they are there
    on_demand: bool = False
    timeout_s: float = DEFAULT_STAGE_TIMEOUT_S

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
    def cells(self) -> list[MatrixPoint]:
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
        _check_spec(name, spec, cfg, where)
        stages.append(Stage(name, spec["module"], list(spec.get("params", [])), _cells(spec, cfg, variables, root, where),
                            spec.get("desc", ""), reports_dir(root, cfg) / spec.get("report", f"{name}.csv"),
                            spec.get("on_demand", False), spec.get("timeout_s", DEFAULT_STAGE_TIMEOUT_S)))
    _check_graph(stages, path)
    return stages


def _check_spec(name: str, spec: Any, cfg: ModelConfig, where: str) -> None:
    """A stage's entry: known keys, a module, lists where lists belong, params the model config has."""
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
    if not isinstance(spec.get("on_demand", False), bool):
        raise ConfigError(f"{where}: 'on_demand' must be true or false")
    timeout = spec.get("timeout_s", DEFAULT_STAGE_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigError(f"{where}: 'timeout_s' must be a number of seconds > 0, got {timeout!r}")


def _cells(spec: dict, cfg: ModelConfig, variables: dict[str, str], root: Path, where: str) -> list[MatrixPoint]:
    """The stage's matrix expanded: one cell per combination, with its deps and outs."""
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
        cells.append(MatrixPoint(values, deps, outs))
    return cells


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


def makers(stages: list[Stage]) -> dict[Path, str]:
    """Each output (and stage CSV) of the graph, with the name of the stage that makes it."""
    return {o: s.name for s in stages for o in s.all_outs}


def optional_input(path: Path, made_by: dict[Path, str], stages: list[Stage]) -> bool:
    """An input made by an on-demand stage: used when it is there, not needed when it is not."""
    by_name = {s.name: s for s in stages}
    return path in made_by and by_name[made_by[path]].on_demand


def upstream(stage: Stage, made_by: dict[Path, str]) -> list[str]:
    """The stages that make this stage's inputs, in no particular order, without repeats."""
    return list(dict.fromkeys(made_by[d] for d in stage.deps if d in made_by))

