"""MBPO (agents/mbpo.py): schedule, buffers, rollouts, termination functions, a short online
run on InvertedPendulum-v5, offline MOPO, Minari import errors, config wiring."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from agents import mbpo
from tasks import get_task
from tasks.collect import collect, dataset_meta
from wam.config import ConfigError
from world_models import build_model
from world_models.data import DatasetError, model_spec_from_data, to_torch
from world_models.training import WorldModelTrainConfig, train_world_model

TINY_ENSEMBLE = {"members": 3, "elites": 2, "hidden": 64, "layers": 2}


@pytest.fixture(scope="module")
def ip_data() -> dict[str, np.ndarray]:
    """1000 random InvertedPendulum-v5 transitions."""
    return collect(get_task("inverted_pendulum"), None, 1000, num_envs=4, seed=0, progress=False)


def test_rollout_schedule_and_capacity() -> None:
    cfg = mbpo.MbpoConfig(rollout_schedule=(20, 100, 1, 15), epoch_length=1000, rollout_batch_size=100_000)
    assert [mbpo.rollout_length(cfg, s) for s in (0, 20_000, 60_000, 100_000, 200_000)] == [1, 1, 8, 15, 15]
    assert mbpo.model_buffer_capacity(cfg, 15) == 15 * 100_000 * 4  # paper: k x batch x epoch / F x retain 1
    with pytest.raises(ValueError, match="real_ratio"):
        mbpo.MbpoConfig(real_ratio=1.5)
    with pytest.raises(ValueError, match="buffer_size"):
        mbpo.MbpoConfig(total_steps=10, init_steps=5, buffer_size=5)


def test_model_buffer_keeps_newest_and_mixes_at_real_ratio() -> None:
    import gymnasium as gym

    buf = mbpo.ModelBuffer(5, obs_dim=2, action_dim=1)
    rows = lambda lo, hi: {"obs": torch.arange(lo, hi).float()[:, None].repeat(1, 2), "action": torch.zeros(hi - lo, 1),  # noqa: E731
                           "next_obs": torch.zeros(hi - lo, 2), "reward": torch.arange(lo, hi).float(), "done": torch.zeros(hi - lo)}
    buf.add(rows(0, 4))
    buf.add(rows(4, 7))
    assert len(buf) == 5 and sorted(buf.data["reward"].tolist()) == [2, 3, 4, 5, 6]
    buf.resize(3)  # keeps the newest rows
    assert sorted(buf.data["reward"].tolist()) == [4, 5, 6]
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    real = mbpo.MixedReplayBuffer(100, space, gym.spaces.Box(-1, 1, (1,), np.float32), "cpu", real_ratio=0.25)
    for _ in range(10):
        real.add(np.full((1, 2), -7.0), np.zeros((1, 2)), np.zeros((1, 1)), np.array([-1.0]), np.array([0.0]), [{}])
    assert real.sample(8).rewards.eq(-1).all()  # no model buffer yet: all real
    real.model_buffer = buf
    s = real.sample(400)
    assert int((s.rewards == -1).sum()) == 100 and s.observations.shape == (400, 2)


def test_termination_and_reward_functions_match_the_real_envs(ip_data) -> None:
    ip = get_task("inverted_pendulum")
    nxt = torch.as_tensor(ip_data["next_obs"])
    assert torch.equal(ip.termination_fn(nxt), torch.as_tensor(ip_data["terminated"]))
    r = ip.reward_fn(torch.as_tensor(ip_data["obs"]), torch.as_tensor(ip_data["action"]), nxt)
    assert torch.equal(r, torch.as_tensor(ip_data["reward"]))
    hop = get_task("hopper")
    d = collect(hop, None, 400, num_envs=2, seed=1, progress=False)
    assert d["terminated"].any()
    assert torch.equal(hop.termination_fn(torch.as_tensor(d["next_obs"])), torch.as_tensor(d["terminated"]))
    assert not get_task("halfcheetah").termination_fn(torch.zeros(3, 17)).any()


@pytest.mark.parametrize("name,params,history", [("mlp_ensemble", TINY_ENSEMBLE, 0),
                                                 ("rwm_gru", {"hidden": 32, "head_hidden": 32, "ensemble": 2}, 4)])
def test_branched_rollouts_batched_from_real_states(ip_data, name, params, history) -> None:
    task = get_task("inverted_pendulum")
    spec = model_spec_from_data(dataset_meta(task), ip_data, history, 2 if history else 1, 0.04)
    model = build_model(name, spec, learn_reward=False, learn_termination=False, **params)
    data = to_torch(ip_data)
    train_world_model(model, data, data, WorldModelTrainConfig(max_steps=30, eval_every=30), progress=False)
    low, high = torch.tensor([-3.0]), torch.tensor([3.0])
    actor = lambda obs: torch.zeros(obs.shape[0], 1)  # noqa: E731
    real = {k: data[k] for k in ("obs", "action", "next_obs", "reward", "terminated", "episode")}
    rows, stats = mbpo.branched_rollouts(model, actor, real, 300, 5, low, high, task, chunk=128,
                                         generator=torch.Generator().manual_seed(0))
    n = int(stats["transitions"])
    assert 300 <= n <= 1500 and rows["obs"].shape == (n, 4) and rows["action"].shape == (n, 1)
    assert torch.equal(rows["reward"], 1.0 - rows["done"])  # the task's exact reward
    assert torch.isfinite(rows["next_obs"]).all()
    with pytest.raises(ValueError, match="no reward function"):
        mbpo.branched_rollouts(model, actor, real, 10, 1, low, high, task=None)


def test_mbpo_learns_inverted_pendulum_in_a_few_iterations(tmp_path) -> None:
    """Four model fits + rollouts + SAC on 1000 real steps: the model's held-out loss falls at
    every fit and the policy beats random by far (random: ~5-10 per episode)."""
    torch.manual_seed(0)
    task = get_task("inverted_pendulum")
    cfg = mbpo.MbpoConfig(total_steps=1000, init_steps=250, epoch_length=250, model_train_freq=250, rollout_batch_size=4000,
                          rollout_schedule=(1, 15, 1, 1), utd=4, target_entropy=-0.05, eval_every=250, eval_episodes=3,
                          buffer_size=2000, seed=0)
    train_cfg = WorldModelTrainConfig(max_steps=150, eval_every=25, patience=4)
    result = mbpo.train(task, cfg, "mlp_ensemble", {**TINY_ENSEMBLE, "learn_reward": False, "learn_termination": False},
                        dt=0.04, train_cfg=train_cfg, log_dir=str(tmp_path / "tb"), progress=False)
    h = result.history
    assert h["model_steps"] == [250, 500, 750, 1000]
    assert all(after < before for after, before in zip(h["model_val_loss"][1:], h["model_val_loss_before"][1:]))
    random_return = float(np.mean(collect_returns(task)))
    assert h["curve"]["steps"] == [250, 500, 750, 1000]
    assert max(h["curve"]["mean_return"]) > 3 * random_return, (h["curve"], random_return)
    assert result.real_data["obs"].shape[0] == 1000
    assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())


def collect_returns(task) -> list[float]:
    d = collect(task, None, 600, num_envs=2, seed=3, progress=False)
    ends = d["terminated"] | d["truncated"]
    return [float(d["reward"][d["episode"] == e].sum()) for e in np.unique(d["episode"][ends])]


def test_offline_mopo_trains_from_a_dataset_alone(ip_data, monkeypatch) -> None:
    import gymnasium as gym

    def no_env(*a, **k):
        raise AssertionError("offline MBPO must not make an env to train")

    task = get_task("inverted_pendulum")
    meta = dataset_meta(task)
    cfg = mbpo.MbpoConfig(offline=True, offline_steps=40, utd=2, model_train_freq=20, rollout_batch_size=500,
                          rollout_schedule=(1, 15, 5, 5), uncertainty_penalty=1.0, eval_every=10_000, batch_size=64)
    monkeypatch.setattr(gym, "make", no_env)
    result = mbpo.train_offline(ip_data, meta, cfg, task=None, model_params={**TINY_ENSEMBLE, "learn_termination": False},
                                dt=0.04, train_cfg=WorldModelTrainConfig(max_steps=30, eval_every=30), progress=False)
    h = result.history
    assert len(h["model_steps"]) == 1 and h["rollout_length"] == [5, 5]
    assert result.policy.act(ip_data["obs"][:3]).shape == (3, 1)
    assert h["curve"] == {}


def test_minari_errors_are_clear(tmp_path, monkeypatch) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        mbpo.load_minari(tmp_path / "nope")
    monkeypatch.setitem(sys.modules, "minari", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"wam\[data\]"):
        mbpo.load_minari(tmp_path)


def test_minari_import(tmp_path, ip_data, monkeypatch) -> None:
    """A Minari dataset written from real InvertedPendulum episodes reads back as the same transitions."""
    minari = pytest.importorskip("minari", reason="the `data` extra (minari) is not installed")
    pytest.importorskip("h5py", reason="minari's hdf5 storage (the `data` extra) is not installed")
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    episodes = []
    for e in np.unique(ip_data["episode"])[:20]:
        rows = ip_data["episode"] == e
        obs = np.concatenate([ip_data["obs"][rows], ip_data["next_obs"][rows][-1:]]).astype(np.float64)
        episodes.append(EpisodeBuffer(id=len(episodes), observations=obs, actions=ip_data["action"][rows],
                                      rewards=ip_data["reward"][rows].tolist(), terminations=ip_data["terminated"][rows].tolist(),
                                      truncations=ip_data["truncated"][rows].tolist(), infos={}))
    minari.create_dataset_from_buffers("wam/ip-random-v0", episodes, env="InvertedPendulum-v5")
    data, meta = mbpo.load_minari(tmp_path / "minari" / "wam" / "ip-random-v0")
    order = np.concatenate([np.flatnonzero(ip_data["episode"] == e) for e in np.unique(ip_data["episode"])[:20]])
    assert data["obs"].shape == (len(order), 4) and meta["action_dim"] == 1 and meta["env_id"] == "InvertedPendulum-v5"
    assert np.allclose(data["next_obs"], ip_data["next_obs"][order], atol=1e-6)
    assert np.array_equal(data["terminated"], ip_data["terminated"][order])
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        mbpo.load_minari(tmp_path)


def test_cli_config_picks_the_ensemble_and_rejects_unknown_keys() -> None:
    from wam import loop
    from wam.cli import _config

    cfg = _config("train-policy", ["task=inverted_pendulum", "agent=mbpo"])
    assert cfg["model"]["name"] == "mlp_ensemble" and cfg["model"]["params"]["members"] == 7
    assert cfg["model"]["params"]["elites"] == 5 and cfg["agent"]["params"]["real_ratio"] == 0.05
    assert _config("train-policy", ["task=inverted_pendulum", "agent=mbpo", "model=rwm_gru"])["model"]["name"] == "rwm_gru"
    cfg["agent"]["params"]["rollout_lenght"] = 3
    with pytest.raises(ConfigError, match="rollout_lenght"):
        loop.mbpo_config(cfg)
    with pytest.raises(ConfigError, match="mbpo_ppo"):
        loop.run_train_policy(_config("train-policy", ["task=anymal_c_flat", "agent=mbpo"]))
    for task in ("hopper", "halfcheetah"):
        loop.mbpo_config(_config("train-policy", [f"task={task}", "agent=mbpo"]))


@pytest.mark.slow
def test_sample_efficiency_benchmark_inverted_pendulum(tmp_path) -> None:
    """The acceptance run (about 12 min on 1 CPU thread): MBPO solves InvertedPendulum-v5
    (>= 950) in at most 3000 real steps, SAC needs at least 5x as many (or does not in 15k)."""
    import json
    import runpy

    script = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks" / "sample_efficiency.py")
    argv = sys.argv
    sys.argv = [script, "task=inverted_pendulum", "seeds=1", "agent.params.total_steps=3000", "sac_steps=15000", f"out={tmp_path}"]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(script, run_name="__main__")
        assert done.value.code == 0
    finally:
        sys.argv = argv
    runs = {r["agent"]: r for r in json.loads((tmp_path / "results.json").read_text())["runs"]}
    assert runs["mbpo"]["steps_to_threshold"] is not None and runs["mbpo"]["steps_to_threshold"] <= 3000
    sac = runs["sac"]["steps_to_threshold"]
    assert sac is None or sac >= 5 * runs["mbpo"]["steps_to_threshold"]


def test_cli_train_policy_online_and_offline(tmp_path) -> None:
    """`wam train-policy agent=mbpo` collects its own data; `offline=true` trains from `wam collect`'s dataset."""
    import json

    from wam.cli import main

    tiny = ["task=inverted_pendulum", "agent=mbpo", "progress=false", "agent.params.init_steps=250", "agent.params.utd=1",
            "agent.params.rollout_batch_size=500", "agent.params.eval_episodes=1", "agent.params.batch_size=32",
            "model.train.max_steps=20", "model.params.members=2", "model.params.elites=1", "model.params.hidden=32"]
    run = tmp_path / "online"
    assert main(["train-policy", f"run_dir={run}", "agent.params.total_steps=300", *tiny]) == 0
    history = json.loads((run / "mbpo.json").read_text())
    assert history["model_steps"] == [250] and history["curve"]["steps"] == [250, 300]
    assert (run / "world_model" / "config.json").exists() and (run / "policy" / "policy.json").exists()
    assert main(["evaluate", "task=inverted_pendulum", f"run_dir={run}", "evaluate.episodes=2"]) == 0
    off = tmp_path / "offline"
    assert main(["collect", "task=inverted_pendulum", f"run_dir={off}", "collect.steps=400", "progress=false"]) == 0
    assert main(["train-policy", f"run_dir={off}", "agent.params.offline=true", "agent.params.offline_steps=10",
                 "agent.params.uncertainty_penalty=1.0", *tiny]) == 0
    assert json.loads((off / "mbpo.json").read_text())["agent"] == "mbpo_offline"
    assert main(["train-policy", f"run_dir={off}", "agent.params.offline=true", f"agent.params.dataset={tmp_path}/missing", *tiny]) == 2
