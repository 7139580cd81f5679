"""A velocity-tracking task as data (Isaac Lab's ``LocomotionVelocityRoughEnvCfg`` layout).

Rewards and terminations are dicts of :class:`~tasks.locomotion.mdp.Term`; commands, reset
events and domain randomization are plain dataclasses. Randomization is off by default
(every range ``None``); sim2real switches it on with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tasks.locomotion.mdp import Term
from tasks.locomotion.robots import PHYSICS_DT, RobotCfg

Range = tuple[float, float]


@dataclass(frozen=True)
class CommandCfg:
    """Isaac Lab's ``UniformVelocityCommandCfg``: (vx, vy, wz) resampled every ``resampling_time`` s.

    Heading envs (``rel_heading_envs``) get wz from a P controller on a sampled heading:
    ``wz = clip(heading_control_stiffness * wrap(heading - yaw), *ang_vel_z)``; standing envs
    (``rel_standing_envs``) get a zero command.
    """

    lin_vel_x: Range = (-1.0, 1.0)  # m/s
    lin_vel_y: Range = (-1.0, 1.0)  # m/s
    ang_vel_z: Range = (-1.0, 1.0)  # rad/s
    heading: Range = (-math.pi, math.pi)  # rad
    heading_command: bool = True
    heading_control_stiffness: float = 0.5
    rel_standing_envs: float = 0.02
    rel_heading_envs: float = 1.0
    resampling_time: float = 10.0  # s


@dataclass(frozen=True)
class ResetCfg:
    """Isaac Lab's ``reset_base`` / ``reset_robot_joints`` events."""

    pose_xy: Range = (-0.5, 0.5)  # m, base x and y
    yaw: Range = (-math.pi, math.pi)  # rad
    base_velocity: Range = (-0.5, 0.5)  # m/s and rad/s, each of the 6 base velocity components
    joint_pos_scale: Range = (0.5, 1.5)  # x default joint position


@dataclass(frozen=True)
class RandomizationCfg:
    """Domain randomization, all off (None / 0) by default.

    Attributes:
        friction: multiplier range on every geom's sliding friction (per env, at reset).
        added_base_mass: kg added to the base (per env, at reset).
        motor_strength: multiplier range on actuator effort limits (per env, at reset).
        stiffness_scale / damping_scale: multiplier ranges on PD gains (per env, at reset).
        push_interval: seconds between pushes (sampled per env); push_velocity: m/s added to the
            base's x / y velocity, uniform in ±push_velocity.
        observation_noise: add Isaac Lab's uniform observation noise (``OBS_NOISE``).
        action_latency: maximum delay in policy steps (each env draws 0..max at reset).
    """

    friction: Range | None = None
    added_base_mass: Range | None = None
    motor_strength: Range | None = None
    stiffness_scale: Range | None = None
    damping_scale: Range | None = None
    push_interval: Range | None = None
    push_velocity: float = 0.5
    observation_noise: bool = False
    action_latency: int = 0

    @property
    def per_env_model(self) -> bool:
        """Whether envs need their own ``MjModel`` copies (model parameters differ per env)."""
        return any(r is not None for r in (self.friction, self.added_base_mass, self.motor_strength, self.stiffness_scale, self.damping_scale))


# Isaac Lab's policy observation noise (uniform ±n): base_lin_vel 0.1, base_ang_vel 0.2,
# projected_gravity 0.05, joint_pos_rel 0.01, joint_vel_rel 1.5; commands and actions clean.
OBS_NOISE = {"base_lin_vel": 0.1, "base_ang_vel": 0.2, "projected_gravity": 0.05, "velocity_commands": 0.0,
             "joint_pos": 0.01, "joint_vel": 1.5, "actions": 0.0}


@dataclass(frozen=True)
class VelocityEnvCfg:
    """Everything that defines a velocity-tracking task on a robot.

    Physics runs at ``robots.PHYSICS_DT`` (0.005 s); the policy acts every ``decimation``
    physics steps (0.02 s, 50 Hz). Actions are joint position offsets:
    ``target = default_joint_pos + action_scale * action``, tracked by the robot's PD.
    """

    name: str
    robot: RobotCfg
    rewards: dict[str, Term]
    terminations: dict[str, Term]
    action_scale: float = 0.5
    action_limit: float = 10.0  # the action box is ±action_limit (x action_scale rad offsets)
    decimation: int = 4
    episode_length_s: float = 20.0
    soft_joint_pos_limit_factor: float = 1.0
    commands: CommandCfg = field(default_factory=CommandCfg)
    reset: ResetCfg = field(default_factory=ResetCfg)
    randomization: RandomizationCfg = field(default_factory=RandomizationCfg)

    @property
    def step_dt(self) -> float:
        """Seconds per policy step (``decimation`` physics steps)."""
        return PHYSICS_DT * self.decimation

    @property
    def max_episode_steps(self) -> int:
        """Policy steps per episode (``episode_length_s`` / ``step_dt``)."""
        return int(round(self.episode_length_s / self.step_dt))
