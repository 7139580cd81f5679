"""A checker for batched torch envs, in the spirit of ``gymnasium.utils.env_checker.check_env``.

Gymnasium's checker accepts only single numpy envs; this one checks what a batched env on
torch tensors promises (:class:`~wam_env.imagined.ImaginedVecEnv` and anything shaped like it).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch


class VecEnvCheckError(AssertionError):
    """The batched env breaks its contract; the message says how."""


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise VecEnvCheckError(msg)


def _check_batch(name: str, x, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    _expect(torch.is_tensor(x), f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _expect(tuple(x.shape) == shape, f"{name} must have shape {shape}, got {tuple(x.shape)}")
    _expect(x.dtype == dtype, f"{name} must have dtype {dtype}, got {x.dtype}")
    _expect(x.device.type == device.type, f"{name} is on {x.device}, the env is on {device}")


def _random_actions(env: gym.vector.VectorEnv, gen: np.random.Generator) -> torch.Tensor:
    low, high = env.single_action_space.low, env.single_action_space.high
    a = gen.uniform(low, high, size=(env.num_envs, *low.shape)).astype(np.float32)
    return torch.as_tensor(a, device=env.device)


def check_vec_env(env: gym.vector.VectorEnv, steps: int | None = None, seed: int = 0) -> None:
    """Check spaces, dtypes, shapes, SAME_STEP autoreset, truncation, seeding determinism and
    the rejection of out-of-space actions. Raises :class:`VecEnvCheckError` on the first problem.

    Args:
        env: the batched env (torch tensors on ``env.device``).
        steps: steps per rollout; default: ``max_episode_length + 2`` (so every env truncates
            at least once and autoreset is exercised).
        seed: seed of the two identical rollouts compared for determinism.
    """
    n = env.num_envs
    device = torch.device(env.device)
    _expect(isinstance(env.single_observation_space, gym.spaces.Box), "single_observation_space must be a Box")
    _expect(isinstance(env.single_action_space, gym.spaces.Box), "single_action_space must be a Box")
    _expect(env.observation_space.shape == (n, *env.single_observation_space.shape), "observation_space is not the batched single space")
    _expect(env.action_space.shape == (n, *env.single_action_space.shape), "action_space is not the batched single space")
    _expect(
        env.metadata.get("autoreset_mode") == gym.vector.AutoresetMode.SAME_STEP,
        "metadata['autoreset_mode'] must be AutoresetMode.SAME_STEP",
    )
    for attr in ("episode_length_buf", "max_episode_length"):
        _expect(hasattr(env, attr), f"env must expose {attr}")
    obs_shape = (n, *env.single_observation_space.shape)
    steps = steps if steps is not None else int(env.max_episode_length) + 2

    def rollout() -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = np.random.default_rng(seed)
        obs, info = env.reset(seed=seed)
        _check_batch("reset obs", obs, obs_shape, torch.float32, device)
        _expect(isinstance(info, dict), "reset info must be a dict")
        _expect(bool((env.episode_length_buf == 0).all()), "episode_length_buf must be 0 after reset")
        trace = [(obs.clone(), torch.zeros(n, device=device))]
        saw_done = False
        for t in range(steps):
            before = env.episode_length_buf.clone()
            obs, reward, terminated, truncated, info = env.step(_random_actions(env, gen))
            _check_batch("obs", obs, obs_shape, torch.float32, device)
            _check_batch("reward", reward, (n,), torch.float32, device)
            _check_batch("terminated", terminated, (n,), torch.bool, device)
            _check_batch("truncated", truncated, (n,), torch.bool, device)
            _expect(bool(torch.isfinite(obs).all()), f"non-finite observation at step {t}")
            _expect(bool(torch.isfinite(reward).all()), f"non-finite reward at step {t}")
            done = terminated | truncated
            _expect(
                bool((truncated[before + 1 >= env.max_episode_length]).all()),
                f"envs at max_episode_length={env.max_episode_length} were not truncated at step {t}",
            )
            if bool(done.any()):
                saw_done = True
                _expect("final_obs" in info and "_final_obs" in info, "a finished env needs info['final_obs'] and info['_final_obs']")
                _check_batch("info['final_obs']", info["final_obs"], obs_shape, torch.float32, device)
                _expect(bool((info["_final_obs"] == done).all()), "info['_final_obs'] must equal terminated | truncated")
                _expect(bool((env.episode_length_buf[done] == 0).all()), "episode_length_buf of reset envs must be 0")
            _expect(bool((env.episode_length_buf[~done] == before[~done] + 1).all()), "episode_length_buf must count steps")
            trace.append((obs.clone(), reward.clone()))
        _expect(saw_done or steps < env.max_episode_length, "no env finished within max_episode_length steps")
        return trace

    first, second = rollout(), rollout()
    for t, ((o1, r1), (o2, r2)) in enumerate(zip(first, second)):
        _expect(torch.equal(o1, o2) and torch.equal(r1, r2), f"same seed and actions gave different results at step {t}")

    env.reset(seed=seed)
    bad = torch.as_tensor(env.single_action_space.high, device=device).expand(n, -1) + 1.0
    try:
        env.step(bad)
    except ValueError:
        pass
    else:
        raise VecEnvCheckError("an out-of-space action was accepted silently")
    wrong = torch.zeros(n + 1, *env.single_action_space.shape, device=device)
    try:
        env.step(wrong)
    except ValueError:
        pass
    else:
        raise VecEnvCheckError(f"actions of shape {tuple(wrong.shape)} were accepted for {n} envs")
