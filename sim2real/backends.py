"""Where a policy is validated: one interface, several simulators (contract section 3).

A :class:`Backend` runs ``episodes`` robots, one episode each, under the validation commands
(vx ~ U(0.5, 1.0) m/s, vy = wz = 0: :func:`sim2real.metrics_np.eval_commands`, the same for
every backend given the seed) and returns the metrics of :mod:`sim2real.metrics_np` plus
``backend``, ``notes`` (why a metric is ``nan``, what differs on this backend) and ``wall_s``.

- ``mujoco`` (:class:`MujocoBackend`): the task's MuJoCo env, CPU, always available; applies
  a :class:`~tasks.locomotion.config.RandomizationCfg`.
- ``imagined`` (:class:`ImaginedBackend`): a legged world model checkpoint
  (:class:`wam_env.legged.ImaginedLeggedVecEnv`); the policy observation is built from the
  predicted state; dynamics cannot be randomized (``randomizable = False``).
- ``isaaclab``: ``sim2real.isaaclab_backend.IsaacLabBackend``, imported lazily; it needs
  ``.venv-isaaclab`` and receives the exported policy folder (``policy_input = "exported"``).

:func:`make_backend` builds one by name; a backend that cannot run here raises
:class:`BackendUnavailable` saying how to get it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from sim2real.metrics import RolloutMetrics, as_numpy, eval_commands, joint_limits
from tasks.locomotion.config import RandomizationCfg, VelocityEnvCfg
from tasks.locomotion.registry import env_cfg
from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

PolicyFn = Callable[[np.ndarray], np.ndarray]  # obs (N, D) float32 -> actions (N, A)
BACKENDS = ("imagined", "mujoco", "isaaclab")
LEGGED_TASKS = ("anymal_c_flat", "g1_flat")
ISAACLAB_VENV = Path(__file__).resolve().parents[1] / ".venv-isaaclab"


class Sim2RealError(ValueError):
    """Bad input to validation (unknown backend, gate, level, task, policy); the message names it."""


class BackendUnavailable(Sim2RealError):
    """A backend that cannot run on this machine; the message says how to install it."""


@runtime_checkable
class Backend(Protocol):
    """A simulator that scores a policy (see the module docstring).

    Optional attributes: ``randomizable`` (default True: accepts randomized dynamics) and
    ``policy_input`` (``"callable"`` default, or ``"exported"``: ``run`` gets the folder
    written by :func:`sim2real.export.export_policy`).
    """

    name: str

    def run(self, policy: PolicyFn | Path, task: str, episodes: int, seed: int,
            randomization: RandomizationCfg | None) -> dict[str, Any]: ...


def validation_cfg(task: str, randomization: RandomizationCfg | None = None,
                   episode_length_s: float | None = None) -> VelocityEnvCfg:
    """The task's env config for validation: one forward command per robot that is never
    resampled (no heading control, no standing robots), the given randomization and episode length."""
    if task not in LEGGED_TASKS:
        raise Sim2RealError(f"validation runs legged velocity tasks {list(LEGGED_TASKS)}, not {task!r}")
    cfg = env_cfg(task)
    length = float(episode_length_s or cfg.episode_length_s)
    commands = replace(cfg.commands, lin_vel_y=(0.0, 0.0), ang_vel_z=(0.0, 0.0), heading_command=False,
                       rel_standing_envs=0.0, resampling_time=length + 1.0)
    return replace(cfg, commands=commands, episode_length_s=length, randomization=randomization or RandomizationCfg())


def _set_commands(env: Any, obs: torch.Tensor, commands: np.ndarray) -> torch.Tensor:
    """Give each env its validation command (N, 3) and patch it into the first observation."""
    cmd = torch.as_tensor(commands, dtype=env.command.dtype, device=env.command.device)
    env.command[:] = cmd
    obs = obs.clone()
    obs[:, env.obs_layout["velocity_commands"]] = cmd.to(obs.device)
    return obs


def _act(policy: PolicyFn, obs: torch.Tensor, num_envs: int, num_joints: int, limit: float) -> np.ndarray:
    action = np.asarray(policy(obs.detach().cpu().numpy().astype(np.float32)), dtype=np.float32)
    if action.shape != (num_envs, num_joints):
        raise Sim2RealError(f"the policy returned actions of shape {action.shape}, the task needs ({num_envs}, {num_joints})")
    if not np.isfinite(action).all():
        raise Sim2RealError("the policy returned non-finite actions")
    return np.clip(action, -limit, limit)


class _RecordingEnv(LeggedVelocityVecEnv):
    """The MuJoCo env, keeping the :class:`LeggedState` each step reached before its autoreset
    (``info["state"]`` lacks the foot velocities that foot slip needs)."""

    reached = None

    def _reset_envs(self, idx: np.ndarray) -> None:
        self.reached = self.state  # step() stores the reached state right before resetting the done envs
        super()._reset_envs(idx)


class MujocoBackend:
    """The task's MuJoCo env (CPU), optionally with randomized dynamics.

    Args:
        episode_length_s: episode length (default: the task's 20 s).
        device: torch device of the env's tensors.
        num_threads: physics worker threads (default: all cores, at most 8).
    """

    name = "mujoco"
    randomizable = True
    policy_input = "callable"

    def __init__(self, episode_length_s: float | None = None, device: str = "cpu", num_threads: int | None = None):
        self.episode_length_s, self.device, self.num_threads = episode_length_s, device, num_threads

    def run(self, policy: PolicyFn | Path, task: str, episodes: int, seed: int,
            randomization: RandomizationCfg | None = None) -> dict[str, Any]:
        """Metrics of ``episodes`` robots (one episode each) driven by ``policy``."""
        start = time.perf_counter()
        policy = _callable(policy)
        cfg = validation_cfg(task, randomization, self.episode_length_s)
        _, effort, vel_limit = joint_limits(task)
        env = _RecordingEnv(cfg, num_envs=episodes, num_threads=self.num_threads, device=self.device)
        metrics = RolloutMetrics(episodes, effort, vel_limit)
        obs, _ = env.reset(seed=seed)
        obs = _set_commands(env, obs, eval_commands(episodes, seed))
        try:
            while not metrics.done:
                command = env.command.clone()
                action = _act(policy, obs, episodes, env.num_joints, cfg.action_limit)
                env.reached = None
                obs, reward, terminated, truncated, _ = env.step(action)
                s = env.reached if env.reached is not None else env.state
                metrics.step(command, s.base_lin_vel_b, s.base_ang_vel_b, terminated, truncated, reward=reward,
                             joint_torque=s.joint_torque, joint_vel=s.joint_vel, foot_vel_w=s.foot_vel_w,
                             foot_contact=s.foot_contact)
        finally:
            env.close()
        notes = ["torque_limit_violation: against the nominal effort limits (randomized motor strength moves the actual ones)"] \
            if randomization is not None and randomization.motor_strength is not None else []
        return {**metrics.result(), "backend": self.name, "notes": notes, "wall_s": time.perf_counter() - start}


class ImaginedBackend:
    """A legged world model as the simulator (:class:`wam_env.legged.ImaginedLeggedVecEnv`).

    Args:
        model: checkpoint folder of a legged world model (``wam train-model task=<legged task>``).
        episode_length_s: episode length (default: the task's 20 s).
        device: torch device of the model.
        sample: sample the model's predictive distribution (True) or roll out its mean.
    """

    name = "imagined"
    randomizable = False
    policy_input = "callable"

    def __init__(self, model: str | Path | None = None, episode_length_s: float | None = None, device: str = "cpu",
                 sample: bool = True):
        if model is None:
            raise Sim2RealError("the imagined backend needs model=<world-model checkpoint folder> (`wam train-model`)")
        if not (Path(model) / "config.json").is_file():
            raise Sim2RealError(f"imagined backend: {model} is not a world-model checkpoint folder (no config.json)")
        self.model, self.episode_length_s, self.device, self.sample = Path(model), episode_length_s, device, sample

    def run(self, policy: PolicyFn | Path, task: str, episodes: int, seed: int,
            randomization: RandomizationCfg | None = None) -> dict[str, Any]:
        """Metrics of ``episodes`` imagined robots (one episode each) driven by ``policy``."""
        from wam_env.legged import ImaginedLeggedVecEnv

        if randomization is not None and randomization != RandomizationCfg():
            raise Sim2RealError("the imagined backend cannot randomize dynamics (the world model is the dynamics); run it at level none")
        start = time.perf_counter()
        policy = _callable(policy)
        cfg = validation_cfg(task, None, self.episode_length_s)
        _, effort, vel_limit = joint_limits(task)
        try:
            env = ImaginedLeggedVecEnv(num_envs=episodes, model=self.model, task=task, cfg=cfg, device=self.device, sample=self.sample)
        except ValueError as e:
            raise Sim2RealError(f"imagined backend, model {self.model}: {e}") from e
        lay = env.state_slices
        metrics = RolloutMetrics(episodes, effort, vel_limit)
        obs, _ = env.reset(seed=seed)
        obs = _set_commands(env, obs, eval_commands(episodes, seed))
        diverged = np.zeros(episodes, bool)
        while not metrics.done:
            command = env.command.clone()
            running = metrics.running.copy()
            action = _act(policy, obs, episodes, env.num_joints, cfg.action_limit)
            obs, reward, terminated, truncated, info = env.step(action)
            state = info["state"]
            diverged |= running & as_numpy(info["model_diverged"], bool)
            metrics.step(command, state[:, lay["base_lin_vel"]], state[:, lay["base_ang_vel"]], terminated, truncated,
                         reward=reward, joint_torque=state[:, lay["joint_torque"]], joint_vel=state[:, lay["joint_vel"]])
        env.close()
        notes = ["foot_slip: the world model does not predict foot velocities",
                 "falls: the learned termination head (Bernoulli draws of its calibrated probability) and the tilt limit",
                 f"model {self.model}; start states drawn from its real start data"]
        if diverged.any():
            notes.append(f"{int(diverged.sum())} of {episodes} episodes ended by model divergence (counted as time-outs, not falls)")
        out = {**metrics.result(), "backend": self.name, "notes": notes, "wall_s": time.perf_counter() - start}
        out["model_diverged"] = int(diverged.sum())
        return out


def _callable(policy: PolicyFn | Path) -> PolicyFn:
    if isinstance(policy, (str, Path)):
        from sim2real.validate import load_policy_fn

        return load_policy_fn(policy)
    if not callable(policy):
        raise Sim2RealError(f"policy must be a callable obs (N, D) -> actions (N, A) or a policy folder, got {type(policy).__name__}")
    return policy


def make_backend(name: str, **kwargs: Any) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`), built with ``kwargs``
    (``imagined``: ``model=<checkpoint folder>``; all: ``episode_length_s``, ``device``)."""
    if name == "mujoco":
        return MujocoBackend(**kwargs)
    if name == "imagined":
        return ImaginedBackend(**kwargs)
    if name == "isaaclab":
        if not (ISAACLAB_VENV / "bin" / "python").exists():
            raise BackendUnavailable(f"isaaclab backend needs .venv-isaaclab ({ISAACLAB_VENV} not found): run scripts/setup_isaaclab.sh")
        try:
            from sim2real.isaaclab_backend import IsaacLabBackend
        except ImportError as e:
            raise BackendUnavailable(f"isaaclab backend cannot be imported ({e}); run scripts/setup_isaaclab.sh") from e
        return IsaacLabBackend(**kwargs)
    raise Sim2RealError(f"unknown backend {name!r}; available: {list(BACKENDS)}")
