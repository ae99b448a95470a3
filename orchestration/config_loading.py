"""Config files and `--set key=value` overrides → a validated config (of the kind it names), or one readable line
saying why not."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ray_jobs.specs import CONFIG_KINDS, CustomTrainConfig


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 5e-5 as a string (it wants a dot and a signed exponent); accept YAML 1.2 floats too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


def read_mapping(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else _load_yaml(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` sets data["a"]["b"] = 1; values parse as YAML scalars, so 5e-5, true and [1,2] keep their types."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        try:
            node[leaf] = _load_yaml(raw) if raw else raw
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {_yaml_problem(exc)}") from None
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's messages span several lines (context, a quoted snippet, a caret): keep the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "config"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{where}: {err['msg']}{got}")
    return "invalid config: " + "; ".join(parts)


def validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """What a person wrote: unknown keys are errors here (the models themselves tolerate them on the wire)."""
    try:
        return model.model_validate(data, extra="forbid")
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def load_config(
    path: str | None,
    overrides: list[str],
    base: dict[str, Any] | None = None,
    model: type[BaseModel] | None = None,
) -> Any:
    """`model` None: the config's `kind` picks it (text when absent, as configs were before other kinds)."""
    data = copy.deepcopy(base or {})  # overrides write into nested sections: never into the caller's dict
    if path:
        data.update(read_mapping(path))
    data = apply_overrides(data, overrides)
    return anchored(validate(model or config_model(data), data), Path(path).parent if path else Path.cwd())


def config_model(data: dict[str, Any]) -> type[BaseModel]:
    """The config class that a mapping's `kind` names (text when absent, as configs were before other kinds)."""
    kind = data.get("kind", "text")
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"invalid config: kind {kind!r} is not one of {sorted(CONFIG_KINDS)}")
    return CONFIG_KINDS[kind]


def anchored(config: Any, base: Path) -> Any:
    """A relative `working_dir` is relative to the config file (as in a compose file), made absolute here: the
    training worker that submits the job runs elsewhere, in another directory. Other kinds pass unchanged."""
    if not isinstance(config, CustomTrainConfig):
        return config
    working_dir = config.runtime_env.working_dir
    if not working_dir or "://" in working_dir or Path(working_dir).is_absolute():
        return config
    runtime_env = config.runtime_env.model_copy(update={"working_dir": str((base / working_dir).resolve())})
    return config.model_copy(update={"runtime_env": runtime_env})
