"""Reading config files: YAML with errors naming the file and line, a schema's ValidationError as today's one
line (stages/config/messages.py), and config values as the plain data that stage params hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pydantic
import yaml

from stages.config.messages import describe
from stages.config.model import ModelConfig
from stages.config.schema import as_schema, yaml_fields
from stages.core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MAX_YAML_DEPTH = 100  # no config nests near this; a deeper file is a mistake or an attack on the parser
MAX_YAML_BYTES = 4 * 2**20


class StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a mapping with a key given twice (YAML keeps the last one silently) and nesting
    deeper than MAX_YAML_DEPTH (PyYAML composes recursively: a deep file ends in RecursionError)."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                           problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a list or mapping as a key (the schema refuses it, naming it), or a merge `<<:`
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r} (each key may appear once)",
                                           problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Load a YAML file strictly (StrictLoader); a syntax error, a duplicate key, a file that is not UTF-8 text
    or one nested too deep names the file and line."""
    try:
        if path.is_dir():
            raise ConfigError(f"cannot read {path}: it is a folder, expected a YAML file")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes, expected a YAML config under "
                              f"{MAX_YAML_BYTES // 2**20} MB")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}); "
                          "expected a UTF-8 YAML file") from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


def load_typed(cls: type, data: Any, source: Path, prefix: str = "") -> Any:
    """Validate YAML data as `cls` (a config schema, or any stdlib dataclass: checked by a strict copy of it),
    with errors naming `source` and the dotted key (under `prefix`, when the data is a part of a file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    model = as_schema(cls)
    unknown = [k for k in data if not isinstance(k, str)]
    if unknown:  # a mapping key that is not a name cannot be a keyword
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}'; allowed keys here: "
                          f"{', '.join(yaml_fields(model))}")
    try:
        return model(**data)
    except pydantic.ValidationError as e:
        raise ConfigError(f"{source}: {describe(e, model, data, prefix)}") from None


def known_models(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (config_dir / "models").glob("*.yaml"))


def resolve_model_path(model: str, config_dir: Path = CONFIG_DIR) -> Path:
    """MODEL is a name under configs/models/ or a path to a YAML file."""
    p = Path(model)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"model config {p} does not exist")
        return p
    path = config_dir / "models" / f"{model}.yaml"
    if not path.exists():
        known = ", ".join(known_models(config_dir)) or "(none)"
        raise ConfigError(f"unknown MODEL {model!r}: no {path}. Known models: {known}.")
    return path


def load_model_config(model: str, config_dir: Path = CONFIG_DIR) -> ModelConfig:
    path = resolve_model_path(model, config_dir)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    cfg = load_typed(ModelConfig, data, path)
    cfg.source = path
    cfg.raw = data
    return cfg


def get_param(cfg: ModelConfig, dotted: str) -> Any:
    """Value of a dotted key (export.opset) in the effective config, for hashing stage params."""
    obj: Any = cfg
    for part in dotted.split("."):
        if dataclasses.is_dataclass(obj):
            if part not in yaml_fields(type(obj)):
                raise KeyError(dotted)
            obj = getattr(obj, part)
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            raise KeyError(dotted)
    return _plain(obj)


def _plain(obj: Any) -> Any:
    """Config values as plain data (dicts, lists, scalars): what the lock file records and hashes."""
    if dataclasses.is_dataclass(obj):
        return {k: v for k, v in dataclasses.asdict(obj).items() if k in yaml_fields(type(obj))}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj
