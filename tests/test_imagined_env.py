"""Imagined envs: Gymnasium contracts, the batched checker, registration, divergence, bad input."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import wam_env  # noqa: F401  (registers the ids)
from tasks import get_task
from tasks.collect import dataset_meta
from wam_env import ImaginedEnv, ImaginedVecEnv
from wam_env.checker import VecEnvCheckError, check_vec_env
from world_models import CheckpointError, build_model, save_checkpoint
from world_models.data import model_spec_from_data, split_episodes, to_torch
from world_models.training import WorldModelTrainConfig, train_world_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, pendulum_transitions) -> Path:
    """A small GRU trained briefly on real Pendulum data, saved with its start states."""
    train, val = split_episodes(pendulum_transitions, 0.2)
    spec = model_spec_from_data(dataset_meta(get_task("pendulum")), train, history=4, forecast=4)
    model = build_model("rwm_gru", spec, hidden=32, head_hidden=32, ensemble=3)
    train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=60, batch_size=64), progress=False)
    start = {f"start/{k}": torch.as_tensor(pendulum_transitions[k]) for k in ("obs", "action", "episode")}
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "world_model", extra={"task": "pendulum"}, tensors=start)


def test_single_env_passes_gymnasium_check_env(checkpoint):
    env = gym.make("wam/Pendulum-Imagined-v0", model=str(checkpoint))
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.shape == (3,)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5], np.float32))
    assert isinstance(reward, float) and not terminated and "model_diverged" in info


def test_batched_env_passes_the_batched_checker(checkpoint):
    venv = gym.make_vec("wam/Pendulum-Imagined-v0", num_envs=16, model=str(checkpoint), max_episode_steps=30)
    assert isinstance(venv, ImaginedVecEnv) and venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    check_vec_env(venv)


def test_checker_catches_a_broken_env(checkpoint):
    class NoTruncation(ImaginedVecEnv):
        def step(self, actions):
            obs, reward, terminated, truncated, info = super().step(actions)
            return obs, reward, terminated, torch.zeros_like(truncated), info

    with pytest.raises(VecEnvCheckError):
        check_vec_env(NoTruncation(8, model=str(checkpoint), max_episode_steps=10))


def test_final_obs_is_the_true_last_observation(checkpoint):
    venv = ImaginedVecEnv(4, model=str(checkpoint), max_episode_steps=5, sample=False)
    venv.reset(seed=1)
    action = torch.full((4, 1), 0.3)
    for _ in range(4):
        venv.step(action)
    with torch.no_grad():
        _, expected = venv.imagination.model.imagine({k: v.clone() for k, v in venv.carry.items()}, action, sample=False)
    obs, reward, terminated, truncated, info = venv.step(action)
    assert truncated.all() and info["_final_obs"].all()
    torch.testing.assert_close(info["final_obs"], expected.obs)
    assert not torch.allclose(info["final_obs"], obs)  # the returned obs already starts the next episode
    assert (venv.episode_length_buf == 0).all()


def test_partial_reset_only_touches_masked_envs(checkpoint):
    venv = ImaginedVecEnv(6, model=str(checkpoint))
    obs, _ = venv.reset(seed=0)
    venv.step(torch.zeros(6, 1))
    before = venv.carry["obs"].clone()
    mask = torch.tensor([True, False, True, False, False, False])
    obs, _ = venv.reset(options={"reset_mask": mask})
    assert torch.equal(obs[~mask], before[~mask])
    assert (venv.episode_length_buf[mask] == 0).all() and (venv.episode_length_buf[~mask] == 1).all()


def test_seeded_envs_are_deterministic_and_seeds_differ(checkpoint):
    def run(seed: int) -> torch.Tensor:
        venv = ImaginedVecEnv(8, model=str(checkpoint))
        obs, _ = venv.reset(seed=seed)
        out = [obs]
        for t in range(20):
            obs, *_ = venv.step(torch.full((8, 1), np.sin(t)))
            out.append(obs)
        return torch.stack(out)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_divergence_ends_the_episode_with_a_flag(checkpoint):
    venv = ImaginedVecEnv(8, model=str(checkpoint), sample=False)
    venv.reset(seed=0)
    # push the first two envs far outside the data range: the next prediction diverges
    venv.carry["obs"][:2] = 1e6
    venv.carry["h"][2] = float("nan")
    obs, reward, terminated, truncated, info = venv.step(torch.zeros(8, 1))
    diverged = info["model_diverged"]
    assert diverged[:3].all() and not diverged[3:].any()
    assert truncated[:3].all() and not terminated[:3].any()
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all() and torch.isfinite(info["final_obs"]).all()


def test_bad_actions_are_refused_with_clear_errors(checkpoint):
    venv = ImaginedVecEnv(4, model=str(checkpoint))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"outside the action space"):
        venv.step(torch.full((4, 1), 2.5))
    with pytest.raises(ValueError, match=r"outside the action space"):
        venv.step(torch.full((4, 1), float("nan")))
    with pytest.raises(ValueError, match=r"shape \(4, 1\)"):
        venv.step(torch.zeros(4, 2))
    env = ImaginedEnv(model=str(checkpoint))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        ImaginedVecEnv(2, model=str(checkpoint)).step(torch.zeros(2, 1))


def test_bad_model_arguments(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="needs model"):
        gym.make("wam/Pendulum-Imagined-v0")
    with pytest.raises(CheckpointError):
        gym.make("wam/Pendulum-Imagined-v0", model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="reward"):
        ImaginedVecEnv(2, model=str(checkpoint), reward="bogus")
    with pytest.raises(ValueError, match="dims"):
        ImaginedVecEnv(2, model=str(checkpoint), start_data={"obs": np.zeros((10, 2)), "action": np.zeros((10, 1)), "episode": np.zeros(10)})


def test_generic_checkpoint_id_and_learned_heads(checkpoint, tmp_path):
    # any checkpoint opens under wam/Imagined-v0; the task comes from the checkpoint
    env = gym.make("wam/Imagined-v0", model=str(checkpoint))
    assert env.unwrapped.task.name == "pendulum"
    # the learned reward head is used where asked for, and tracks the analytic reward
    venv_task = ImaginedVecEnv(64, model=str(checkpoint), reward="task", sample=False)
    venv_head = ImaginedVecEnv(64, model=str(checkpoint), reward="learned", sample=False)
    venv_task.reset(seed=0)
    venv_head.reset(seed=0)
    action = torch.zeros(64, 1)
    _, r_task, *_ = venv_task.step(action)
    _, r_head, *_ = venv_head.step(action)
    assert not torch.equal(r_task, r_head)
    assert torch.corrcoef(torch.stack([r_task, r_head]))[0, 1] > 0.8


def test_any_gymnasium_env_is_a_task(tmp_path):
    """MountainCarContinuous has no task module: learned reward and termination heads serve."""
    from tasks.collect import collect

    task = get_task("MountainCarContinuous-v0")
    data = collect(task, None, 1200, num_envs=4, progress=False)
    train, val = split_episodes(data, 0.25)
    spec = model_spec_from_data(dataset_meta(task), train, history=2, forecast=2)
    model = build_model("mlp_ensemble", spec, members=3, elites=2, hidden=32, layers=2)
    train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=30, batch_size=64), progress=False)
    start = {f"start/{k}": torch.as_tensor(data[k]) for k in ("obs", "action", "episode")}
    path = save_checkpoint(model, tmp_path / "mc", extra={"task": task.name}, tensors=start)
    env = gym.make("wam/Imagined-v0", model=str(path))
    assert env.unwrapped.imagination.reward_mode == "learned"
    assert env.unwrapped.imagination.termination_mode == "learned"
    check_env(env.unwrapped, skip_render_check=True)
