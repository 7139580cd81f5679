"""Score a policy in the task's real env (physics, not imagination).

Episode ``k`` of an evaluation always starts from ``reset(seed=seed + k)``, whatever
``num_envs`` is, so two policies evaluated with the same ``seed`` face the same start states.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np

from agents.policy import MLPPolicy
from tasks.base import Task
from tasks.collect import make_real_vec_env

# obs (N, D) float32 -> actions (N, A) in env units
Policy = Callable[[np.ndarray], np.ndarray]


def _as_callable(policy: Policy | MLPPolicy) -> Policy:
    return policy.act if isinstance(policy, MLPPolicy) else policy


def evaluate_policy(
    policy: Policy | MLPPolicy,
    task: Task,
    episodes: int = 20,
    seed: int = 0,
    num_envs: int = 10,
) -> np.ndarray:
    """Returns of ``episodes`` complete real episodes, shape (episodes,) float64.

    Episodes run in rounds of ``num_envs`` parallel envs (a gymnasium sync vector env of the
    task's real env); each round resets its envs with seeds ``seed + k`` and keeps each env's
    first episode only. Actions are clipped to the action box.
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    act = _as_callable(policy)
    num_envs = min(num_envs, episodes)
    env = make_real_vec_env(task, num_envs)
    low, high = env.single_action_space.low, env.single_action_space.high
    returns = np.zeros(episodes)
    for first in range(0, episodes, num_envs):
        obs, _ = env.reset(seed=[seed + first + i for i in range(num_envs)])
        total, running = np.zeros(num_envs), np.ones(num_envs, dtype=bool)
        while running.any():
            action = np.asarray(act(obs.reshape(num_envs, -1).astype(np.float32)), dtype=np.float32)
            action = np.clip(action.reshape(num_envs, *low.shape), low, high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
        count = min(num_envs, episodes - first)
        returns[first : first + count] = total[:count]
    env.close()
    return returns


def rollout_real(policy: Policy | MLPPolicy, task: Task, seed: int, steps: int) -> dict[str, np.ndarray]:
    """One real episode from ``reset(seed=seed)``, at most ``steps`` steps.

    Returns ``obs`` (T + 1, D) float32 (the start and every next observation, the true final
    one last), ``actions`` (T, A) float32 (clipped to the box, as applied), ``rewards`` (T,),
    ``terminated`` / ``truncated`` (T,) bool.
    """
    act = _as_callable(policy)
    env = gym.make(task.env_id, max_episode_steps=task.max_episode_steps, **task.env_kwargs)
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {"obs": [np.asarray(obs, np.float32).ravel()]}
    rows.update({k: [] for k in ("actions", "rewards", "terminated", "truncated")})
    for _ in range(steps):
        action = np.clip(np.asarray(act(rows["obs"][-1][None]), np.float32).reshape(low.shape), low, high)
        obs, reward, terminated, truncated, _ = env.step(action)
        for k, v in (("obs", np.asarray(obs, np.float32).ravel()), ("actions", action.ravel()), ("rewards", reward),
                     ("terminated", terminated), ("truncated", truncated)):
            rows[k].append(v)
        if terminated or truncated:
            break
    env.close()
    return {
        "obs": np.stack(rows["obs"]),
        "actions": np.asarray(rows["actions"], np.float32).reshape(-1, *low.shape),
        "rewards": np.asarray(rows["rewards"], np.float64),
        "terminated": np.asarray(rows["terminated"], bool),
        "truncated": np.asarray(rows["truncated"], bool),
    }


def evaluate_velocity_tracking(
    policy: Policy | MLPPolicy,
    task: str,
    episodes: int = 100,
    seed: int = 0,
    lin_vel_x: tuple[float, float] = (0.5, 1.0),
    device: str = "cpu",
) -> dict[str, float]:
    """Score a legged policy on MuJoCo: ``episodes`` robots, each given one forward command
    ``vx ~ U(lin_vel_x)`` m/s (no sideways or turning command, no resampling) for one episode.

    Returns a dict: ``episodes``, ``mean_return`` / ``std_return`` (the task's reward),
    ``track_lin_vel_xy_exp`` (per-step mean of exp(-|v_xy,cmd - v_xy|² / 0.25), 1 = perfect),
    ``lin_vel_error`` (per-step mean |v_xy,cmd - v_xy|, m/s), ``fall_rate`` (episodes ended by
    a termination before the time limit), ``fall_times_s`` (when each of them ended, s from
    reset, ascending: a gait that cannot start from rest falls in its first seconds),
    ``mean_episode_length`` (steps) and ``env_steps``.
    """
    from dataclasses import replace

    from tasks.locomotion.registry import env_cfg
    from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

    act = _as_callable(policy)
    cfg = env_cfg(task)
    commands = replace(cfg.commands, lin_vel_x=lin_vel_x, lin_vel_y=(0.0, 0.0), ang_vel_z=(0.0, 0.0), heading_command=False,
                       rel_standing_envs=0.0, resampling_time=cfg.episode_length_s + 1.0)
    env = LeggedVelocityVecEnv(replace(cfg, commands=commands), num_envs=episodes, device=device)
    lin = env.state_layout["base_lin_vel"]
    obs, _ = env.reset(seed=seed)
    limit = cfg.action_limit
    running = np.ones(episodes, dtype=bool)
    fell = np.zeros(episodes, dtype=bool)
    ret, length, track, err = (np.zeros(episodes) for _ in range(4))
    while running.any():
        command = env.command[:, :2].numpy().copy()
        action = np.clip(np.asarray(act(obs.cpu().numpy()), dtype=np.float32), -limit, limit)
        obs, reward, terminated, truncated, info = env.step(action)
        v = info["state"][:, lin][:, :2].cpu().numpy()
        e2 = np.sum((command - v) ** 2, axis=1)
        ret += np.where(running, reward.cpu().numpy(), 0.0)
        track += np.where(running, np.exp(-e2 / 0.25), 0.0)
        err += np.where(running, np.sqrt(e2), 0.0)
        length += running
        fell |= running & terminated.cpu().numpy()
        running &= ~(terminated | truncated).cpu().numpy()
    env.close()
    return {
        "episodes": episodes,
        "mean_return": float(ret.mean()),
        "std_return": float(ret.std()),
        "track_lin_vel_xy_exp": float(track.sum() / length.sum()),
        "lin_vel_error": float(err.sum() / length.sum()),
        "fall_rate": float(fell.mean()),
        "fall_times_s": sorted(float(t) for t in length[fell] * env.step_dt),
        "mean_episode_length": float(length.mean()),
        "env_steps": int(length.sum()),
        "lin_vel_x": list(lin_vel_x),
    }
