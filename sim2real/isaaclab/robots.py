"""Per-task robot setup of the Isaac Lab worker (runs in .venv-isaaclab; imports Isaac Lab only).

Each wam task maps to one of Isaac Lab's manager-based velocity tasks, whose robot is replaced
by wam's (the local USD of :mod:`sim2real.isaaclab.assets`) with the joints, default pose, PD
gains, effort limits and armature of wam's MuJoCo task: the policy's ``deploy.json`` gives the
per-joint numbers, the request's ``robot`` section (written by
:class:`sim2real.isaaclab_backend.IsaacLabBackend` from ``tasks.locomotion.robots``) the rest.

- ``anymal_c_flat`` -> ``IsaacContrib-Velocity-Flat-AnymalC``: Isaac Lab drives ANYmal C with
  an LSTM actuator network, a remote file; here its DC-motor model
  (``ANYDRIVE_3_SIMPLE_ACTUATOR_CFG``: 120 N·m saturation, 7.5 rad/s) with ``deploy.json``'s
  gains (wam's MuJoCo task: 80 / 2, 80 N·m).
- ``g1_flat`` -> ``Isaac-Velocity-Flat-G1``, whose robot is Isaac Lab's 37-DoF G1 (fingers,
  ``torso_joint``, ``*_elbow_pitch/roll_joint``). Here the 29-DoF G1 of wam's task (mjlab's
  MJCF): implicit PD actuators (as MuJoCo's position actuators: PD at the physics rate, torque
  clipped to the effort limit) with mjlab's gains and reflected-inertia armature; base at
  0.76 m, feet ``*_ankle_roll_link``, base contact = torso or pelvis; the task's reward terms
  that name the 37-DoF joints renamed as ``tasks/g1_flat.py`` does (``waist_*``,
  ``*_elbow_joint``, ``*_wrist_*``, no fingers). The contact budget of the solver is raised
  (Isaac Lab's ``nconmax`` 10 is below the 14 foot capsules of this model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IsaacTask:
    """How a wam task runs on Isaac Lab.

    Attributes:
        task_id: Isaac Lab's registered task whose config is the starting point.
        usd: the robot's USD relative to ``ISAACLAB_NUCLEUS_DIR``.
        actuator: a note on the actuator model (goes into the result's notes).
    """

    task_id: str
    usd: str
    actuator: str


# ANYdrive 3 DC motor model (Isaac Lab's ANYDRIVE_3_SIMPLE_ACTUATOR_CFG), gains from deploy.json
ANYDRIVE = {"saturation_effort": 120.0, "velocity_limit": 7.5}
TASKS = {
    "anymal_c_flat": IsaacTask(
        "IsaacContrib-Velocity-Flat-AnymalC", "Robots/ANYbotics/ANYmal-C/anymal_c.usd",
        f"DC motor model (saturation {ANYDRIVE['saturation_effort']} N·m, {ANYDRIVE['velocity_limit']} rad/s) with "
        "deploy.json's PD gains, not Isaac Lab's LSTM actuator net"),
    "g1_flat": IsaacTask(
        "Isaac-Velocity-Flat-G1", "Robots/Unitree/G1/g1_29dof.usd",
        "implicit PD (deploy.json's gains and effort limits, the request's armature) on wam's 29-DoF G1, "
        "not Isaac Lab's 37-DoF G1"),
}
G1_SOLVER = {"njmax": 300, "nconmax": 40}  # per env: 14 foot capsules + shins / thighs touching the ground


def _per_joint(names: list[str], values: list[float]) -> dict[str, float]:
    """``{joint name: value}``: an Isaac Lab actuator table keyed by exact joint names."""
    if len(names) != len(values):
        raise ValueError(f"{len(values)} values for {len(names)} joints")
    return {n: float(v) for n, v in zip(names, values)}


def configure_robot(cfg: Any, task: str, deploy: dict, robot: dict) -> None:
    """Put wam's robot of ``task`` into Isaac Lab's env config ``cfg`` (in place).

    Args:
        cfg: Isaac Lab's env config of ``TASKS[task].task_id``.
        deploy: the policy's ``deploy.json`` (joint names, default pose, gains, effort limits).
        robot: the request's robot section: ``armature`` (J,) kg·m² in deploy order,
            ``base_height`` m, ``feet`` / ``base_contacts`` (body names).
    """
    from isaaclab.actuators import DCMotorCfg, ImplicitActuatorCfg
    from isaaclab.utils.assets import ISAACLAB_NUCLEUS_DIR

    names = list(deploy["joint_names"])
    art = cfg.scene.robot
    art.spawn.usd_path = f"{ISAACLAB_NUCLEUS_DIR}/{TASKS[task].usd}"
    art.init_state.joint_pos = _per_joint(names, deploy["default_joint_pos"])
    art.init_state.pos = (0.0, 0.0, float(robot["base_height"]))
    gains = {"stiffness": _per_joint(names, deploy["pd_stiffness"]), "damping": _per_joint(names, deploy["pd_damping"])}
    effort = _per_joint(names, deploy["effort_limit"])
    if task == "anymal_c_flat":
        art.actuators = {"legs": DCMotorCfg(joint_names_expr=names, **ANYDRIVE, **gains, effort_limit=effort)}
    else:
        art.actuators = {"joints": ImplicitActuatorCfg(joint_names_expr=names, **gains, joint_effort_limit=effort,
                                                       actuator_effort_limit=effort,
                                                       armature=_per_joint(names, robot["armature"]))}
    cfg.scene.contact_forces.prim_path = "{ENV_REGEX_NS}/Robot/Geometry/.*"  # the converters nest bodies under Geometry/
    cfg.terminations.base_contact.params["sensor_cfg"].body_names = list(robot["base_contacts"])
    if task == "g1_flat":
        _g1_29dof(cfg)


def _g1_29dof(cfg: Any) -> None:
    """Isaac Lab's G1 task terms renamed for the 29-DoF model (as ``tasks/g1_flat.py``)."""
    from isaaclab.managers import SceneEntityCfg

    solver = getattr(cfg.sim.physics, "solver_cfg", None)  # the chosen physics preset (MuJoCo-Warp: contact budget)
    if solver is not None and hasattr(solver, "nconmax"):
        solver.njmax, solver.nconmax = G1_SOLVER["njmax"], G1_SOLVER["nconmax"]
    rew = cfg.rewards
    rew.joint_deviation_arms.params["asset_cfg"] = SceneEntityCfg(
        "robot", joint_names=[".*_shoulder_.*_joint", ".*_elbow_joint", ".*_wrist_.*_joint"])
    rew.joint_deviation_torso.params["asset_cfg"] = SceneEntityCfg("robot", joint_names="waist_.*_joint")
    rew.joint_deviation_fingers = None
    cfg.events.add_base_mass.params["asset_cfg"].body_names = "torso_link"
