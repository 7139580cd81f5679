"""Pendulum-v1 (Gymnasium classic control) with its reward written on observations.

Observation (D=3): ``[cos(theta), sin(theta), theta_dot]`` (theta in rad, theta_dot in
rad/s); action (A=1): torque in N·m, in [-2, 2]. Gymnasium scores the state *before* the
step: ``-(angle_normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)``. Never terminates;
truncated after 200 steps.
"""

from __future__ import annotations

import torch

from tasks.base import Task, never_terminates


def pendulum_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1 reward per step. obs (B, 3), action (B, 1) -> (B,)."""
    theta = torch.atan2(obs[:, 1], obs[:, 0])
    u = action[:, 0].clamp(-2.0, 2.0)
    return -(theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u**2)


TASK = Task(
    name="pendulum",
    env_id="Pendulum-v1",
    max_episode_steps=200,
    reward_fn=pendulum_reward,
    termination_fn=never_terminates,
    registered_name="Pendulum",
)
