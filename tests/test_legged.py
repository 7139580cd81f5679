"""Legged velocity tasks on MuJoCo: robot models, physics, terms, resets, batching."""

from __future__ import annotations

import dataclasses
import json
import math

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import tasks  # noqa: F401  (registers wam/AnymalC-Flat-v0, wam/G1-Flat-v0)
from tasks.assets import AssetError, asset_path
from tasks.locomotion import mdp
from tasks.locomotion.config import RandomizationCfg, ResetCfg
from tasks.locomotion.registry import env_cfg
from tasks.locomotion.robots import ANYMAL_C, G1, build_model
from tasks.locomotion.velocity_env import LeggedVelocityEnv, LeggedVelocityVecEnv

STILL = ResetCfg(pose_xy=(0.0, 0.0), yaw=(0.0, 0.0), base_velocity=(0.0, 0.0), joint_pos_scale=(1.0, 1.0))


def quiet_cfg(name: str, **changes):
    """The task with a still, default-pose reset (and any other field replaced)."""
    return dataclasses.replace(env_cfg(name), reset=STILL, **changes)


def test_missing_assets_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("WAM_ASSETS", str(tmp_path))
    with pytest.raises(AssetError, match="python -m tasks.assets"):
        asset_path("anymal_c/urdf/anymal_c.urdf")
    with pytest.raises(AssetError):
        build_model(ANYMAL_C)


def test_models_load_with_the_published_masses_and_joints():
    model, layout = build_model(ANYMAL_C)
    assert model.body_subtreemass[1] == pytest.approx(52.135, abs=1e-3)  # URDF total
    assert model.nu == 12 and len(layout.qpos_adr) == 12
    assert [model.actuator(i).name for i in range(model.nu)] == list(ANYMAL_C.joint_names)
    assert model.opt.timestep == 0.005
    g1, g1_layout = build_model(G1)
    assert g1.nu == 29
    assert 30.0 < g1.body_subtreemass[1] < 40.0
    knee = G1.joint_names.index("left_knee_joint")
    assert g1.dof_armature[g1_layout.dof_adr[knee]] > 0.02  # 7520-22 reflected inertia: stable PD needs it


def _stand(cfg, seconds: float = 2.0):
    env = LeggedVelocityVecEnv(cfg, num_envs=2)
    env.reset(seed=0)
    zero = torch.zeros(2, env.num_joints)
    for _ in range(int(seconds / env.step_dt)):
        _, _, terminated, _, _ = env.step(zero)
        assert not terminated.any()
    return env.state


def test_anymal_stands_under_default_pd_for_2s():
    s = _stand(quiet_cfg("anymal_c_flat"))
    assert (s.base_height > 0.35).all()
    assert (s.projected_gravity[:, 2] < -0.98).all()  # upright within ~11°
    assert s.foot_contact.all()
    assert s.base_lin_vel_b.norm(dim=1).max() < 0.05  # settled


def test_g1_stands_under_stiff_pd_and_needs_a_policy_with_its_own_gains():
    # G1's ankle PD (28.5 N·m/rad) is far below m·g·h (~220 N·m/rad): the robot cannot stand
    # passively with its deployed gains (Isaac Lab's and mjlab's alike), a policy must balance it.
    stiff = dataclasses.replace(G1, stiffness={k: 10 * v for k, v in G1.stiffness.items()},
                                effort_limit={k: 4 * v for k, v in G1.effort_limit.items()})
    s = _stand(quiet_cfg("g1_flat", robot=stiff))
    assert (s.base_height > 0.7).all() and (s.projected_gravity[:, 2] < -0.98).all()
    assert s.foot_contact.all()
    env = LeggedVelocityVecEnv(quiet_cfg("g1_flat"), num_envs=1)
    env.reset(seed=0)
    fell = False
    for _ in range(100):
        fell |= bool(env.step(torch.zeros(1, 29))[2][0])
    assert fell


@pytest.mark.parametrize("name", ["anymal_c_flat", "g1_flat"])
def test_reward_terms_finite_and_signed_as_documented(name):
    cfg = env_cfg(name)
    env = LeggedVelocityVecEnv(cfg, num_envs=8)
    env.reset(seed=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        _, reward, *_ = env.step(0.3 * torch.randn(8, env.num_joints, generator=gen))
        assert torch.isfinite(reward).all()
    s = env.state
    for key, term in cfg.rewards.items():
        func, weight, params = env._rewards[key]
        value = func(s, **params)
        assert value.shape == (8,) and torch.isfinite(value).all(), key
        if key != "feet_air_time" or name == "g1_flat":  # ANYmal's air time is signed: (air time - 0.5 s)
            assert (value >= 0).all(), f"{key}: raw term must be >= 0, sign comes from the weight"
        assert math.copysign(1, weight) == (1 if key.startswith(("track_", "feet_air_time")) else -1), key


def test_tracking_terms_score_one_when_the_base_follows_the_command():
    n = 4
    state = _synthetic_state(n)
    state.command = torch.tensor([[0.7, -0.2, 0.3]]).repeat(n, 1)
    state.base_lin_vel_b = torch.tensor([[0.7, -0.2, 0.0]]).repeat(n, 1)
    state.base_ang_vel_b = torch.tensor([[0.0, 0.0, 0.3]]).repeat(n, 1)
    for fn in (mdp.track_lin_vel_xy_exp, mdp.track_lin_vel_xy_yaw_frame_exp, mdp.track_ang_vel_z_exp, mdp.track_ang_vel_z_world_exp):
        assert torch.allclose(fn(state, std=0.5), torch.ones(n)), fn.__name__
    state.base_lin_vel_b[:, 0] = 0.2  # 0.5 m/s short
    assert torch.allclose(mdp.track_lin_vel_xy_exp(state, std=0.5), torch.full((n,), math.exp(-1.0)))


def test_frames_match_mujoco():
    rng = np.random.default_rng(0)
    quat = rng.normal(size=(5, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    v = rng.normal(size=(5, 3))
    ours = mdp.quat_rotate_inverse(torch.tensor(quat), torch.tensor(v)).numpy()
    for q, vec, out in zip(quat, v, ours):
        neg = np.empty(4)
        mujoco.mju_negQuat(neg, q)
        ref = np.empty(3)
        mujoco.mju_rotVecQuat(ref, vec, neg)
        np.testing.assert_allclose(out, ref, atol=1e-9)
    # the yaw frame removes roll and pitch: a body velocity maps to its world velocity turned by -yaw
    roll, pitch, yaw = 0.2, -0.3, 1.1
    q = np.empty(4)
    mujoco.mju_euler2Quat(q, np.array([roll, pitch, yaw]), "XYZ")
    world_v = np.array([0.4, -0.1, 0.05])
    quat_t = torch.tensor(q[None])
    v_b = mdp.quat_rotate_inverse(quat_t, torch.tensor(world_v[None]))
    g_b = mdp.quat_rotate_inverse(quat_t, torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64))
    v_yaw = mdp.body_to_yaw_frame(g_b, v_b)[0].numpy()
    c, s_ = math.cos(yaw), math.sin(yaw)
    np.testing.assert_allclose(v_yaw, [c * world_v[0] + s_ * world_v[1], -s_ * world_v[0] + c * world_v[1], world_v[2]], atol=1e-9)
    assert float(mdp.yaw_from_quat(quat_t)[0]) == pytest.approx(yaw)


def test_base_contact_terminates_and_autoresets_same_step():
    env = LeggedVelocityVecEnv(quiet_cfg("anymal_c_flat"), num_envs=3)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        env.step(torch.zeros(3, 12))
    d = env.datas[1]  # turn env 1 upside down onto the floor
    d.qpos[2] = 0.15
    d.qpos[3:7] = (0.0, 1.0, 0.0, 0.0)
    mujoco.mj_forward(env.model, d)
    for _ in range(10):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(3, 12))
        if terminated[1]:
            break
    assert terminated.tolist() == [False, True, False] and not truncated.any()
    assert info["_final_obs"].tolist() == [False, True, False]
    assert info["log"]["Episode_Termination/base_contact"] + info["log"]["Episode_Termination/fall"] >= 1
    assert env.episode_length_buf[1] == 0 and env.episode_length_buf[0] > 0
    gravity = env.obs_layout["projected_gravity"]
    assert info["final_obs"][1, gravity][2] > 0  # the final obs is upside down ...
    assert obs[1, gravity][2] < -0.99  # ... the returned one is the fresh upright start
    assert info["state"].shape == (3, env.state_layout["undesired_contact"].stop)


def test_time_limit_truncates():
    env = LeggedVelocityVecEnv(quiet_cfg("anymal_c_flat", episode_length_s=0.1), num_envs=2)
    env.reset(seed=0)
    assert env.max_episode_length == 5
    for t in range(5):
        _, _, terminated, truncated, info = env.step(torch.zeros(2, 12))
    assert truncated.all() and not terminated.any() and "final_obs" in info
    assert info["log"]["Episode_Termination/time_out"] == 2
    assert (env.episode_length_buf == 0).all()


@pytest.mark.parametrize("name", ["anymal_c_flat", "g1_flat"])
def test_batched_env_matches_single_env_for_same_seed_and_actions(name):
    batched = LeggedVelocityVecEnv(name, num_envs=5, num_threads=2)
    single = gym.make(f"wam/{'AnymalC' if name == 'anymal_c_flat' else 'G1'}-Flat-v0")
    obs_b, _ = batched.reset(seed=7)
    obs_s, info_s = single.reset(seed=7)
    np.testing.assert_array_equal(obs_b[0].numpy(), obs_s)
    gen = np.random.default_rng(3)
    for _ in range(30):
        action = gen.uniform(-1, 1, (5, batched.num_joints)).astype(np.float32)
        obs_b, r_b, term_b, trunc_b, info_b = batched.step(action)
        obs_s, r_s, term_s, trunc_s, info_s = single.step(action[0])
        np.testing.assert_allclose(obs_b[0].numpy(), obs_s, rtol=0, atol=1e-6)
        assert float(r_b[0]) == pytest.approx(r_s, abs=1e-6)
        np.testing.assert_allclose(info_b["state"][0].numpy(), info_s["state"], atol=1e-6)
        assert bool(term_b[0]) == term_s and bool(trunc_b[0]) == trunc_s
        if term_s or trunc_s:
            break


def test_single_env_passes_gymnasium_check_env():
    env = gym.make("wam/AnymalC-Flat-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (48,) and obs.dtype == np.float32 and info["state"].shape == (54,)


def test_bad_actions_are_refused_and_the_callers_array_is_untouched():
    env = LeggedVelocityVecEnv("anymal_c_flat", num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 11), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((2, 12), np.nan, np.float32))
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.full((2, 12), 11.0, np.float32))
    action = np.full((2, 12), 0.5, np.float32)
    env.step(action)
    env.reset(seed=1)
    assert (action == 0.5).all()
    with pytest.raises(RuntimeError, match="reset"):
        LeggedVelocityVecEnv("anymal_c_flat", num_envs=1).step(np.zeros((1, 12), np.float32))


def test_domain_randomization_terms_take_effect():
    rand = RandomizationCfg(friction=(0.5, 0.5), added_base_mass=(3.0, 3.0), motor_strength=(0.8, 0.8),
                            stiffness_scale=(1.5, 1.5), damping_scale=(2.0, 2.0), push_interval=(0.04, 0.04),
                            push_velocity=1.0, observation_noise=True, action_latency=2)
    env = LeggedVelocityVecEnv(quiet_cfg("anymal_c_flat", randomization=rand), num_envs=4)
    clean = LeggedVelocityVecEnv(quiet_cfg("anymal_c_flat"), num_envs=4)
    obs, _ = env.reset(seed=0)
    obs_clean, _ = clean.reset(seed=0)
    m, base = env.models[0], env.model
    assert m is not base
    np.testing.assert_allclose(m.geom_friction[:, 0], 0.5 * base.geom_friction[:, 0])
    b = env.layout.base_body
    assert m.body_mass[b] == pytest.approx(base.body_mass[b] + 3.0)
    np.testing.assert_allclose(m.actuator_forcerange, 0.8 * base.actuator_forcerange)
    np.testing.assert_allclose(m.actuator_gainprm[:, 0], 1.5 * base.actuator_gainprm[:, 0])
    np.testing.assert_allclose(m.actuator_biasprm[:, 1], 1.5 * base.actuator_biasprm[:, 1])
    np.testing.assert_allclose(m.actuator_biasprm[:, 2], 2.0 * base.actuator_biasprm[:, 2])
    assert not torch.allclose(obs, obs_clean)  # observation noise
    assert set(env._latency.tolist()) <= {0, 1, 2}
    env.step(torch.zeros(4, 12))
    env.step(torch.zeros(4, 12))  # a push (every 0.04 s) kicks the base sideways
    clean.step(torch.zeros(4, 12))
    clean.step(torch.zeros(4, 12))
    assert env.state.base_lin_vel_b[:, :2].norm(dim=1).min() > clean.state.base_lin_vel_b[:, :2].norm(dim=1).max()


def test_commands_follow_the_heading_controller_and_resample():
    cfg = quiet_cfg("anymal_c_flat")
    cfg = dataclasses.replace(cfg, commands=dataclasses.replace(cfg.commands, resampling_time=0.1, rel_standing_envs=0.0))
    env = LeggedVelocityVecEnv(cfg, num_envs=16)
    env.reset(seed=0)
    first = env.command.clone()
    # heading envs: wz = clip(0.5 * (heading - yaw)); the robots start at yaw 0
    expected = (0.5 * mdp.wrap_to_pi(env._heading)).clamp(-1, 1)
    assert torch.allclose(first[:, 2], expected, atol=1e-5)
    lo, hi = cfg.commands.lin_vel_x
    assert ((first[:, 0] >= lo) & (first[:, 0] <= hi)).all()
    for _ in range(6):
        env.step(torch.zeros(16, 12))
    assert not torch.allclose(env.command[:, :2], first[:, :2])  # resampled after 0.1 s


def _synthetic_state(n: int, j: int = 12, f: int = 4) -> mdp.LeggedState:
    z = lambda *s: torch.zeros(n, *s)  # noqa: E731
    return mdp.LeggedState(
        base_lin_vel_b=z(3), base_ang_vel_b=z(3), projected_gravity=torch.tensor([[0.0, 0.0, -1.0]]).repeat(n, 1),
        base_height=torch.full((n,), 0.5), joint_pos=z(j), joint_vel=z(j), joint_acc=z(j), joint_torque=z(j),
        default_joint_pos=torch.zeros(j), joint_pos_limits=torch.tensor([[-1.0, 1.0]]).repeat(j, 1), action=z(j),
        prev_action=z(j), command=z(3), foot_contact=torch.ones(n, f, dtype=torch.bool), foot_vel_w=z(f, 3),
        last_air_time=z(f), current_air_time=z(f), current_contact_time=z(f),
        first_contact=torch.zeros(n, f, dtype=torch.bool), undesired_force=z(4), base_force=z(1),
    )


def test_air_time_rewards_long_steps_at_touch_down():
    air = mdp.AirTime(1, 2)
    contact = torch.tensor([[True, True]])
    swing = torch.tensor([[False, True]])
    for _ in range(30):  # foot 0 in the air for 0.6 s
        air.update(swing, 0.02)
    air.update(contact, 0.02)
    assert air.first_contact.tolist() == [[True, False]]
    assert float(air.last_air_time[0, 0]) == pytest.approx(0.62)
    s = _synthetic_state(1, f=2)
    s.command[:, 0] = 1.0
    s.last_air_time, s.first_contact = air.last_air_time, air.first_contact
    assert float(mdp.feet_air_time(s, threshold=0.5)) == pytest.approx(0.12)
    s.command[:, 0] = 0.0  # standing still: no gait reward
    assert float(mdp.feet_air_time(s, threshold=0.5)) == 0.0


def test_cli_trains_a_baseline_on_physics_then_evaluates_and_plays(tmp_path, capsys):
    from wam.cli import main

    run = [f"run_dir={tmp_path}", "task=anymal_c_flat", "agent=ppo_rsl_rl", "agent.num_envs=16",
           "agent.params.max_iterations=2", "evaluate.episodes=4", "play.seconds=0.5", "progress=false"]
    assert main(["train-policy", "train_on=real", *run]) == 0
    assert (tmp_path / "policy").is_dir()
    assert main(["evaluate", *run]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["episodes"] == 4 and 0.0 <= result["fall_rate"] <= 1.0
    assert len(result["fall_times_s"]) == round(4 * result["fall_rate"]) and all(0 < t <= 20.0 for t in result["fall_times_s"])
    assert 0.0 < result["track_lin_vel_xy_exp"] <= 1.0 and result["env_steps"] >= 4
    try:
        mujoco.Renderer(build_model(ANYMAL_C)[0], 64, 64).close()
    except Exception as e:  # no OpenGL (EGL / OSMesa) on this machine
        pytest.skip(f"MuJoCo offscreen rendering unavailable: {e}")
    assert main(["play", *run]) == 0
    assert (tmp_path / "play.mp4").stat().st_size > 1000
    assert main(["train-policy", "train_on=simulated", *run]) == 2
    assert "train_on must be" in capsys.readouterr().err
    assert main(["train-policy", "train_on=real", "task=pendulum", f"run_dir={tmp_path}"]) == 2
