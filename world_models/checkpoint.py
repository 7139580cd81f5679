"""World-model checkpoints: safetensors weights + a versioned JSON config. Never unpickles.

A checkpoint is a folder::

    config.json          {"format": "wam.world_model", "format_version": 1, "class": <MODELS name>,
                          "spec": ModelSpec.to_dict(), "config": model.config(), "extra": {...}}
    model.safetensors    the model's state dict (weights, normalizers, elite indices)
    tensors.safetensors  extra named tensors saved beside the model (e.g. start-state data)

Each file is written to a temporary file and moved into place with ``os.replace``;
``config.json`` is written last, so a folder with a config always has its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load as safetensors_load, save as safetensors_save
import torch

import world_models
from world_models.base import ModelSpec, WorldModel
from world_models.data import atomic_write_bytes, atomic_write_json

FORMAT = "wam.world_model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, foreign, corrupt, too new, or does not fit its model class."""


def save_checkpoint(
    model: WorldModel,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model`` (a class registered in ``world_models.MODELS``) to the folder ``path``.

    Args:
        extra: JSON-able metadata stored in ``config.json`` (task name, metrics, ...).
        tensors: named tensors saved in ``tensors.safetensors``.

    Returns the checkpoint folder.
    """
    path = Path(path)
    names = [name for name, cls in world_models.MODELS.items() if type(model) is cls]
    if not names:
        raise ValueError(f"cannot save a {type(model).__name__}: not one of world_models.MODELS {sorted(world_models.MODELS)}")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": names[0],
        "spec": model.spec.to_dict(),
        "config": model.config(),
        "extra": extra or {},
    }
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint config / extra must be JSON-serializable: {e}") from e
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save a checkpoint to {path}: it is a file, not a folder")
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    extra_tensors = {k: v.detach().cpu().contiguous() for k, v in (tensors or {}).items()}
    for name, data in (("model.safetensors", weights), ("tensors.safetensors", extra_tensors)):
        blob = safetensors_save(data)
        atomic_write_bytes(path / name, lambda f, blob=blob: f.write(blob))
    atomic_write_json(path / "config.json", config)
    return path


def _read_safetensors(file: Path, what: str) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file.parent} is incomplete: {what} file {file.name} missing")
    try:
        return safetensors_load(file.read_bytes())
    except Exception as e:  # safetensors raises its own SafetensorError (an Exception)
        raise CheckpointError(f"corrupt or truncated {what} file {file}: {e}") from e


def read_config(path: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of the checkpoint folder ``path`` (no weights read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: path does not exist")
    file = path / "config.json"
    if not path.is_dir() or not file.is_file():
        raise CheckpointError(f"{path} is not a wam world-model checkpoint: config.json missing")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint config {file}: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(f"{file} is not a wam world-model checkpoint (format={found!r}, expected {FORMAT!r})")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {file} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, this wam reads up to {FORMAT_VERSION}: upgrade wam"
        )
    name = cfg.get("class")
    if name not in world_models.MODELS:
        raise CheckpointError(f"checkpoint {file} names an unknown model class {name!r}; known: {sorted(world_models.MODELS)}")
    if not isinstance(cfg.get("config", {}), dict) or not isinstance(cfg.get("extra", {}), dict):
        raise CheckpointError(f"checkpoint {file}: 'config' and 'extra' must be JSON objects")
    unknown = set(cfg.get("config", {})) - set(world_models.config_keys(world_models.MODELS[name]))
    if unknown:
        raise CheckpointError(f"checkpoint {file} has unknown config keys {sorted(unknown)} for model class {name!r}")
    return cfg


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[WorldModel, dict[str, Any], dict[str, torch.Tensor]]:
    """Load a checkpoint folder: ``(model, extra, tensors)``, model and tensors on ``device``.

    Raises :class:`CheckpointError` naming the problem and the path for a missing, foreign,
    corrupt, too-new or mismatched checkpoint.
    """
    path = Path(path)
    cfg = read_config(path)
    try:
        spec = ModelSpec.from_dict(cfg["spec"])
        model = world_models.build_model(cfg["class"], spec, **cfg.get("config", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path / 'config.json'} does not describe a valid model: {e}") from e
    state = model.upgrade_state_dict(_read_safetensors(path / "model.safetensors", "weights"))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path / 'model.safetensors'} do not match {cfg['class']!r}: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong = [
        f"{k}: {state[k].dtype}{tuple(state[k].shape)} vs {v.dtype}{tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape or state[k].dtype != v.dtype
    ]
    if wrong:
        raise CheckpointError(f"weights in {path / 'model.safetensors'} have wrong shapes / dtypes (saved vs model): {wrong}")
    model.load_state_dict(state)
    tensors = {}
    if (path / "tensors.safetensors").exists():
        tensors = {k: v.to(device) for k, v in _read_safetensors(path / "tensors.safetensors", "tensors").items()}
    return model.to(device), cfg.get("extra", {}), tensors
