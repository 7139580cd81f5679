"""Validation metrics shared by every backend, and the robots' joint limits they are measured against.

The metric functions themselves are numpy-only (:mod:`sim2real.metrics_np`, which the Isaac
Lab worker imports in its own Python); they take numpy arrays or torch tensors (N, ...) and
are re-exported here for the main environment. This module adds what needs the task
definitions: each robot's nominal effort limits and joint velocity limits, in the task's
joint order.

Velocity limits (rad/s), from the actuators' data sheets as the simulators' configs carry them:

- ANYmal C: 7.5 rad/s every joint (Isaac Lab's ``ANYDRIVE_3_SIMPLE_ACTUATOR_CFG.velocity_limit``;
  the URDF's 20 rad/s is a joint bound, the DC motor reaches zero torque at 7.5 rad/s);
- Unitree G1: mjlab's ``g1_constants.py`` per motor: 5020 37 rad/s, 7520-14 32 rad/s,
  7520-22 20 rad/s, 4010 22 rad/s (the joints driven by two 5020s keep 37 rad/s).
"""

from __future__ import annotations

import numpy as np

from sim2real.metrics_np import (
    EVAL_LIN_VEL_X,
    METRICS,
    TORQUE_LIMIT_FRACTION,
    TRACKING_SIGMA2,
    RolloutMetrics,
    as_numpy,
    eval_commands,
    foot_slip_sums,
    joint_vel_limit_hits,
    lin_vel_error,
    torque_limit_hits,
    track_ang_vel_z_exp,
    track_lin_vel_xy_exp,
)

__all__ = [
    "EVAL_LIN_VEL_X", "METRICS", "TORQUE_LIMIT_FRACTION", "TRACKING_SIGMA2", "JOINT_VELOCITY_LIMIT", "RolloutMetrics",
    "as_numpy", "eval_commands", "foot_slip_sums", "joint_limits", "joint_vel_limit_hits", "lin_vel_error",
    "torque_limit_hits", "track_ang_vel_z_exp", "track_lin_vel_xy_exp",
]

# task -> {joint-name regex: velocity limit rad/s}; first match wins (RobotCfg.per_joint)
JOINT_VELOCITY_LIMIT: dict[str, dict[str, float]] = {
    "anymal_c_flat": {".*": 7.5},
    "g1_flat": {
        ".*_hip_pitch_joint|.*_hip_yaw_joint|waist_yaw_joint": 32.0,  # 7520-14
        ".*_hip_roll_joint|.*_knee_joint": 20.0,  # 7520-22
        ".*_wrist_pitch_joint|.*_wrist_yaw_joint": 22.0,  # 4010
        ".*": 37.0,  # 5020: shoulders, elbows, wrist roll; waist roll / pitch and ankles (two 5020s)
    },
}


def joint_limits(task: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """``(joint_names, effort_limit (J,) N·m, velocity_limit (J,) rad/s)`` of a legged task, in
    the task's (MuJoCo) joint order; the effort limits are the nominal ones of ``RobotCfg``."""
    from tasks.locomotion.registry import env_cfg

    if task not in JOINT_VELOCITY_LIMIT:
        raise KeyError(f"no joint velocity limits for task {task!r}; known: {sorted(JOINT_VELOCITY_LIMIT)}")
    robot = env_cfg(task).robot
    return robot.joint_names, robot.per_joint(robot.effort_limit), robot.per_joint(JOINT_VELOCITY_LIMIT[task])
