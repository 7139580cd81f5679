"""stable-baselines3 face of a batched torch env (:class:`~wam_env.imagined.ImaginedVecEnv`).

    model = PPO("MlpPolicy", Sb3VecEnvAdapter(env))   # unchanged SB3 user code

The adapter turns the SAME_STEP torch env into SB3's ``VecEnv`` API: float32 numpy out,
``dones = terminated | truncated``, one info dict per env with

- ``"terminal_observation"``: the true last observation of a finished episode (from
  ``info["final_obs"]``; the returned obs is already the next episode's first),
- ``"TimeLimit.truncated"``: truncated and not terminated (SB3 then bootstraps from the
  value of the terminal observation),
- ``"episode"``: ``{"r": return, "l": length, "t": seconds}`` when an episode ends (what
  ``Monitor`` / ``VecMonitor`` add, so SB3 logs ``rollout/ep_rew_mean`` without a wrapper),
- ``"model_diverged"`` / ``"uncertainty"``: per-env values of the imagined env's info.

The wrapped env is one batched object, not ``num_envs`` separate envs: ``get_attr`` reads
its attribute once for every index, and ``set_attr`` / ``env_method`` act on all envs at
once (a subset of indices is refused). ``seed(s)`` takes effect at the next ``reset()``,
which seeds the batched env with ``s``.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn


class Sb3VecEnvAdapter(VecEnv):
    """SB3 ``VecEnv`` over a batched SAME_STEP torch env (obs (N, D), actions (N, A)).

    Args:
        env: a ``gymnasium.vector.VectorEnv`` on torch tensors with
            ``metadata["autoreset_mode"] == AutoresetMode.SAME_STEP`` and a ``device``.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        if env.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
            mode = env.metadata.get("autoreset_mode")
            raise ValueError(f"Sb3VecEnvAdapter needs a SAME_STEP autoreset env (true final obs in info), got {mode}")
        for name, space in (("observation", env.single_observation_space), ("action", env.single_action_space)):
            if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
                raise TypeError(f"Sb3VecEnvAdapter needs a flat Box {name} space, got {space}")
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.device = torch.device(env.device)
        self._actions: np.ndarray | None = None
        self._episode_return = torch.zeros(self.num_envs, dtype=torch.float64, device=self.device)
        self._episode_length = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._start_time = time.perf_counter()

    def reset(self) -> VecEnvObs:
        """Reset every env (seeded by the last ``seed()`` call, if any); returns obs (N, D)."""
        options = self._options[0] or None
        obs, _ = self.env.reset(seed=self._seeds[0], options=options)
        self._reset_seeds()
        self._reset_options()
        self._episode_return.zero_()
        self._episode_length.zero_()
        return self._numpy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Store actions (N, A) (or (N * A,) for A = 1) for :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step the batched env. Returns obs (N, D) float32, rewards (N,) float32, dones (N,)
        bool and a list of N info dicts."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        actions = torch.as_tensor(np.asarray(self._actions, dtype=np.float32), device=self.device)
        self._actions = None
        obs, reward, terminated, truncated, info = self.env.step(actions.reshape(self.num_envs, -1))
        done = terminated | truncated
        self._episode_return += reward
        self._episode_length += 1

        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        time_limit = (truncated & ~terminated).tolist()
        diverged = info["model_diverged"].tolist() if "model_diverged" in info else None
        uncertainty = info["uncertainty"].tolist() if "uncertainty" in info else None
        for i, item in enumerate(infos):
            item["TimeLimit.truncated"] = time_limit[i]
            if diverged is not None:
                item["model_diverged"] = diverged[i]
            if uncertainty is not None:
                item["uncertainty"] = uncertainty[i]
        if bool(done.any()):
            idx = done.nonzero().squeeze(1)
            final_obs = self._numpy(info["final_obs"][idx])
            returns, lengths = self._episode_return[idx].tolist(), self._episode_length[idx].tolist()
            elapsed = round(time.perf_counter() - self._start_time, 6)
            for j, i in enumerate(idx.tolist()):
                infos[i]["terminal_observation"] = final_obs[j]
                infos[i]["episode"] = {"r": returns[j], "l": lengths[j], "t": elapsed}
            self._episode_return[idx] = 0.0
            self._episode_length[idx] = 0
        return self._numpy(obs), reward.detach().cpu().numpy().astype(np.float32), done.cpu().numpy(), infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute, once per index."""
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env (all envs share it)."""
        self._require_all(indices, "set_attr")
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the batched env once; its result is returned for every env."""
        self._require_all(indices, "env_method")
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in range(self.num_envs)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether the batched env is wrapped (as a vector env) in ``wrapper_class``."""
        env, wrapped = self.env, False
        while isinstance(env, gym.vector.VectorWrapper):
            wrapped |= isinstance(env, wrapper_class)
            env = env.env
        return [wrapped for _ in self._get_indices(indices)]

    def _require_all(self, indices: VecEnvIndices, what: str) -> None:
        if indices is not None and sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError(f"{what}: the batched env has no per-env attributes or methods; use indices=None")

    @staticmethod
    def _numpy(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy().astype(np.float32, copy=False)
