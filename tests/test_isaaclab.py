"""The Isaac Lab backend (sim2real/isaaclab_backend.py + sim2real/isaaclab/worker.py).

Tests marked ``isaaclab`` run a policy on Isaac Lab 3.0 (kit-less Newton physics on the CPU)
and need ``.venv-isaaclab`` with its asset folder (``bash scripts/setup_isaaclab.sh``);
they are skipped, saying so, where it is absent: ``pytest -m isaaclab tests/test_isaaclab.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from agents.policy import MLPPolicy
from sim2real.backends import ISAACLAB_VENV, BackendUnavailable, Sim2RealError, make_backend
from sim2real.isaaclab_backend import IsaacLabBackend, isaaclab_assets

HAVE_ISAACLAB = (ISAACLAB_VENV / "bin" / "python").exists() and (isaaclab_assets() / "manifest.json").is_file()
needs_isaaclab = pytest.mark.skipif(not HAVE_ISAACLAB, reason="needs .venv-isaaclab and its assets: run scripts/setup_isaaclab.sh")


def _zero_policy(tmp_path_factory, task: str, obs_dim: int, action_dim: int):
    """A policy of ``task`` whose actions are all zero (joint targets = default pose), exported."""
    from sim2real.export import export_policy

    torch.manual_seed(0)
    policy = MLPPolicy(obs_dim, action_dim, [-10.0] * action_dim, [10.0] * action_dim, hidden=(32, 32), activation="elu",
                       source="test:zero")
    with torch.no_grad():
        for p in list(policy.parameters())[-2:]:  # output layer -> exactly zero actions
            p.zero_()
    out = tmp_path_factory.mktemp(f"exported_{task}")
    return export_policy(policy, out, task=task, formats=("onnx",))["out_dir"]


@pytest.fixture(scope="module")
def standing_policy(tmp_path_factory):
    """ANYmal C zero-action policy, exported."""
    return _zero_policy(tmp_path_factory, "anymal_c_flat", 48, 12)


@pytest.fixture(scope="module")
def g1_zero_policy(tmp_path_factory):
    """G1 (29 DoF) zero-action policy, exported."""
    return _zero_policy(tmp_path_factory, "g1_flat", 99, 29)


def test_missing_environment_names_the_setup_script(tmp_path):
    with pytest.raises(BackendUnavailable, match="scripts/setup_isaaclab.sh"):
        IsaacLabBackend(venv=tmp_path / "no-venv")


@needs_isaaclab
def test_bad_input_is_an_error_before_isaac_lab_starts(standing_policy, tmp_path):
    backend = make_backend("isaaclab")
    with pytest.raises(Sim2RealError, match="runs \\['anymal_c_flat', 'g1_flat'\\], not 'pusht'"):
        backend.run(standing_policy, "pusht", 2, 0)
    with pytest.raises(Sim2RealError, match="exported policy folder"):
        backend.run(tmp_path, "anymal_c_flat", 2, 0)


@pytest.mark.isaaclab
@needs_isaaclab
def test_standing_policy_runs_on_isaac_lab(standing_policy):
    """Zero actions hold the default pose: no falls, the robot stays put (error ~ the command)."""
    result = make_backend("isaaclab", episode_length_s=1.0).run(standing_policy, "anymal_c_flat", 4, seed=0)
    assert result["backend"] == "isaaclab" and result["episodes"] == 4
    assert result["env_steps"] == 4 * 50 and result["fall_rate"] == 0.0
    assert 0.4 < result["lin_vel_error"] < 1.1  # commands vx ~ U(0.5, 1.0), robot standing
    assert 0.0 < result["track_lin_vel_xy_exp"] < 0.5
    assert math.isnan(result["mean_return"]) and result["torque_limit_violation"] < 0.05  # saturates only after the reset
    assert result["isaac_joint_names"][:4] == ["LF_HAA", "LF_HFE", "LF_KFE", "LH_HAA"]  # not MuJoCo's order
    assert any("permuted" in n for n in result["notes"])
    assert result["env_steps_per_s"] > 0


@pytest.mark.isaaclab
@needs_isaaclab
def test_deploy_file_of_another_robot_is_rejected(standing_policy, tmp_path):
    import shutil

    folder = tmp_path / "renamed"
    shutil.copytree(standing_policy, folder)
    deploy = json.loads((folder / "deploy.json").read_text())
    deploy["joint_names"][0] = "LF_WHEEL"
    (folder / "deploy.json").write_text(json.dumps(deploy))
    with pytest.raises(Sim2RealError, match="LF_WHEEL"):
        make_backend("isaaclab").run(folder, "anymal_c_flat", 2, 0)


@pytest.mark.isaaclab
@needs_isaaclab
def test_g1_29dof_runs_on_isaac_lab(g1_zero_policy):
    """wam's 29-DoF G1 on Isaac Lab's G1 task: zero actions topple it (its ankle PD cannot hold
    it, DESIGN.md) as on MuJoCo, caught by the fall / torso-contact terminations, with finite metrics."""
    result = make_backend("isaaclab", episode_length_s=2.0).run(g1_zero_policy, "g1_flat", 2, seed=0)
    assert result["backend"] == "isaaclab" and result["episodes"] == 2
    assert len(result["isaac_joint_names"]) == 29 and "waist_pitch_joint" in result["isaac_joint_names"]
    assert result["fall_rate"] == 1.0 and result["env_steps"] < 2 * 100  # both fell before the 2 s limit
    for key in ("track_lin_vel_xy_exp", "lin_vel_error", "torque_limit_violation", "joint_vel_limit_violation", "foot_slip"):
        assert math.isfinite(result[key]), key
    assert math.isnan(result["mean_return"]) and any("29-DoF" in n for n in result["notes"])
