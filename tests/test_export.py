"""Export (sim2real issue): ONNX / TorchScript / torch.export round trips, the deploy sidecar,
bad input, parity failures, ``wam export``, and the ONNX controller on MuJoCo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from agents.policy import MLPPolicy, PolicyFileError
from sim2real.export import (
    ExportError,
    ParityError,
    deploy_sidecar,
    deployment_check,
    export_policy,
    record_observations,
)
from sim2real.onnx_policy import OnnxPolicy, read_deploy
from tasks.locomotion.robots import ANYMAL_C, G1
from wam.cli import main

ALL_FORMATS = ("onnx", "torchscript", "torch_export")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def anymal_policy(seed: int = 0) -> MLPPolicy:
    """rsl-rl's ANYmal C actor shape (obs 48 -> 128, 128, 128 elu -> 12), random weights."""
    torch.manual_seed(seed)
    return MLPPolicy(48, 12, [-10.0] * 12, [10.0] * 12, hidden=(128, 128, 128), activation="elu", source="test")


def sac_policy() -> MLPPolicy:
    """SAC-style: tanh-squashed into an asymmetric box, with gSDE's mean clamp (Pendulum dims)."""
    torch.manual_seed(1)
    return MLPPolicy(3, 1, [-2.0], [1.5], hidden=(32, 32), activation="relu", mean_clip=2.0, squash=True, source="sb3:SAC")


def normalized_policy() -> MLPPolicy:
    """PPO with a VecNormalize-style normalizer (mean / std / clip) baked in."""
    torch.manual_seed(2)
    p = MLPPolicy(48, 12, [-10.0] * 12, [10.0] * 12, hidden=(64, 64), activation="tanh", normalize=True, obs_clip=5.0)
    with torch.no_grad():
        p.obs_mean.uniform_(-1.0, 1.0)
        p.obs_std.uniform_(0.1, 3.0)
    return p


@pytest.fixture(scope="module")
def anymal_export(tmp_path_factory) -> tuple[MLPPolicy, Path, np.ndarray]:
    """An ANYmal C policy exported with observations recorded on MuJoCo."""
    policy = anymal_policy()
    obs = record_observations(policy, "anymal_c_flat", steps=400, seed=0)
    out = tmp_path_factory.mktemp("anymal_export")
    export_policy(policy, out, "anymal_c_flat", formats=ALL_FORMATS, check_obs=obs)
    return policy, out, obs


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "make, task", [(sac_policy, "pendulum"), (normalized_policy, "anymal_c_flat"), (anymal_policy, None)],
    ids=["sac_squashed", "normalized", "plain_no_task"],
)
def test_exported_files_match_the_torch_policy(make, task, tmp_path):
    policy = make()
    result = export_policy(policy, tmp_path, task, formats=ALL_FORMATS)
    assert set(result["files"]) == {*ALL_FORMATS, "sidecar"}
    assert all(d <= 1e-5 for d in result["parity"].values()), result["parity"]

    # an independent check on fresh observations, including batch 1 (dynamic batch axis)
    obs = np.random.default_rng(5).normal(0.0, 2.0, (257, policy.obs_dim)).astype(np.float32)
    expected = policy.act(obs)
    onnx_policy = OnnxPolicy(tmp_path)
    np.testing.assert_allclose(onnx_policy(obs), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx_policy(obs[0]), expected[0], atol=1e-5, rtol=0)
    scripted = torch.jit.load(str(tmp_path / "policy.pt"))
    program = torch.export.load(str(tmp_path / "policy.pt2")).module()
    with torch.no_grad():
        for module in (scripted, program):
            np.testing.assert_allclose(module(torch.from_numpy(obs)).numpy(), expected, atol=1e-5, rtol=0)
            np.testing.assert_allclose(module(torch.from_numpy(obs[:1])).numpy(), expected[:1], atol=1e-5, rtol=0)
    if policy.squash:  # the squash keeps actions inside the asymmetric box
        assert (onnx_policy(obs * 100) >= -2.0 - 1e-6).all() and (onnx_policy(obs * 100) <= 1.5 + 1e-6).all()

    model = onnx.load(str(tmp_path / "policy.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert [i.name for i in model.graph.input] == ["obs"] and [o.name for o in model.graph.output] == ["actions"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    deploy = read_deploy(tmp_path)
    assert deploy == onnx_policy.deploy and deploy["obs_normalization"] == policy.normalize
    assert deploy["recurrent"] is False and deploy["state_names"] == []
    assert deploy["files"] == {"onnx": "policy.onnx", "torchscript": "policy.pt", "torch_export": "policy.pt2"}


def test_sidecar_of_anymal_c_flat_has_the_robot_in_mujoco_joint_order(anymal_export):
    policy, out, obs = anymal_export
    deploy = json.loads((out / "deploy.json").read_text())
    assert deploy == deploy_sidecar(policy, "anymal_c_flat") | {"files": deploy["files"], "parity": deploy["parity"]}
    assert deploy["format"] == "wam.deploy" and deploy["version"] == 1 and deploy["task"] == "anymal_c_flat"
    assert deploy["joint_names"] == list(ANYMAL_C.joint_names)
    assert (deploy["obs_dim"], deploy["action_dim"]) == (48, 12)
    layout = deploy["obs_layout"]
    assert [name for name, _, _ in layout] == [
        "base_lin_vel", "base_ang_vel", "projected_gravity", "velocity_commands", "joint_pos", "joint_vel", "actions"]
    assert layout[0][1] == 0 and layout[-1][2] == 48 and all(a[2] == b[1] for a, b in zip(layout, layout[1:]))
    default = ANYMAL_C.per_joint(ANYMAL_C.default_joint_pos).tolist()
    assert deploy["default_joint_pos"] == deploy["action_offset"] == pytest.approx(default)
    assert deploy["action_scale"] == 0.5 and deploy["action_clip"] == 10.0 and deploy["control_dt"] == pytest.approx(0.02)
    assert deploy["pd_stiffness"] == ANYMAL_C.per_joint(ANYMAL_C.stiffness).tolist()
    assert deploy["pd_damping"] == ANYMAL_C.per_joint(ANYMAL_C.damping).tolist()
    assert deploy["effort_limit"] == ANYMAL_C.per_joint(ANYMAL_C.effort_limit).tolist()
    assert deploy["recurrent"] is False and deploy["state_names"] == [] and deploy["source"] == "test"
    assert deploy["parity"]["observations"] == 400 and deploy["parity"]["max_abs_diff"]["onnx"] <= 1e-5
    assert obs.shape == (400, 48) and np.isfinite(obs).all() and obs[:, 9:12].any()  # commands were given


def test_sidecar_of_g1_and_recording_on_a_gym_task():
    torch.manual_seed(0)
    g1 = MLPPolicy(99, 29, [-10.0] * 29, [10.0] * 29, hidden=(16,))
    deploy = deploy_sidecar(g1, "g1_flat")
    assert deploy["joint_names"] == list(G1.joint_names) and len(deploy["pd_stiffness"]) == 29
    assert deploy["obs_layout"][-1] == ["actions", 70, 99]
    obs = record_observations(sac_policy(), "pendulum", steps=50, seed=0, num_envs=4)
    assert obs.shape == (50, 3) and obs.dtype == np.float32 and np.abs(obs[:, :2]).max() <= 1.0  # cos, sin
    assert deploy_sidecar(sac_policy(), "pendulum")["control_dt"] == pytest.approx(0.05)


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(PolicyFileError, match="does not exist"):
        export_policy(tmp_path / "missing", tmp_path / "out")
    policy = anymal_policy()
    with pytest.raises(ExportError, match=r"check_obs must be .*\(M, 48\), got shape \(10, 47\)"):
        export_policy(policy, tmp_path / "out", check_obs=np.zeros((10, 47)))
    with pytest.raises(ExportError, match="NaN"):
        export_policy(policy, tmp_path / "out", check_obs=np.full((2, 48), np.nan))
    with pytest.raises(ExportError, match="recurrent"):
        export_policy(nn.GRU(48, 12), tmp_path / "out")
    with pytest.raises(ExportError, match="unknown export formats"):
        export_policy(policy, tmp_path / "out", formats=("tflite",))
    with pytest.raises(ExportError, match="task 'g1_flat' has"):
        export_policy(policy, tmp_path / "out", task="g1_flat")
    with pytest.raises(ExportError, match="unknown task"):
        export_policy(policy, tmp_path / "out", task="no_such_task")
    with pytest.raises(ExportError, match="policy.onnx is missing"):
        OnnxPolicy(tmp_path)
    (tmp_path / "policy.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="deploy.json is missing"):
        OnnxPolicy(tmp_path)
    assert not (tmp_path / "out").exists()  # nothing was written for bad input


def test_onnx_policy_rejects_wrong_obs_shape(anymal_export):
    _, out, _ = anymal_export
    with pytest.raises(ValueError, match=r"obs must have shape \(N, 48\)"):
        OnnxPolicy(out)(np.zeros((3, 47), np.float32))


def test_parity_failure_writes_nothing(monkeypatch, tmp_path):
    import sim2real.export as export

    real = export._run_exported
    monkeypatch.setattr(export, "_run_exported", lambda fmt, path, obs: real(fmt, path, obs) + (1e-3 if fmt == "onnx" else 0))
    with pytest.raises(ParityError, match=r"onnx 0\.001 > tolerance 1e-05") as info:
        export_policy(sac_policy(), tmp_path, "pendulum")
    assert info.value.parity["onnx"] > 1e-5 and info.value.parity["torchscript"] == 0.0
    assert [p.name for p in tmp_path.iterdir()] == []


def test_cli_export_records_checks_and_fails_on_parity(monkeypatch, tmp_path, capsys):
    policy_dir = anymal_policy().save(tmp_path / "policy")
    out = tmp_path / "deployed"
    args = [f"policy={policy_dir}", "task=anymal_c_flat", "steps=60", "progress=false"]
    assert main(["export", *args, f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "parity on 60 recorded anymal_c_flat observations" in printed and str(out / "policy.onnx") in printed
    assert {p.name for p in out.iterdir()} == {"policy.onnx", "policy.pt", "policy.pt2", "deploy.json"}
    export_policy(policy_dir, out, "anymal_c_flat", formats=("onnx",))  # a re-export leaves no stale file
    assert {p.name for p in out.iterdir()} == {"policy.onnx", "deploy.json"}

    import sim2real.export as export

    real = export._run_exported
    monkeypatch.setattr(export, "_run_exported", lambda fmt, path, obs: real(fmt, path, obs) * 1.01 + 1e-3)
    assert main(["export", *args]) == 2  # default out: <policy>/../export
    assert "disagrees with the torch policy" in capsys.readouterr().err
    assert not (tmp_path / "export").exists() or not list((tmp_path / "export").glob("policy.*"))
    monkeypatch.undo()
    assert main(["export", f"policy={tmp_path / 'nope'}", "task=anymal_c_flat"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", *args, "parity_tol=-1"]) == 2
    assert "parity_tol must be a number >= 0" in capsys.readouterr().err


def test_onnx_controller_on_mujoco_reproduces_the_torch_policy(anymal_export):
    policy, out, _ = anymal_export
    scores = deployment_check(policy, out, "anymal_c_flat", episodes=4, seed=3)
    torch_s, onnx_s = scores["torch"], scores["onnx"]
    assert torch_s["episodes"] == onnx_s["episodes"] == 4
    assert onnx_s["track_lin_vel_xy_exp"] == pytest.approx(torch_s["track_lin_vel_xy_exp"], abs=1e-4)
    assert onnx_s["mean_return"] == pytest.approx(torch_s["mean_return"], abs=1e-3, rel=1e-4)
    assert onnx_s["mean_episode_length"] == torch_s["mean_episode_length"]
    assert scores["abs_diff"]["track_lin_vel_xy_exp"] <= 1e-4


def test_onnx_policy_needs_no_torch(anymal_export):
    _, out, obs = anymal_export
    code = (
        "import sys, numpy as np; from sim2real.onnx_policy import OnnxPolicy; "
        f"a = OnnxPolicy({str(out)!r})(np.zeros((2, 48), np.float32)); "
        "assert a.shape == (2, 12) and a.dtype == np.float32; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
