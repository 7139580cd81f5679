"""Unitree G1 (29 DoF) velocity tracking on flat ground: Isaac Lab's ``G1FlatEnvCfg`` on MuJoCo.

Terms and weights as ``isaaclab_tasks/manager_based/locomotion/velocity/config/g1/rough_env_cfg.py``
(``G1Rewards``, ``G1RoughEnvCfg``) with the overrides of ``flat_env_cfg.py``; joint groups
renamed for the 29-DoF model (``waist_*`` for Isaac Lab's ``torso_joint``, ``*_elbow_joint``;
this G1 has no finger joints). Base contact is the torso or pelvis touching the ground.
"""

from __future__ import annotations

from tasks.locomotion import mdp
from tasks.locomotion.config import CommandCfg, ResetCfg, VelocityEnvCfg
from tasks.locomotion.mdp import Term
from tasks.locomotion.robots import G1

_LEGS = ".*_hip_.*|.*_knee_joint"
ENV_CFG = VelocityEnvCfg(
    name="g1_flat",
    robot=G1,
    action_scale=0.5,
    soft_joint_pos_limit_factor=0.9,
    rewards={
        "termination_penalty": Term(mdp.is_terminated, -200.0),
        "track_lin_vel_xy_exp": Term(mdp.track_lin_vel_xy_yaw_frame_exp, 1.0, {"std": 0.5}),
        "track_ang_vel_z_exp": Term(mdp.track_ang_vel_z_world_exp, 1.0, {"std": 0.5}),
        "lin_vel_z_l2": Term(mdp.lin_vel_z_l2, -0.2),
        "ang_vel_xy_l2": Term(mdp.ang_vel_xy_l2, -0.05),
        "dof_torques_l2": Term(mdp.joint_torques_l2, -2.0e-6, {"joints": _LEGS}),
        "dof_acc_l2": Term(mdp.joint_acc_l2, -1.0e-7, {"joints": _LEGS}),
        "action_rate_l2": Term(mdp.action_rate_l2, -0.005),
        "feet_air_time": Term(mdp.feet_air_time_positive_biped, 0.75, {"threshold": 0.4}),
        "feet_slide": Term(mdp.feet_slide, -0.1),
        "flat_orientation_l2": Term(mdp.flat_orientation_l2, -1.0),
        "dof_pos_limits": Term(mdp.joint_pos_limits, -1.0, {"joints": ".*_ankle_pitch_joint|.*_ankle_roll_joint"}),
        "joint_deviation_hip": Term(mdp.joint_deviation_l1, -0.1, {"joints": ".*_hip_yaw_joint|.*_hip_roll_joint"}),
        "joint_deviation_arms": Term(mdp.joint_deviation_l1, -0.1, {"joints": ".*_shoulder_.*_joint|.*_elbow_joint|.*_wrist_.*_joint"}),
        "joint_deviation_torso": Term(mdp.joint_deviation_l1, -0.1, {"joints": "waist_.*_joint"}),
    },
    terminations={
        "base_contact": Term(mdp.base_contact, params={"threshold": 1.0}),
        "fall": Term(mdp.bad_orientation, params={"limit_angle": 1.4}),
    },
    commands=CommandCfg(lin_vel_x=(0.0, 1.0), lin_vel_y=(-0.5, 0.5), ang_vel_z=(-1.0, 1.0)),
    reset=ResetCfg(base_velocity=(0.0, 0.0), joint_pos_scale=(1.0, 1.0)),
)
