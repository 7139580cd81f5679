"""Collect real transitions from any Gymnasium env (Box actions) with any policy."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from tasks.base import Task

# obs (N, D) float32 -> actions (N, A) in env units
Policy = Callable[[np.ndarray], np.ndarray]


def space_to_json(space: gym.Space) -> dict:
    """A JSON description of a Box space (saved beside the data)."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"wam needs Box spaces, got {space}")
    return {
        "type": "Box",
        "shape": list(space.shape),
        "dtype": str(space.dtype),
        "low": space.low.astype(float).ravel().tolist(),
        "high": space.high.astype(float).ravel().tolist(),
    }


def make_real_vec_env(task: Task, num_envs: int, seed: int | None = None) -> gym.vector.VectorEnv:
    """Synchronous vector env of the task's real env, SAME_STEP autoreset (true final_obs)."""
    env = gym.make_vec(
        task.env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        **task.env_kwargs,
    )
    if not isinstance(env.single_action_space, gym.spaces.Box):
        raise TypeError(f"{task.env_id} has action space {env.single_action_space}; wam needs a Box action space")
    if not isinstance(env.single_observation_space, gym.spaces.Box):
        raise TypeError(f"{task.env_id} has observation space {env.single_observation_space}; wam needs a Box")
    if seed is not None:
        env.action_space.seed(seed)
    return env


def random_policy(action_space: gym.spaces.Box, seed: int = 0) -> Policy:
    """Uniform random actions in the (single-env) Box."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(obs.shape[0], *low.shape)).astype(np.float32)

    return act


def with_noise(policy: Policy, action_space: gym.spaces.Box, std: float, seed: int = 0) -> Policy:
    """``policy`` plus Gaussian noise of ``std`` × half the action range, clipped to the box."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
    scale = 0.5 * (high - low) * std

    def act(obs: np.ndarray) -> np.ndarray:
        a = policy(obs)
        return np.clip(a + rng.normal(size=a.shape).astype(np.float32) * scale, low, high)

    return act


def dataset_meta(task: Task) -> dict:
    """What a dataset of ``task`` records beside its transitions (task, env id, spaces)."""
    env = gym.make(task.env_id, **task.env_kwargs)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    return {
        "task": task.name,
        "env_id": task.env_id,
        "obs_dim": int(np.prod(obs_space.shape)),
        "action_dim": int(np.prod(act_space.shape)),
        "observation_space": space_to_json(obs_space),
        "action_space": space_to_json(act_space),
        "max_episode_steps": task.max_episode_steps,
    }


def collect(
    task: Task,
    policy: Policy | None,
    steps: int,
    num_envs: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run ``policy`` (None: uniform random) in ``num_envs`` real envs for about ``steps``
    transitions in total (rounded up to a multiple of ``num_envs``).

    Returns flat transitions (the fields of ``world_models.data.FIELDS``): ``obs`` (N, D),
    ``action`` (N, A), ``reward`` (N,), ``next_obs`` (N, D) (the true final observation at
    episode ends), ``terminated`` / ``truncated`` (N,), ``episode`` (N,) ids local to this
    call, ``step`` (N,) index inside the episode. The unfinished tail of each env is kept.
    """
    env = make_real_vec_env(task, num_envs, seed)
    act_space = env.single_action_space
    act = policy if policy is not None else random_policy(act_space, seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode", "step")}
    obs, _ = env.reset(seed=seed)
    obs = obs.reshape(num_envs, -1).astype(np.float32)
    episode = np.arange(num_envs)
    step = np.zeros(num_envs, dtype=np.int64)
    next_episode = num_envs
    n_iter = -(-steps // num_envs)
    for _ in tqdm(range(n_iter), desc=f"collect {task.name}", disable=not progress, unit="step", unit_scale=num_envs):
        action = np.asarray(act(obs), dtype=np.float32).reshape(num_envs, -1)
        nxt, reward, terminated, truncated, info = env.step(action.reshape(env.action_space.shape))
        nxt = nxt.reshape(num_envs, -1).astype(np.float32)
        done = terminated | truncated
        true_next = nxt.copy()
        if done.any():
            final = info["final_obs"]
            for i in np.flatnonzero(done):
                true_next[i] = np.asarray(final[i], dtype=np.float32).ravel()
        for k, v in (("obs", obs), ("action", action), ("reward", reward), ("next_obs", true_next),
                     ("terminated", terminated), ("truncated", truncated), ("episode", episode.copy()), ("step", step.copy())):
            rows[k].append(np.asarray(v))
        step = np.where(done, 0, step + 1)
        episode = episode.copy()
        for i in np.flatnonzero(done):
            episode[i] = next_episode
            next_episode += 1
        obs = nxt
    env.close()
    return {k: np.stack(v, axis=1).reshape(-1, *np.asarray(v[0]).shape[1:]) for k, v in rows.items()}
