"""The public face of wam: imagined Gymnasium envs and their registration.

Importing ``wam_env`` registers, for every task with a registered name:

- ``wam/<Name>-v0``: the real env (physics),
- ``wam/<Name>-Imagined-v0``: the world model (``gym.make`` → numpy :class:`ImaginedEnv`,
  ``gym.make_vec`` → batched torch :class:`ImaginedVecEnv`),

``wam/AnymalC-Flat-Imagined-v0`` / ``wam/G1-Flat-Imagined-v0`` for legged world models
(:mod:`wam_env.legged`), ``wam/PushT-Pixels-Imagined-v0`` for pixel world models
(:mod:`wam_env.pixels`; ``wam/PushT-Pixels-v0`` is the real Push-T with 64x64 frames), and ``wam/Imagined-v0`` for any checkpoint (the task is read from the checkpoint, so a model
trained on any Gymnasium env works with its learned reward and termination heads).
"""

from __future__ import annotations

import gymnasium as gym

from tasks import LEGGED_TASKS, TASKS
from wam_env.imagined import ImaginedEnv, ImaginedVecEnv, Imagination
from wam_env.legged import ImaginedLeggedEnv, ImaginedLeggedVecEnv

_IMAGINED = "wam_env.imagined:ImaginedEnv"
_IMAGINED_VEC = "wam_env.imagined:ImaginedVecEnv"


def _register(env_id: str, **kwargs) -> None:
    if env_id not in gym.registry:
        gym.register(env_id, **kwargs)


def register_envs() -> None:
    """Register the wam env ids (idempotent)."""
    for task in TASKS.values():
        if task.registered_name is None:
            continue
        real = gym.spec(task.env_id)
        _register(
            f"wam/{task.registered_name}-v0",
            entry_point=real.entry_point,
            max_episode_steps=task.max_episode_steps,
            kwargs={**real.kwargs, **task.env_kwargs},
        )
        _register(
            f"wam/{task.registered_name}-Imagined-v0",
            entry_point=_IMAGINED,
            vector_entry_point=_IMAGINED_VEC,
            kwargs={"task": task.name},
        )
    for name in LEGGED_TASKS:  # wam/AnymalC-Flat-Imagined-v0, wam/G1-Flat-Imagined-v0
        _register(
            TASKS[name].env_id.replace("-v0", "-Imagined-v0"),
            entry_point="wam_env.legged:ImaginedLeggedEnv",
            vector_entry_point="wam_env.legged:ImaginedLeggedVecEnv",
            kwargs={"task": name},
        )
    _register("wam/Imagined-v0", entry_point=_IMAGINED, vector_entry_point=_IMAGINED_VEC)
    # pixel world models (wam_env/pixels.py); the real env needs the `pixels` extra (gym-pusht)
    _register("wam/PushT-Pixels-v0", entry_point="gym_pusht.envs:PushTEnv", max_episode_steps=300,
              kwargs={"obs_type": "pixels_agent_pos", "observation_width": 64, "observation_height": 64})
    _register("wam/PushT-Pixels-Imagined-v0", entry_point="wam_env.pixels:ImaginedPixelEnv",
              vector_entry_point="wam_env.pixels:ImaginedPixelVecEnv")


register_envs()

__all__ = ["ImaginedEnv", "ImaginedVecEnv", "ImaginedLeggedEnv", "ImaginedLeggedVecEnv", "Imagination", "register_envs"]
