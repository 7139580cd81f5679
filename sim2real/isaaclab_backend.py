"""The ``isaaclab`` validation backend: Isaac Lab 3.0 in its own environment, reached by subprocess.

Isaac Lab 3.0 needs Python 3.12 and pins torch 2.11, so it lives in ``.venv-isaaclab``
(``scripts/setup_isaaclab.sh``), never in wam's environment. :class:`IsaacLabBackend` writes a
request JSON, runs ``.venv-isaaclab/bin/python -m sim2real.isaaclab.worker request.json`` and
reads the metrics the worker writes back. The policy crosses the boundary as its exported
folder (``policy.onnx`` + ``deploy.json``, :func:`sim2real.export.export_policy`), as it
would to a robot; what the worker changes in Isaac Lab's task is in
:mod:`sim2real.isaaclab.worker`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sim2real.backends import ISAACLAB_VENV, BackendUnavailable, Sim2RealError
from sim2real.metrics import eval_commands, joint_limits
from tasks.locomotion.config import RandomizationCfg

REPO = Path(__file__).resolve().parents[1]
ISAACLAB_TASKS = ("anymal_c_flat", "g1_flat")
# friction of wam's MuJoCo models where the robot touches the ground (tasks/locomotion/robots.py)
ROBOT_FRICTION = {"anymal_c": 1.0, "g1": 0.6}


def isaaclab_python(venv: Path = ISAACLAB_VENV) -> Path:
    """The Python of ``.venv-isaaclab``; :class:`BackendUnavailable` naming the setup script when absent."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        raise BackendUnavailable(f"isaaclab backend needs .venv-isaaclab ({venv} not found): run scripts/setup_isaaclab.sh")
    return python


def isaaclab_assets() -> Path:
    """The local Isaac Lab asset folder (``ISAACSIM_ASSET_ROOT``): ``$WAM_ISAACLAB_ASSETS`` or
    ``<assets>/isaaclab`` (``<assets>`` = ``$WAM_ASSETS`` or the repository's ``assets/``)."""
    env = os.environ.get("WAM_ISAACLAB_ASSETS")
    if env:
        return Path(env)
    return Path(os.environ.get("WAM_ASSETS") or REPO / "assets") / "isaaclab"


def robot_request(task: str) -> dict[str, Any]:
    """What the worker needs of wam's robot beyond ``deploy.json``, from ``tasks.locomotion``:
    armature (J,) kg·m² in the task's joint order, base height (m) and body, foot and
    base-contact bodies (contact entries ``body:<name>`` or foot geoms named as their bodies),
    ground friction and the task's reset ranges."""
    from tasks.locomotion.registry import env_cfg

    cfg = env_cfg(task)
    robot = cfg.robot
    return {
        "armature": robot.per_joint(robot.armature).tolist(), "base_height": robot.base_height,
        "base_body": robot.base_body, "feet": [e.removeprefix("body:") for e in robot.feet],
        "base_contacts": [e.removeprefix("body:") for e in robot.base_contacts],
        "friction": ROBOT_FRICTION[robot.name], "reset": asdict(cfg.reset),
    }


class IsaacLabBackend:
    """Validate an exported policy on Isaac Lab's velocity task (kit-less Newton physics).

    Args:
        episode_length_s: episode length (default 20 s, the task's).
        physics: Isaac Lab physics preset (``newton_mjwarp``: kit-less Newton / MuJoCo-Warp).
        device: simulation device (``cpu``: warp on the CPU; ``cuda:0`` on a GPU machine).
        timeout_s: the worker is killed after this long (a :class:`Sim2RealError` says so).
        venv: the Isaac Lab environment (default ``.venv-isaaclab``).
    """

    name = "isaaclab"
    randomizable = True
    policy_input = "exported"

    def __init__(self, episode_length_s: float | None = None, physics: str = "newton_mjwarp", device: str = "cpu",
                 timeout_s: float = 3600.0, venv: str | Path = ISAACLAB_VENV):
        self.python = isaaclab_python(Path(venv))
        self.episode_length_s, self.physics, self.device, self.timeout_s = episode_length_s, physics, device, timeout_s

    def request(self, policy: Path, task: str, episodes: int, seed: int, randomization: RandomizationCfg | None,
                out: Path) -> dict[str, Any]:
        """The request JSON the worker reads (limits in the policy's joint order)."""
        names, effort, vel_limit = joint_limits(task)
        deploy = json.loads((policy / "deploy.json").read_text())
        if list(deploy.get("joint_names", [])) != list(names):
            raise Sim2RealError(f"{policy}/deploy.json joint_names {deploy.get('joint_names')} are not task {task!r}'s {list(names)}")
        return {
            "policy": str(policy.resolve()), "task": task, "num_envs": episodes, "seed": seed,
            "episode_length_s": float(self.episode_length_s or 20.0), "physics": self.physics, "device": self.device,
            "asset_root": str(isaaclab_assets()), "commands": eval_commands(episodes, seed).tolist(),
            "effort_limit": effort.tolist(), "vel_limit": vel_limit.tolist(), "robot": robot_request(task),
            "randomization": None if randomization is None else asdict(randomization), "out": str(out),
        }

    def run(self, policy: Path, task: str, episodes: int, seed: int,
            randomization: RandomizationCfg | None = None) -> dict[str, Any]:
        """Metrics of ``episodes`` robots (one episode each, all simulated at once) driven by the
        exported policy folder ``policy``."""
        if task not in ISAACLAB_TASKS:
            raise Sim2RealError(f"the isaaclab backend runs {list(ISAACLAB_TASKS)}, not {task!r}")
        policy = Path(policy)
        if not (policy / "policy.onnx").is_file() or not (policy / "deploy.json").is_file():
            raise Sim2RealError(f"the isaaclab backend needs an exported policy folder (policy.onnx + deploy.json), got {policy}")
        if episodes < 1:
            raise Sim2RealError(f"episodes must be >= 1, got {episodes}")
        if not (isaaclab_assets() / "manifest.json").is_file():
            raise BackendUnavailable(f"{isaaclab_assets()} has no Isaac Lab assets: run scripts/setup_isaaclab.sh")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="wam_isaaclab_") as tmp:
            out = Path(tmp) / "result.json"
            request = Path(tmp) / "request.json"
            request.write_text(json.dumps(self.request(policy, task, episodes, seed, randomization, out)))
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(REPO)}
            cmd = [str(self.python), "-m", "sim2real.isaaclab.worker", str(request)]
            try:
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired as e:
                raise Sim2RealError(f"the Isaac Lab worker ran past {self.timeout_s} s: {' '.join(cmd)}") from e
            result = json.loads(out.read_text()) if out.is_file() else None
        if result is None or "error" in result:
            detail = result["traceback"] if result else proc.stderr[-4000:]
            reason = result["error"] if result else f"exit code {proc.returncode}, no result"
            raise Sim2RealError(f"Isaac Lab worker failed ({reason}); command: {' '.join(cmd)}\n{detail}")
        result["wall_s"] = time.perf_counter() - start
        return result
