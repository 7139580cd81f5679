"""Transition store and window sampler: atomic appends, bad input, window semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks import get_task
from tasks.collect import collect, dataset_meta
from world_models.data import DatasetError, TransitionStore, WindowSampler, model_spec_from_data, split_episodes, to_torch


@pytest.fixture()
def store(tmp_path, pendulum_transitions):
    s = TransitionStore(tmp_path / "data", dataset_meta(get_task("pendulum")))
    s.append(pendulum_transitions)
    return s


def test_collected_transitions_are_consistent(pendulum_transitions):
    d = pendulum_transitions
    assert d["obs"].shape == (3000, 3) and d["action"].shape == (3000, 1)
    # inside an episode, next_obs[t] == obs[t+1]
    order = np.lexsort((d["step"], d["episode"]))
    obs, nxt, ep = d["obs"][order], d["next_obs"][order], d["episode"][order]
    same = ep[1:] == ep[:-1]
    np.testing.assert_allclose(nxt[:-1][same], obs[1:][same])
    # Pendulum truncates at 200 steps, never terminates; the true final obs is kept
    assert d["truncated"].sum() == 12 and not d["terminated"].any()
    assert np.all(d["step"][d["truncated"]] == 199)


def test_store_round_trip_append_and_meta(store, pendulum_transitions, tmp_path):
    assert len(store) == 3000
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["task"] == "pendulum" and meta["action_space"]["high"] == [2.0]
    first_eps = store.meta["num_episodes"]
    store.append(pendulum_transitions)
    again = TransitionStore(tmp_path / "data")
    data = again.load()
    assert len(data["reward"]) == 6000 and again.meta["num_episodes"] == 2 * first_eps
    # appended episodes are renumbered, not merged with the stored ones
    assert len(np.unique(data["episode"])) == 2 * first_eps
    assert not list((tmp_path / "data").glob("*.tmp"))


def test_bad_appends_are_refused_and_nothing_is_lost(store, pendulum_transitions, tmp_path):
    before = (tmp_path / "data" / "meta.json").read_text()
    bad_shape = dict(pendulum_transitions, obs=pendulum_transitions["obs"][:, :2])
    with pytest.raises(DatasetError, match="obs"):
        store.append(bad_shape)
    nan = dict(pendulum_transitions, reward=np.full(3000, np.nan, np.float32))
    with pytest.raises(DatasetError, match="non-finite"):
        store.append(nan)
    missing = {k: v for k, v in pendulum_transitions.items() if k != "terminated"}
    with pytest.raises(DatasetError, match="terminated"):
        store.append(missing)
    assert (tmp_path / "data" / "meta.json").read_text() == before
    assert len(TransitionStore(tmp_path / "data").load()["reward"]) == 3000


def test_foreign_corrupt_and_newer_datasets_are_named(tmp_path, store):
    with pytest.raises(DatasetError, match="no dataset"):
        TransitionStore(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(DatasetError, match="not a wam dataset"):
        TransitionStore(foreign)
    (foreign / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="corrupt"):
        TransitionStore(foreign)
    meta = dict(store.meta, format_version=99)
    (foreign / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="upgrade wam"):
        TransitionStore(foreign)
    chunk = tmp_path / "data" / store.meta["chunks"][0]
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(DatasetError, match="corrupt dataset chunk"):
        store.load()
    with pytest.raises(DatasetError, match="obs_dim"):
        TransitionStore(tmp_path / "data", dict(store.meta, obs_dim=5))


def test_window_sampler_pads_at_episode_edges(pendulum_transitions):
    data = to_torch(pendulum_transitions)
    order = torch.as_tensor(np.lexsort((pendulum_transitions["step"], pendulum_transitions["episode"])))
    data = {k: v[order] for k, v in data.items()}
    sampler = WindowSampler(data, history=4, forecast=3, seed=0)
    episode_start = torch.nonzero(data["step"] == 0).squeeze(1)
    w = sampler.window(episode_start[:2] + 1)  # forecast starts at step 1: 3 padded history slots
    assert w["obs"].shape == (2, 7, 3)
    assert w["valid"][:, :3].logical_not().all() and w["valid"][:, 3:].all()
    assert w["is_first"][:, 3].all() and w["is_first"].sum() == 2
    last = torch.nonzero(data["truncated"]).squeeze(1)[:1]
    w = sampler.window(last)  # forecast starts at the final step: 2 padded forecast slots
    assert w["valid"][0].tolist() == [True] * 5 + [False] * 2
    # consecutive positions chain: next_obs[t] == obs[t+1] where both are valid
    b = sampler.sample(64)
    both = b["valid"][:, :-1] & b["valid"][:, 1:]
    assert torch.equal(b["next_obs"][:, :-1][both], b["obs"][:, 1:][both])


def test_window_sampler_oversamples_windows_before_a_termination():
    """Episodes of 100 transitions, one in ten ending in a fall: with near_fall_fraction 0.5
    half of each batch starts fewer than near_fall_steps before a fall, against 1% uniformly."""
    n_ep, length = 50, 100
    episode = torch.arange(n_ep).repeat_interleave(length)
    terminated = torch.zeros(n_ep * length, dtype=torch.bool)
    terminated[torch.arange(0, n_ep, 10) * length + length - 1] = True
    data = {"obs": torch.randn(n_ep * length, 3), "action": torch.randn(n_ep * length, 1), "next_obs": torch.randn(n_ep * length, 3),
            "reward": torch.zeros(n_ep * length), "terminated": terminated, "episode": episode}
    step = torch.arange(n_ep * length) % length

    def near_fall_share(sampler: WindowSampler) -> float:
        w = sampler.sample(4000)
        starts = w["obs"][:, sampler.history]  # the forecast's first obs identifies the transition
        idx = (starts[:, None, :] == data["obs"][None]).all(-1).float().argmax(1)
        return float((terminated[episode[idx] * length + length - 1] & (step[idx] >= length - 10)).float().mean())

    assert near_fall_share(WindowSampler(data, 2, 3, seed=0)) < 0.03
    assert near_fall_share(WindowSampler(data, 2, 3, seed=0, near_fall_fraction=0.5, near_fall_steps=10)) == pytest.approx(0.5, abs=0.03)
    no_falls = {**data, "terminated": torch.zeros_like(terminated)}  # nothing to oversample: uniform
    assert near_fall_share(WindowSampler(no_falls, 2, 3, seed=0, near_fall_fraction=0.5, near_fall_steps=10)) < 0.03
    with pytest.raises(ValueError, match="near_fall_fraction"):
        WindowSampler(data, 2, 3, near_fall_fraction=1.0)


def test_window_sampler_oversamples_the_newest_transitions():
    """recent_fraction 0.5 of each batch starts among the newest recent_transitions (data in
    collection order), on top of the uniform draws; 10% of the data: 0.5 + 0.5 * 0.1 = 55%."""
    n = 2000
    data = {"obs": torch.arange(n, dtype=torch.float32)[:, None], "action": torch.zeros(n, 1), "next_obs": torch.zeros(n, 1),
            "reward": torch.zeros(n), "episode": torch.arange(n) // 100}

    def recent_share(sampler: WindowSampler) -> float:
        return float((sampler.sample(8000)["obs"][:, sampler.history, 0] >= n - 200).float().mean())

    assert recent_share(WindowSampler(data, 2, 3, seed=0)) == pytest.approx(0.1, abs=0.02)
    assert recent_share(WindowSampler(data, 2, 3, seed=0, recent_fraction=0.5, recent_transitions=200)) == pytest.approx(0.55, abs=0.02)
    with pytest.raises(ValueError, match="recent_transitions >= 1"):
        WindowSampler(data, 2, 3, recent_fraction=0.5, recent_transitions=0)


def test_split_and_spec(pendulum_transitions):
    train, val = split_episodes(pendulum_transitions, 0.2, seed=0)
    assert set(np.unique(train["episode"])).isdisjoint(np.unique(val["episode"]))
    assert len(train["reward"]) + len(val["reward"]) == 3000
    spec = model_spec_from_data(dataset_meta(get_task("pendulum")), train, history=32, forecast=8)
    assert spec.obs_dim == 3 and spec.action_low == (-2.0,) and spec.obs_high[0] <= 1.0


def test_collect_works_on_any_box_env():
    d = collect(get_task("MountainCarContinuous-v0"), None, 64, num_envs=2, progress=False)
    assert d["obs"].shape == (64, 2) and d["action"].shape == (64, 1)
    with pytest.raises(KeyError, match="unknown task"):
        get_task("NoSuchEnv-v9")
    with pytest.raises(TypeError, match="Box action space"):
        collect(get_task("CartPole-v1"), None, 8, num_envs=1, progress=False)
