"""Run an exported policy on Isaac Lab 3.0 and print its validation metrics (runs in .venv-isaaclab).

``.venv-isaaclab/bin/python -m sim2real.isaaclab.worker request.json`` reads a request written
by :class:`sim2real.isaaclab_backend.IsaacLabBackend` and writes the result JSON to the
request's ``out`` path. Only the standard library, numpy, torch, onnxruntime, Isaac Lab,
two pure numpy files of wam (``sim2real/joint_map.py``, ``sim2real/metrics_np.py``, loaded by
file path) and this package's :mod:`sim2real.isaaclab.robots` are imported: this is Python
3.12 with Isaac Lab's torch, not wam's environment.

The policy crosses the boundary as its exported ONNX file (``policy.onnx`` + ``deploy.json``),
as it would to a robot. The task is Isaac Lab's own manager-based velocity task
(``IsaacContrib-Velocity-Flat-AnymalC`` for ``anymal_c_flat``, ``Isaac-Velocity-Flat-G1`` for
``g1_flat``) on kit-less Newton physics (``physics=newton_mjwarp``, warp on the CPU unless
``device`` says otherwise), changed only where wam's MuJoCo task or this machine requires it:

- the robot is wam's, from the local USD built by :mod:`sim2real.isaaclab.assets`
  (``ISAACSIM_ASSET_ROOT``), with the joints, default pose, gains, effort limits, actuator
  model, feet and base contacts of wam's task (:mod:`sim2real.isaaclab.robots`; for the G1,
  the 29-DoF model in place of Isaac Lab's 37-DoF one); its contact sensor follows the
  converter's nested body paths (``Robot/Geometry/...``);
- validation commands: each env one forward command vx from ``commands`` (request), vy = wz = 0,
  never resampled; the fall termination (tilt > 1.4 rad) of wam's task added to base contact;
  resets as wam's task (``ResetCfg``: base pose, base velocity, joint position scale);
- nominal dynamics: the friction of wam's MuJoCo model (``robot.friction``: ANYmal C 1.0, G1
  feet 0.6) on robot and ground, Isaac Lab's startup mass / COM randomization and pushes off,
  observation noise off; ``randomization`` (request, the fields of ``RandomizationCfg``)
  switches them on (friction: a multiplier on the robot's, the ground at the lowest value,
  so MuJoCo's max-of-pair friction is the robot's).

Observations come from Isaac Lab's own observation terms (articulation joint order) and are
mapped to the policy's joint order by name (:class:`JointMap`, checked); actions go back the
same way, through ``JointPositionAction`` (target = default + 0.5 x action).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sim2real.isaaclab import robots

SIM2REAL = Path(__file__).resolve().parents[1]
JOINT_TERMS = ("joint_pos", "joint_vel", "actions")  # per-joint observation terms
FOOT_CONTACT_N = 1.0  # N: a foot whose net contact force exceeds this is in contact
FALL_ANGLE = 1.4  # rad, wam's fall termination (tasks/anymal_c_flat.py)


def _load(name: str) -> ModuleType:
    """A pure numpy module of wam's sim2real package, by file path (wam is not installed here)."""
    spec = importlib.util.spec_from_file_location(f"wam_{name}", SIM2REAL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


joint_map = _load("joint_map")
metrics_np = _load("metrics_np")


class WorkerError(RuntimeError):
    """A request the worker cannot serve; the message names the problem."""


def _asset_root(request: dict) -> Path:
    root = Path(request["asset_root"])
    if not (root / "manifest.json").is_file():
        raise WorkerError(f"{root} has no manifest.json: run scripts/setup_isaaclab.sh (it builds the Isaac Lab assets)")
    return root


def _events(cfg: Any, rand: dict, robot: dict, mdp: Any, SceneEntityCfg: Any, EventTerm: Any) -> list[str]:
    """Wam's resets, nominal events, then the requested randomization; returns notes on what was not applied."""
    ev = cfg.events
    ev.add_base_mass = ev.base_com = ev.base_external_force_torque = ev.push_robot = None
    reset = robot["reset"]
    xy, yaw, v = tuple(reset["pose_xy"]), tuple(reset["yaw"]), tuple(reset["base_velocity"])
    ev.reset_base.params.update(pose_range={"x": xy, "y": xy, "yaw": yaw},
                                velocity_range={k: v for k in ("x", "y", "z", "roll", "pitch", "yaw")})
    ev.reset_robot_joints.params["position_range"] = tuple(reset["joint_pos_scale"])
    friction = tuple(float(robot["friction"]) * f for f in (rand.get("friction") or (1.0, 1.0)))
    ev.physics_material.params.update(static_friction_range=friction, dynamic_friction_range=friction, num_buckets=64)
    ground = cfg.scene.terrain.physics_material  # MuJoCo takes the larger friction of a pair: the robot's
    ground.static_friction = ground.dynamic_friction = min(friction)
    notes = []
    if rand.get("added_base_mass"):
        ev.add_base_mass = EventTerm(func=mdp.randomize_rigid_body_mass, mode="startup", params={
            "asset_cfg": SceneEntityCfg("robot", body_names=robot["base_body"]), "mass_distribution_params": tuple(rand["added_base_mass"]),
            "operation": "add", "distribution": "uniform"})
    if rand.get("stiffness_scale") or rand.get("damping_scale"):
        ev.actuator_gains = EventTerm(func=mdp.randomize_actuator_gains, mode="startup", params={
            "asset_cfg": SceneEntityCfg("robot", joint_names=".*"),
            "stiffness_distribution_params": tuple(rand.get("stiffness_scale") or (1.0, 1.0)),
            "damping_distribution_params": tuple(rand.get("damping_scale") or (1.0, 1.0)),
            "operation": "scale", "distribution": "uniform"})
    if rand.get("push_interval"):
        v = float(rand.get("push_velocity", 0.5))
        ev.push_robot = EventTerm(func=mdp.push_by_setting_velocity, mode="interval", interval_range_s=tuple(rand["push_interval"]),
                                  params={"velocity_range": {"x": (-v, v), "y": (-v, v)}})
    if rand.get("motor_strength"):
        notes.append("motor_strength randomization not applied on Isaac Lab (its actuator models have no per-env effort scale)")
    return notes


def build_env_cfg(request: dict, deploy: dict) -> tuple[Any, list[str]]:
    """Isaac Lab's task config for ``request["task"]``, changed as the module docstring says."""
    import isaaclab_tasks  # noqa: F401  (registers the tasks)
    from isaaclab.managers import EventTermCfg as EventTerm
    from isaaclab.managers import SceneEntityCfg
    from isaaclab.managers import TerminationTermCfg as DoneTerm
    from isaaclab_tasks.core.velocity import mdp
    from isaaclab_tasks.utils import parse_env_cfg

    task = request["task"]
    if task not in robots.TASKS:
        raise WorkerError(f"the isaaclab backend runs {sorted(robots.TASKS)}, not {task!r}")
    cfg = parse_env_cfg(robots.TASKS[task].task_id, device=request["device"], num_envs=int(request["num_envs"]),
                        overrides=[f"physics={request['physics']}"])
    robots.configure_robot(cfg, task, deploy, request["robot"])
    cfg.scene.sky_light = None  # a remote HDR texture; nothing is rendered here
    cfg.scene.terrain.visual_material = None
    cfg.episode_length_s = float(request["episode_length_s"])
    cfg.actions.joint_pos.scale = float(deploy["action_scale"])
    cmd = cfg.commands.base_velocity
    cmd.heading_command, cmd.rel_standing_envs, cmd.rel_heading_envs, cmd.debug_vis = False, 0.0, 0.0, False
    cmd.resampling_time_range = (cfg.episode_length_s + 1.0, cfg.episode_length_s + 1.0)
    cmd.ranges.lin_vel_y = cmd.ranges.ang_vel_z = (0.0, 0.0)
    cfg.terminations.fall = DoneTerm(func=mdp.bad_orientation, params={"limit_angle": FALL_ANGLE})
    rand = request.get("randomization") or {}
    cfg.observations.policy.enable_corruption = bool(rand.get("observation_noise", False))
    cfg.seed = int(request["seed"])
    return cfg, _events(cfg, rand, request["robot"], mdp, SceneEntityCfg, EventTerm)


class OnnxActor:
    """``policy.onnx`` on onnxruntime: obs (N, D) float32 -> actions (N, A) float32."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.session.run(["actions"], {"obs": obs.astype(np.float32)})[0]


def _check_layout(env: Any, deploy: dict) -> list[tuple[str, int, int]]:
    """Isaac Lab's policy observation terms must be deploy.json's, in order and size."""
    names = env.observation_manager.active_terms["policy"]
    dims = env.observation_manager.group_obs_term_dim["policy"]
    ours = [(n, int(b) - int(a)) for n, a, b in deploy["obs_layout"]]
    theirs = [(n, int(np.prod(d))) for n, d in zip(names, dims)]
    if ours != theirs:
        raise WorkerError(f"Isaac Lab's policy observation {theirs} differs from the policy's (deploy.json) {ours}")
    return [(n, int(a), int(b)) for n, a, b in deploy["obs_layout"]]


def rollout(request: dict) -> dict:
    """Run the request (see :class:`sim2real.isaaclab_backend.IsaacLabBackend`); returns the result dict."""
    folder = Path(request["policy"])
    deploy = json.loads((folder / "deploy.json").read_text())
    if deploy.get("recurrent"):
        raise WorkerError("recurrent policies are not supported by the isaaclab backend")
    os.environ["ISAACSIM_ASSET_ROOT"] = str(_asset_root(request))  # before isaaclab reads it on import
    import torch

    torch.set_num_threads(1)
    from isaaclab.app import launch_simulation

    t0 = time.perf_counter()
    cfg, notes = build_env_cfg(request, deploy)
    commands = np.asarray(request["commands"], np.float32)  # (N, 3)
    N = int(request["num_envs"])
    if commands.shape != (N, 3):
        raise WorkerError(f"commands must be ({N}, 3), got {commands.shape}")
    actor = OnnxActor(folder / "policy.onnx")
    with launch_simulation(cfg, {"physics": request["physics"], "headless": True}):
        from isaaclab.envs import ManagerBasedRLEnv

        env = ManagerBasedRLEnv(cfg)
        try:
            return _run(env, deploy, request, commands, actor, notes, t0)
        finally:
            env.close()


def _run(env: Any, deploy: dict, request: dict, commands: np.ndarray, actor: OnnxActor, notes: list[str], t0: float) -> dict:
    import torch

    robot, contact = env.scene["robot"], env.scene["contact_forces"]
    jmap = joint_map.JointMap(deploy["joint_names"], robot.joint_names)
    layout = _check_layout(env, deploy)
    feet = [robot.body_names.index(n) for n in request["robot"]["feet"]]
    sensor_names = list(contact.body_names)
    feet_sensor = [sensor_names.index(robot.body_names[i]) for i in feet]
    N, limit = env.num_envs, float(deploy["action_clip"])
    effort = np.asarray(request["effort_limit"], np.float64)  # policy order
    vel_limit = np.asarray(request["vel_limit"], np.float64)
    metrics = metrics_np.RolloutMetrics(N, effort, vel_limit)
    latency_max = int((request.get("randomization") or {}).get("action_latency", 0))
    rng = np.random.default_rng(int(request["seed"]))
    latency = rng.integers(0, latency_max + 1, N)
    history = np.zeros((latency_max + 1, N, jmap.num_joints), np.float32)  # policy-order actions, newest first

    def to_policy_obs(obs_sim: torch.Tensor) -> np.ndarray:
        obs = obs_sim.detach().cpu().numpy().astype(np.float32)
        for name, a, b in layout:
            if name in JOINT_TERMS:
                obs[:, a:b] = jmap.to_policy(obs[:, a:b])
        return obs

    def snapshot() -> dict[str, np.ndarray]:
        d = robot.data
        return {"v": d.root_lin_vel_b.torch.cpu().numpy().copy(), "w": d.root_ang_vel_b.torch.cpu().numpy().copy(),
                "tau": jmap.to_policy(d.applied_torque.torch.cpu().numpy()), "qd": jmap.to_policy(d.joint_vel.torch.cpu().numpy()),
                "foot_v": d.body_lin_vel_w.torch[:, feet].cpu().numpy().copy(),
                "foot_f": np.linalg.norm(contact.data.net_forces_w.torch[:, feet_sensor].cpu().numpy(), axis=-1)}

    reached: dict = {}
    reset_idx = env._reset_idx

    def recording_reset(env_ids: Any) -> None:  # the state each step reached, before its autoreset
        reached.update(snapshot())
        reset_idx(env_ids)

    obs, _ = env.reset(seed=int(request["seed"]))
    term = env.command_manager.get_term("base_velocity")
    term.vel_command_b[:] = torch.as_tensor(commands, device=term.vel_command_b.device)
    obs_np = to_policy_obs(obs["policy"])
    lay = {n: (a, b) for n, a, b in layout}
    a, b = lay["velocity_commands"]
    obs_np[:, a:b] = commands
    env._reset_idx = recording_reset
    t_sim, steps = 0.0, 0
    while not metrics.done:
        action = np.asarray(actor(obs_np), np.float32)
        if action.shape != (N, jmap.num_joints) or not np.isfinite(action).all():
            raise WorkerError(f"the policy returned actions of shape {action.shape} (finite: {np.isfinite(action).all()})")
        history = np.concatenate([np.clip(action, -limit, limit)[None], history[:-1]])
        applied = history[latency, np.arange(N)]
        command = term.vel_command_b.cpu().numpy().copy()
        reached.clear()
        t = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(torch.as_tensor(jmap.to_sim(applied), device=env.device))
        t_sim += time.perf_counter() - t
        steps += 1
        s = reached or snapshot()
        term_np, trunc_np = terminated.cpu().numpy(), truncated.cpu().numpy()
        metrics.step(command, s["v"], s["w"], term_np, trunc_np & ~term_np, reward=None, joint_torque=s["tau"],
                     joint_vel=s["qd"], foot_vel_w=s["foot_v"], foot_contact=s["foot_f"] > FOOT_CONTACT_N)
        history[:, term_np | trunc_np] = 0.0
        obs_np = to_policy_obs(obs["policy"])
    result = metrics.result()
    notes = [*notes,
             "mean_return: nan (Isaac Lab's reward terms are not wam's task reward)",
             f"physics: Isaac Lab {request['physics']} on {request['device']}; joint order mapped by name "
             f"({'identity' if jmap.is_identity else 'permuted'})",
             f"actuator: {robots.TASKS[request['task']].actuator}",
             "torque_limit_violation / joint_vel_limit_violation / foot_slip: sampled at the policy rate (last physics substep)"]
    return {**result, "backend": "isaaclab", "notes": notes, "env_steps_per_s": N * steps / t_sim if t_sim else math.nan,
            "sim_wall_s": t_sim, "setup_s": time.perf_counter() - t0 - t_sim, "num_envs": N, "physics": request["physics"],
            "device": request["device"], "isaac_joint_names": list(robot.joint_names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("request", type=Path, help="request JSON written by sim2real.isaaclab_backend")
    args = parser.parse_args(argv)
    request = json.loads(args.request.read_text())
    out = Path(request["out"])
    try:
        result = rollout(request)
    except Exception as e:  # reported to the client as JSON, with the traceback
        out.write_text(json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}))
        return 1
    out.write_text(json.dumps(result, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
