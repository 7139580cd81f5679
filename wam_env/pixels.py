"""Imagined Push-T with camera frames: a pixel world model behind the Gymnasium API.

``gym.make("wam/PushT-Pixels-Imagined-v0", model=ckpt, render_mode="rgb_array")`` gives
:class:`ImaginedPixelEnv` (numpy; observation ``{"pixels": (H, W, 3) uint8, "agent_pos": (2,)
float32}``, as the real ``gym_pusht`` env with ``obs_type="pixels_agent_pos"``);
``gym.make_vec`` gives :class:`ImaginedPixelVecEnv` (torch tensors: pixels (N, H, W, 3) uint8,
agent_pos (N, 2) float32, one model call per step for all envs).

Episodes start from real first frames (saved in the checkpoint as ``start/pixels`` /
``start/agent_pos``), encoded alone by the causal tokenizer. Reward and termination come from
the model's coverage head: reward clip(coverage / 0.95, 0, 1), terminated where coverage > 0.95,
as in the real env. A latent that goes non-finite truncates the episode with
``info["model_diverged"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from world_models.base import Carry
from world_models.checkpoint import load_checkpoint
from world_models.pixel.frames import FrameStore
from world_models.pixel.model import PixelWorldModel

from wam_env.imagined import CarryVecEnv


class PixelImagination:
    """Model + real start frames, shared by the single and the batched env.

    Args:
        model: a :class:`PixelWorldModel` or a checkpoint folder.
        start_data: frame dataset folder or dict with ``pixels`` (S, H, W, 3) uint8 and
            ``agent_pos`` (S, 2) (the first frames of real episodes); default: the checkpoint's.
        device: torch device.
        sample: sample the flow from noise (True) or integrate it from the prior's mean (False).
        precision: "float32", or "bfloat16": the DiT and the tokenizer compute in bfloat16 while
            imagining (:meth:`PixelWorldModel.imagine`'s ``autocast``; observing start frames stays float32).
        max_spread: world units, or None: a step where the model's ``uncertainty`` (the object-dynamics
            members' spread of the object's position) exceeds it is ``uncertain`` (the model no longer
            knows where the object is; a rollout's frames from there on should not be trusted).
        common_noise: episodes started from the same start frame draw the same noise at every step (common
            random numbers, as PEGASUS fixes a simulator's random numbers for policy search: a PGPE group's
            rollouts differ by their adapters, not by the model's draws); off: every episode its own.
    """

    PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}

    def __init__(self, model: PixelWorldModel | str | Path, start_data: str | Path | dict | None = None,
                 device: str | torch.device = "cpu", sample: bool = True, precision: str = "float32",
                 max_spread: float | None = None, common_noise: bool = False):
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(self.PRECISIONS)}, got {precision!r}")
        if max_spread is not None and not max_spread > 0:
            raise ValueError(f"max_spread must be > 0 world units or None, got {max_spread!r}")
        self.max_spread, self.common_noise = max_spread, common_noise
        self.autocast = self.PRECISIONS[precision]
        self.device = torch.device(device)
        tensors: dict[str, torch.Tensor] = {}
        if isinstance(model, (str, Path)):
            model, _, tensors = load_checkpoint(model, device=self.device)
        if not isinstance(model, PixelWorldModel):
            raise TypeError(f"model must be a PixelWorldModel or its checkpoint folder, got {type(model).__name__}")
        self.model = model.to(self.device).eval()
        self.spec = model.spec
        if start_data is None:
            if "start/pixels" not in tensors:
                raise ValueError("no start_data given and the checkpoint holds no start frames: pass start_data=<frame dataset>")
            start_data = {"pixels": tensors["start/pixels"], "agent_pos": tensors["start/agent_pos"]}
        elif isinstance(start_data, (str, Path)):
            rows = FrameStore(start_data).load()
            first = rows["step"] == 0
            start_data = {"pixels": rows["pixels"][first], "agent_pos": rows["agent_pos"][first]}
        if not isinstance(start_data, dict) or {"pixels", "agent_pos"} - set(start_data):
            raise ValueError("start_data must hold 'pixels' (S, H, W, 3) uint8 and 'agent_pos' (S, 2)")
        self.start_pixels = torch.as_tensor(np.asarray(start_data["pixels"]) if not torch.is_tensor(start_data["pixels"]) else start_data["pixels"], device=self.device)
        self.start_pos = torch.as_tensor(np.asarray(start_data["agent_pos"]) if not torch.is_tensor(start_data["agent_pos"]) else start_data["agent_pos"], device=self.device).float()
        model.check_obs({"pixels": self.start_pixels[:1], "agent_pos": self.start_pos[:1]})
        self.sample = sample
        size = model.frame_size
        self.frame_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.state_space = gym.spaces.Box(np.asarray(self.spec.obs_low, np.float32), np.asarray(self.spec.obs_high, np.float32), dtype=np.float32)
        self.action_box = gym.spaces.Box(np.asarray(self.spec.action_low, np.float32), np.asarray(self.spec.action_high, np.float32), dtype=np.float32)
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()
        self.start_generator = torch.Generator(device=self.device)
        self.start_generator.seed()

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.start_generator.manual_seed(seed + 1)

    @torch.no_grad()
    def start(self, n: int, index: torch.Tensor | None = None) -> Carry:
        """Carry of ``n`` new episodes, each from a real start frame: drawn at random, or the
        start frames ``index`` (n,) (e.g. the same start repeated for a GRPO group)."""
        if index is None:
            pick = torch.randint(0, len(self.start_pixels), (n,), device=self.device, generator=self.start_generator)
        else:
            pick = torch.as_tensor(index, dtype=torch.long, device=self.device)
            if pick.shape != (n,) or bool(((pick < 0) | (pick >= len(self.start_pixels))).any()):
                raise ValueError(f"start index must be ({n},) in [0, {len(self.start_pixels)}), got {tuple(pick.shape)}")
        # each distinct start frame is observed once (a GRPO / PGPE group repeats its start; observing
        # fits the object's pose by render-and-compare, the costly part) and its carry repeated
        frames, row = torch.unique(pick, return_inverse=True)
        obs = {"pixels": self.start_pixels[frames], "agent_pos": self.start_pos[frames]}
        first = torch.ones(len(frames), dtype=torch.bool, device=self.device)
        carry = self.model.observe(self.model.initial(len(frames)), obs, obs["agent_pos"], first)
        carry = {k: v[row] for k, v in carry.items()}
        if self.common_noise:
            carry["noise_rows"] = row  # (n,) the start frame's stream of draws
        return carry

    def object_pose(self, carry: Carry) -> torch.Tensor | None:
        """The pushed object's pose (B, 3) (x, y, angle rad) the model carries, or None (no object head)."""
        return self.model.object_pose(carry)

    def check_action(self, action: torch.Tensor, batch: int) -> None:
        if action.shape != (batch, self.spec.action_dim):
            raise ValueError(f"actions must have shape ({batch}, {self.spec.action_dim}), got {tuple(action.shape)}")
        low = torch.as_tensor(self.action_box.low, device=self.device)
        high = torch.as_tensor(self.action_box.high, device=self.device)
        ok = torch.isfinite(action) & (action >= low - 1e-4) & (action <= high + 1e-4)
        if not bool(ok.all()):
            raise ValueError(f"action {action[~ok.all(-1)][0].tolist()} is outside the action space "
                             f"[{self.spec.action_low}, {self.spec.action_high}] (clip actions to the box before stepping)")

    @torch.no_grad()
    def step(self, carry: Carry, action: torch.Tensor) -> tuple[Carry, dict[str, torch.Tensor]]:
        """One imagined step for every env: new carry and ``pixels``, ``agent_pos``, ``reward``,
        ``terminated``, ``diverged``, ``coverage``, ``uncertainty`` (the model's, world units) and
        ``uncertain`` (above ``max_spread``) (batch first)."""
        new, pred = self.model.imagine(carry, action, sample=self.sample, generator=self.generator, autocast=self.autocast)
        diverged = ~torch.isfinite(pred.extras["latent"]).flatten(1).all(-1) | ~torch.isfinite(pred.obs).all(-1)
        if bool(diverged.any()):
            for k in new:
                new[k] = torch.where(diverged.view(-1, *([1] * (new[k].ndim - 1))), carry[k], new[k])
        reward = torch.where(diverged, torch.zeros_like(pred.reward), pred.reward)
        return new, {"pixels": new["pixels"], "agent_pos": new["obs"].float(), "reward": reward.float(),
                     "terminated": (pred.termination_logit > 0) & ~diverged, "diverged": diverged,
                     "coverage": pred.extras["coverage"], "uncertainty": pred.uncertainty,
                     "uncertain": pred.uncertainty > self.max_spread if self.max_spread is not None else torch.zeros_like(diverged)}


class ImaginedPixelVecEnv(CarryVecEnv):
    """``num_envs`` imagined Push-T episodes, torch tensors on ``device``.

    Observations: dict ``pixels`` (N, H, W, 3) uint8, ``agent_pos`` (N, 2) float32; reward (N,)
    float32; terminated / truncated (N,) bool; SAME_STEP autoreset with ``info["final_obs"]``
    (the dict of the true last observations) where ``info["_final_obs"]`` (N,) is True.
    ``info["coverage"]`` (N,) is the head's coverage, ``info["model_diverged"]`` (N,) marks
    cut episodes. ``render()`` returns the current frames (N, H, W, 3) uint8.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}
    info_keys = ("coverage",)

    def __init__(self, num_envs: int = 1, model: PixelWorldModel | str | Path | None = None,
                 start_data: str | Path | dict | None = None, device: str | torch.device = "cpu",
                 max_episode_steps: int = 300, render_mode: str | None = "rgb_array", sample: bool = True, **_: Any):
        if model is None:
            raise ValueError("ImaginedPixelVecEnv needs model=<checkpoint folder or PixelWorldModel>")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.imagination = PixelImagination(model, start_data, device, sample)
        self.device, self.render_mode = self.imagination.device, render_mode
        self.max_episode_length = int(max_episode_steps)
        self._init_buffers(num_envs, gym.spaces.Dict({"pixels": self.imagination.frame_space, "agent_pos": self.imagination.state_space}),
                           self.imagination.action_box)

    def _obs(self) -> dict[str, torch.Tensor]:
        return {"pixels": self.carry["pixels"].clone(), "agent_pos": self.carry["obs"].float().clone()}

    def render(self) -> torch.Tensor | None:
        return None if self.carry is None or self.render_mode is None else self.carry["pixels"].clone()


class ImaginedPixelEnv(gym.Env):
    """One imagined Push-T episode, numpy in and out (passes ``check_env``). ``render()`` with
    ``render_mode="rgb_array"`` returns the current frame (H, W, 3) uint8. ``info["coverage"]``
    is the coverage head's estimate, ``info["is_success"]`` whether it exceeds 0.95."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, model: PixelWorldModel | str | Path | None = None, start_data: str | Path | dict | None = None,
                 device: str | torch.device = "cpu", max_episode_steps: int = 300, render_mode: str | None = None,
                 sample: bool = True, **_: Any):
        if model is None:
            raise ValueError("ImaginedPixelEnv needs model=<checkpoint folder or PixelWorldModel>")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.imagination = PixelImagination(model, start_data, device, sample)
        self.observation_space = gym.spaces.Dict({"pixels": self.imagination.frame_space, "agent_pos": self.imagination.state_space})
        self.action_space = self.imagination.action_box
        self.render_mode, self.max_episode_steps = render_mode, int(max_episode_steps)
        self.carry: Carry | None = None
        self.elapsed = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pixels": self.carry["pixels"][0].cpu().numpy(), "agent_pos": self.carry["obs"][0].float().cpu().numpy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.imagination.seed(seed)
        self.carry, self.elapsed = self.imagination.start(1), 0
        return self._obs(), {}

    def step(self, action: np.ndarray):
        if self.carry is None:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.imagination.device)
        if a.shape != (self.imagination.spec.action_dim,):
            raise ValueError(f"action must have shape ({self.imagination.spec.action_dim},), got {tuple(a.shape)}")
        self.imagination.check_action(a[None], 1)
        self.carry, out = self.imagination.step(self.carry, a[None])
        self.elapsed += 1
        diverged = bool(out["diverged"][0])
        coverage = float(out["coverage"][0])
        info = {"model_diverged": diverged, "coverage": coverage, "is_success": coverage > 0.95}
        truncated = self.elapsed >= self.max_episode_steps or diverged
        return self._obs(), float(out["reward"][0]), bool(out["terminated"][0]), truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self.carry is None:
            return None
        return self.carry["pixels"][0].cpu().numpy()
