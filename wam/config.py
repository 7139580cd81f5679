"""Experiment configs: YAML files in ``configs/`` plus ``key=value`` overrides.

An experiment config is one nested dict (see ``configs/default.yaml``). Three keys name
config *groups*, merged in from their own files before the overrides (as Hydra does):
``task=pendulum`` → ``configs/tasks/pendulum.yaml``, ``model=rwm_gru`` →
``configs/models/rwm_gru.yaml`` (the ``model`` section), ``agent=ppo_rsl_rl`` →
``configs/agents/ppo_rsl_rl.yaml`` (the ``agent`` section). A task that has no file (any
Gymnasium id) uses the defaults. Every other override is a dotted path into the dict
(``model.train.max_steps=500``); a path that does not exist is an error, never a silent
new key. Values are parsed as YAML scalars (``1e-3``, ``true``, ``[64, 64]``).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = {"task": "tasks", "model": "models", "agent": "agents"}

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; keys of ``update`` must exist in
    ``base`` (``where`` is the dotted path of ``base``, for error messages), except inside a
    free-form ``params`` section."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in out and not _free_form(where):
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {sorted(out)}")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            if node.get(key) is None and key in node:
                node[key] = {}
            else:
                raise ConfigError(f"unknown config key {'.'.join(keys[: i + 1])!r}; valid keys here: {sorted(node)}")
        node = node[key]
    if keys[-1] not in node and not _free_form(".".join(keys[:-1])):
        raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {sorted(node)}")
    node[keys[-1]] = value


def _free_form(path: str) -> bool:
    """``model.params`` / ``agent.params`` take any key here: the class that reads them
    (model constructor, agent config dataclass) rejects unknown ones with their names."""
    return path.rstrip(".") in ("model.params", "agent.params")


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    out = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r}")
        key, raw = arg.split("=", 1)
        if not key:
            raise ConfigError(f"empty key in {arg!r}")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _group_file(group: str, name: str) -> Path | None:
    path = CONFIG_DIR / GROUPS[group] / f"{name}.yaml"
    return path if path.exists() else None


def load_config(args: list[str], base: str | Path | None = None) -> dict[str, Any]:
    """The experiment config, built in this order:

    1. ``configs/default.yaml`` (or ``base``);
    2. the model and agent group files (``model=`` / ``agent=`` overrides pick them);
    3. the task file (``configs/tasks/<task>.yaml``, if any): its ``model_overrides.<model>``
       and ``agent_overrides.<agent>`` tune the chosen groups, its other keys the rest;
    4. every other ``key=value`` override, in order.
    """
    cfg = read_yaml(Path(base) if base else CONFIG_DIR / "default.yaml")
    overrides = parse_overrides(args)
    chosen = {k: v for k, v in overrides if k in GROUPS}
    cfg["task"] = str(chosen.get("task", cfg["task"]))
    task_file = _group_file("task", cfg["task"])
    task_cfg = read_yaml(task_file) if task_file else {}
    for group in ("model", "agent"):
        name = str(chosen.get(group, cfg[group]["name"]))
        path = _group_file(group, name)
        if path is None:
            available = sorted(p.stem for p in (CONFIG_DIR / GROUPS[group]).glob("*.yaml"))
            raise ConfigError(f"unknown {group} {name!r}; available: {available}")
        section = read_yaml(path)
        if section.get("name") != name:
            raise ConfigError(f"{path} must set name: {name}")
        tuned = (task_cfg.get(f"{group}_overrides") or {}).get(name) or {}
        cfg[group] = merge(section, tuned, f"{group}.")
    rest = {k: v for k, v in task_cfg.items() if not k.endswith("_overrides")}
    cfg = merge(cfg, rest)
    for key, value in overrides:
        if key not in GROUPS:
            _set_path(cfg, key, value)
    return cfg


def dataclass_from(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a config mapping; unknown keys are an error naming them."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown {where} keys {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        allowed = set(typing.get_args(hints[key]) or (hints[key],))
        numeric = {float, int} & allowed
        if isinstance(value, str) and numeric and str not in allowed:
            # YAML 1.1 reads 2e-5 (no dot) as a string; a number field takes it as the number it spells
            try:
                values[key] = float(value) if float in numeric else int(value)
            except ValueError:
                raise ConfigError(f"{where}.{key} must be a number, got {value!r}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # a dataclass's own checks (__post_init__)
        raise ConfigError(f"{where}: {e}") from e
