"""Collect world-model data on the batched MuJoCo legged envs.

A legged world model (RWM) does not learn the policy observation: it learns the privileged
*state* (``LeggedVelocityVecEnv.state_layout`` without the contact flags) and predicts the
binary contacts with separate heads. So a legged dataset stores, per transition:

- ``obs`` / ``next_obs`` (N, D): the model state before / after the step (base linear and
  angular velocity in the base frame, projected gravity, joint positions relative to
  default, joint velocities, joint torques, base height; true final state at episode ends),
- ``contacts`` (N, C) bool: foot and undesired (thigh / shank / knee) contacts of ``next_obs``,
- ``action`` (N, J): joint position offsets as applied (clipped to the action box),
- ``reward``, ``terminated``, ``truncated``, ``episode``, ``step`` as any wam dataset.

The policy still acts on the policy observation; the collector hands it that.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from tasks import TASKS
from tasks.collect import space_to_json
from tasks.locomotion.config import VelocityEnvCfg
from tasks.locomotion.registry import env_cfg
from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

MODEL_STATE = ("base_lin_vel", "base_ang_vel", "projected_gravity", "joint_pos", "joint_vel", "joint_torque", "base_height")
CONTACTS = ("foot_contact", "undesired_contact")
# policy obs (N, 48 / 99) torch -> actions (N, J), torch or numpy, env units
LeggedPolicy = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def state_split(env: LeggedVelocityVecEnv) -> tuple[slice, slice]:
    """Slices of ``info["state"]`` holding the model state (D) and the contact flags (C)."""
    lay = env.state_layout
    model, contact = slice(lay[MODEL_STATE[0]].start, lay[MODEL_STATE[-1]].stop), slice(lay[CONTACTS[0]].start, lay[CONTACTS[-1]].stop)
    if model.stop != contact.start or contact.stop != max(s.stop for s in lay.values()):
        raise RuntimeError(f"unexpected state layout {lay}")
    return model, contact


def legged_dataset_meta(task: str, cfg: VelocityEnvCfg | None = None) -> dict:
    """What a legged dataset records beside its transitions: dims, spaces, names of every state
    dimension (``joint_pos:LF_HAA``...), contacts, timing."""
    cfg = cfg or env_cfg(task)
    env = LeggedVelocityVecEnv(cfg, num_envs=1, num_threads=1)
    model, contact = state_split(env)
    names: list[str] = []
    for key in MODEL_STATE:
        sl = env.state_layout[key]
        n = sl.stop - sl.start
        per = env.joint_names if n == env.num_joints else ("x", "y", "z")[:n] if n <= 3 and key != "base_height" else ("",)
        names += [f"{key}:{p}" if p else key for p in per]
    contact_names = [f"foot:{f}" for f in cfg.robot.feet] + [f"undesired:{u}" for u in cfg.robot.undesired_contacts]
    low, high = env.single_action_space.low, env.single_action_space.high
    env.close()
    return {
        "task": task,
        "env_id": TASKS[task].env_id,
        "obs_dim": model.stop - model.start,
        "action_dim": len(low),
        "contact_dim": contact.stop - contact.start,
        "observation_space": space_to_json(gym.spaces.Box(-np.inf, np.inf, (model.stop - model.start,), np.float32)),
        "action_space": space_to_json(gym.spaces.Box(low, high, dtype=np.float32)),
        "obs_names": names,
        "contact_names": contact_names,
        "joint_names": list(env.joint_names),
        "step_dt": env.step_dt,
        "max_episode_steps": int(env.max_episode_length),
    }


def perturb_action(action: torch.Tensor, std: float, generator: torch.Generator, limit: float) -> torch.Tensor:
    """``action`` (n, J) plus Gaussian noise of ``std`` (action units) drawn from ``generator``
    (none drawn at std 0), clipped to the ±``limit`` action box: the "random-perturbed"
    actions of RWM's data mixtures, and the same perturbation policy evaluation applies in
    imagination."""
    if std > 0:
        action = action + std * torch.randn(action.shape, generator=generator)
    return action.clamp(-limit, limit)


def collect_legged(
    task: str,
    policy: LeggedPolicy | None,
    steps: int,
    num_envs: int = 64,
    seed: int = 0,
    action_noise: float = 0.0,
    progress: bool = True,
    cfg: VelocityEnvCfg | None = None,
    noise_hold: int = 1,
) -> dict[str, np.ndarray]:
    """Run ``policy`` (None: zero actions, i.e. the default pose, plus noise) on ``num_envs``
    MuJoCo robots for about ``steps`` transitions (rounded up to a multiple of ``num_envs``).

    ``action_noise`` adds Gaussian noise of that std (action units: x ``action_scale`` rad) to
    every action, the "random-perturbed" data of RWM's mixtures; ``noise_hold`` > 1 holds each
    draw for that many steps (piecewise-constant offsets: G1 topples at step 66-74 under fresh
    noise every step whatever it draws, while held joint offsets move the fall between step 59
    and 133, the action dependence a balancing policy needs the model to know; BENCHMARKS.md).
    Returns flat transitions with the fields described in the module docstring, grouped by env
    (time order inside).
    """
    if noise_hold < 1:
        raise ValueError(f"noise_hold must be >= 1 step, got {noise_hold}")
    cfg = cfg or env_cfg(task)
    env = LeggedVelocityVecEnv(cfg, num_envs=num_envs)
    model_sl, contact_sl = state_split(env)
    limit = cfg.action_limit
    gen = torch.Generator().manual_seed(seed + 7)
    obs, _ = env.reset(seed=seed)
    episode = torch.arange(num_envs)
    step = torch.zeros(num_envs, dtype=torch.long)
    next_episode = num_envs
    keys = ("obs", "action", "reward", "next_obs", "contacts", "terminated", "truncated", "episode", "step")
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    noise = torch.zeros(num_envs, env.num_joints)
    for t in tqdm(range(-(-steps // num_envs)), desc=f"collect {task}", disable=not progress, unit="step", unit_scale=num_envs):
        state = env.state_vector()[:, model_sl]
        if policy is None:
            action = torch.zeros(num_envs, env.num_joints)
        else:
            a = policy(obs)
            action = torch.as_tensor(a if torch.is_tensor(a) else np.asarray(a), dtype=torch.float32).cpu()
        if t % noise_hold == 0:
            noise = perturb_action(noise.zero_(), action_noise, gen, float("inf"))  # a fresh draw (zeros at std 0)
        action = (action + noise).clamp(-limit, limit)
        obs, reward, terminated, truncated, info = env.step(action)
        nxt = info["state"].cpu()
        for k, v in (("obs", state), ("action", action), ("reward", reward.cpu()), ("next_obs", nxt[:, model_sl]),
                     ("contacts", nxt[:, contact_sl] > 0.5), ("terminated", terminated.cpu()), ("truncated", truncated.cpu()),
                     ("episode", episode.clone()), ("step", step.clone())):
            rows[k].append(v)
        done = (terminated | truncated).cpu()
        step = torch.where(done, 0, step + 1)
        n_done = int(done.sum())
        if n_done:
            episode = episode.clone()
            episode[done] = torch.arange(next_episode, next_episode + n_done)
            next_episode += n_done
    env.close()
    return {k: torch.stack(v, dim=1).flatten(0, 1).numpy() for k, v in rows.items()}
