"""ANYmal C velocity tracking on flat ground: Isaac Lab's ``AnymalCFlatEnvCfg`` on MuJoCo physics.

Terms and weights as ``isaaclab_tasks/manager_based/locomotion/velocity/velocity_env_cfg.py``
(``LocomotionVelocityRoughEnvCfg``) with the flat overrides of
``config/anymal_c/flat_env_cfg.py`` (flat orientation -5, torques -2.5e-5, feet air time 0.5).
A fall (base tilted beyond 80°) also terminates, besides base contact. With legged_gym's PD
(80 / 2, see ``robots.py``) the early, shaky policy earns more penalty than tracking reward,
and PPO learned to end episodes at once (mean length 19 steps after 100 iterations); clipping
the total at zero (legged_gym's ``only_positive_rewards``) left no signal at all. Ending an
episode therefore costs as much as on Isaac Lab's G1: ``termination_penalty`` -200 (x dt).
"""

from __future__ import annotations

from tasks.locomotion import mdp
from tasks.locomotion.config import VelocityEnvCfg
from tasks.locomotion.mdp import Term
from tasks.locomotion.robots import ANYMAL_C

ENV_CFG = VelocityEnvCfg(
    name="anymal_c_flat",
    robot=ANYMAL_C,
    action_scale=0.5,
    rewards={
        "termination_penalty": Term(mdp.is_terminated, -200.0),
        "track_lin_vel_xy_exp": Term(mdp.track_lin_vel_xy_exp, 1.0, {"std": 0.5}),
        "track_ang_vel_z_exp": Term(mdp.track_ang_vel_z_exp, 0.5, {"std": 0.5}),
        "lin_vel_z_l2": Term(mdp.lin_vel_z_l2, -2.0),
        "ang_vel_xy_l2": Term(mdp.ang_vel_xy_l2, -0.05),
        "dof_torques_l2": Term(mdp.joint_torques_l2, -2.5e-5),
        "dof_acc_l2": Term(mdp.joint_acc_l2, -2.5e-7),
        "action_rate_l2": Term(mdp.action_rate_l2, -0.01),
        "feet_air_time": Term(mdp.feet_air_time, 0.5, {"threshold": 0.5}),
        "undesired_contacts": Term(mdp.undesired_contacts, -1.0, {"threshold": 1.0}),
        "flat_orientation_l2": Term(mdp.flat_orientation_l2, -5.0),
    },
    terminations={
        "base_contact": Term(mdp.base_contact, params={"threshold": 1.0}),
        "fall": Term(mdp.bad_orientation, params={"limit_angle": 1.4}),
    },
)
