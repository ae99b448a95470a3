"""Experiment files → a validated CoordinatorRequest, plus the pure helpers the coordinator uses.

A bad file is refused before anything starts, with the line of the problem: people edit these by hand.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestration.config_loading import ConfigError, anchored, config_model, describe_validation_error
from orchestration.types import CoordinatorRequest, Experiment, RunOptions
from ray_jobs.specs import TrainConfig

FILE_KEYS = {"id", "max_concurrency", "metric", "mode", "run_cache", "defaults", "experiments"}


def _line_of(node: yaml.Node | None, path: list[Any]) -> int | None:
    """The 1-based line of `path` inside a composed YAML node tree (the deepest part of the path that exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
            if node is None:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _key_line(node: yaml.Node | None, path: list[Any], key: str) -> int | None:
    """The line of a mapping key itself (for unknown keys, whose values may sit on other lines)."""
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == key:
                return k.start_mark.line + 1
    return None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_experiments(path: str, options: RunOptions, max_concurrency: int | None = None) -> CoordinatorRequest:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"experiment file {path!r} does not exist")
    text = p.read_text()
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None

    def fail(line: int | None, message: str) -> ConfigError:
        return ConfigError(f"{path}:{f' line {line}:' if line else ''} {message}")

    if not isinstance(data, dict):
        raise fail(1, "the top level must be a mapping with 'id' and 'experiments'")
    for key in data:
        if key not in FILE_KEYS:
            raise fail(_key_line(root, [], key), f"unknown key {key!r} (allowed: {sorted(FILE_KEYS)})")
    entries = data.get("experiments")
    if not isinstance(entries, list) or not entries:
        raise fail(_line_of(root, ["experiments"]), "'experiments' must be a non-empty list")
    defaults = data.get("defaults") or {}
    seen: dict[str, int] = {}
    experiments = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise fail(_line_of(root, ["experiments", i]), f"experiment {i + 1} needs an 'id'")
        exp_id = str(entry["id"])
        if exp_id in seen:
            raise fail(
                _line_of(root, ["experiments", i, "id"]),
                f"duplicate experiment id {exp_id!r} (first on line {seen[exp_id]})",
            )
        seen[exp_id] = _line_of(root, ["experiments", i, "id"]) or 0
        overrides = {k: v for k, v in entry.items() if k != "id"}
        merged = _merge(defaults, overrides)
        try:
            model = config_model(merged)
        except ConfigError as exc:
            raise fail(
                _line_of(root, ["experiments", i, "kind"] if "kind" in overrides else ["defaults", "kind"]),
                f"experiment {exp_id!r}: {exc}",
            ) from None
        try:
            config = anchored(model.model_validate(merged, extra="forbid"), p.parent)
            experiments.append(Experiment(id=exp_id, config=config))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [x for x in err["loc"] if x not in ("config",)]
            in_entry = loc and loc[0] in overrides
            line = (
                _key_line(root, ["experiments", i, *loc[:-1]], str(loc[-1])) or _line_of(root, ["experiments", i, *loc])
                if in_entry
                else _key_line(root, ["defaults", *loc[:-1]], str(loc[-1])) or _line_of(root, ["defaults", *loc])
            )
            raise fail(line, f"experiment {exp_id!r}: {describe_validation_error(exc)}") from None
    try:
        return CoordinatorRequest(
            experiment_id=str(data.get("id") or p.stem),
            experiments=experiments,
            max_concurrency=max_concurrency or data.get("max_concurrency", 2),
            metric=data.get("metric", "accuracy"),
            mode=data.get("mode", "max"),
            run_cache=data.get("run_cache", True),
            options=options,
        )
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        raise fail(_key_line(root, [], str(loc[0])) if loc else None, describe_validation_error(exc)) from None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): obj}


def config_diffs(configs: list[TrainConfig]) -> list[dict[str, Any]]:
    """Per config, only the keys whose values differ across the set: the table shows what was varied."""
    flat = [flatten(c.model_dump(mode="json")) for c in configs]
    varied = {k for k in flat[0] if any(f.get(k) != flat[0][k] for f in flat)}
    return [{k: f[k] for k in sorted(varied)} for f in flat]


def run_cache_key(snapshot_id: str, config: TrainConfig) -> str:
    """Same snapshot + same training config (hyperparameters, seed, model, scaling) → same trained model. Which
    checkpoint counts as the best changes no weights; an unset `eval_every_steps` leaves the keys of before."""
    unset = {name for name in ("eval_every_steps",) if getattr(config, name, None) is None}
    unkeyed = {"best_metric", "best_mode"} | unset
    config_json = config.model_dump(mode="json", exclude=unkeyed)
    payload = json.dumps({"snapshot": snapshot_id, "config": config_json}, sort_keys=True)
    return "run-" + hashlib.sha256(payload.encode()).hexdigest()[:24]
