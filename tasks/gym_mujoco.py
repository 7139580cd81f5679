"""Gymnasium MuJoCo tasks of the MBPO benchmark: InvertedPendulum-v5, Hopper-v5, HalfCheetah-v5.

Termination functions are the MBPO repository's ``static_fns`` (Janner et al. 2019), written
on the next observation (B, D) as torch so real and imagined transitions are judged alike:

- InvertedPendulum (D = 4: cart position m, pole angle rad, their velocities): the episode
  ends when the pole angle leaves ``|obs[1]| <= 0.2`` rad or the state is non-finite. The
  v5 reward is exactly ``1`` per step while the pole is upright (0 on the terminating step:
  ``reward = int(not terminated)``), so it is written on ``next_obs`` here.
- Hopper (D = 11: torso height m, torso angle rad, 3 joint angles, 6 velocities): ends unless
  the state is finite, ``|obs[1:]| < 100``, height > 0.7 m and ``|angle| < 0.2`` rad.
- HalfCheetah (D = 17): never ends (1000-step time limit).

Hopper's and HalfCheetah's v5 rewards are not functions of the observation (the forward
velocity is the finite difference of the x position, which the observation excludes), so
their reward is learned by the world model's reward head, as the MBPO paper does.
"""

from __future__ import annotations

import torch

from tasks.base import Task, never_terminates


def _finite(obs: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(obs).all(dim=-1)


def inverted_pendulum_termination(next_obs: torch.Tensor) -> torch.Tensor:
    """(B, 4) -> (B,) bool: the pole fell (``|angle| > 0.2`` rad) or the state is non-finite."""
    return ~(_finite(next_obs) & (next_obs[:, 1].abs() <= 0.2))


def inverted_pendulum_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """InvertedPendulum-v5 reward per step, exact: 1 while the pole stays up, else 0. (B,) float."""
    return (~inverted_pendulum_termination(next_obs)).to(next_obs.dtype)


def hopper_termination(next_obs: torch.Tensor) -> torch.Tensor:
    """(B, 11) -> (B,) bool, MBPO's ``static_fns/hopper.py``: not (finite, |s[1:]| < 100,
    height > 0.7 m, |angle| < 0.2 rad)."""
    height, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = _finite(next_obs) & (next_obs[:, 1:].abs() < 100).all(dim=-1) & (height > 0.7) & (angle.abs() < 0.2)
    return ~healthy


INVERTED_PENDULUM = Task(
    name="inverted_pendulum",
    env_id="InvertedPendulum-v5",
    max_episode_steps=1000,
    reward_fn=inverted_pendulum_reward,
    termination_fn=inverted_pendulum_termination,
)
HOPPER = Task(name="hopper", env_id="Hopper-v5", max_episode_steps=1000, termination_fn=hopper_termination)
HALFCHEETAH = Task(name="halfcheetah", env_id="HalfCheetah-v5", max_episode_steps=1000, termination_fn=never_terminates)

TASKS = (INVERTED_PENDULUM, HOPPER, HALFCHEETAH)
