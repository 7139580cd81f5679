"""The validation metrics of a rollout, numpy only (stdlib + numpy: the Isaac Lab worker imports it).

Every backend computes the same numbers with these functions (numpy arrays or torch tensors in) (contract section 2, metric
names as in :data:`METRICS`). A rollout runs ``N`` envs; each env counts its **first episode
only** (as :func:`agents.evaluate.evaluate_velocity_tracking`): feed every policy step to
:meth:`RolloutMetrics.step` until :attr:`RolloutMetrics.done`, then call
:meth:`RolloutMetrics.result`. Quantities a backend cannot measure are passed as ``None``
and come out ``nan``, with the reason given by the backend in ``notes``.

Definitions (means over all envs and steps of the counted episodes):

- ``track_lin_vel_xy_exp``: exp(-|v_xy,cmd - v_xy|^2 / 0.25), base-frame linear velocity;
- ``track_ang_vel_z_exp``: exp(-(w_z,cmd - w_z)^2 / 0.25);
- ``lin_vel_error`` (m/s): |v_xy,cmd - v_xy|;
- ``fall_rate``: episodes ended by a termination before the time limit / episodes;
- ``mean_return`` / ``std_return``: the task's reward summed per episode;
- ``torque_limit_violation``: share of (env, step, joint) samples with |tau| >= 0.99 x effort limit;
- ``joint_vel_limit_violation``: share of (env, step, joint) samples with |qdot| > velocity limit;
- ``foot_slip`` (m/s): mean horizontal (world x / y) speed of the feet in contact, over the
  (env, step, foot) samples in contact.
"""

from __future__ import annotations

import math

import numpy as np

TRACKING_SIGMA2 = 0.25  # (m/s)^2 and (rad/s)^2: the tracking kernels' width, Isaac Lab's std 0.5 squared
TORQUE_LIMIT_FRACTION = 0.99  # |tau| at or above this share of the effort limit counts as saturated
EVAL_LIN_VEL_X = (0.5, 1.0)  # m/s: validation commands vx ~ U(0.5, 1.0), vy = wz = 0

METRICS = ("track_lin_vel_xy_exp", "track_ang_vel_z_exp", "lin_vel_error", "fall_rate", "mean_return", "std_return",
           "torque_limit_violation", "joint_vel_limit_violation", "foot_slip")


def as_numpy(x: object, dtype: type = np.float64) -> np.ndarray:
    """``x`` as a numpy array; torch tensors (any device) are detached and copied to the CPU
    (duck-typed: this module does not import torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[attr-defined]
    return np.asarray(x, dtype)


def eval_commands(episodes: int, seed: int, lin_vel_x: tuple[float, float] = EVAL_LIN_VEL_X) -> np.ndarray:
    """Validation commands (episodes, 3) float32: (vx ~ U(lin_vel_x) m/s, vy = 0, wz = 0) per
    episode, drawn from ``np.random.default_rng(seed)`` so every backend and randomization
    level faces the same commands for the same seed."""
    cmd = np.zeros((episodes, 3), np.float32)
    cmd[:, 0] = np.random.default_rng(seed).uniform(lin_vel_x[0], lin_vel_x[1], episodes)
    return cmd


def lin_vel_error(cmd_xy: np.ndarray, v_xy: np.ndarray) -> np.ndarray:
    """|v_xy,cmd - v_xy| (N,) m/s of commands and base-frame velocities (N, 2) m/s."""
    return np.sqrt(np.sum((as_numpy(cmd_xy) - as_numpy(v_xy)) ** 2, axis=-1))


def track_lin_vel_xy_exp(cmd_xy: np.ndarray, v_xy: np.ndarray) -> np.ndarray:
    """exp(-|v_xy,cmd - v_xy|^2 / 0.25) (N,) in (0, 1] of (N, 2) commands / velocities (m/s)."""
    return np.exp(-lin_vel_error(cmd_xy, v_xy) ** 2 / TRACKING_SIGMA2)


def track_ang_vel_z_exp(cmd_wz: np.ndarray, wz: np.ndarray) -> np.ndarray:
    """exp(-(w_z,cmd - w_z)^2 / 0.25) (N,) in (0, 1] of (N,) yaw-rate commands / rates (rad/s)."""
    return np.exp(-((as_numpy(cmd_wz) - as_numpy(wz)) ** 2) / TRACKING_SIGMA2)


def torque_limit_hits(torque: np.ndarray, effort_limit: np.ndarray) -> np.ndarray:
    """Joints per env (N,) with |tau| >= 0.99 x effort limit; torque (N, J) N·m, effort_limit (J,) N·m."""
    return np.sum(np.abs(as_numpy(torque)) >= TORQUE_LIMIT_FRACTION * as_numpy(effort_limit), axis=-1)


def joint_vel_limit_hits(joint_vel: np.ndarray, vel_limit: np.ndarray) -> np.ndarray:
    """Joints per env (N,) with |qdot| > velocity limit; joint_vel (N, J) rad/s, vel_limit (J,) rad/s."""
    return np.sum(np.abs(as_numpy(joint_vel)) > as_numpy(vel_limit), axis=-1)


def foot_slip_sums(foot_vel_w: np.ndarray, foot_contact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per env (N,): the summed horizontal speed (m/s) of feet in contact and how many are.

    foot_vel_w (N, F, 2 or 3) world-frame foot velocities (m/s; only x / y are used),
    foot_contact (N, F) bool."""
    speed = np.sqrt(np.sum(as_numpy(foot_vel_w)[..., :2] ** 2, axis=-1))
    contact = as_numpy(foot_contact, bool)
    return np.sum(np.where(contact, speed, 0.0), axis=-1), np.sum(contact, axis=-1)


class RolloutMetrics:
    """Accumulates the metrics of ``num_envs`` envs over their first episodes.

    Args:
        num_envs: N.
        effort_limit: (J,) N·m nominal effort limits (None: torque violations not measured).
        vel_limit: (J,) rad/s joint velocity limits (None: not measured).
    """

    def __init__(self, num_envs: int, effort_limit: np.ndarray | None = None, vel_limit: np.ndarray | None = None):
        N = num_envs
        self.num_envs = N
        self.effort_limit = None if effort_limit is None else np.asarray(effort_limit, np.float64)
        self.vel_limit = None if vel_limit is None else np.asarray(vel_limit, np.float64)
        self.running = np.ones(N, bool)
        self.fell = np.zeros(N, bool)
        self.length = np.zeros(N, np.int64)
        self.ret = np.zeros(N)
        self._sums = {k: np.zeros(N) for k in ("track_lin", "track_ang", "err", "tau_hits", "vel_hits", "slip", "contacts")}
        self._measured = {"reward": True, "torque": True, "joint_vel": True, "foot_slip": True}
        self._joints = {"torque": 0, "joint_vel": 0}

    @property
    def done(self) -> bool:
        """Whether every env has finished its first episode."""
        return not self.running.any()

    def step(
        self,
        command: np.ndarray,
        base_lin_vel: np.ndarray,
        base_ang_vel: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        reward: np.ndarray | None = None,
        joint_torque: np.ndarray | None = None,
        joint_vel: np.ndarray | None = None,
        foot_vel_w: np.ndarray | None = None,
        foot_contact: np.ndarray | None = None,
    ) -> None:
        """One policy step of all N envs (envs past their first episode are ignored).

        Args:
            command: (N, 3) the (vx, vy, wz) command in force during the step (m/s, rad/s).
            base_lin_vel / base_ang_vel: (N, 3) base-frame velocities the step reached (m/s, rad/s).
            terminated / truncated: (N,) bool, the step ended the episode by a termination /
                by the time limit (a termination counts as a fall even at the time limit).
            reward: (N,) the task's reward of the step; joint_torque (N, J) N·m; joint_vel (N, J)
                rad/s; foot_vel_w (N, F, 3) m/s world frame; foot_contact (N, F) bool.
                ``None`` once makes that metric ``nan`` for the whole rollout.
        """
        a = self.running.copy()
        if not a.any():
            return
        cmd, v, w = as_numpy(command), as_numpy(base_lin_vel), as_numpy(base_ang_vel)
        s = self._sums
        s["track_lin"] += np.where(a, track_lin_vel_xy_exp(cmd[:, :2], v[:, :2]), 0.0)
        s["track_ang"] += np.where(a, track_ang_vel_z_exp(cmd[:, 2], w[:, 2]), 0.0)
        s["err"] += np.where(a, lin_vel_error(cmd[:, :2], v[:, :2]), 0.0)
        self.length += a
        if reward is None:
            self._measured["reward"] = False
        else:
            self.ret += np.where(a, as_numpy(reward), 0.0)
        if joint_torque is None or self.effort_limit is None:
            self._measured["torque"] = False
        else:
            s["tau_hits"] += np.where(a, torque_limit_hits(joint_torque, self.effort_limit), 0)
            self._joints["torque"] = np.shape(joint_torque)[-1]
        if joint_vel is None or self.vel_limit is None:
            self._measured["joint_vel"] = False
        else:
            s["vel_hits"] += np.where(a, joint_vel_limit_hits(joint_vel, self.vel_limit), 0)
            self._joints["joint_vel"] = np.shape(joint_vel)[-1]
        if foot_vel_w is None or foot_contact is None:
            self._measured["foot_slip"] = False
        else:
            slip, count = foot_slip_sums(foot_vel_w, foot_contact)
            s["slip"] += np.where(a, slip, 0.0)
            s["contacts"] += np.where(a, count, 0)
        term, trunc = as_numpy(terminated, bool), as_numpy(truncated, bool)
        self.fell |= a & term
        self.running &= ~(term | trunc)

    def result(self) -> dict[str, float | int]:
        """The metrics (see the module docstring) plus ``episodes``, ``env_steps`` and
        ``mean_episode_length`` (steps) of the finished first episodes."""
        if not self.done:
            raise RuntimeError(f"{int(self.running.sum())} of {self.num_envs} envs have not finished their first episode")
        s, steps = self._sums, int(self.length.sum())
        m = self._measured

        def share(key: str, ok: bool, per: float) -> float:
            return float(s[key].sum() / per) if ok and per > 0 else math.nan

        contacts = float(s["contacts"].sum())
        return {
            "track_lin_vel_xy_exp": float(s["track_lin"].sum() / steps),
            "track_ang_vel_z_exp": float(s["track_ang"].sum() / steps),
            "lin_vel_error": float(s["err"].sum() / steps),
            "fall_rate": float(self.fell.mean()),
            "mean_return": float(self.ret.mean()) if m["reward"] else math.nan,
            "std_return": float(self.ret.std()) if m["reward"] else math.nan,
            "torque_limit_violation": share("tau_hits", m["torque"], steps * self._joints["torque"]),
            "joint_vel_limit_violation": share("vel_hits", m["joint_vel"], steps * self._joints["joint_vel"]),
            "foot_slip": float(s["slip"].sum() / contacts) if m["foot_slip"] and contacts else math.nan,
            "episodes": self.num_envs,
            "env_steps": steps,
            "mean_episode_length": float(self.length.mean()),
        }
