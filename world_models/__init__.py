"""World models behind one protocol (see :mod:`world_models.base`). Imports torch and numpy only."""

from __future__ import annotations

import inspect
from typing import Any

from world_models.base import Carry, ModelSpec, Prediction, WorldModel, check_batch_shapes
from world_models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from world_models.gru import DualAutoregressiveGRU
from world_models.heads import TransitionHeads, termination_metrics
from world_models.mlp_ensemble import ProbabilisticEnsemble
from world_models.normalizer import Normalizer
from world_models.pixel import PixelWorldModel
from world_models.training import WorldModelTrainConfig, open_loop_error, open_loop_rollout, train_world_model

# name used in configs, the CLI and checkpoints -> class
MODELS: dict[str, type[WorldModel]] = {
    "rwm_gru": DualAutoregressiveGRU,
    "mlp_ensemble": ProbabilisticEnsemble,
    "pixel_dit": PixelWorldModel,
}


def config_keys(cls: type[WorldModel]) -> list[str]:
    """The keyword arguments ``cls(spec, **config)`` accepts (everything but ``spec``)."""
    params = list(inspect.signature(cls.__init__).parameters)
    return [p for p in params if p not in ("self", "spec")]


def build_model(name: str, spec: ModelSpec, **config: Any) -> WorldModel:
    """A fresh model of the registered class ``name`` (see ``MODELS``) for ``spec``."""
    if name not in MODELS:
        raise ValueError(f"unknown world model {name!r}; known: {sorted(MODELS)}")
    unknown = set(config) - set(config_keys(MODELS[name]))
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)} for world model {name!r}; known: {config_keys(MODELS[name])}")
    return MODELS[name](spec, **config)


__all__ = [
    "Carry",
    "ModelSpec",
    "Prediction",
    "WorldModel",
    "check_batch_shapes",
    "Normalizer",
    "TransitionHeads",
    "termination_metrics",
    "DualAutoregressiveGRU",
    "ProbabilisticEnsemble",
    "PixelWorldModel",
    "MODELS",
    "build_model",
    "config_keys",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "WorldModelTrainConfig",
    "train_world_model",
    "open_loop_error",
    "open_loop_rollout",
]
