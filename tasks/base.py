"""A task is data: which real env, how its observations are scored, when it ends.

Reward and termination functions act on torch tensors of *observations* so that the same
code scores a real MuJoCo / Gymnasium transition and an imagined one (RWM computes rewards
from predicted states). A task without them (any Gymnasium env) relies on the world
model's learned reward and termination heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# (obs (B, D), action (B, A), next_obs (B, D)) -> reward (B,) per step
RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# next_obs (B, D) -> terminated (B,) bool
TerminationFn = Callable[[torch.Tensor], torch.Tensor]


def never_terminates(next_obs: torch.Tensor) -> torch.Tensor:
    """Termination of a task that only ends by time limit: all False, (B,) bool."""
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


@dataclass(frozen=True)
class Task:
    """Everything wam needs to know about a task.

    Attributes:
        name: short name used in configs and CLI (``pendulum``), or the Gymnasium id for a
            task without a module.
        env_id: the Gymnasium id of the real env (``Pendulum-v1``).
        max_episode_steps: episode length (steps) of the real env, used for imagined envs.
        reward_fn / termination_fn: analytic terms on observations, or None (learned heads);
            a task that ends only by time limit says so with :func:`never_terminates`.
        env_kwargs: keyword arguments for ``gymnasium.make(env_id, ...)``.
        registered_name: CamelCase part of the ``wam/<Name>-v0`` / ``wam/<Name>-Imagined-v0`` ids,
            or None for tasks that are not registered under their own id.
        defaults: default config overrides for this task (model / agent sections).
    """

    name: str
    env_id: str
    max_episode_steps: int
    reward_fn: RewardFn | None = None
    termination_fn: TerminationFn | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    registered_name: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
