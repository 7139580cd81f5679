"""Batched MuJoCo velocity-tracking env for legged robots, laid out like Isaac Lab's.

:class:`LeggedVelocityVecEnv` steps ``num_envs`` robots, one ``MjData`` each, in worker
threads (MuJoCo releases the GIL inside ``mj_step``, so both cores work), and speaks the same
torch tensor interface as :class:`wam_env.imagined.ImaginedVecEnv`: obs (N, D) float32,
reward (N,) float32, terminated / truncated (N,) bool, SAME_STEP autoreset with
``info["final_obs"]``, ``episode_length_buf`` and ``max_episode_length``.
:class:`LeggedVelocityEnv` is the numpy single env (``gym.make``).

Policy observation (Isaac Lab's velocity env, in this order): base linear velocity (3, base
frame), base angular velocity (3), projected gravity (3), velocity command (3), joint
positions relative to default (J), joint velocities (J), last action (J).

``info["state"]`` (N, P) is the privileged state a world model learns (RWM's inputs and
outputs), reached by this step before any reset; ``state_layout`` names its slices: base
linear / angular velocity, projected gravity, joint positions (relative) / velocities /
torques, base height, foot and undesired contacts (0/1). ``info["log"]`` holds per-term
episode sums (``Episode_Reward/<term>``, per second of episode, as Isaac Lab logs them) and
termination counts for the envs that finished this step.

Randomness: each env draws from its own generator seeded by ``(seed, env index)``, so env
``i`` of a batch and a single env seeded alike produce the same transitions for the same
actions.
"""

from __future__ import annotations

import copy
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from tasks.locomotion import mdp
from tasks.locomotion.config import OBS_NOISE, VelocityEnvCfg
from tasks.locomotion.robots import build_model


def _uniform(rng: np.random.Generator, r: tuple[float, float], size: int | None = None) -> Any:
    return rng.uniform(r[0], r[1], size)


class LeggedVelocityVecEnv(gym.vector.VectorEnv):
    """``num_envs`` MuJoCo robots tracking velocity commands.

    Args:
        cfg: the task (see :mod:`tasks.anymal_c_flat`, :mod:`tasks.g1_flat`) or its name.
        num_envs: robots stepped together.
        num_threads: worker threads stepping physics (default: all cores, at most 8).
        device: torch device of the returned tensors (physics runs on the CPU).
        render_mode: ``"rgb_array"`` renders env 0 with MuJoCo's offscreen renderer.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        cfg: VelocityEnvCfg | str,
        num_envs: int = 1,
        num_threads: int | None = None,
        device: str | torch.device = "cpu",
        render_mode: str | None = None,
        render_size: tuple[int, int] = (480, 640),
    ):
        if isinstance(cfg, str):
            from tasks.locomotion.registry import env_cfg

            cfg = env_cfg(cfg)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.cfg = cfg
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.render_mode = render_mode
        self.render_size = render_size
        self.model, self.layout = build_model(cfg.robot)
        self.joint_names = cfg.robot.joint_names
        self.num_joints = J = len(self.joint_names)
        self.step_dt = cfg.step_dt
        self.max_episode_length = cfg.max_episode_steps
        self.models = [self.model] * num_envs
        self.datas = [mujoco.MjData(self.model) for _ in range(num_envs)]
        threads = num_threads or min(os.cpu_count() or 1, 8)
        self._chunks = [c for c in np.array_split(np.arange(num_envs), threads) if len(c)]
        self._pool = ThreadPoolExecutor(len(self._chunks)) if len(self._chunks) > 1 else None
        self._renderer: mujoco.Renderer | None = None

        limit = cfg.action_limit
        self.single_action_space = gym.spaces.Box(-limit, limit, (J,), np.float32)
        self.obs_names = ("base_lin_vel", "base_ang_vel", "projected_gravity", "velocity_commands", "joint_pos", "joint_vel", "actions")
        sizes = (3, 3, 3, 3, J, J, J)
        self.obs_layout = _layout(self.obs_names, sizes)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (sum(sizes),), np.float32)
        F, U = len(cfg.robot.feet), len(cfg.robot.undesired_contacts)
        state_names = ("base_lin_vel", "base_ang_vel", "projected_gravity", "joint_pos", "joint_vel", "joint_torque",
                       "base_height", "foot_contact", "undesired_contact")
        self.state_layout = _layout(state_names, (3, 3, 3, J, J, J, 1, F, U))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._obs_noise = torch.tensor(np.concatenate([np.full(n, OBS_NOISE[k]) for k, n in zip(self.obs_names, sizes)]), dtype=torch.float32)

        # numpy mirrors of MjData, one row per env (filled by the worker threads)
        N = num_envs
        self._qpos = np.zeros((N, self.model.nq))
        self._qvel = np.zeros((N, self.model.nv))
        self._qacc = np.zeros((N, self.model.nv))
        self._force = np.zeros((N, self.model.nu))
        self._sens = np.zeros((N, self.model.nsensordata))
        self._targets = np.zeros((N, J))
        L = self.layout
        self._default = torch.tensor(L.default_joint_pos, dtype=torch.float32)
        soft = cfg.soft_joint_pos_limit_factor
        finite = np.isfinite(L.joint_range).all(1)
        rng = np.where(finite[:, None], L.joint_range, 0.0)
        mid, half = rng.mean(1), (rng[:, 1] - rng[:, 0]) / 2 * soft
        lim = np.where(finite[:, None], np.stack([mid - half, mid + half], 1), L.joint_range)
        self._joint_limits = torch.tensor(lim, dtype=torch.float32)
        self._action_scale = cfg.action_scale
        self._rewards = {k: self._resolve(t) for k, t in cfg.rewards.items()}
        self._terminations = {k: self._resolve(t) for k, t in cfg.terminations.items()}
        lat = cfg.randomization.action_latency
        # per-env torch state of the task
        z = lambda *s: torch.zeros(N, *s)  # noqa: E731
        self.action, self.prev_action = z(J), z(J)
        self._action_history = z(lat + 1, J)
        self._latency = torch.zeros(N, dtype=torch.long)
        self.command = z(3)
        self._heading = z()
        self._is_heading = torch.zeros(N, dtype=torch.bool)
        self._command_time_left = z()
        self._push_time_left = torch.full((N,), np.inf)
        self.air_time = mdp.AirTime(N, F)
        self.episode_length_buf = torch.zeros(N, dtype=torch.long, device=self.device)
        self.episode_sums = {k: torch.zeros(N, dtype=torch.float64) for k in self._rewards}
        self._rngs = [np.random.default_rng([0, i]) for i in range(N)]
        self.state: mdp.LeggedState | None = None

    # ------------------------------------------------------------------------------ public API

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Reset every env (or those in ``options["reset_mask"]`` (N,) bool); reseeds when ``seed`` is given."""
        if seed is not None:
            self._rngs = [np.random.default_rng([seed, i]) for i in range(self.num_envs)]
            self.action_space.seed(seed)
        mask = None if options is None else options.get("reset_mask")
        idx = np.arange(self.num_envs) if mask is None or self.state is None else np.flatnonzero(np.asarray(mask))
        self._reset_envs(idx)
        self.state = self._read_state()
        return self._observations(self.state).to(self.device), {}

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Advance every env by one policy step (``decimation`` physics steps)."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        action = self._check_action(actions)
        self.prev_action, self.action = self.action, action
        self._action_history = torch.cat([action.unsqueeze(1), self._action_history[:, :-1]], dim=1)
        applied = self._action_history[torch.arange(self.num_envs), self._latency]
        self._targets[:] = (self._default + self._action_scale * applied).numpy()
        self._push()
        self._physics_step()
        self.episode_length_buf += 1
        s = self._read_state()
        self.air_time.update(s.foot_contact, self.step_dt)
        self._fill_air_time(s)
        self._update_commands()
        s.command = self.command.clone()

        term_flags = {k: fn(s, **params).bool() for k, (fn, _, params) in self._terminations.items()}
        terminated = torch.zeros(self.num_envs, dtype=torch.bool)
        for flag in term_flags.values():
            terminated |= flag
        truncated = self.episode_length_buf.cpu() >= self.max_episode_length
        s.terminated = terminated
        reward = torch.zeros(self.num_envs)
        for k, (fn, weight, params) in self._rewards.items():
            value = fn(s, **params) * (weight * self.step_dt)
            self.episode_sums[k] += value.double()
            reward += value
        self.state = s
        obs = self._observations(s)
        info: dict[str, Any] = {"state": self.state_vector(s).to(self.device)}
        done = terminated | truncated
        if bool(done.any()):
            idx = done.nonzero().squeeze(1).numpy()
            info["final_obs"] = obs.clone().to(self.device)
            info["_final_obs"] = done.to(self.device)
            info["log"] = self._episode_log(idx, term_flags, truncated)
            self._reset_envs(idx)
            self.state = self._read_state()
            obs = self._observations(self.state)
        return obs.to(self.device), reward.to(self.device), terminated.to(self.device), truncated.to(self.device), info

    @property
    def reward_terms(self) -> dict[str, tuple[Any, float, dict[str, Any]]]:
        """Reward terms resolved for this robot: name -> (function, weight, params with joint ids)."""
        return self._rewards

    @property
    def termination_terms(self) -> dict[str, tuple[Any, float, dict[str, Any]]]:
        """Termination terms resolved for this robot, as :attr:`reward_terms`."""
        return self._terminations

    @property
    def default_joint_pos(self) -> torch.Tensor:
        """(J,) default joint positions, rad."""
        return self._default

    @property
    def joint_pos_limits(self) -> torch.Tensor:
        """(J, 2) soft joint position limits, rad."""
        return self._joint_limits

    def state_vector(self, s: mdp.LeggedState | None = None) -> torch.Tensor:
        """The privileged world-model state (N, P) laid out as :attr:`state_layout`."""
        s = s or self.state
        return torch.cat(
            [s.base_lin_vel_b, s.base_ang_vel_b, s.projected_gravity, s.joint_pos - s.default_joint_pos, s.joint_vel,
             s.joint_torque, s.base_height.unsqueeze(1), s.foot_contact.float(), (s.undesired_force > 1.0).float()],
            dim=1,
        )

    def render(self) -> np.ndarray | None:
        """RGB frame (H, W, 3) uint8 of env 0, camera tracking the base."""
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self.render_size)
            self._camera = mujoco.MjvCamera()
            self._camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            self._camera.trackbodyid = self.layout.base_body
            self._camera.distance, self._camera.elevation, self._camera.azimuth = 2.5, -20.0, 135.0
        self._renderer.update_scene(self.datas[0], self._camera)
        return self._renderer.render()

    def close(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------------------ physics

    def _step_chunk(self, ids: np.ndarray) -> None:
        n = self.cfg.decimation
        for i in ids:
            m, d = self.models[i], self.datas[i]
            d.ctrl[:] = self._targets[i]
            mujoco.mj_step(m, d, n)  # releases the GIL
            self._read_row(i, d)

    def _read_row(self, i: int, d: mujoco.MjData) -> None:
        self._qpos[i] = d.qpos
        self._qvel[i] = d.qvel
        self._qacc[i] = d.qacc
        self._force[i] = d.actuator_force
        self._sens[i] = d.sensordata

    def _physics_step(self) -> None:
        if self._pool is None:
            self._step_chunk(np.arange(self.num_envs))
        else:
            list(self._pool.map(self._step_chunk, self._chunks))
        if not np.isfinite(self._qpos).all():
            bad = np.flatnonzero(~np.isfinite(self._qpos).all(1))
            raise FloatingPointError(f"MuJoCo state went non-finite in envs {bad[:10].tolist()}")

    def _read_state(self) -> mdp.LeggedState:
        L = self.layout
        t = lambda a: torch.from_numpy(a).float()  # noqa: E731
        qpos, qvel = t(self._qpos), t(self._qvel)
        quat = qpos[:, 3:7]
        sens = t(self._sens)
        force = lambda adr: sens[:, adr[:, None] + np.arange(1, 4)].norm(dim=-1)  # noqa: E731
        feet = L.sensor_adr["feet"]
        gravity = torch.tensor([0.0, 0.0, -1.0]).expand(self.num_envs, 3)
        return mdp.LeggedState(
            base_lin_vel_b=mdp.quat_rotate_inverse(quat, qvel[:, 0:3]),
            base_ang_vel_b=qvel[:, 3:6].clone(),  # MuJoCo's free-joint angular velocity is in the body frame
            projected_gravity=mdp.quat_rotate_inverse(quat, gravity),
            base_height=qpos[:, 2].clone(),
            joint_pos=qpos[:, L.qpos_adr],
            joint_vel=qvel[:, L.dof_adr],
            joint_acc=t(self._qacc)[:, L.dof_adr],
            joint_torque=t(self._force).clone(),
            default_joint_pos=self._default,
            joint_pos_limits=self._joint_limits,
            action=self.action,
            prev_action=self.prev_action,
            command=self.command.clone(),
            foot_contact=sens[:, feet] > 0,
            foot_vel_w=sens[:, L.foot_vel_adr[:, None] + np.arange(3)],
            last_air_time=self.air_time.last_air_time,
            current_air_time=self.air_time.current_air_time,
            current_contact_time=self.air_time.current_contact_time,
            first_contact=self.air_time.first_contact,
            undesired_force=force(L.sensor_adr["undesired"]),
            base_force=force(L.sensor_adr["base"]),
        )

    def _fill_air_time(self, s: mdp.LeggedState) -> None:
        a = self.air_time
        s.last_air_time, s.current_air_time = a.last_air_time, a.current_air_time
        s.current_contact_time, s.first_contact = a.current_contact_time, a.first_contact

    def _observations(self, s: mdp.LeggedState) -> torch.Tensor:
        obs = torch.cat(
            [s.base_lin_vel_b, s.base_ang_vel_b, s.projected_gravity, s.command, s.joint_pos - s.default_joint_pos,
             s.joint_vel, self.action],
            dim=1,
        )
        if self.cfg.randomization.observation_noise:
            noise = np.stack([rng.uniform(-1.0, 1.0, obs.shape[1]) for rng in self._rngs])
            obs = obs + torch.from_numpy(noise).float() * self._obs_noise
        return obs

    # ------------------------------------------------------------------------------ events

    def _reset_envs(self, idx: np.ndarray) -> None:
        cfg, L = self.cfg, self.layout
        r = cfg.reset
        for i in idx:
            rng = self._rngs[i]
            if cfg.randomization.per_env_model:
                self.models[i] = self._randomized_model(rng)
            m, d = self.models[i], self.datas[i]
            mujoco.mj_resetData(m, d)
            yaw = _uniform(rng, r.yaw)
            d.qpos[0:2] = _uniform(rng, r.pose_xy, 2)
            d.qpos[2] = L.base_height
            d.qpos[3:7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
            q = L.default_joint_pos * _uniform(rng, r.joint_pos_scale, self.num_joints)
            d.qpos[L.qpos_adr] = np.clip(q, L.joint_range[:, 0], L.joint_range[:, 1])
            d.qvel[0:6] = _uniform(rng, r.base_velocity, 6)
            d.ctrl[:] = L.default_joint_pos
            mujoco.mj_forward(m, d)
            self._read_row(i, d)
        t = torch.from_numpy(idx)
        self.action[t] = 0.0
        self.prev_action[t] = 0.0
        self._action_history[t] = 0.0
        self.air_time.reset(t)
        self.episode_length_buf[t.to(self.device)] = 0
        for k in self.episode_sums:
            self.episode_sums[k][t] = 0.0
        rand = cfg.randomization
        for i in idx:
            rng = self._rngs[i]
            self._latency[i] = int(rng.integers(0, rand.action_latency + 1)) if rand.action_latency else 0
            self._push_time_left[i] = _uniform(rng, rand.push_interval) if rand.push_interval else np.inf
        self._resample_commands(idx)

    def _randomized_model(self, rng: np.random.Generator) -> mujoco.MjModel:
        rand, base = self.cfg.randomization, self.model
        m = copy.copy(base)
        if rand.friction is not None:
            m.geom_friction[:, 0] = base.geom_friction[:, 0] * _uniform(rng, rand.friction)
        if rand.added_base_mass is not None:
            b = self.layout.base_body
            m.body_mass[b] = base.body_mass[b] + _uniform(rng, rand.added_base_mass)
        if rand.motor_strength is not None:
            m.actuator_forcerange[:] = base.actuator_forcerange * _uniform(rng, rand.motor_strength)
        kp_scale = _uniform(rng, rand.stiffness_scale) if rand.stiffness_scale is not None else 1.0
        kd_scale = _uniform(rng, rand.damping_scale) if rand.damping_scale is not None else 1.0
        # position actuator: force = kp * ctrl - kp * q - kd * qdot
        m.actuator_gainprm[:, 0] = base.actuator_gainprm[:, 0] * kp_scale
        m.actuator_biasprm[:, 1] = base.actuator_biasprm[:, 1] * kp_scale
        m.actuator_biasprm[:, 2] = base.actuator_biasprm[:, 2] * kd_scale
        return m

    def _resample_commands(self, idx: np.ndarray) -> None:
        c = self.cfg.commands
        for i in idx:
            rng = self._rngs[i]
            vx, vy, wz = _uniform(rng, c.lin_vel_x), _uniform(rng, c.lin_vel_y), _uniform(rng, c.ang_vel_z)
            self._heading[i] = _uniform(rng, c.heading)
            self._is_heading[i] = bool(c.heading_command and rng.uniform() <= c.rel_heading_envs)
            standing = rng.uniform() <= c.rel_standing_envs
            self.command[i] = torch.tensor([0.0, 0.0, 0.0] if standing else [vx, vy, wz])
            self._command_time_left[i] = c.resampling_time
        self._update_heading(torch.from_numpy(idx))

    def _update_heading(self, idx: torch.Tensor | None = None) -> None:
        c = self.cfg.commands
        sel = self._is_heading if idx is None else torch.zeros_like(self._is_heading).index_fill_(0, idx, True) & self._is_heading
        if bool(sel.any()):
            yaw = mdp.yaw_from_quat(torch.from_numpy(self._qpos[:, 3:7]).float())
            wz = c.heading_control_stiffness * mdp.wrap_to_pi(self._heading - yaw)
            standing = (self.command == 0).all(dim=1)
            wz = torch.where(standing, 0.0, wz.clamp(*c.ang_vel_z))
            self.command[:, 2] = torch.where(sel, wz, self.command[:, 2])

    def _update_commands(self) -> None:
        self._command_time_left -= self.step_dt
        expired = (self._command_time_left <= 1e-6).numpy()
        if expired.any():
            self._resample_commands(np.flatnonzero(expired))
        self._update_heading()

    def _push(self) -> None:
        rand = self.cfg.randomization
        if rand.push_interval is None:
            return
        self._push_time_left -= self.step_dt
        for i in np.flatnonzero((self._push_time_left <= 0).numpy()):
            rng = self._rngs[i]
            self.datas[i].qvel[0:2] += rng.uniform(-rand.push_velocity, rand.push_velocity, 2)
            self._push_time_left[i] = _uniform(rng, rand.push_interval)

    # ------------------------------------------------------------------------------ helpers

    def _check_action(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(actions, dtype=torch.float32).detach().cpu().clone()  # never alias the caller's array
        if a.shape != (self.num_envs, self.num_joints):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.num_joints}), got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError("actions contain NaN or inf")
        limit = self.cfg.action_limit
        if bool((a.abs() > limit).any()):
            raise ValueError(f"actions outside the action space [-{limit}, {limit}] (max |a| = {a.abs().max():.3g})")
        return a

    def _resolve(self, term: mdp.Term) -> tuple[Any, float, dict[str, Any]]:
        params = dict(term.params)
        if "joints" in params:
            pattern = params.pop("joints")
            ids = [i for i, n in enumerate(self.joint_names) if re.fullmatch(pattern, n)]
            if not ids:
                raise ValueError(f"term {term.func.__name__}: joint pattern {pattern!r} matches none of {self.joint_names}")
            params["joint_ids"] = torch.tensor(ids)
        return term.func, term.weight, params

    def _episode_log(self, idx: np.ndarray, term_flags: dict[str, torch.Tensor], truncated: torch.Tensor) -> dict[str, float]:
        t = torch.from_numpy(idx)
        log = {f"Episode_Reward/{k}": float(v[t].mean()) / self.cfg.episode_length_s for k, v in self.episode_sums.items()}
        for k, flag in term_flags.items():
            log[f"Episode_Termination/{k}"] = int(flag[t].sum())
        log["Episode_Termination/time_out"] = int(truncated[t].sum())
        return log


def _layout(names: tuple[str, ...], sizes: tuple[int, ...]) -> dict[str, slice]:
    out, start = {}, 0
    for name, n in zip(names, sizes):
        out[name] = slice(start, start + n)
        start += n
    return out


class LeggedVelocityEnv(gym.Env):
    """One robot as a numpy Gymnasium env (``gym.make("wam/AnymalC-Flat-v0")``): a
    :class:`LeggedVelocityVecEnv` with ``num_envs=1``. Episodes end by termination or
    after ``episode_length_s`` (truncation)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, cfg: VelocityEnvCfg | str, render_mode: str | None = None, **kwargs: Any):
        self.vec = LeggedVelocityVecEnv(cfg, num_envs=1, num_threads=1, render_mode=render_mode, **kwargs)
        self.render_mode = render_mode
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        obs, _ = self.vec.reset(seed=seed)
        self._needs_reset = False
        return obs[0].numpy(), {"state": self.vec.state_vector()[0].numpy()}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (the episode has ended)")
        obs, reward, terminated, truncated, info = self.vec.step(np.asarray(action, dtype=np.float32)[None])
        done = bool(terminated[0] | truncated[0])
        out = {"state": info["state"][0].numpy()}
        if done:
            obs = info["final_obs"]
            out["log"] = info["log"]
            self._needs_reset = True
        # the vector env autoresets; the single env reports the last obs and waits for reset()
        return obs[0].numpy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out

    def render(self) -> np.ndarray | None:
        return self.vec.render()

    def close(self) -> None:
        self.vec.close()
