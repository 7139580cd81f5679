"""Experiment configs: groups, overrides, and unknown keys as errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wam.cli import main
from wam.config import ConfigError, dataclass_from, load_config


def test_defaults_and_groups():
    cfg = load_config([])
    assert cfg["task"] == "pendulum" and cfg["model"]["name"] == "rwm_gru"
    cfg = load_config(["model=mlp_ensemble", "agent=ppo_sb3", "seed=3", "model.train.max_steps=7"])
    assert cfg["model"]["name"] == "mlp_ensemble" and cfg["agent"]["name"] == "ppo_sb3"
    assert cfg["seed"] == 3 and cfg["model"]["train"]["max_steps"] == 7


def test_any_gymnasium_id_is_a_task():
    cfg = load_config(["task=MountainCarContinuous-v0"])
    assert cfg["task"] == "MountainCarContinuous-v0"


@pytest.mark.parametrize(
    "override, match",
    [
        ("sede=1", "unknown config key 'sede'"),
        ("model.train.max_stepz=1", "max_stepz"),
        ("collect.steps.x=1", "collect.steps"),
        ("model=no_such_model", "unknown model 'no_such_model'"),
        ("agent=no_such_agent", "unknown agent"),
        ("novalue", "expected key=value"),
    ],
)
def test_unknown_keys_are_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config([override])


def test_dataclass_from_names_unknown_keys():
    @dataclass
    class C:
        a: int = 1

    assert dataclass_from(C, {"a": 2}, "x").a == 2
    with pytest.raises(ConfigError, match=r"unknown x keys \['b'\]"):
        dataclass_from(C, {"b": 2}, "x")
    from agents.vla.ppo import VLAPPOConfig  # YAML 1.1 reads `ppo.lr=2e-5` as a string

    assert dataclass_from(VLAPPOConfig, {"lr": "2e-5"}, "ppo").lr == 2e-5
    with pytest.raises(ConfigError, match="ppo.lr must be a number, got 'fast'"):
        dataclass_from(VLAPPOConfig, {"lr": "fast"}, "ppo")
    from world_models.training import WorldModelTrainConfig  # a value the dataclass itself refuses

    with pytest.raises(ConfigError, match="model.train: need 0 <= near_fall_fraction"):
        dataclass_from(WorldModelTrainConfig, {"near_fall_fraction": 1.5}, "model.train")
    with pytest.raises(ConfigError, match=r"near_fall_fraction \+ recent_fraction < 1"):
        dataclass_from(WorldModelTrainConfig, {"near_fall_fraction": 0.5, "recent_fraction": 0.5}, "model.train")


def test_cli_reports_config_errors(capsys):
    assert main(["config", "bogus.key=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    assert main(["config", "seed=5"]) == 0
    assert "seed: 5" in capsys.readouterr().out
