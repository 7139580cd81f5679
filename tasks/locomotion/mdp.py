"""Observation, reward and termination terms of the velocity-tracking tasks, on torch tensors.

Every term reads a :class:`LeggedState` (batched, one row per env) so the same code scores a
MuJoCo transition and an imagined one (RWM computes rewards from predicted states). Names,
formulas and defaults follow Isaac Lab's ``isaaclab.envs.mdp`` and
``isaaclab_tasks.manager_based.locomotion.velocity.mdp``; the reward manager multiplies each
weighted term by the env step ``dt`` (s), as Isaac Lab's does.

Frames: ``_b`` is the base (body) frame, ``_w`` the world frame; the yaw frame is the world
frame turned by the base's heading (roll and pitch removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class LeggedState:
    """What the terms may read, each (N, ...) on one device. Units: m, s, rad, N, N·m.

    Attributes:
        base_lin_vel_b / base_ang_vel_b: (N, 3) base twist in the base frame.
        projected_gravity: (N, 3) unit gravity direction in the base frame ((0, 0, -1) upright).
        base_height: (N,) base height above the ground.
        joint_pos / joint_vel / joint_acc / joint_torque: (N, J) in policy joint order.
        default_joint_pos: (J,) default pose; joint_pos_limits: (J, 2) soft limits.
        action / prev_action: (N, J) raw policy actions of this and the previous step.
        command: (N, 3) velocity command (vx, vy in the base's yaw frame, wz).
        foot_contact: (N, F) bool; foot_vel_w: (N, F, 3) linear velocity of each foot.
        last_air_time / current_air_time / current_contact_time: (N, F) s, from :class:`AirTime`.
        first_contact: (N, F) bool, feet that touched down this step.
        undesired_force / base_force: (N, U) / (N, B) net contact force norms.
    """

    base_lin_vel_b: torch.Tensor
    base_ang_vel_b: torch.Tensor
    projected_gravity: torch.Tensor
    base_height: torch.Tensor
    joint_pos: torch.Tensor
    joint_vel: torch.Tensor
    joint_acc: torch.Tensor
    joint_torque: torch.Tensor
    default_joint_pos: torch.Tensor
    joint_pos_limits: torch.Tensor
    action: torch.Tensor
    prev_action: torch.Tensor
    command: torch.Tensor
    foot_contact: torch.Tensor
    foot_vel_w: torch.Tensor
    last_air_time: torch.Tensor
    current_air_time: torch.Tensor
    current_contact_time: torch.Tensor
    first_contact: torch.Tensor
    undesired_force: torch.Tensor
    base_force: torch.Tensor
    terminated: torch.Tensor | None = None  # (N,) bool, set before rewards are computed


class AirTime:
    """Per-foot air / contact timers at the env rate (Isaac Lab's ``ContactSensor`` air time).

    ``update(contact (N, F) bool, dt)`` advances the timers; ``reset(idx)`` zeroes envs.
    """

    def __init__(self, num_envs: int, num_feet: int, device: torch.device | str = "cpu"):
        z = lambda: torch.zeros(num_envs, num_feet, device=device)  # noqa: E731
        self.current_air_time, self.current_contact_time, self.last_air_time = z(), z(), z()
        self.first_contact = torch.zeros(num_envs, num_feet, dtype=torch.bool, device=device)

    def update(self, contact: torch.Tensor, dt: float) -> None:
        self.first_contact = contact & (self.current_air_time > 0)
        self.last_air_time = torch.where(self.first_contact, self.current_air_time + dt, self.last_air_time)
        self.current_air_time = torch.where(contact, torch.zeros_like(self.current_air_time), self.current_air_time + dt)
        self.current_contact_time = torch.where(contact, self.current_contact_time + dt, torch.zeros_like(self.current_contact_time))

    def reset(self, idx: torch.Tensor) -> None:
        for t in (self.current_air_time, self.current_contact_time, self.last_air_time):
            t[idx] = 0.0
        self.first_contact[idx] = False


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------


def quat_rotate_inverse(quat_wxyz: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate world vectors ``v`` (N, 3) into the frame of ``quat_wxyz`` (N, 4)."""
    w, xyz = quat_wxyz[:, :1], quat_wxyz[:, 1:]
    t = 2.0 * torch.cross(xyz, v, dim=1)
    return v - w * t + torch.cross(xyz, t, dim=1)


def yaw_from_quat(quat_wxyz: torch.Tensor) -> torch.Tensor:
    """Heading (N,) rad of a base orientation (N, 4)."""
    w, x, y, z = quat_wxyz.unbind(1)
    return torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def body_to_yaw_frame(gravity_b: torch.Tensor, v_b: torch.Tensor) -> torch.Tensor:
    """Express base-frame vectors (N, 3) in the yaw frame, using only the projected gravity.

    With ``R = Rz(yaw) Ry(pitch) Rx(roll)``, gravity in the base frame is
    ``(sin p, -sin r cos p, -cos r cos p)``, so roll and pitch (hence ``Ry Rx``) follow from it.
    """
    g = gravity_b / gravity_b.norm(dim=1, keepdim=True).clamp_min(1e-6)
    sp = g[:, 0].clamp(-1.0, 1.0)
    cp = torch.sqrt(1 - sp * sp)
    roll = torch.atan2(-g[:, 1], -g[:, 2])
    sr, cr = torch.sin(roll), torch.cos(roll)
    x, y, z = v_b.unbind(1)
    y1, z1 = cr * y - sr * z, sr * y + cr * z  # Rx(roll)
    x2, z2 = cp * x + sp * z1, -sp * x + cp * z1  # Ry(pitch)
    return torch.stack((x2, y1, z2), dim=1)


# --------------------------------------------------------------------------------------------
# rewards: each (N,) before weight and dt
# --------------------------------------------------------------------------------------------


def track_lin_vel_xy_exp(s: LeggedState, std: float) -> torch.Tensor:
    """exp(-|v_xy,cmd - v_xy,base|² / std²), base frame."""
    err = torch.sum((s.command[:, :2] - s.base_lin_vel_b[:, :2]) ** 2, dim=1)
    return torch.exp(-err / std**2)


def track_lin_vel_xy_yaw_frame_exp(s: LeggedState, std: float) -> torch.Tensor:
    """exp(-|v_xy,cmd - v_xy|² / std²), velocity in the yaw frame."""
    v = body_to_yaw_frame(s.projected_gravity, s.base_lin_vel_b)
    return torch.exp(-torch.sum((s.command[:, :2] - v[:, :2]) ** 2, dim=1) / std**2)


def track_ang_vel_z_exp(s: LeggedState, std: float) -> torch.Tensor:
    """exp(-(w_z,cmd - w_z,base)² / std²), base frame."""
    return torch.exp(-((s.command[:, 2] - s.base_ang_vel_b[:, 2]) ** 2) / std**2)


def track_ang_vel_z_world_exp(s: LeggedState, std: float) -> torch.Tensor:
    """exp(-(w_z,cmd - w_z,world)² / std²)."""
    wz = body_to_yaw_frame(s.projected_gravity, s.base_ang_vel_b)[:, 2]
    return torch.exp(-((s.command[:, 2] - wz) ** 2) / std**2)


def lin_vel_z_l2(s: LeggedState) -> torch.Tensor:
    return s.base_lin_vel_b[:, 2] ** 2


def ang_vel_xy_l2(s: LeggedState) -> torch.Tensor:
    return torch.sum(s.base_ang_vel_b[:, :2] ** 2, dim=1)


def flat_orientation_l2(s: LeggedState) -> torch.Tensor:
    return torch.sum(s.projected_gravity[:, :2] ** 2, dim=1)


def joint_torques_l2(s: LeggedState, joint_ids: torch.Tensor | None = None) -> torch.Tensor:
    tau = s.joint_torque if joint_ids is None else s.joint_torque[:, joint_ids]
    return torch.sum(tau**2, dim=1)


def joint_acc_l2(s: LeggedState, joint_ids: torch.Tensor | None = None) -> torch.Tensor:
    acc = s.joint_acc if joint_ids is None else s.joint_acc[:, joint_ids]
    return torch.sum(acc**2, dim=1)


def action_rate_l2(s: LeggedState) -> torch.Tensor:
    return torch.sum((s.action - s.prev_action) ** 2, dim=1)


def joint_pos_limits(s: LeggedState, joint_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of how far joints are beyond their soft limits (rad)."""
    q = s.joint_pos if joint_ids is None else s.joint_pos[:, joint_ids]
    lim = s.joint_pos_limits if joint_ids is None else s.joint_pos_limits[joint_ids]
    return torch.sum((lim[:, 0] - q).clamp_min(0) + (q - lim[:, 1]).clamp_min(0), dim=1)


def joint_deviation_l1(s: LeggedState, joint_ids: torch.Tensor | None = None) -> torch.Tensor:
    dev = s.joint_pos - s.default_joint_pos
    return torch.sum(torch.abs(dev if joint_ids is None else dev[:, joint_ids]), dim=1)


def feet_air_time(s: LeggedState, threshold: float) -> torch.Tensor:
    """Σ_feet (last air time - threshold) at touch-down, only while commanded to move (> 0.1 m/s)."""
    reward = torch.sum((s.last_air_time - threshold) * s.first_contact, dim=1)
    return reward * (torch.norm(s.command[:, :2], dim=1) > 0.1)


def feet_air_time_positive_biped(s: LeggedState, threshold: float) -> torch.Tensor:
    """Biped gait reward: time in the current single-stance phase, capped at ``threshold``."""
    in_contact = s.current_contact_time > 0
    in_mode_time = torch.where(in_contact, s.current_contact_time, s.current_air_time)
    single_stance = torch.sum(in_contact.int(), dim=1) == 1
    reward = torch.min(torch.where(single_stance.unsqueeze(-1), in_mode_time, 0.0), dim=1)[0].clamp(max=threshold)
    return reward * (torch.norm(s.command[:, :2], dim=1) > 0.1)


def feet_slide(s: LeggedState) -> torch.Tensor:
    """Σ_feet |v_xy,foot| while the foot is in contact (m/s)."""
    return torch.sum(s.foot_vel_w[:, :, :2].norm(dim=-1) * s.foot_contact, dim=1)


def undesired_contacts(s: LeggedState, threshold: float) -> torch.Tensor:
    """Number of undesired bodies pressing with more than ``threshold`` N."""
    return torch.sum(s.undesired_force > threshold, dim=1).float()


def is_terminated(s: LeggedState) -> torch.Tensor:
    """1 for an episode that ended by termination (not time-out) this step."""
    if s.terminated is None:
        raise ValueError("is_terminated needs LeggedState.terminated")
    return s.terminated.float()


# --------------------------------------------------------------------------------------------
# terminations: each (N,) bool
# --------------------------------------------------------------------------------------------


def base_contact(s: LeggedState, threshold: float) -> torch.Tensor:
    """A base / torso body presses on the ground with more than ``threshold`` N (illegal contact)."""
    return torch.any(s.base_force > threshold, dim=1)


def bad_orientation(s: LeggedState, limit_angle: float) -> torch.Tensor:
    """The base is tilted more than ``limit_angle`` rad from upright (a fall)."""
    return torch.acos((-s.projected_gravity[:, 2]).clamp(-1.0, 1.0)).abs() > limit_angle


def base_height_below(s: LeggedState, minimum_height: float) -> torch.Tensor:
    return s.base_height < minimum_height


# --------------------------------------------------------------------------------------------
# terms as data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """A reward or termination term: ``func(state, **params)``, with a weight for rewards.

    A ``joints`` param (regex on joint names) is resolved by the env into ``joint_ids``.
    """

    func: Callable[..., torch.Tensor]
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


def wrap_to_pi(angle: torch.Tensor) -> torch.Tensor:
    return (angle + math.pi) % (2 * math.pi) - math.pi
