"""ANYmal C and Unitree G1 as MuJoCo models, built through ``MjSpec`` from the fetched robot files.

A :class:`RobotCfg` is data: the joints in policy order, the default pose, the PD gains and
effort limits of the position actuators (Isaac Lab's actuator configs), and which collision
geoms / bodies count as feet, undesired contacts and base (termination) contacts. :func:`build_model`
turns it into an ``MjModel`` with a floor, one position actuator per joint (PD at the physics
rate, torque clipped to the effort limit) and one MuJoCo ``contact`` sensor per tracked
geom or body, laid out in :class:`ModelLayout`.

Sources of the numbers:

- ANYmal C: URDF from ANYbotics (via ``genesis-world``); ``ANYMAL_C_CFG``'s init state (base
  at 0.6 m, HFE ±0.4, KFE ∓0.8) and effort limit (80 N·m). Isaac Lab drives ANYmal C with an
  LSTM actuator network (a remote file we do not have); its fallback
  ``ANYDRIVE_3_SIMPLE_ACTUATOR_CFG`` (PD 40 / 5) lets the robot sag 0.18 m under its weight,
  and rsl-rl PPO learned only to stand and turn on it (tracking 0.11, BENCHMARKS.md). We use
  legged_gym's ANYmal C PD for when the actuator net is off: stiffness 80, damping 2.
  MuJoCo's position actuator clips at the effort limit; the DC motor model's speed-dependent
  limit (120 N·m at rest, 0 at 7.5 rad/s) binds only above 2.5 rad/s and is not modelled.
- G1 29-DoF: MJCF from mjlab (``g1.xml``), mjlab's ``g1_constants.py`` gains (reflected
  rotor inertia as joint armature, stiffness = armature·(2π·10 Hz)², damping ratio 2),
  its knees-bent keyframe and its self-collision-free collision setup (feet condim 3,
  friction 0.6, priority 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import mujoco
import numpy as np

from tasks.assets import asset_path

PHYSICS_DT = 0.005  # s, as Isaac Lab's velocity tasks (sim.dt)


@dataclass(frozen=True)
class RobotCfg:
    """A legged robot: joints, gains, default pose and contact groups (all by name).

    Regex-keyed dicts (``{".*_HFE": 0.4}``) are matched with ``re.fullmatch`` against joint
    names; the first matching key wins and every joint must match one key.
    """

    name: str
    spec_fn: Callable[[], mujoco.MjSpec]
    joint_names: tuple[str, ...]  # policy / actuator order
    default_joint_pos: dict[str, float]  # rad
    base_height: float  # m, initial base (free-joint) height
    stiffness: dict[str, float]  # N·m/rad
    damping: dict[str, float]  # N·m·s/rad
    effort_limit: dict[str, float]  # N·m
    armature: dict[str, float] = field(default_factory=lambda: {".*": 0.0})  # kg·m²
    base_body: str = "base"
    # Contact groups: each entry is a geom name, or ``body:<name>`` for all geoms of a body.
    feet: tuple[str, ...] = ()  # one contact sensor per foot (air time, slide)
    undesired_contacts: tuple[str, ...] = ()  # thighs / shins: penalised contacts
    base_contacts: tuple[str, ...] = ()  # touching the ground ends the episode

    def per_joint(self, table: dict[str, float]) -> np.ndarray:
        """Resolve a regex-keyed table to a (J,) array in :attr:`joint_names` order."""
        out = np.empty(len(self.joint_names))
        for i, name in enumerate(self.joint_names):
            for pattern, value in table.items():
                if re.fullmatch(pattern, name):
                    out[i] = value
                    break
            else:
                raise KeyError(f"{self.name}: joint {name!r} matches no key of {sorted(table)}")
        return out


@dataclass(frozen=True)
class ModelLayout:
    """Where things are in the compiled model (indices into ``MjData`` arrays)."""

    qpos_adr: np.ndarray  # (J,) joint position addresses, policy order
    dof_adr: np.ndarray  # (J,) joint velocity addresses, policy order
    default_joint_pos: np.ndarray  # (J,) rad
    effort_limit: np.ndarray  # (J,) N·m
    joint_range: np.ndarray  # (J, 2) rad; (-inf, inf) for unlimited joints
    base_body: int
    sensor_adr: dict[str, np.ndarray]  # group -> (G,) sensordata address of each entry's contact sensor
    foot_vel_adr: np.ndarray  # (F,) sensordata address of each foot's world linear velocity (3 values)
    base_height: float


def build_model(cfg: RobotCfg) -> tuple[mujoco.MjModel, ModelLayout]:
    """Compile ``cfg`` into an ``MjModel`` (floor, PD position actuators, contact sensors)."""
    spec = cfg.spec_fn()
    spec.option.timestep = PHYSICS_DT
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.worldbody.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[0, 0, 0.05], rgba=[0.45, 0.5, 0.58, 1])
    spec.worldbody.add_light(name="sun", pos=[0, 0, 4], dir=[0, 0, -1], type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL)
    kp, kd = cfg.per_joint(cfg.stiffness), cfg.per_joint(cfg.damping)
    effort, armature = cfg.per_joint(cfg.effort_limit), cfg.per_joint(cfg.armature)
    for i, name in enumerate(cfg.joint_names):
        joint = spec.joint(name)
        if joint is None:
            raise KeyError(f"{cfg.name}: the model has no joint {name!r}")
        joint.armature = float(armature[i])
        act = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=float(kp[i]), kv=float(kd[i]))
        act.forcerange = [-float(effort[i]), float(effort[i])]
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    groups = {"feet": cfg.feet, "undesired": cfg.undesired_contacts, "base": cfg.base_contacts}
    for group, entries in groups.items():
        for entry in entries:
            is_body = entry.startswith("body:")
            # found (1) + net force (3, world frame) of every contact of this geom / body
            spec.add_sensor(
                name=f"{group}:{entry}",
                type=mujoco.mjtSensor.mjSENS_CONTACT,
                objtype=mujoco.mjtObj.mjOBJ_BODY if is_body else mujoco.mjtObj.mjOBJ_GEOM,
                objname=entry.removeprefix("body:"),
                intprm=[3, 3, 1],
            )
    for entry in cfg.feet:  # linear velocity of each foot, world frame (feet slide)
        spec.add_sensor(
            name=f"foot_vel:{entry}",
            type=mujoco.mjtSensor.mjSENS_FRAMELINVEL,
            objtype=mujoco.mjtObj.mjOBJ_BODY if entry.startswith("body:") else mujoco.mjtObj.mjOBJ_GEOM,
            objname=entry.removeprefix("body:"),
        )
    model = spec.compile()
    qpos_adr = np.array([model.jnt_qposadr[model.joint(n).id] for n in cfg.joint_names])
    dof_adr = np.array([model.jnt_dofadr[model.joint(n).id] for n in cfg.joint_names])
    joint_range = np.array(
        [model.jnt_range[model.joint(n).id] if model.jnt_limited[model.joint(n).id] else (-np.inf, np.inf) for n in cfg.joint_names]
    )
    sensor_adr = {
        group: np.array([model.sensor_adr[model.sensor(f"{group}:{e}").id] for e in entries], dtype=np.int64)
        for group, entries in groups.items()
    }
    layout = ModelLayout(
        qpos_adr=qpos_adr,
        dof_adr=dof_adr,
        default_joint_pos=cfg.per_joint(cfg.default_joint_pos),
        effort_limit=effort,
        joint_range=joint_range,
        base_body=model.body(cfg.base_body).id,
        sensor_adr=sensor_adr,
        foot_vel_adr=np.array([model.sensor_adr[model.sensor(f"foot_vel:{e}").id] for e in cfg.feet], dtype=np.int64),
        base_height=cfg.base_height,
    )
    return model, layout


# ---------------------------------------------------------------------------------------------
# ANYmal C
# ---------------------------------------------------------------------------------------------

_ANYMAL_LEGS = ("LF", "RF", "LH", "RH")


def anymal_c_spec() -> mujoco.MjSpec:
    """ANYmal C from its URDF: visuals dropped (collision is primitives only), the singular
    inertia of the ``hatch`` link repaired, inertias balanced, static links fused, a free joint
    on ``base``; collision geoms named ``base``, ``<leg>_THIGH``, ``<leg>_SHANK``, ``<leg>_FOOT``."""
    urdf = asset_path("anymal_c/urdf/anymal_c.urdf").read_text()
    urdf = re.sub(r"<visual>.*?</visual>", "", urdf, flags=re.S)
    singular = '<inertia ixx="0.001" ixy="0.001" ixz="0.001" iyy="0.001" iyz="0.001" izz="0.001"/>'
    if singular not in urdf:
        raise ValueError("anymal_c.urdf: the hatch inertia to repair was not found (unexpected URDF version)")
    urdf = urdf.replace(singular, '<inertia ixx="0.001" ixy="0" ixz="0" iyy="0.001" iyz="0" izz="0.001"/>')
    urdf = urdf.replace(
        '<robot name="anymal">',
        '<robot name="anymal"><mujoco><compiler discardvisual="true" balanceinertia="true" fusestatic="true"/></mujoco>',
    )
    spec = mujoco.MjSpec.from_string(urdf)
    spec.body("base").add_freejoint(name="root")
    spec.body("base").first_geom().name = "base"
    for leg in _ANYMAL_LEGS:  # geoms live in static links, fused into THIGH / SHANK at compile
        spec.body(f"{leg}_KFE").first_geom().name = f"{leg}_THIGH"  # knee drive cylinder on the thigh
        spec.body(f"{leg}_SHANK").first_geom().name = f"{leg}_SHANK"
        spec.body(f"{leg}_FOOT").first_geom().name = f"{leg}_FOOT"  # the sphere at the tip
    for geom in spec.geoms:
        geom.friction = [1.0, 0.005, 0.0001]
    return spec


ANYMAL_C = RobotCfg(
    name="anymal_c",
    spec_fn=anymal_c_spec,
    joint_names=tuple(f"{leg}_{j}" for leg in _ANYMAL_LEGS for j in ("HAA", "HFE", "KFE")),
    default_joint_pos={".*HAA": 0.0, ".F_HFE": 0.4, ".H_HFE": -0.4, ".F_KFE": -0.8, ".H_KFE": 0.8},
    base_height=0.6,
    stiffness={".*": 80.0},
    damping={".*": 2.0},
    effort_limit={".*": 80.0},
    base_body="base",
    feet=tuple(f"{leg}_FOOT" for leg in _ANYMAL_LEGS),
    undesired_contacts=tuple(f"{leg}_THIGH" for leg in _ANYMAL_LEGS),
    base_contacts=("base",),
)


# ---------------------------------------------------------------------------------------------
# Unitree G1 (29 DoF)
# ---------------------------------------------------------------------------------------------


def _reflected_inertia(rotor: tuple[float, float, float], gears: tuple[float, float, float]) -> float:
    """Reflected inertia (kg·m²) of a two-stage planetary gearbox (mjlab's formula)."""
    return rotor[0] * (gears[1] * gears[2]) ** 2 + rotor[1] * gears[2] ** 2 + rotor[2]


_G1_ARMATURE = {
    "5020": _reflected_inertia((0.139e-4, 0.017e-4, 0.169e-4), (1, 1 + 46 / 18, 1 + 56 / 16)),
    "7520_14": _reflected_inertia((0.489e-4, 0.098e-4, 0.533e-4), (1, 4.5, 1 + 48 / 22)),
    "7520_22": _reflected_inertia((0.489e-4, 0.109e-4, 0.738e-4), (1, 4.5, 5)),
    "4010": _reflected_inertia((0.068e-4, 0.0, 0.0), (1, 5, 5)),
}
_G1_EFFORT = {"5020": 25.0, "7520_14": 88.0, "7520_22": 139.0, "4010": 5.0}
_G1_MOTOR = {  # joint regex -> (motor, how many motors drive the joint: ankles and waist have 2)
    ".*_elbow_joint|.*_shoulder_.*_joint|.*_wrist_roll_joint": ("5020", 1),
    ".*_hip_pitch_joint|.*_hip_yaw_joint|waist_yaw_joint": ("7520_14", 1),
    ".*_hip_roll_joint|.*_knee_joint": ("7520_22", 1),
    ".*_wrist_pitch_joint|.*_wrist_yaw_joint": ("4010", 1),
    "waist_pitch_joint|waist_roll_joint|.*_ankle_.*_joint": ("5020", 2),
}
_G1_OMEGA = 10 * 2 * math.pi  # rad/s, natural frequency of the joint PD
_G1_ZETA = 2.0  # damping ratio


def _g1_table(kind: str) -> dict[str, float]:
    table = {}
    for pattern, (motor, n) in _G1_MOTOR.items():
        arm = _G1_ARMATURE[motor] * n
        table[pattern] = {
            "armature": arm,
            "stiffness": arm * _G1_OMEGA**2,
            "damping": 2 * _G1_ZETA * arm * _G1_OMEGA,
            "effort": _G1_EFFORT[motor] * n,
        }[kind]
    return table


def g1_spec() -> mujoco.MjSpec:
    """G1 29-DoF from mjlab's MJCF, without self-collisions (collision geoms hit only the floor),
    feet capsules with condim 3, friction 0.6 and priority 1; visual meshes kept for rendering."""
    spec = mujoco.MjSpec.from_file(str(asset_path("unitree_g1/xmls/g1.xml")))
    foot = re.compile(r"(left|right)_foot[1-7]_collision")
    for geom in spec.geoms:
        if geom.name.endswith("_collision"):
            geom.contype, geom.conaffinity = 0, 1
            geom.condim = 3 if foot.fullmatch(geom.name) else 1
            if foot.fullmatch(geom.name):
                geom.priority, geom.friction = 1, [0.6, 0.005, 0.0001]
    return spec


_G1_JOINTS = (
    *(f"{side}_{j}_joint" for side in ("left", "right") for j in ("hip_pitch", "hip_roll", "hip_yaw", "knee", "ankle_pitch", "ankle_roll")),
    "waist_yaw_joint",
    "waist_roll_joint",
    "waist_pitch_joint",
    *(
        f"{side}_{j}_joint"
        for side in ("left", "right")
        for j in ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
    ),
)

G1 = RobotCfg(
    name="g1",
    spec_fn=g1_spec,
    joint_names=_G1_JOINTS,
    default_joint_pos={  # mjlab KNEES_BENT_KEYFRAME
        ".*_hip_pitch_joint": -0.312,
        ".*_knee_joint": 0.669,
        ".*_ankle_pitch_joint": -0.363,
        ".*_elbow_joint": 0.6,
        "left_shoulder_roll_joint": 0.2,
        "right_shoulder_roll_joint": -0.2,
        ".*_shoulder_pitch_joint": 0.2,
        ".*": 0.0,
    },
    base_height=0.76,
    stiffness=_g1_table("stiffness"),
    damping=_g1_table("damping"),
    effort_limit=_g1_table("effort"),
    armature=_g1_table("armature"),
    base_body="pelvis",
    feet=("body:left_ankle_roll_link", "body:right_ankle_roll_link"),
    undesired_contacts=("left_shin_collision", "right_shin_collision", "left_thigh_collision", "right_thigh_collision"),
    base_contacts=("body:torso_link", "body:pelvis"),
)

ROBOTS: dict[str, RobotCfg] = {"anymal_c": ANYMAL_C, "g1": G1}
