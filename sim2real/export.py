"""Export a policy for a robot: ONNX, TorchScript, torch.export, a JSON sidecar, parity checked.

:func:`export_policy` writes, into one folder:

- ``policy.onnx``: opset 18, input ``obs`` float32 (N, D), output ``actions`` float32 (N, A),
  dynamic batch axis; the observation normalizer (and its clip) and the action clip / tanh
  squash are inside the graph, so the file maps raw observations to actions;
- ``policy.pt``: the same function as TorchScript (``torch.jit.load``);
- ``policy.pt2``: as a ``torch.export`` program (``torch.export.load``), on request;
- ``deploy.json``: what a robot needs besides the network (see :func:`deploy_sidecar`).

Every exported file is run on the check observations (onnxruntime with one thread for ONNX)
and compared with ``MLPPolicy.act``; if the largest absolute difference exceeds the tolerance
(default 1e-5) nothing is written and :class:`ParityError` is raised. The policy is the
``wam.policy`` format every agent writes (``agents.policy.MLPPolicy``): feed-forward, so the
graphs have no recurrent state (``"recurrent": false``, ``"state_names": []``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.policy import MLPPolicy
from sim2real.onnx_policy import (
    DEPLOY_FILE,
    DEPLOY_FORMAT,
    DEPLOY_VERSION,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    ExportError,
    OnnxPolicy,
)
from tasks import LEGGED_TASKS, Task, get_task

OPSET = 18
PARITY_TOL = 1e-5
FORMATS = {"onnx": ONNX_FILE, "torchscript": "policy.pt", "torch_export": "policy.pt2"}
RANDOM_CHECK_OBS = 1000  # observations drawn when no check_obs are given

__all__ = ["ExportError", "ParityError", "export_policy", "run_export", "deploy_sidecar", "record_observations",
           "deployment_check"]


class ParityError(ExportError):
    """An exported file disagrees with the torch policy beyond the tolerance.

    Attributes:
        parity: format -> max |exported - torch| over the check observations.
    """

    def __init__(self, message: str, parity: dict[str, float]) -> None:
        super().__init__(message)
        self.parity = parity


def export_policy(
    policy: MLPPolicy | str | Path,
    out_dir: str | Path,
    task: str | None = None,
    formats: Sequence[str] = ("onnx", "torchscript"),
    check_obs: np.ndarray | None = None,
    parity_tol: float = PARITY_TOL,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``policy`` into ``out_dir`` and check every file against it.

    Args:
        policy: an :class:`MLPPolicy` (any device) or a policy folder.
        out_dir: the folder to write (created; files of the same name are replaced, exported
            files of formats not asked for removed).
        task: the task the policy acts in (``anymal_c_flat``, ``pendulum``, a Gymnasium id):
            fills the sidecar and checks the policy's dims against the env; None: a bare
            sidecar (dims, action box).
        formats: any of ``"onnx"``, ``"torchscript"``, ``"torch_export"``.
        check_obs: observations (M, D) to compare on, e.g. from :func:`record_observations`;
            None: ``RANDOM_CHECK_OBS`` draws from N(normalizer mean, normalizer std) (N(0, 1)
            without a normalizer), seeded by ``seed``.
        parity_tol: largest allowed |exported - torch| (action units).

    Returns:
        ``{"out_dir", "files": {format: path}, "parity": {format: max abs diff}, "check_obs": M,
        "parity_tol", "deploy": the sidecar dict}``.

    Raises:
        PolicyFileError: ``policy`` is a folder that cannot be loaded.
        ExportError: a policy type that cannot be exported, an unknown format or task, dims
            that do not match the task, or ``check_obs`` of the wrong shape / non-finite.
        ParityError: an exported file differs from the policy by more than ``parity_tol``;
            nothing is written then.
    """
    net = _as_exportable(policy)
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"unknown export formats {unknown or formats}; choose from {list(FORMATS)}")
    try:
        parity_tol = float(parity_tol)
    except (TypeError, ValueError):
        raise ExportError(f"parity_tol must be a number >= 0, got {parity_tol!r}") from None
    if not parity_tol >= 0:
        raise ExportError(f"parity_tol must be a number >= 0, got {parity_tol}")
    obs = _checked_obs(check_obs, net) if check_obs is not None else _random_obs(net, RANDOM_CHECK_OBS, seed)
    deploy = deploy_sidecar(net, task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        for fmt in formats:
            _WRITERS[fmt](net, Path(tmp) / FORMATS[fmt])
        reference = net.act(obs)
        parity = {fmt: _max_abs_diff(_run_exported(fmt, Path(tmp) / FORMATS[fmt], obs), reference) for fmt in formats}
        failed = {fmt: d for fmt, d in parity.items() if not d <= parity_tol}  # NaN fails too
        if failed:
            raise ParityError(
                f"exported policy disagrees with the torch policy on {len(obs)} observations: max |diff| "
                + ", ".join(f"{fmt} {d:.3g}" for fmt, d in failed.items())
                + f" > tolerance {parity_tol:g}; nothing written to {out}",
                parity,
            )
        deploy["files"] = {fmt: FORMATS[fmt] for fmt in formats}
        deploy["parity"] = {"max_abs_diff": parity, "observations": len(obs), "tolerance": parity_tol}
        (Path(tmp) / DEPLOY_FILE).write_text(json.dumps(deploy, indent=2) + "\n", encoding="utf-8")
        for name in [*deploy["files"].values(), DEPLOY_FILE]:
            os.replace(Path(tmp) / name, out / name)
        for fmt in set(FORMATS) - set(formats):  # an earlier export's file would not match this one
            (out / FORMATS[fmt]).unlink(missing_ok=True)
    return {
        "out_dir": out,
        "files": {**{fmt: out / FORMATS[fmt] for fmt in formats}, "sidecar": out / DEPLOY_FILE},
        "parity": parity,
        "check_obs": len(obs),
        "parity_tol": parity_tol,
        "deploy": deploy,
    }


def run_export(
    policy_dir: str | Path,
    task: str,
    out_dir: str | Path | None = None,
    steps: int = 2000,
    seed: int = 0,
    formats: Sequence[str] = ("onnx", "torchscript"),
    parity_tol: float = PARITY_TOL,
) -> dict[str, Any]:
    """``wam export``: load the policy folder, record ``steps`` observations by rolling it in
    the task's real env (:func:`record_observations`), export it to ``out_dir`` (default: an
    ``export`` folder beside the policy folder) checked on them. Returns
    :func:`export_policy`'s dict; raises as it does."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ExportError(f"steps (observations recorded for the parity check) must be a positive integer, got {steps!r}")
    net = _as_exportable(policy_dir)
    deploy_sidecar(net, task)  # the policy's dims must fit the task's env before it acts there
    obs = record_observations(net, task, steps, seed)
    out = Path(out_dir) if out_dir else Path(policy_dir).resolve().parent / "export"
    return export_policy(net, out, task, formats, check_obs=obs, parity_tol=parity_tol)


def deploy_sidecar(policy: MLPPolicy, task: str | None = None) -> dict[str, Any]:
    """The ``deploy.json`` content for ``policy`` in ``task``.

    Always: ``format``, ``version``, ``task``, ``obs_dim`` D, ``action_dim`` A, ``obs_layout``
    ([[name, start, stop], ...], the policy observation terms in order), ``input`` / ``output``
    names, ``opset``, ``action_low`` / ``action_high`` (the box the graph clips or squashes
    into), ``squash``, ``obs_normalization`` (baked into the graphs), ``control_dt`` (s per
    policy step, None if unknown), ``recurrent`` (false), ``state_names`` ([]), ``source``.

    Legged tasks add: ``joint_names`` (action / joint order, MuJoCo order), ``action_scale``,
    ``action_offset`` and ``default_joint_pos`` (rad), ``action_clip``, ``pd_stiffness``
    (N·m/rad), ``pd_damping`` (N·m·s/rad), ``effort_limit`` (N·m), per joint; the joint target
    is ``action_offset + action_scale * clip(action, -action_clip, action_clip)``.

    Raises:
        ExportError: unknown task, or the policy's dims differ from the task's.
    """
    sidecar: dict[str, Any] = {
        "format": DEPLOY_FORMAT,
        "version": DEPLOY_VERSION,
        "task": None,
        "obs_dim": policy.obs_dim,
        "action_dim": policy.action_dim,
        "obs_layout": [["obs", 0, policy.obs_dim]],
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "opset": OPSET,
        "action_low": policy.action_low.tolist(),
        "action_high": policy.action_high.tolist(),
        "squash": policy.squash,
        "obs_normalization": policy.normalize,
        "control_dt": None,
        "recurrent": False,
        "state_names": [],
        "source": policy.source,
    }
    if task is None:
        return sidecar
    t = _task(task)
    sidecar["task"] = t.name
    if t.name in LEGGED_TASKS:
        sidecar.update(_legged_fields(t.name, policy))
    else:
        sidecar.update(_gym_fields(t, policy))
    return sidecar


def record_observations(
    policy: Callable[[np.ndarray], np.ndarray] | MLPPolicy,
    task: str,
    steps: int = 2000,
    seed: int = 0,
    num_envs: int = 20,
) -> np.ndarray:
    """Observations (steps, D) float32 met by ``policy`` acting in the task's real env.

    Legged tasks roll ``num_envs`` MuJoCo robots (the task's own commands and resets), other
    tasks a Gymnasium sync vector env of their real env; actions are clipped to the action
    box; episodes that end are reset (``reset(seed=seed)`` first).
    """
    if steps < 1 or num_envs < 1:
        raise ExportError(f"steps and num_envs must be >= 1, got {steps} and {num_envs}")
    act = policy.act if isinstance(policy, MLPPolicy) else policy
    t = _task(task)
    rows: list[np.ndarray] = []
    if t.name in LEGGED_TASKS:
        from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

        env = LeggedVelocityVecEnv(t.name, num_envs=num_envs)
        obs, _ = env.reset(seed=seed)
        limit = env.cfg.action_limit
        while sum(len(r) for r in rows) < steps:
            rows.append(obs.cpu().numpy().astype(np.float32))
            obs = env.step(np.clip(np.asarray(act(rows[-1]), np.float32), -limit, limit))[0]
    else:
        from tasks.collect import make_real_vec_env

        env = make_real_vec_env(t, num_envs, seed)
        low, high = env.single_action_space.low, env.single_action_space.high
        obs, _ = env.reset(seed=seed)
        while sum(len(r) for r in rows) < steps:
            rows.append(np.asarray(obs, np.float32).reshape(num_envs, -1))
            action = np.asarray(act(rows[-1]), np.float32).reshape(num_envs, *low.shape)
            obs = env.step(np.clip(action, low, high))[0]
    env.close()
    return np.concatenate(rows)[:steps]


def deployment_check(
    policy: MLPPolicy | str | Path,
    exported: str | Path,
    task: str,
    episodes: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Score the torch policy and its exported ONNX file (:class:`OnnxPolicy`, no torch on the
    action path) with ``agents.evaluate.evaluate_velocity_tracking`` on the same robots,
    commands and seed (legged tasks).

    Returns ``{"torch": metrics, "onnx": metrics, "abs_diff": {metric: |torch - onnx|}}`` over
    ``mean_return``, ``track_lin_vel_xy_exp``, ``lin_vel_error``, ``fall_rate`` and
    ``mean_episode_length``.
    """
    from agents.evaluate import evaluate_velocity_tracking

    t = _task(task)
    if t.name not in LEGGED_TASKS:
        raise ExportError(f"deployment_check scores velocity tracking: task must be one of {list(LEGGED_TASKS)}, got {task!r}")
    net = _as_exportable(policy)
    onnx_policy = OnnxPolicy(exported)
    scores = {
        "torch": evaluate_velocity_tracking(net, t.name, episodes, seed),
        "onnx": evaluate_velocity_tracking(onnx_policy, t.name, episodes, seed),
    }
    keys = ("mean_return", "track_lin_vel_xy_exp", "lin_vel_error", "fall_rate", "mean_episode_length")
    scores["abs_diff"] = {k: abs(scores["torch"][k] - scores["onnx"][k]) for k in keys}
    return scores


# ----------------------------------------------------------------------------- helpers


def _as_exportable(policy: Any) -> MLPPolicy:
    """A CPU float32 eval-mode copy of the policy (loaded if a folder)."""
    if isinstance(policy, (str, Path)):
        return MLPPolicy.load(policy)
    if not isinstance(policy, MLPPolicy):
        raise ExportError(
            f"cannot export a {type(policy).__name__}: export takes an agents.policy.MLPPolicy or a wam.policy folder "
            "(feed-forward; a recurrent policy would need its hidden state as explicit graph inputs / outputs, "
            "which no wam agent produces)"
        )
    return copy.deepcopy(policy).to("cpu", torch.float32).eval()


def _task(name: str) -> Task:
    try:
        return get_task(name)
    except KeyError as e:
        raise ExportError(str(e.args[0])) from e


def _legged_fields(name: str, policy: MLPPolicy) -> dict[str, Any]:
    from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

    env = LeggedVelocityVecEnv(name, num_envs=1, num_threads=1)
    cfg, robot = env.cfg, env.cfg.robot
    obs_dim, joints = env.single_observation_space.shape[0], len(env.joint_names)
    env.close()
    if (policy.obs_dim, policy.action_dim) != (obs_dim, joints):
        raise ExportError(
            f"policy has obs_dim {policy.obs_dim} and action_dim {policy.action_dim}; task {name!r} has "
            f"{obs_dim} observations and {joints} joints"
        )
    default = [float(x) for x in env.layout.default_joint_pos]
    return {
        "obs_layout": [[k, s.start, s.stop] for k, s in env.obs_layout.items()],
        "joint_names": list(env.joint_names),
        "action_scale": cfg.action_scale,
        "action_offset": default,
        "action_clip": cfg.action_limit,
        "default_joint_pos": default,
        "control_dt": env.step_dt,
        "pd_stiffness": robot.per_joint(robot.stiffness).tolist(),
        "pd_damping": robot.per_joint(robot.damping).tolist(),
        "effort_limit": [float(x) for x in env.layout.effort_limit],
    }


def _gym_fields(task: Task, policy: MLPPolicy) -> dict[str, Any]:
    import gymnasium as gym

    env = gym.make(task.env_id, **task.env_kwargs)
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    dt = getattr(env.unwrapped, "dt", None)
    env.close()
    if (policy.obs_dim, policy.action_dim) != (obs_dim, action_dim):
        raise ExportError(
            f"policy has obs_dim {policy.obs_dim} and action_dim {policy.action_dim}; task {task.name!r} has "
            f"{obs_dim} and {action_dim}"
        )
    return {"control_dt": float(dt) if dt is not None else None}


def _checked_obs(obs: Any, policy: MLPPolicy) -> np.ndarray:
    x = np.asarray(obs)
    if x.ndim != 2 or x.shape[1] != policy.obs_dim or len(x) == 0 or not np.issubdtype(x.dtype, np.number):
        raise ExportError(f"check_obs must be a non-empty numeric array (M, {policy.obs_dim}), got shape {x.shape} {x.dtype}")
    if not np.isfinite(x).all():
        raise ExportError("check_obs contains NaN or inf")
    return x.astype(np.float32)


def _random_obs(policy: MLPPolicy, count: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((count, policy.obs_dim)).astype(np.float32)
    if policy.normalize:
        z = z * policy.obs_std.numpy() + policy.obs_mean.numpy()
    return z


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _example(policy: MLPPolicy) -> torch.Tensor:
    # batch 2: an example batch of 1 would let torch.export specialize the batch axis
    return torch.zeros(2, policy.obs_dim)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress lines and deprecation notices (torch.jit is deprecated
    in torch 2.13 but TorchScript is what many robot runtimes load)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _write_onnx(policy: MLPPolicy, path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch")
    with _quiet_exporters():
        torch.onnx.export(
            policy, (_example(policy),), str(path), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset != OPSET:
        raise ExportError(f"torch.onnx wrote opset {opset}, expected {OPSET}")


def _write_torchscript(policy: MLPPolicy, path: Path) -> None:
    # forward branches only on the policy's fixed config, so tracing records the whole function
    with _quiet_exporters():
        torch.jit.trace(policy, _example(policy)).save(str(path))


def _write_torch_export(policy: MLPPolicy, path: Path) -> None:
    with _quiet_exporters():
        program = torch.export.export(policy, (_example(policy),), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(path))


_WRITERS: dict[str, Callable[[MLPPolicy, Path], None]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "torch_export": _write_torch_export,
}


def _run_exported(fmt: str, path: Path, obs: np.ndarray) -> np.ndarray:
    """Actions (M, A) float32 of an exported file on obs (M, D), each run by its own runtime."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0]
    with torch.no_grad(), _quiet_exporters():
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
        return module(torch.from_numpy(obs)).numpy()
