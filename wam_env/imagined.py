"""Gymnasium environments whose dynamics are a learned world model.

- :class:`ImaginedVecEnv`: the batched env (``gym.make_vec``): torch tensors on one device,
  thousands of envs advanced by one model call per step, SAME_STEP autoreset with the true
  final observation in ``info["final_obs"]``.
- :class:`ImaginedEnv`: the single env (``gym.make``): numpy in and out, passes
  ``gymnasium.utils.env_checker.check_env``.

Both share :class:`Imagination`, which owns the model, the reward / termination source and
the start states. Start states are real: a transition is drawn from real data, and the
model is warmed up on the (up to M) real steps of its episode before it, so an imagined
episode begins from a real state with a real latent history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from tasks import Task, get_task
from world_models.base import Carry, WorldModel
from world_models.checkpoint import load_checkpoint
from world_models.data import TransitionStore, WindowSampler

START_FIELDS = ("obs", "action", "next_obs", "reward", "terminated", "episode", "step")


def load_start_data(source: str | Path | dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Flat real transitions (``obs``, ``action``, ``episode``, ...) from a dataset folder or a dict."""
    if isinstance(source, (str, Path)):
        source = TransitionStore(source).load()
    missing = {"obs", "action", "episode"} - set(source)
    if missing:
        raise ValueError(f"start data is missing fields {sorted(missing)}")
    return {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, device=device) for k, v in source.items() if k in START_FIELDS}


class Imagination:
    """The shared core of the imagined envs: model + task terms + real start states.

    Args:
        model: a :class:`WorldModel` or the path of a checkpoint folder.
        task: task name / :class:`Task`; default: the task recorded in the checkpoint.
        start_data: flat real transitions to draw start states from (dataset folder or dict);
            default: the start data saved in the checkpoint.
        device: torch device for everything.
        reward: ``"task"`` (the task's analytic reward on observations), ``"learned"`` (the
            model's reward head), or ``"auto"`` (task if it has one).
        termination: same choices, for terminations; ``"learned"`` ends an episode where
            sigmoid(termination logit) > ``termination_threshold``.
        sample: draw from the model's predictive distribution (True) or use its mean.
        divergence_margin: a prediction outside the data range widened by this many range
            widths on each side (or non-finite) counts as divergence.
    """

    def __init__(
        self,
        model: WorldModel | str | Path,
        task: str | Task | None = None,
        start_data: str | Path | dict | None = None,
        device: str | torch.device = "cpu",
        reward: str = "auto",
        termination: str = "auto",
        termination_threshold: float = 0.5,
        sample: bool = True,
        divergence_margin: float = 1.0,
    ):
        self.device = torch.device(device)
        saved_tensors: dict[str, torch.Tensor] = {}
        extra: dict[str, Any] = {}
        if isinstance(model, (str, Path)):
            model, extra, saved_tensors = load_checkpoint(model, device=self.device)
        elif not isinstance(model, WorldModel):
            raise TypeError(f"model must be a WorldModel or a checkpoint path, got {type(model).__name__}")
        self.model = model.to(self.device).eval()
        self.spec = model.spec
        if task is None:
            if "task" not in extra:
                raise ValueError("no task given and the model carries none: pass task=<name or Gymnasium id>")
            task = extra["task"]
        self.task = task if isinstance(task, Task) else get_task(task)
        self.reward_mode = self._choose("reward", reward, self.task.reward_fn, model.has_reward_head)
        self.termination_mode = self._choose("termination", termination, self.task.termination_fn, model.has_termination_head, allow_none=True)
        self.termination_threshold = termination_threshold
        self.sample = sample

        if start_data is None:
            if not saved_tensors:
                raise ValueError("no start_data given and the checkpoint holds none: pass start_data=<dataset folder>")
            start_data = {k.removeprefix("start/"): v for k, v in saved_tensors.items() if k.startswith("start/")}
        data = load_start_data(start_data, self.device)
        if data["obs"].shape[-1] != self.spec.obs_dim or data["action"].shape[-1] != self.spec.action_dim:
            raise ValueError(
                f"start data has obs/action dims {data['obs'].shape[-1]}/{data['action'].shape[-1]}, "
                f"the model expects {self.spec.obs_dim}/{self.spec.action_dim}"
            )
        data = {k: v.float() if v.is_floating_point() else v for k, v in data.items()}
        for k in ("next_obs", "reward", "terminated"):  # the sampler gathers these; unused here
            data.setdefault(k, torch.zeros(data["obs"].shape[:1] + ((self.spec.obs_dim,) if k == "next_obs" else ()), device=self.device))
        self.starts = WindowSampler(data, history=self.spec.history, forecast=1)

        self.action_low = torch.tensor(self.spec.action_low, dtype=torch.float32, device=self.device)
        self.action_high = torch.tensor(self.spec.action_high, dtype=torch.float32, device=self.device)
        if self.spec.obs_low:
            lo = torch.tensor(self.spec.obs_low, dtype=torch.float32, device=self.device)
            hi = torch.tensor(self.spec.obs_high, dtype=torch.float32, device=self.device)
            width = (hi - lo).clamp_min(1e-6)
            self.obs_bound_low, self.obs_bound_high = lo - divergence_margin * width, hi + divergence_margin * width
        else:
            self.obs_bound_low = self.obs_bound_high = None
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()

    @staticmethod
    def _choose(what: str, mode: str, analytic, has_head: bool, allow_none: bool = False) -> str:
        if mode not in ("auto", "task", "learned"):
            raise ValueError(f"{what} must be 'auto', 'task' or 'learned', got {mode!r}")
        if mode == "auto":
            mode = "task" if analytic is not None else "learned"
        if mode == "task" and analytic is None:
            if allow_none:
                return "none"
            raise ValueError(f"{what}='task' but the task has no analytic {what} function")
        if mode == "learned" and not has_head:
            if allow_none:
                return "none"
            raise ValueError(f"the task has no analytic {what} and the world model has no learned {what} head")
        return mode

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.starts.generator.manual_seed(seed + 1)

    @torch.no_grad()
    def start(self, n: int) -> Carry:
        """Carry for ``n`` new episodes, each warmed up on real history before a real state."""
        start = torch.randint(0, len(self.starts), (n,), device=self.device, generator=self.starts.generator)
        w = self.starts.window(start)  # positions i-M .. i, (n, M+1, .)
        prev_action = torch.zeros_like(w["action"])
        prev_action[:, 1:] = w["action"][:, :-1]
        carry = self.model.initial(n)
        return self.model.observe_sequence(carry, w["obs"], prev_action, w["is_first"])

    def check_action(self, action: torch.Tensor, batch: int) -> None:
        if action.shape != (batch, self.spec.action_dim):
            raise ValueError(f"actions must have shape ({batch}, {self.spec.action_dim}), got {tuple(action.shape)}")
        ok = torch.isfinite(action) & (action >= self.action_low - 1e-6) & (action <= self.action_high + 1e-6)
        if not bool(ok.all()):
            bad = action[~ok.all(-1)][0].tolist()
            raise ValueError(
                f"action {bad} is outside the action space [{self.spec.action_low}, {self.spec.action_high}] "
                "(clip actions to the box before stepping)"
            )

    @torch.no_grad()
    def step(self, carry: Carry, action: torch.Tensor) -> tuple[Carry, dict[str, torch.Tensor]]:
        """One imagined step for every env. Returns the new carry and ``obs`` (B, D) (a
        diverged prediction is replaced by the last valid obs), ``reward`` (B,),
        ``terminated`` (B,), ``diverged`` (B,), ``uncertainty`` (B,)."""
        obs = carry["obs"]
        new_carry, pred = self.model.imagine(carry, action, sample=self.sample, generator=self.generator)
        next_obs = pred.obs
        diverged = ~torch.isfinite(next_obs).all(-1)
        if self.obs_bound_low is not None:
            diverged |= ((next_obs < self.obs_bound_low) | (next_obs > self.obs_bound_high)).any(-1)
        if bool(diverged.any()):  # the episode ends at the last valid observation
            next_obs = torch.where(diverged[:, None], obs, next_obs)
            new_carry["obs"] = next_obs
        if self.reward_mode == "task":
            reward = self.task.reward_fn(obs, action, next_obs)
        else:
            reward = pred.reward
        if self.termination_mode == "task":
            terminated = self.task.termination_fn(next_obs)
        elif self.termination_mode == "learned":
            terminated = torch.sigmoid(pred.termination_logit) > self.termination_threshold
        else:
            terminated = torch.zeros_like(diverged)
        reward = torch.nan_to_num(reward, nan=0.0, posinf=0.0, neginf=0.0)
        return new_carry, {
            "obs": next_obs,
            "reward": reward.float(),
            "terminated": terminated & ~diverged,
            "diverged": diverged,
            "uncertainty": pred.uncertainty,
        }


def scatter_carry(carry: Carry, idx: torch.Tensor, new: Carry) -> None:
    """Partial reset in place: ``carry[k][idx] = new[k]`` for every entry (idx (K,) long)."""
    for k, v in new.items():
        carry[k][idx] = v


class CarryVecEnv(gym.vector.VectorEnv):
    """The loop every imagined vector env shares: ``self.imagination`` (``seed``, ``start``,
    ``check_action``, ``step``) advances ``self.carry``, with SAME_STEP autoreset.

    Subclasses set ``imagination``, ``num_envs``, ``device``, ``max_episode_length``,
    ``action_space``, ``episode_length_buf`` (N,) long and ``carry`` = None, say which step
    outputs go to ``info`` (``info_keys``, besides ``model_diverged``) and what an
    observation is (``_obs``, read from the carry).
    """

    info_keys: tuple[str, ...] = ()
    carry: Carry | None

    def _init_buffers(self, num_envs: int, single_observation_space: gym.Space, single_action_space: gym.Space) -> None:
        """Spaces (single and batched), ``episode_length_buf`` (N,) on ``self.device``, no carry yet."""
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = single_observation_space, single_action_space
        self.observation_space = gym.vector.utils.batch_space(single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(single_action_space, num_envs)
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.carry = None

    def _obs(self) -> Any:
        return self.carry["obs"].clone()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        """Start every env (or those in ``options["reset_mask"]`` (N,) bool) from real states."""
        if seed is not None:
            self.imagination.seed(seed)
            self.action_space.seed(seed)
        mask = None if options is None else options.get("reset_mask")
        if mask is None or self.carry is None:
            self.carry = self.imagination.start(self.num_envs)
            self.episode_length_buf.zero_()
        else:
            self._restart(torch.as_tensor(mask, device=self.device).nonzero().squeeze(1))
        return self._obs(), {}

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if self.carry is None:
            raise RuntimeError("call reset() before step()")
        action = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        self.imagination.check_action(action, self.num_envs)
        self.carry, out = self.imagination.step(self.carry, action)
        self.episode_length_buf += 1
        terminated = out["terminated"]
        truncated = (self.episode_length_buf >= self.max_episode_length) | out["diverged"]
        done = terminated | truncated
        info: dict[str, Any] = {"model_diverged": out["diverged"], **{k: out[k] for k in self.info_keys}}
        if bool(done.any()):
            info["final_obs"] = self._obs()
            info["_final_obs"] = done
            self._restart(done.nonzero().squeeze(1))
        return self._obs(), out["reward"], terminated, truncated, info

    def _restart(self, idx: torch.Tensor) -> None:
        scatter_carry(self.carry, idx, self.imagination.start(len(idx)))
        self.episode_length_buf[idx] = 0

    def close(self, **kwargs: Any) -> None:
        self.carry = None


class ImaginedVecEnv(CarryVecEnv):
    """``num_envs`` imagined episodes advanced together by one world-model call per step.

    Observations, rewards and flags are torch tensors on ``device``: obs (N, D) float32,
    reward (N,) float32 per step, terminated / truncated (N,) bool. Autoreset is SAME_STEP:
    the obs returned for a finished env is the first obs of its next episode, and
    ``info["final_obs"]`` (N, D) holds the true last observation where
    ``info["_final_obs"]`` (N,) is True. ``info["model_diverged"]`` (N,) marks episodes cut
    because the prediction went non-finite or left the data range (reported as truncation,
    not termination: the world did not end, the model did). ``info["uncertainty"]`` (N,) is
    the model's epistemic uncertainty for the step.

    Actions (N, A) may be tensors or arrays and must lie in the action box (else ValueError).
    ``episode_length_buf`` (N,) and ``max_episode_length`` follow Isaac Lab's names.
    See :class:`Imagination` for the other arguments.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": []}
    info_keys = ("uncertainty",)

    def __init__(
        self,
        num_envs: int = 1,
        model: WorldModel | str | Path | None = None,
        task: str | Task | None = None,
        start_data: str | Path | dict | None = None,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        **imagination_kwargs: Any,
    ):
        if model is None:
            raise ValueError("ImaginedVecEnv needs model=<checkpoint folder or WorldModel>")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.imagination = Imagination(model, task, start_data, device, **imagination_kwargs)
        spec = self.imagination.spec
        self.device = self.imagination.device
        self.task = self.imagination.task
        self.max_episode_length = int(max_episode_steps or self.task.max_episode_steps)
        self._init_buffers(
            num_envs,
            gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32),
            gym.spaces.Box(np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32), dtype=np.float32),
        )

    @property
    def model(self) -> WorldModel:
        """The world model the envs step (as :class:`~wam_env.legged.ImaginedLeggedVecEnv`'s ``model``)."""
        return self.imagination.model


class ImaginedEnv(gym.Env):
    """One imagined episode at a time, numpy in and out (``gym.make`` entry point).

    Observation: float32 (D,); action: float32 (A,) inside the action box; reward per step.
    ``info["model_diverged"]`` and ``info["uncertainty"]`` as in :class:`ImaginedVecEnv`.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: WorldModel | str | Path | None = None,
        task: str | Task | None = None,
        start_data: str | Path | dict | None = None,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **imagination_kwargs: Any,
    ):
        if model is None:
            raise ValueError("ImaginedEnv needs model=<checkpoint folder or WorldModel>")
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported by state-space imagined envs")
        self.imagination = Imagination(model, task, start_data, device, **imagination_kwargs)
        spec = self.imagination.spec
        self.task = self.imagination.task
        self.max_episode_steps = int(max_episode_steps or self.task.max_episode_steps)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(
            np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32), dtype=np.float32
        )
        self.render_mode = None
        self.carry: Carry | None = None
        self.elapsed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.imagination.seed(seed)
        self.carry = self.imagination.start(1)
        self.elapsed = 0
        return self.carry["obs"][0].cpu().numpy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.carry is None:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.imagination.device)
        if a.shape != (self.imagination.spec.action_dim,):
            raise ValueError(f"action must have shape ({self.imagination.spec.action_dim},), got {tuple(a.shape)}")
        a = a[None]
        self.imagination.check_action(a, 1)
        self.carry, out = self.imagination.step(self.carry, a)
        self.elapsed += 1
        diverged = bool(out["diverged"][0])
        terminated = bool(out["terminated"][0])
        truncated = self.elapsed >= self.max_episode_steps or diverged
        info = {"model_diverged": diverged, "uncertainty": float(out["uncertainty"][0])}
        return out["obs"][0].cpu().numpy(), float(out["reward"][0]), terminated, truncated, info
