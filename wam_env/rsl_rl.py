"""rsl-rl 5.x face of a batched torch env (:class:`~wam_env.imagined.ImaginedVecEnv`).

    runner = OnPolicyRunner(RslRlVecEnvAdapter(env), train_cfg, log_dir, device)

rsl-rl 5.x's ``VecEnv`` has no ``reset``: the runner only calls ``get_observations()`` and
``step()`` and relies on the env to autoreset, so the adapter resets the env when it is built.
Observations are a ``TensorDict`` with one group, ``{"policy": obs (N, D)}`` (rsl-rl's
default group name: a config without ``obs_groups`` falls back to it for actor and critic).

``step`` returns ``(obs TensorDict, rewards (N,) float, dones (N,) long, extras)`` with

- ``extras["time_outs"]`` (N,) bool: truncated and not terminated;
- ``extras["log"]``: ``"Imagination/uncertainty"`` (mean) and ``"Imagination/diverged"``
  (fraction of envs whose prediction diverged this step), plus whatever the env reports in
  ``info["log"]`` (the legged envs' ``Episode_Reward/<term>``, ``Episode_Termination/<term>``),
  averaged per iteration and written to TensorBoard by rsl-rl's logger under those tags.

Time-outs in rsl-rl 5.5.1 (``PPO.process_env_step``): the reward of a timed-out step becomes
``r + gamma * V(s_t)``, where ``V(s_t)`` is the critic's value of the observation *before*
the step (stored with the action), and ``dones`` then cuts the return. The true final
observation is never used (not even received: the runner sees only the post-reset obs), so
bootstrapping approximates ``V(s_{t+1})`` by ``V(s_t)``.

rsl-rl actors are unbounded Gaussians while the imagined env refuses actions outside its
box: the adapter clips actions to the box (``clip_actions=True``); rsl-rl still stores the
unclipped sample for its log-probabilities, as with Isaac Lab's wrapper.

The runner collects rollouts under ``torch.inference_mode()``; the adapter steps the env with
inference mode switched off, so the env's state never becomes inference tensors (which
would make any later in-place update of it, e.g. a partial reset, fail outside training).
"""

from __future__ import annotations

import time

import gymnasium as gym
import torch
from rsl_rl.env import VecEnv
from tensordict import TensorDict


class RslRlVecEnvAdapter(VecEnv):
    """rsl-rl ``VecEnv`` over a batched SAME_STEP torch env.

    Args:
        env: a ``gymnasium.vector.VectorEnv`` on torch tensors (SAME_STEP autoreset) with
            ``device``, ``max_episode_length`` and ``episode_length_buf`` (N,).
        clip_actions: clip actions to the action box before stepping.
        seed: seed of the initial reset.

    Attributes:
        episodes: ``(step, seconds, return, length)`` of every finished episode, where
            ``step`` counts :meth:`step` calls from 0 and ``seconds`` is time since construction.
    """

    def __init__(self, env: gym.vector.VectorEnv, clip_actions: bool = True, seed: int | None = None) -> None:
        if env.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
            mode = env.metadata.get("autoreset_mode")
            raise ValueError(f"RslRlVecEnvAdapter needs a SAME_STEP autoreset env (true final obs in info), got {mode}")
        for name, space in (("observation", env.single_observation_space), ("action", env.single_action_space)):
            if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
                raise TypeError(f"RslRlVecEnvAdapter needs a flat Box {name} space, got {space}")
        self.env = env
        self.num_envs = env.num_envs
        self.num_actions = env.single_action_space.shape[0]
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.device = torch.device(env.device)
        self.max_episode_length = env.max_episode_length
        self.cfg = {
            "env": type(env).__name__,
            "num_envs": self.num_envs,
            "max_episode_length": int(env.max_episode_length),
            "obs_dim": env.single_observation_space.shape[0],
            "num_actions": self.num_actions,
            "clip_actions": clip_actions,
        }
        self.clip_actions = clip_actions
        self.action_low = torch.as_tensor(env.single_action_space.low, dtype=torch.float32, device=self.device)
        self.action_high = torch.as_tensor(env.single_action_space.high, dtype=torch.float32, device=self.device)
        self.episodes: list[tuple[int, float, float, int]] = []
        self._episode_return = torch.zeros(self.num_envs, dtype=torch.float64, device=self.device)
        self._episode_length = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._steps = 0
        self._start_time = time.perf_counter()
        obs, _ = env.reset(seed=seed)
        self._obs = obs

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """(N,) long steps into the current episode: the env's own tensor."""
        return self.env.episode_length_buf

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        # OnPolicyRunner.learn(init_at_random_ep_len=True) assigns a new tensor: write it into the env's
        self.env.episode_length_buf.copy_(value)

    def get_observations(self) -> TensorDict:
        """Current observations ``{"policy": (N, D)}``, batch size [N]."""
        return TensorDict({"policy": self._obs}, batch_size=[self.num_envs], device=self.device)

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        """Step with actions (N, A). Returns obs, rewards (N,), dones (N,) long, extras."""
        # The runner steps inside torch.inference_mode(); stepping the env outside it keeps the env's
        # state ordinary tensors, so the env can still be stepped (and updated in place) afterwards.
        with torch.inference_mode(False), torch.no_grad():
            if self.clip_actions:
                actions = torch.clamp(actions, self.action_low, self.action_high)
            obs, reward, terminated, truncated, info = self.env.step(actions)
        done = terminated | truncated
        self._obs = obs
        self._track_episodes(reward, done)
        log: dict[str, torch.Tensor] = {}
        if "uncertainty" in info:
            log["Imagination/uncertainty"] = info["uncertainty"].float().mean()
        if "model_diverged" in info:
            log["Imagination/diverged"] = info["model_diverged"].float().mean()
        log.update(info.get("log", {}))  # per-term episode sums of physics envs (Episode_Reward/...)
        extras = {"time_outs": truncated & ~terminated, "log": log}
        return self.get_observations(), reward.float(), done.long(), extras

    def _track_episodes(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        self._episode_return += reward
        self._episode_length += 1
        if bool(done.any()):
            idx = done.nonzero().squeeze(1)
            seconds = time.perf_counter() - self._start_time
            for ret, length in zip(self._episode_return[idx].tolist(), self._episode_length[idx].tolist()):
                self.episodes.append((self._steps, seconds, ret, length))
            self._episode_return[idx] = 0.0
            self._episode_length[idx] = 0
        self._steps += 1
