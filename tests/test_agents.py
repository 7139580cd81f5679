"""Agents in imagination: SB3 / rsl-rl adapters, PPO trainers, the policy file, real evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from rsl_rl.runners import OnPolicyRunner
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import _check_box_obs, _check_obs, _check_spaces, _check_unsupported_spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecNormalize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensordict import TensorDict

from agents.evaluate import evaluate_policy, rollout_real
from agents.policy import MLPPolicy, PolicyFileError
from agents.ppo_rsl_rl import RslRlPPOConfig
from agents.ppo_rsl_rl import train as train_rsl_rl
from agents.ppo_sb3 import Sb3PPOConfig
from agents.ppo_sb3 import train as train_sb3
from tasks import get_task
from tasks.collect import dataset_meta, random_policy
from wam_env import ImaginedVecEnv
from wam_env.rsl_rl import RslRlVecEnvAdapter
from wam_env.sb3 import Sb3VecEnvAdapter
from world_models import WorldModel, build_model
from world_models.data import model_spec_from_data, to_torch

PENDULUM = get_task("pendulum")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world_model(pendulum_transitions) -> WorldModel:
    """A small RWM GRU for real Pendulum data, untrained (dynamics do not matter here), without
    reward / termination heads (the task reward scores it; Pendulum never terminates)."""
    torch.manual_seed(0)
    spec = model_spec_from_data(dataset_meta(PENDULUM), pendulum_transitions, history=4, forecast=2)
    model = build_model(
        "rwm_gru", spec, hidden=32, layers=1, head_hidden=32, ensemble=2, learn_reward=False, learn_termination=False
    )
    model.fit_normalizers(to_torch(pendulum_transitions))
    return model


@pytest.fixture
def make_env(world_model, pendulum_transitions) -> Callable[..., ImaginedVecEnv]:
    """``make_env(num_envs, max_episode_length)``: an imagined Pendulum env that never diverges
    (so every episode lasts exactly ``max_episode_length`` steps)."""

    def make(num_envs: int = 8, max_episode_length: int = 200) -> ImaginedVecEnv:
        return ImaginedVecEnv(
            num_envs, model=world_model, task="pendulum", start_data=pendulum_transitions,
            max_episode_steps=max_episode_length, divergence_margin=1e6,
        )

    return make


def scalar_tags(folder: Path) -> set[str]:
    """The scalar tags of every TensorBoard event file under ``folder``."""
    tags: set[str] = set()
    for file in folder.rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(file))
        events.Reload()
        tags |= set(events.Tags()["scalars"])
    return tags


# ------------------------------------------------------------------ adapters


def record_steps(env: gym.vector.VectorEnv) -> list[tuple]:
    """Make ``env.step`` also append its raw (torch) results to the returned list."""
    raw: list[tuple] = []
    step = env.step

    def recorded(actions):
        raw.append(step(actions))
        return raw[-1]

    env.step = recorded
    return raw


def test_sb3_adapter_env_checks_and_true_terminal_observation(make_env):
    env = make_env(num_envs=4, max_episode_length=5)
    venv = Sb3VecEnvAdapter(env)
    _check_spaces(venv)
    assert not _check_unsupported_spaces(venv, venv.observation_space, venv.action_space)
    _check_box_obs(venv.observation_space)
    assert venv.observation_space == env.single_observation_space and venv.action_space == env.single_action_space
    assert venv.get_attr("max_episode_length") == [5] * 4 and venv.env_is_wrapped(gym.Wrapper) == [False] * 4
    raw = record_steps(env)
    venv.seed(3)
    obs = venv.reset()
    assert obs.dtype == np.float32 and obs.shape == (4, 3)
    for o in obs:
        _check_obs(o, venv.observation_space, "reset")
    finished = 0
    for _ in range(12):
        venv.step_async(np.stack([venv.action_space.sample() for _ in range(4)]))
        obs, rewards, dones, infos = venv.step_wait()
        assert rewards.dtype == np.float32 and rewards.shape == (4,) and dones.dtype == bool and len(infos) == 4
        np.testing.assert_array_equal(obs, raw[-1][0].numpy())
        for o in obs:
            _check_obs(o, venv.observation_space, "step")
        for i, info in enumerate(infos):
            assert info["TimeLimit.truncated"] == bool(dones[i])  # Pendulum never terminates
            assert isinstance(info["uncertainty"], float) and isinstance(info["model_diverged"], bool)
            assert ("terminal_observation" in info) == bool(dones[i])
            if dones[i]:
                finished += 1
                term = info["terminal_observation"]
                _check_obs(term, venv.observation_space, "step (terminal_observation)")
                np.testing.assert_array_equal(term, raw[-1][4]["final_obs"][i].numpy())  # the true final obs
                assert not np.array_equal(term, obs[i]), "terminal_observation must not be the reset obs"
                assert info["episode"]["l"] == 5
    assert finished == 8  # every env truncated after steps 5 and 10
    checked = VecCheckNan(Sb3VecEnvAdapter(make_env(4, 5)), raise_exception=True)  # SB3's NaN / inf checker
    checked.reset()
    for _ in range(10):
        checked.step(np.zeros((4, 1), np.float32))


def test_sb3_adapter_refuses_per_env_methods_and_wrong_envs(make_env):
    venv = Sb3VecEnvAdapter(make_env(4))
    with pytest.raises(ValueError, match="indices=None"):
        venv.set_attr("max_episode_length", 10, indices=[0])
    venv.set_attr("max_episode_length", 10)
    assert venv.env.max_episode_length == 10
    next_step = gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync")
    with pytest.raises(ValueError, match="SAME_STEP"):
        Sb3VecEnvAdapter(next_step)


def test_rsl_rl_adapter_time_outs_dones_and_shared_episode_length(make_env):
    env = make_env(num_envs=3, max_episode_length=4)
    adapter = RslRlVecEnvAdapter(env, seed=0)
    obs = adapter.get_observations()
    assert obs.batch_size == torch.Size([3]) and obs["policy"].shape == (3, 3)
    assert adapter.num_actions == 1 and adapter.max_episode_length == 4
    assert adapter.episode_length_buf is env.episode_length_buf
    for _t in range(4):
        obs, rewards, dones, extras = adapter.step(torch.full((3, 1), 5.0))  # out of the box: clipped
        assert rewards.shape == (3,) and dones.dtype == torch.long
        assert extras["time_outs"].dtype == torch.bool
        assert set(extras["log"]) == {"Imagination/uncertainty", "Imagination/diverged"}
    assert dones.tolist() == [1, 1, 1] and extras["time_outs"].tolist() == [True, True, True]
    assert [e[3] for e in adapter.episodes] == [4, 4, 4]
    adapter.episode_length_buf = torch.tensor([1, 2, 3])  # what OnPolicyRunner(init_at_random_ep_len) does
    assert env.episode_length_buf.tolist() == [1, 2, 3]


# ------------------------------------------------------------------ training


def test_sb3_ppo_trains_in_imagination_and_logs(tmp_path, make_env):
    cfg = Sb3PPOConfig(total_timesteps=512, n_steps=32, batch_size=64, n_epochs=2)
    policy, curve = train_sb3(make_env(num_envs=8, max_episode_length=16), cfg, log_dir=str(tmp_path), progress=False)
    assert isinstance(policy, MLPPolicy) and policy.source == "sb3:PPO"
    assert len(curve["mean_return"]) == 2 and curve["timesteps"] == [256, 512]
    assert {"rollout/ep_rew_mean", "train/value_loss", "Imagination/uncertainty", "Imagination/diverged"} <= scalar_tags(tmp_path)
    assert policy.act(np.zeros((5, 3), np.float32)).shape == (5, 1)


def test_unchanged_sb3_user_code_trains(make_env):
    model = PPO("MlpPolicy", Sb3VecEnvAdapter(make_env(8, 16)), n_steps=16, batch_size=64, n_epochs=1, seed=0)
    model.learn(256)
    assert len(model.ep_info_buffer) > 0  # the adapter's "episode" infos feed rollout/ep_rew_mean


def test_rsl_rl_ppo_trains_in_imagination_and_logs(tmp_path, make_env):
    cfg = RslRlPPOConfig(
        max_iterations=3, num_steps_per_env=8, num_learning_epochs=1, num_mini_batches=2, save_interval=2
    )
    env = make_env(num_envs=16, max_episode_length=8)
    policy, curve = train_rsl_rl(env, cfg, log_dir=str(tmp_path), progress=False)
    assert isinstance(policy, MLPPolicy) and policy.source == "rsl_rl:PPO" and policy.normalize
    assert curve["timesteps"] == [128, 256, 384] and len(curve["mean_return"]) == 3
    assert {"Train/mean_reward", "Loss/value", "Imagination/uncertainty", "Imagination/diverged"} <= scalar_tags(tmp_path)
    assert (tmp_path / "model_2.pt").is_file()
    # the env's state is ordinary tensors after the runner's inference mode: partial resets still work
    assert not any(v.is_inference() for v in env.carry.values())
    env.reset(options={"reset_mask": torch.arange(16) < 4})
    env.step(torch.zeros(16, 1))


# ------------------------------------------------------------------ policy file


def test_from_sb3_matches_deterministic_predict(make_env):
    obs = np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32) * np.float32([1, 1, 8])
    venv = Sb3VecEnvAdapter(make_env(4, 16))
    models = [
        PPO("MlpPolicy", venv, n_steps=16, batch_size=32, use_sde=True, seed=0),
        PPO("MlpPolicy", venv, n_steps=16, batch_size=32, use_sde=True, policy_kwargs={"squash_output": True}, seed=0),
        PPO("MlpPolicy", venv, n_steps=16, batch_size=32, seed=0,
            policy_kwargs={"net_arch": [32], "activation_fn": torch.nn.ReLU}),
        SAC("MlpPolicy", venv, learning_starts=0, batch_size=32, use_sde=True, seed=0),
        SAC("MlpPolicy", venv, learning_starts=0, batch_size=32, policy_kwargs={"net_arch": [32, 32]}, seed=0),
    ]
    for model in models:
        model.learn(64)
        policy = MLPPolicy.from_sb3(model)
        expected, _ = model.predict(obs, deterministic=True)
        np.testing.assert_array_equal(policy.act(obs), expected, err_msg=type(model).__name__)
    normed = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2))
    model = PPO("MlpPolicy", normed, n_steps=32, batch_size=32, seed=0)
    model.learn(64)
    policy = MLPPolicy.from_sb3(model)
    assert policy.normalize and policy.obs_clip == normed.clip_obs
    expected, _ = model.predict(normed.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(policy.act(obs), expected, rtol=0, atol=1e-5)


def test_from_rsl_rl_matches_actor_with_normalizer(make_env):
    cfg = RslRlPPOConfig(num_steps_per_env=8, num_learning_epochs=1, num_mini_batches=2, obs_normalization=True)
    adapter = RslRlVecEnvAdapter(make_env(16, 8), seed=0)
    runner = OnPolicyRunner(adapter, cfg.train_cfg(), None, "cpu")
    runner.learn(2)
    assert not adapter.get_observations()["policy"].is_inference()  # env state stays usable after training
    actor = runner.get_inference_policy()
    assert actor.obs_normalizer.count > 0
    policy = MLPPolicy.from_rsl_rl(runner)
    obs = torch.randn(64, 3) * torch.tensor([1.0, 1.0, 4.0])
    with torch.no_grad():
        expected = actor(TensorDict({"policy": obs}, batch_size=[64])).clamp(-2, 2)
    assert torch.equal(policy.act(obs), expected)


def test_policy_file_round_trip(tmp_path):
    policy = MLPPolicy(3, 1, [-2.0], [2.0], hidden=(16, 8), activation="elu", normalize=True, source="test")
    with torch.no_grad():
        policy.obs_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        policy.obs_std.copy_(torch.tensor([0.5, 2.0, 3.0]))
        for p in policy.mlp.parameters():
            p.mul_(5.0)
    folder = policy.save(tmp_path / "pol")
    cfg = json.loads((folder / "policy.json").read_text())
    assert cfg["format"] == "wam.policy" and cfg["format_version"] == 1 and cfg["hidden"] == [16, 8]
    loaded = MLPPolicy.load(folder)
    obs = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))
    assert loaded.act(obs[0]).shape == (1,) and np.abs(loaded.act(obs * 10)).max() <= 2.0
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        loaded.act(np.zeros((2, 4), np.float32))


def _corrupt_cases():
    def newer(folder):
        cfg = json.loads((folder / "policy.json").read_text())
        cfg["format_version"] = 99
        (folder / "policy.json").write_text(json.dumps(cfg))

    def foreign(folder):
        (folder / "policy.json").write_text(json.dumps({"format": "someone.else", "format_version": 1}))

    def shape(folder):
        cfg = json.loads((folder / "policy.json").read_text())
        cfg["hidden"] = [16, 9]
        (folder / "policy.json").write_text(json.dumps(cfg))

    def unknown_key(folder):
        cfg = json.loads((folder / "policy.json").read_text())
        cfg["hiden"] = [16]
        (folder / "policy.json").write_text(json.dumps(cfg))

    def bad_value(folder):
        cfg = json.loads((folder / "policy.json").read_text())
        cfg["action_low"] = [-2.0, None]
        (folder / "policy.json").write_text(json.dumps(cfg))

    def bad_json(folder):
        (folder / "policy.json").write_text('{"format": "wam.policy", ')

    def bad_weights(folder):
        (folder / "policy.safetensors").write_bytes(b"\x00\x01garbage" * 10)

    def truncated_weights(folder):
        data = (folder / "policy.safetensors").read_bytes()
        (folder / "policy.safetensors").write_bytes(data[: len(data) // 2])

    def pickle_file(folder):
        torch.save({"actor": 1}, folder / "policy.safetensors")

    def missing_weights(folder):
        (folder / "policy.safetensors").unlink()

    def missing_json(folder):
        (folder / "policy.json").unlink()

    return [
        (newer, "newer than this wam reads"),
        (foreign, "not a wam policy file"),
        (shape, r"tensor 'mlp\.2\.(bias|weight)' has shape \(8,?.*\), policy.json implies \(9,?.*\)"),
        (unknown_key, r"unknown keys \['hiden'\]"),
        (bad_value, r"policy.json: action_low / action_high must be lists of numbers"),
        (bad_json, "not valid JSON"),
        (bad_weights, "not a readable safetensors file"),
        (truncated_weights, "not a readable safetensors file"),
        (pickle_file, "not a readable safetensors file"),
        (missing_weights, "policy.safetensors is missing"),
        (missing_json, "policy.json is missing"),
    ]


@pytest.mark.parametrize("corrupt,message", _corrupt_cases(), ids=lambda c: getattr(c, "__name__", ""))
def test_bad_policy_file_raises_and_is_left_untouched(tmp_path, corrupt, message):
    folder = MLPPolicy(3, 1, [-2.0], [2.0], hidden=(16, 8)).save(tmp_path / "pol")
    corrupt(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(PolicyFileError, match=message):
        MLPPolicy.load(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_policy_load_of_a_file_or_missing_folder(tmp_path):
    with pytest.raises(PolicyFileError, match="does not exist"):
        MLPPolicy.load(tmp_path / "nope")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(PolicyFileError, match="is a file"):
        MLPPolicy.load(tmp_path / "model.pt")


# ------------------------------------------------------------------ evaluation


def test_evaluate_random_policy_on_real_pendulum():
    act_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    returns = evaluate_policy(random_policy(act_space, seed=0), PENDULUM, episodes=20, seed=0, num_envs=6)
    assert returns.shape == (20,) and np.isfinite(returns).all()
    assert abs(returns.mean() + 1200) < 400


def test_evaluate_seeds_episodes_independently_of_num_envs():
    policy = MLPPolicy(3, 1, [-2.0], [2.0], hidden=(8,))
    a = evaluate_policy(policy, PENDULUM, episodes=5, seed=7, num_envs=5)
    b = evaluate_policy(policy, PENDULUM, episodes=5, seed=7, num_envs=2)
    np.testing.assert_allclose(a, b)


def test_rollout_real_shapes():
    policy = MLPPolicy(3, 1, [-2.0], [2.0], hidden=(8,))
    out = rollout_real(policy, PENDULUM, seed=0, steps=50)
    assert out["obs"].shape == (51, 3) and out["actions"].shape == (50, 1) and out["rewards"].shape == (50,)
    full = rollout_real(policy.act, PENDULUM, seed=0, steps=500)
    assert full["obs"].shape == (201, 3) and full["truncated"][-1]
    np.testing.assert_array_equal(full["obs"][:51], out["obs"])
