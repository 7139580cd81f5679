"""sim2real validation: metrics, backends, randomization levels, gates, report, `wam validate`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import sim2real
from agents.policy import MLPPolicy
from sim2real import backends as backends_mod
from sim2real.backends import Backend, BackendUnavailable, MujocoBackend, Sim2RealError, make_backend, validation_cfg
from sim2real.metrics import RolloutMetrics, eval_commands, foot_slip_sums, joint_limits, track_lin_vel_xy_exp
from sim2real.validate import GATES, load_randomization
from tasks.locomotion.config import RandomizationCfg
from tasks.locomotion.velocity_env import LeggedVelocityVecEnv
from wam.cli import main

TASK = "anymal_c_flat"
SHORT = {"episodes": 4, "episode_length_s": 0.5, "sweep": False, "levels": "none"}


def _policy(scale: float, seed: int = 0) -> MLPPolicy:
    """ANYmal C policy: zero weights (scale 0: stands) or N(0, scale) weights (actions hit the ±10 box: falls)."""
    torch.manual_seed(seed)
    p = MLPPolicy(48, 12, [-10.0] * 12, [10.0] * 12, hidden=(16,))
    with torch.no_grad():
        for prm in p.parameters():
            prm.normal_(0.0, scale) if scale else prm.zero_()
    return p


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_on_hand_made_tensors():
    cmd = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    v = np.array([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    np.testing.assert_allclose(track_lin_vel_xy_exp(cmd[:, :2], v[:, :2]), [math.exp(-0.25 / 0.25), 1.0])
    slip, count = foot_slip_sums(np.array([[[3.0, 4.0, 9.0], [10.0, 0.0, 0.0]]]), np.array([[True, False]]))
    assert slip.tolist() == [5.0] and count.tolist() == [1]

    m = RolloutMetrics(2, effort_limit=np.array([10.0, 10.0]), vel_limit=np.array([5.0, 5.0]))
    w = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # step 1: env 0 falls; torques: env 0 one joint above 99% of the limit, env 1 one joint at the limit
    m.step(torch.tensor(cmd), torch.tensor(v), torch.tensor(w), torch.tensor([True, False]), torch.tensor([False, False]),
           reward=torch.tensor([1.0, 2.0]), joint_torque=torch.tensor([[9.95, 0.0], [-10.0, 5.0]]),
           joint_vel=torch.tensor([[6.0, 0.0], [0.0, 0.0]]), foot_vel_w=np.zeros((2, 2, 3)), foot_contact=np.ones((2, 2), bool))
    assert not m.done
    # step 2: env 1 reaches the time limit; env 0 no longer counts whatever it reports
    m.step(cmd, v, w, np.array([True, False]), np.array([False, True]), reward=np.array([100.0, 2.0]),
           joint_torque=np.array([[99.0, 99.0], [0.0, 0.0]]), joint_vel=np.zeros((2, 2)),
           foot_vel_w=np.array([[[9.0, 9.0, 0.0]] * 2, [[0.3, 0.4, 0.0], [0.0, 0.0, 0.0]]]),
           foot_contact=np.array([[True, True], [True, False]]))
    r = m.result()
    assert r["episodes"] == 2 and r["env_steps"] == 3 and r["fall_rate"] == 0.5
    assert r["mean_return"] == pytest.approx((1.0 + 4.0) / 2)
    assert r["torque_limit_violation"] == pytest.approx(2 / 6)  # 2 of 3 steps x 2 joints
    assert r["joint_vel_limit_violation"] == pytest.approx(1 / 6)
    assert r["foot_slip"] == pytest.approx(0.5 / 5)  # 5 feet in contact: four at rest, one at 0.5 m/s
    e1, e2 = math.exp(-1.0), 1.0
    assert r["track_lin_vel_xy_exp"] == pytest.approx((e1 + e2 + e2) / 3)
    assert r["lin_vel_error"] == pytest.approx(0.5 / 3)
    assert r["track_ang_vel_z_exp"] == pytest.approx((1.0 + 2 * math.exp(-1.0)) / 3)

    blind = RolloutMetrics(1)  # no limits given, nothing optional passed: nan, never a made-up number
    blind.step(cmd[:1], v[:1], w[:1], np.array([False]), np.array([True]))
    out = blind.result()
    assert all(math.isnan(out[k]) for k in ("mean_return", "torque_limit_violation", "joint_vel_limit_violation", "foot_slip"))
    with pytest.raises(RuntimeError, match="not finished"):
        RolloutMetrics(1).result()


def test_commands_and_limits_are_shared_by_every_backend():
    c = eval_commands(64, seed=3)
    assert c.shape == (64, 3) and (c[:, 0] >= 0.5).all() and (c[:, 0] <= 1.0).all() and (c[:, 1:] == 0).all()
    np.testing.assert_array_equal(c, eval_commands(64, seed=3))
    names, effort, vel = joint_limits("g1_flat")
    assert len(names) == 29 and vel[names.index("left_knee_joint")] == 20.0 and vel[names.index("left_wrist_yaw_joint")] == 22.0
    assert effort[names.index("left_knee_joint")] == 139.0


# ------------------------------------------------------------------------------------------ randomization


def test_randomization_levels_change_the_dynamics():
    spec = load_randomization()
    assert set(spec.levels) >= {"none", "low", "medium", "high"} and spec.at(spec.levels["none"]) == RandomizationCfg()
    high = spec.at(1.0)
    assert high.friction == (0.5, 1.5) and high.action_latency == 2 and high.observation_noise and high.push_interval
    assert spec.at(0.5).friction == (0.75, 1.25)
    alone = spec.at(1.0, ["friction"])
    assert alone.friction == (0.5, 1.5) and alone.added_base_mass is None and alone.action_latency == 0

    env = LeggedVelocityVecEnv(validation_cfg(TASK, alone), num_envs=4, num_threads=1)
    env.reset(seed=0)
    base = env.model.geom_friction[:, 0]
    factors = np.array([m.geom_friction[0, 0] / base[0] for m in env.models])
    assert len(np.unique(factors)) == 4 and (factors >= 0.5).all() and (factors <= 1.5).all()
    np.testing.assert_allclose(env.models[0].geom_friction[:, 0], base * factors[0])  # one draw per robot, every geom
    env.close()
    plain = LeggedVelocityVecEnv(validation_cfg(TASK, spec.at(0.0)), num_envs=2, num_threads=1)
    plain.reset(seed=0)
    assert all(m is plain.model for m in plain.models)
    plain.close()


# ------------------------------------------------------------------------------------------ backends, errors


def test_missing_isaaclab_is_a_clear_backend_unavailable(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(backends_mod, "ISAACLAB_VENV", tmp_path / "no-venv")
    with pytest.raises(BackendUnavailable, match="scripts/setup_isaaclab.sh"):
        make_backend("isaaclab")
    # optional (trailing ?): skipped with the reason; required: an error, exit code 2 from the CLI
    r = sim2real.validate(_policy(0.0), TASK, backends="mujoco,isaaclab?", **SHORT)
    assert r["backends"] == ["mujoco"] and r["skipped"][0]["backend"] == "isaaclab"
    assert "setup_isaaclab.sh" in r["skipped"][0]["reason"]
    _policy(0.0).save(tmp_path / "p")
    assert main(["validate", f"task={TASK}", f"policy={tmp_path / 'p'}", "backends=isaaclab", "episodes=2"]) == 2
    assert ".venv-isaaclab" in capsys.readouterr().err


def test_an_optional_backend_failing_while_running_is_skipped(monkeypatch):
    import sim2real.validate as validate_mod

    class NoAssets:
        name, randomizable, policy_input = "isaaclab", True, "callable"

        def run(self, policy, task, episodes, seed, randomization):
            raise BackendUnavailable("no Isaac Lab assets: run scripts/setup_isaaclab.sh")

    assert isinstance(NoAssets(), Backend) and isinstance(make_backend("mujoco"), Backend)
    real = validate_mod.make_backend
    monkeypatch.setattr(validate_mod, "make_backend", lambda name, **kw: NoAssets() if name == "isaaclab" else real(name, **kw))
    r = sim2real.validate(_policy(0.0), TASK, backends="mujoco,isaaclab?", **SHORT)
    assert r["backends"] == ["mujoco"] and "no Isaac Lab assets" in r["skipped"][0]["reason"]
    with pytest.raises(BackendUnavailable, match="no Isaac Lab assets"):
        sim2real.validate(_policy(0.0), TASK, backends="mujoco,isaaclab", **SHORT)


def test_unknown_backend_gate_level_or_task_is_an_error(tmp_path, capsys):
    p = _policy(0.0)
    with pytest.raises(Sim2RealError, match="unknown backend 'bullet'"):
        sim2real.validate(p, TASK, backends=["bullet"], **SHORT)
    with pytest.raises(Sim2RealError, match="unknown gate keys"):
        sim2real.validate(p, TASK, gates={"fall_max": 0.1}, **SHORT)
    with pytest.raises(Sim2RealError, match="unknown randomization levels"):
        sim2real.validate(p, TASK, **{**SHORT, "levels": "none,extreme"})
    with pytest.raises(Sim2RealError, match="legged velocity tasks"):
        MujocoBackend().run(p.act, "pendulum", 2, 0, None)
    with pytest.raises(Sim2RealError, match="world-model checkpoint"):
        make_backend("imagined", model=tmp_path)
    with pytest.raises(Sim2RealError, match="actions of shape"):
        MujocoBackend(episode_length_s=0.1).run(lambda obs: np.zeros((len(obs), 3), np.float32), TASK, 2, 0, None)
    p.save(tmp_path / "p")
    assert main(["validate", f"task={TASK}", f"policy={tmp_path / 'p'}", "gates.fall_max=0.1"]) == 2
    assert "validate.gates.fall_max" in capsys.readouterr().err
    assert set(GATES) >= {"fall_rate_max", "tracking_min", "gap_max"}


# ------------------------------------------------------------------------------------------ gates, report, CLI


def test_a_falling_policy_fails_the_gate_and_wam_validate_exits_nonzero(tmp_path, capsys):
    _policy(3.0).save(tmp_path / "falls")
    _policy(0.0).save(tmp_path / "stands")
    common = [f"task={TASK}", "episodes=4", "episode_length_s=1.0", "levels=none,high", "sweep=false", "gates.fall_rate_max=0.25",
              "progress=false"]
    assert main(["validate", f"policy={tmp_path / 'falls'}", f"out={tmp_path / 'out_falls'}", *common]) == 1
    assert "FAIL" in capsys.readouterr().out
    res = json.loads((tmp_path / "out_falls" / "results.json").read_text())
    assert not res["passed"] and res["gates"][0]["failing"] and all(r["fall_rate"] > 0.25 for r in res["results"])
    assert "**Verdict: FAIL**" in (tmp_path / "out_falls" / "report.md").read_text()

    assert main(["validate", f"policy={tmp_path / 'stands'}", f"out={tmp_path / 'out_stands'}", *common]) == 0
    res = json.loads((tmp_path / "out_stands" / "results.json").read_text())
    assert res["passed"] and [r["randomization"] for r in res["results"]] == ["none", "high"]
    assert res["randomization"]["high"]["friction"] == [0.5, 1.5]


def test_report_files_sweep_and_the_imagined_backend(tmp_path):
    from tasks.locomotion.collect import collect_legged, legged_dataset_meta
    from world_models import build_model, save_checkpoint
    from world_models.data import model_spec_from_data, split_episodes, to_torch
    from world_models.training import WorldModelTrainConfig, train_world_model

    data = collect_legged(TASK, None, 512, num_envs=32, seed=0, action_noise=0.3, progress=False)
    train, val = split_episodes(data, 0.2)
    torch.manual_seed(0)
    model = build_model("rwm_gru", model_spec_from_data(legged_dataset_meta(TASK), train, 4, 2, dt=0.02), hidden=16,
                        head_hidden=16, ensemble=2, learn_reward=False)
    train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=5, eval_every=5), progress=False)
    save_checkpoint(model, tmp_path / "wm", extra={"task": TASK}, tensors={f"start/{k}": torch.as_tensor(data[k]) for k in ("obs", "action", "episode")})

    out = tmp_path / "report"
    lines: list[str] = []
    r = sim2real.validate(_policy(0.0), TASK, backends="imagined,mujoco", levels="none,medium", episodes=4, episode_length_s=0.3,
                          model=tmp_path / "wm", out=out, gates={"gap_max": 10.0, "foot_slip_max": 10.0}, log=lines.append)
    cells = [(x["backend"], x["randomization"]) for x in r["results"]]
    assert cells == [("imagined", "none"), ("mujoco", "none"), ("mujoco", "medium")]  # the world model is not randomized
    imagined, mujoco = r["results"][0], r["results"][1]
    assert math.isnan(imagined["foot_slip"]) and any("foot velocities" in n for n in imagined["notes"])
    assert not math.isnan(mujoco["foot_slip"]) and mujoco["tracking_gap"] == 0.0
    assert imagined["tracking_gap"] == pytest.approx(mujoco["track_lin_vel_xy_exp"] - imagined["track_lin_vel_xy_exp"])
    assert r["gates"][1]["not_measured"] == ["imagined/none"] and r["passed"]
    spec = load_randomization()
    assert {(s["factor"], s["magnitude"]) for s in r["sweep"]} == {(f, m) for f in spec.sweep_factors for m in (0.0, *spec.sweep_magnitudes)}
    assert all(s["backend"] == "mujoco" for s in r["sweep"]) and len(lines) == r["runs"]
    for name in ("results.json", "report.md", "backends.png", "robustness_mujoco.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][0]["foot_slip"] is None and saved["format"] == "wam.validation"
    text = (out / "report.md").read_text()
    assert "| imagined | none (0) |" in text and "robustness_mujoco.png" in text and "foot velocities" in text


def test_an_exported_policy_validates_like_its_source(tmp_path):
    pytest.importorskip("onnxruntime")
    from sim2real.export import export_policy

    p = _policy(0.3, seed=1)
    export_policy(p, tmp_path / "exported", task=TASK, formats=("onnx",))
    a = MujocoBackend(episode_length_s=0.5).run(p.act, TASK, 4, 0, None)
    b = MujocoBackend(episode_length_s=0.5).run(tmp_path / "exported", TASK, 4, 0, None)
    assert a["track_lin_vel_xy_exp"] == pytest.approx(b["track_lin_vel_xy_exp"], abs=1e-4)
    assert a["fall_rate"] == b["fall_rate"]
