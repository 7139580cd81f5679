"""Legged world models (RWM on ANYmal C): data with contacts, contact heads, the imagined
legged env (same terms as MuJoCo), MBPO-PPO through the CLI."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import wam_env  # noqa: F401  (registers wam/AnymalC-Flat-Imagined-v0)
from tasks.locomotion.collect import collect_legged, legged_dataset_meta
from tasks.locomotion.registry import env_cfg
from tasks.locomotion.velocity_env import LeggedVelocityVecEnv
from wam.cli import main
from wam_env.legged import ImaginedLeggedVecEnv
from world_models import build_model, save_checkpoint
from world_models.base import Carry, ModelSpec, Prediction, WorldModel
from world_models.data import DatasetError, TransitionStore, model_spec_from_data, split_episodes, to_torch
from world_models.training import WorldModelTrainConfig, train_world_model

TASK = "anymal_c_flat"


@pytest.fixture(scope="module")
def anymal_data() -> dict[str, np.ndarray]:
    """6,400 perturbed default-pose ANYmal C transitions (64 robots, noise 0.5)."""
    return collect_legged(TASK, None, 6400, num_envs=64, seed=0, action_noise=0.5, progress=False)


@pytest.fixture(scope="module")
def anymal_model(anymal_data, tmp_path_factory):
    """A small RWM GRU with contact heads trained briefly on ``anymal_data``, saved as a checkpoint."""
    meta = legged_dataset_meta(TASK)
    train, val = split_episodes(anymal_data, 0.1)
    spec = model_spec_from_data(meta, train, history=8, forecast=4, dt=0.02)
    torch.manual_seed(0)
    model = build_model("rwm_gru", spec, hidden=64, head_hidden=64, ensemble=3, learn_reward=False)
    metrics = train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=150, eval_every=50), progress=False)
    path = tmp_path_factory.mktemp("rwm") / "world_model"
    start = {f"start/{k}": torch.as_tensor(anymal_data[k]) for k in ("obs", "action", "episode")}
    save_checkpoint(model, path, extra={"task": TASK}, tensors=start)
    return model, path, metrics


def test_collected_state_matches_the_layout_and_contacts_are_stored(anymal_data, tmp_path):
    meta = legged_dataset_meta(TASK)
    assert meta["obs_dim"] == 46 and meta["action_dim"] == 12 and meta["contact_dim"] == 8
    assert len(meta["obs_names"]) == 46 and meta["obs_names"][-1] == "base_height"
    assert anymal_data["obs"].shape == (6400, 46) and anymal_data["contacts"].shape == (6400, 8)
    height = anymal_data["next_obs"][:, -1]
    assert 0.3 < float(np.median(height)) < 0.7  # base height in m
    assert anymal_data["contacts"][:, :4].mean() > 0.5  # feet mostly on the ground
    store = TransitionStore(tmp_path / "d", meta)
    store.append(anymal_data)
    back = store.load()
    np.testing.assert_array_equal(back["contacts"].sum(), anymal_data["contacts"].sum())
    missing = {k: v for k, v in anymal_data.items() if k != "contacts"}
    with pytest.raises(DatasetError, match="contacts"):
        store.append(missing)
    with pytest.raises(DatasetError, match="contact_dim"):
        TransitionStore(tmp_path / "d", {**meta, "contact_dim": 3})


def test_held_noise_is_piecewise_constant_and_fresh_noise_unchanged(anymal_data):
    """``noise_hold`` = 5: each env's perturbation stays the same for 5 steps, then changes;
    ``noise_hold`` = 1 gives the very data collected before the option existed."""
    held = collect_legged(TASK, None, 4 * 10, num_envs=4, seed=0, action_noise=0.3, progress=False, noise_hold=5)
    a = held["action"].reshape(4, 10, 12)  # grouped by env, time order inside
    assert np.array_equal(a[:, 1:5], np.repeat(a[:, :1], 4, axis=1)) and np.array_equal(a[:, 6:], np.repeat(a[:, 5:6], 4, axis=1))
    assert not np.allclose(a[:, 4], a[:, 5])
    fresh = collect_legged(TASK, None, 6400, num_envs=64, seed=0, action_noise=0.5, progress=False, noise_hold=1)
    np.testing.assert_array_equal(fresh["action"], anymal_data["action"])
    with pytest.raises(ValueError, match="noise_hold"):
        collect_legged(TASK, None, 40, num_envs=4, action_noise=0.3, progress=False, noise_hold=0)


def test_contact_and_termination_heads_learn(anymal_model):
    model, _, metrics = anymal_model
    assert model.spec.contact_dim == 8
    assert metrics["val_contact_bce"] < 0.3  # log(2) = 0.69 for a coin flip
    carry = {"obs": torch.zeros(5, 46), "h": torch.zeros(5, 2, 64)}
    _, pred = model.imagine(carry, torch.zeros(5, 12))
    assert pred.contacts.shape == (5, 8) and pred.termination_logit.shape == (5,)


def test_imagined_legged_env_speaks_the_real_interface(anymal_model):
    _, path, _ = anymal_model
    venv = gym.make_vec("wam/AnymalC-Flat-Imagined-v0", num_envs=16, model=str(path))
    real = LeggedVelocityVecEnv(env_cfg(TASK), num_envs=1, num_threads=1)
    assert venv.single_observation_space == real.single_observation_space
    assert venv.single_action_space == real.single_action_space
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (16, 48) and obs.dtype == torch.float32
    np.testing.assert_allclose(obs[:, 6:9].norm(dim=1).numpy(), 1.0, atol=0.05)  # projected gravity, real start states
    ended = 0
    for _ in range(60):
        obs, reward, terminated, truncated, info = venv.step(torch.zeros(16, 12))
        assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
        assert info["state"].shape == (16, 46) and info["uncertainty"].shape == (16,)
        ended += int((terminated | truncated).sum())
    assert venv.episode_length_buf.max() <= 60
    with pytest.raises(ValueError, match="shape"):
        venv.step(torch.zeros(16, 11))
    with pytest.raises(ValueError, match="action space"):
        venv.step(torch.full((16, 12), 11.0))
    check_env(gym.make("wam/AnymalC-Flat-Imagined-v0", model=str(path)).unwrapped, skip_render_check=True)



def test_episodes_never_start_from_real_states_about_to_fall(anymal_model, anymal_data):
    """Noisy data holds robots already falling; the real task starts standing, so imagined
    episodes start only from states at least ``start_margin_s`` before a real termination."""
    _, path, _ = anymal_model
    data = {k: v.copy() for k, v in anymal_data.items()}
    terminated = np.zeros(len(data["reward"]), dtype=bool)
    terminated[np.flatnonzero(np.r_[data["episode"][1:] != data["episode"][:-1], True])[:40]] = True  # 40 episodes end in a fall
    data["terminated"] = terminated
    env = ImaginedLeggedVecEnv(256, model=str(path), task=TASK, start_data=data, start_margin_s=0.5)
    assert env.start_margin_steps == 25
    starts = env._start_index.numpy()
    episode = data["episode"]
    for t in np.flatnonzero(terminated):  # no start in the 25 steps up to a fall of the same episode
        close = starts[(starts <= t) & (starts > t - 25)]
        assert (episode[close] != episode[t]).all()
    assert len(terminated) - 25 * 40 <= len(starts) < len(terminated)  # the rest of the data stays a start
    env.reset(seed=0)
    assert not terminated[env._start_index.numpy()].any()
    with pytest.raises(ValueError, match="start_margin_s"):
        ImaginedLeggedVecEnv(4, model=str(path), task=TASK, start_data=data, start_margin_s=-1.0)
    only_falls = {**data, "terminated": np.ones_like(terminated)}
    with pytest.raises(ValueError, match="only hold falls"):
        ImaginedLeggedVecEnv(4, model=str(path), task=TASK, start_data=only_falls, start_margin_s=0.5)


def test_a_share_of_episodes_starts_from_real_reset_states(anymal_model, anymal_data):
    """Every real episode starts from rest: ``reset_start_fraction`` of the imagined ones start
    from a real step-0 state, even where that real episode fell soon after (the policy that
    collected it made the fall; the start itself is standing)."""
    _, path, _ = anymal_model
    data = {k: v.copy() for k, v in anymal_data.items()}
    data["terminated"] = data["step"] == 10  # every episode "falls" 10 steps after its reset, inside the 25-step margin
    resets = torch.as_tensor(data["obs"][data["step"] == 0])
    assert len(resets) >= 64

    def share_from_reset(fraction: float) -> float:
        env = ImaginedLeggedVecEnv(1024, model=str(path), task=TASK, start_data=data, start_margin_s=0.5, reset_start_fraction=fraction)
        env.reset(seed=0)
        return float((torch.cdist(env.carry["obs"], resets, compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-4).float().mean())

    assert share_from_reset(1.0) == 1.0
    assert abs(share_from_reset(0.25) - 0.25) < 0.06
    assert share_from_reset(0.0) == 0.0  # the margin keeps these reset states out of the ordinary starts
    with pytest.raises(ValueError, match="reset_start_fraction"):
        ImaginedLeggedVecEnv(4, model=str(path), task=TASK, start_data=data, reset_start_fraction=1.5)
    no_step = {k: v for k, v in data.items() if k != "step"}
    with pytest.raises(ValueError, match="no 'step' field"):
        ImaginedLeggedVecEnv(4, model=str(path), task=TASK, start_data=no_step, reset_start_fraction=0.25)


def test_sampled_imagination_scores_the_mean_and_follows_the_sample(anymal_model):
    """The draw's noise must not be charged as jerk: with ``score_mean`` the reward terms read
    the ensemble-mean next state, while the trajectory (and its falls) follows the sample."""
    model, path, _ = anymal_model
    carry = {"obs": torch.zeros(6, 46), "h": torch.zeros(6, 2, 64)}
    action = torch.full((6, 12), 0.3)
    _, sampled = model.imagine(carry, action, sample=True, generator=torch.Generator().manual_seed(0))
    _, mean = model.imagine(carry, action, sample=False)
    torch.testing.assert_close(sampled.extras["mean_obs"], mean.obs)
    torch.testing.assert_close(sampled.extras["mean_contacts"], mean.contacts)
    assert not torch.allclose(sampled.obs, mean.obs) and "mean_obs" not in mean.extras
    acc = {}
    for score_mean in (True, False):
        env = ImaginedLeggedVecEnv(64, model=str(path), task=TASK, sample=True, score_mean=score_mean)
        env.reset(seed=3)
        sums = {k: 0.0 for k in ("dof_acc_l2", "feet_air_time")}
        states = []
        for _ in range(20):
            _, _, _, _, info = env.step(torch.zeros(64, 12))
            states.append(info["state"])
            for k in sums:
                sums[k] += float(env.episode_sums[k].sum())
        acc[score_mean] = (sums, torch.stack(states))
    torch.testing.assert_close(acc[True][1], acc[False][1])  # the same sampled trajectory either way
    assert acc[True][0]["dof_acc_l2"] > acc[False][0]["dof_acc_l2"]  # less (negative) jerk penalty on the mean

def test_a_model_of_another_task_is_refused(pendulum_transitions, tmp_path):
    from tasks.collect import dataset_meta
    from tasks import get_task

    meta = dataset_meta(get_task("pendulum"))
    spec = model_spec_from_data(meta, pendulum_transitions, history=4, forecast=2)
    model = build_model("rwm_gru", spec, hidden=16, head_hidden=16, ensemble=2)
    with pytest.raises(ValueError, match="anymal_c_flat"):
        ImaginedLeggedVecEnv(4, model=model, task=TASK, start_data=pendulum_transitions)


class ReplayModel(WorldModel):
    """A 'perfect' world model: replays one recorded real episode (states, contacts)."""

    def __init__(self, spec: ModelSpec, next_states: torch.Tensor, contacts: torch.Tensor):
        super().__init__()
        self.spec = spec
        self.has_termination_head = True
        self.next_states, self.contacts = next_states, contacts
        self.t = 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def initial(self, batch: int) -> Carry:
        return {"obs": torch.zeros(batch, self.spec.obs_dim)}

    def observe(self, carry, obs, prev_action, is_first):
        self.t = 0
        return {"obs": obs}

    def imagine(self, carry, action, *, sample=True, generator=None):
        nxt, c = self.next_states[self.t][None], self.contacts[self.t][None]
        self.t += 1
        pred = Prediction(obs=nxt, uncertainty=torch.zeros(1), termination_logit=torch.full((1,), -10.0), contacts=(c.float() * 20 - 10))
        return {"obs": nxt}, pred


def test_imagined_rewards_are_the_tasks_terms_on_the_predicted_state():
    """A model that predicts the true next states and contacts earns the MuJoCo env's rewards."""
    cfg = env_cfg(TASK)
    cmd = dataclasses.replace(cfg.commands, lin_vel_x=(0.6, 0.6), lin_vel_y=(0.0, 0.0), ang_vel_z=(0.2, 0.2), heading_command=False,
                              rel_standing_envs=0.0)
    cfg = dataclasses.replace(cfg, commands=cmd)
    real = LeggedVelocityVecEnv(cfg, num_envs=1, num_threads=1)
    real.reset(seed=3)
    s0 = real.state_vector()[:, :46].clone()
    gen = torch.Generator().manual_seed(0)
    actions = 0.4 * torch.randn(100, 1, 12, generator=gen)
    states, contacts = [], []
    for a in actions:
        _, _, term, trunc, info = real.step(a)
        assert not (term | trunc).any()
        states.append(info["state"][0, :46])
        contacts.append(info["state"][0, 46:] > 0.5)
    spec = ModelSpec(46, 12, (-10.0,) * 12, (10.0,) * 12, history=0, forecast=1, dt=0.02, contact_dim=8)
    model = ReplayModel(spec, torch.stack(states), torch.stack(contacts))
    imag = ImaginedLeggedVecEnv(1, model=model, task=TASK, cfg=cfg,
                                start_data={"obs": s0, "action": torch.zeros(1, 12), "episode": torch.zeros(1, dtype=torch.long)})
    imag.reset(seed=0)
    for a in actions:
        imag.step(a)
    for term, real_sum in real.episode_sums.items():
        imag_sum = float(imag.episode_sums[term][0])
        if term == "dof_acc_l2":  # MuJoCo's last-substep qacc vs the finite difference over a 20 ms policy step
            assert 0.2 < imag_sum / float(real_sum[0]) < 1.0
        else:
            assert imag_sum == pytest.approx(float(real_sum[0]), rel=1e-4, abs=1e-6), term
    assert float(real.episode_sums["track_lin_vel_xy_exp"][0]) > 0.1 and float(real.episode_sums["feet_air_time"][0]) != 0.0


def test_cli_mbpo_ppo_runs_the_loop_and_logs_real_and_imagined_rewards(tmp_path, capsys):
    r = ["task=anymal_c_flat", f"run_dir={tmp_path}", "progress=false"]
    assert main(["collect", *r, "steps=2000", "collect.num_envs=32"]) == 0
    assert main(["train-model", *r, "model.params.hidden=32", "model.params.head_hidden=32", "model.params.ensemble=2", "model.history=8",
                 "model.forecast=4", "model.train.max_steps=20", "model.train.eval_every=10"]) == 0
    assert main(["train-policy", *r, "agent=mbpo_ppo", "agent.num_envs=64", "agent.params.iterations=2", "agent.params.steps_per_iteration=640",
                 "agent.params.model_train_steps=10", "agent.params.ppo_iterations=1", "agent.params.ppo.num_steps_per_env=8",
                 "agent.params.guard_steps=10", "agent.params.guard_envs=4", "agent.params.uncertainty_penalty=0.1",
                 "agent.params.uncertainty_penalty_start=1"]) == 0
    history = json.loads((tmp_path / "mbpo_ppo.json").read_text())
    assert history["real_steps"] == [2016.0, 2656.0]  # 2000 rounded up to 32 robots, then + 640
    assert len(history["imagined_reward"]) == 2 and history["uncertainty_lambda"][0] == 0 and history["uncertainty_lambda"][1] > 0
    assert history["guard_real_steps"] == [80.0]  # 4 robots x 10 steps, twice
    assert len(TransitionStore(tmp_path / "data")) == 2656 + 80  # the new real batch and the guard's episodes were appended
    assert main(["evaluate", *r, f"policy={tmp_path / 'policy'}", "evaluate.episodes=4"]) == 0
    # offline MOPO-PPO: no new real data, a penalty scaled to the reward
    assert main(["train-policy", *r, "agent=mbpo_ppo", "agent.num_envs=64", "agent.params.iterations=2", "agent.params.offline=true",
                 "agent.params.ppo_iterations=1", "agent.params.ppo.num_steps_per_env=8", "agent.params.guard_steps=10",
                 "agent.params.guard_envs=4", "agent.params.uncertainty_penalty=0.2", "agent.params.uncertainty_penalty_start=0",
                 "model.params.forecast_noise=0.5"]) == 0
    err = capsys.readouterr().err  # the trained model keeps its own params, and says which of the config's do not apply
    assert "forecast_noise: checkpoint 0.0, config 0.5" in err and "hidden: checkpoint 32, config 128" in err
    offline = json.loads((tmp_path / "mbpo_ppo.json").read_text())
    assert offline["real_steps"] == [2736.0, 2736.0] and len(TransitionStore(tmp_path / "data")) == 2736  # offline: nothing added
    assert all(lam > 0 for lam in offline["uncertainty_lambda"])
    assert main(["train-policy", *r, "agent=mbpo_ppo", "agent.params.ppo.no_such_key=1"]) == 2


def tiny_anymal_run(tmp_path, steps: int = 1000) -> list[str]:
    """Collect ``steps`` ANYmal C steps and train a tiny GRU on them in ``tmp_path``; returns the
    CLI arguments naming that run (task, run_dir, no progress) for ``train-policy``."""
    r = ["task=anymal_c_flat", f"run_dir={tmp_path}", "progress=false"]
    assert main(["collect", *r, f"steps={steps}", "collect.num_envs=20"]) == 0
    assert main(["train-model", *r, "model.params.hidden=16", "model.params.head_hidden=16", "model.params.ensemble=2", "model.history=4",
                 "model.forecast=2", "model.train.max_steps=5", "model.train.eval_every=5"]) == 0
    return r


def record_ppo_policies(monkeypatch, probe: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Patch rsl-rl's ``OnPolicyRunner.learn`` to record the actor's actions on ``probe`` before
    and after every call; returns the two lists it fills (starts, ends)."""
    import agents.mbpo_ppo as mbpo_ppo
    from agents.policy import MLPPolicy

    starts, ends, learn = [], [], mbpo_ppo.OnPolicyRunner.learn

    def learn_spy(self, *args, **kwargs):
        starts.append(MLPPolicy.from_rsl_rl(self).act(probe))
        learn(self, *args, **kwargs)
        ends.append(MLPPolicy.from_rsl_rl(self).act(probe))

    monkeypatch.setattr(mbpo_ppo.OnPolicyRunner, "learn", learn_spy)
    return starts, ends


def test_mbpo_ppo_collects_with_the_policy_that_struck_then_rolls_back(tmp_path, monkeypatch):
    """Iteration 1 loses real reward (a drop strike): iteration 2 must collect its real data
    with iteration 1's policy (the model learns what it exploited), then run PPO from
    iteration 0's actor, not from the one that lost. Its collections hold each noise draw
    ``collect_noise_hold`` steps."""
    import agents.mbpo_ppo as mbpo_ppo
    from agents.policy import MLPPolicy

    r = tiny_anymal_run(tmp_path)
    real = iter([0.01, -0.01, 0.009])
    monkeypatch.setattr(mbpo_ppo, "real_reward", lambda *a, **k: {"reward": next(real), "termination_rate": 0.0, "steps": 40})
    probe = torch.randn(8, 48, generator=torch.Generator().manual_seed(0))
    collected, holds = [], []
    collect = mbpo_ppo.collect_legged

    def collect_spy(task, act, *args, **kwargs):
        collected.append(act(probe))
        holds.append(kwargs["noise_hold"])
        return collect(task, act, *args, **kwargs)

    saved, save_state = [], mbpo_ppo.save_runner_state

    def save_spy(folder, state):
        out = save_state(folder, state)
        saved.append(MLPPolicy.load(folder).act(probe))
        return out

    monkeypatch.setattr(mbpo_ppo, "collect_legged", collect_spy)
    starts, ends = record_ppo_policies(monkeypatch, probe)
    monkeypatch.setattr(mbpo_ppo, "save_runner_state", save_spy)
    assert main(["train-policy", *r, "agent=mbpo_ppo", "agent.num_envs=32", "agent.params.iterations=3", "agent.params.steps_per_iteration=200",
                 "agent.params.collect_envs=20", "agent.params.model_train_steps=2", "agent.params.ppo_iterations=1",
                 "agent.params.ppo.num_steps_per_env=4", "agent.params.guard_steps=4", "agent.params.guard_trains_model=false",
                 "agent.params.collect_noise_hold=5"]) == 0
    history = json.loads((tmp_path / "mbpo_ppo.json").read_text())
    assert holds == [5, 5]
    assert history["rolled_back"] == [0.0, 1.0, 0.0]
    assert torch.equal(collected[1], ends[1])  # iteration 2 collected with the policy that struck...
    assert torch.equal(starts[2], ends[0]) and not torch.equal(starts[2], ends[1])  # ...and PPO resumed from iteration 0's
    assert len(saved) == 4 and all(torch.equal(a, ends[0]) for a in saved)  # saved after every iteration and at the end: the best so far


def test_mbpo_ppo_penalty_turns_on_late_and_resumes_from_the_best_policy(tmp_path, monkeypatch):
    """``uncertainty_penalty_start=2`` (rwm23's two phases in one run): no penalty at iterations
    0 and 1; at 2 lambda > 0 and PPO starts from the best policy so far (iteration 0's), not
    from iteration 1's, which lost real reward without striking."""
    import agents.mbpo_ppo as mbpo_ppo

    r = tiny_anymal_run(tmp_path)
    real = iter([0.02, 0.015, 0.03])
    monkeypatch.setattr(mbpo_ppo, "real_reward", lambda *a, **k: {"reward": next(real), "termination_rate": 0.0, "steps": 40})
    monkeypatch.setattr(mbpo_ppo, "imagined_reward",
                        lambda *a, **k: {"reward": 0.0, "termination_rate": 0.0, "abs_reward": 0.02, "uncertainty": 0.5})
    probe = torch.randn(8, 48, generator=torch.Generator().manual_seed(0))
    starts, ends = record_ppo_policies(monkeypatch, probe)
    assert main(["train-policy", *r, "agent=mbpo_ppo", "agent.num_envs=32", "agent.params.iterations=3", "agent.params.steps_per_iteration=200",
                 "agent.params.collect_envs=20", "agent.params.model_train_steps=2", "agent.params.ppo_iterations=1",
                 "agent.params.ppo.num_steps_per_env=4", "agent.params.guard_steps=4", "agent.params.guard_trains_model=false",
                 "agent.params.uncertainty_penalty=0.3", "agent.params.uncertainty_penalty_start=2"]) == 0
    history = json.loads((tmp_path / "mbpo_ppo.json").read_text())
    assert history["rolled_back"] == [0.0, 0.0, 0.0]
    assert history["uncertainty_lambda"][:2] == [0.0, 0.0] and history["uncertainty_lambda"][2] == pytest.approx(0.3 * 0.02 / 0.5)
    assert torch.equal(starts[1], ends[0])  # no strike at 0: iteration 1 continues
    assert torch.equal(starts[2], ends[0]) and not torch.equal(starts[2], ends[1])  # the penalty phase starts from the best


def test_termination_bias_moves_imagined_falls_toward_the_real_ones(anymal_model, tmp_path, monkeypatch):
    """The online calibration: a positive ``termination_bias`` ends more imagined episodes; the
    update moves it by log(real / imagined rate), clipped, in both directions; and MBPO-PPO with
    ``termination_bias_step`` moves it after every guard."""
    import agents.mbpo_ppo as mbpo_ppo
    from agents.mbpo_ppo import calibrated_termination_bias

    model, path, _ = anymal_model
    rates = []
    for bias in (0.0, 8.0):
        env = ImaginedLeggedVecEnv(64, model=path, sample=False, termination_bias=bias)
        env.reset(seed=0)
        ended = sum(int(env.step(torch.zeros(64, 12))[2].sum()) for _ in range(10))
        rates.append(ended / 640)
    assert rates[1] > rates[0] + 0.05
    g1_it5 = calibrated_termination_bias(0.0, {"termination_rate": 0.039, "steps": 8000}, {"termination_rate": 0.0, "steps": 512_000}, 1.0)
    assert g1_it5 == 1.0  # clipped: log(312.5 / 0.5 x 64) = 5.2
    assert calibrated_termination_bias(2.0, {"termination_rate": 0.01, "steps": 8000}, {"termination_rate": 0.01, "steps": 512_000}, 1.0) \
        == pytest.approx(2.0, abs=0.01)
    assert calibrated_termination_bias(2.0, {"termination_rate": 0.0, "steps": 8000}, {"termination_rate": 0.0002, "steps": 512_000}, 2.0) \
        == pytest.approx(2.0 + np.log(0.5 / 8000 / (102.9 / 512_000)), abs=1e-3)  # fewer real falls: the bias comes down

    r = tiny_anymal_run(tmp_path)
    monkeypatch.setattr(mbpo_ppo, "real_reward", lambda *a, **k: {"reward": 0.0, "termination_rate": 0.05, "steps": 40})
    assert main(["train-policy", *r, "agent=mbpo_ppo", "agent.num_envs=32", "agent.params.iterations=3", "agent.params.offline=true",
                 "agent.params.ppo_iterations=1", "agent.params.ppo.num_steps_per_env=4", "agent.params.guard_steps=4",
                 "agent.params.imagination_horizon=20", "agent.params.termination_bias_step=0.5"]) == 0
    history = json.loads((tmp_path / "mbpo_ppo.json").read_text())
    bias = history["termination_bias"]
    assert bias[0] == 0.0 and bias[1] != 0.0
    for k in range(2):  # each iteration's guard (32 imagined robots x 20 steps, 40 real steps) moves it for the next
        real = {"termination_rate": history["real_termination_rate"][k], "steps": 40}
        imagined = {"termination_rate": history["imagined_termination_rate"][k], "steps": 640}
        assert bias[k + 1] == pytest.approx(calibrated_termination_bias(bias[k], real, imagined, 0.5))


def test_mbpo_ppo_guard_does_not_stop_a_run_whose_real_reward_climbs(tmp_path, monkeypatch):
    """rwm22 (BENCHMARKS.md): imagined reward above the real one by more than the gap at every
    iteration while the real reward climbed (new bests at 1, 2 and 5 of 5); the guard stopped it
    after ``guard_patience`` such iterations. A new best is no strike; the same gap on a real
    reward that does not improve still stops the run."""
    import agents.mbpo_ppo as mbpo_ppo

    r = tiny_anymal_run(tmp_path)
    monkeypatch.setattr(mbpo_ppo, "imagined_reward", lambda *a, **k: {"reward": 0.05, "termination_rate": 0.0})
    args = [*r, "agent=mbpo_ppo", "agent.num_envs=32", "agent.params.iterations=4", "agent.params.steps_per_iteration=200",
            "agent.params.collect_envs=20", "agent.params.model_train_steps=2", "agent.params.ppo_iterations=1",
            "agent.params.ppo.num_steps_per_env=4", "agent.params.guard_steps=4", "agent.params.guard_trains_model=false",
            "agent.params.guard_patience=2"]
    for real_rewards, rolled_back in (([-0.0234, -0.0113, -0.0045, -0.0018], [0.0] * 4),  # rwm22's new bests
                                      ([-0.0018, -0.0020, -0.0019, -0.0018], [0.0, 1.0, 1.0])):  # no gain: stopped at it. 2
        real = iter(real_rewards)
        monkeypatch.setattr(mbpo_ppo, "real_reward", lambda *a, **k: {"reward": next(real), "termination_rate": 0.0, "steps": 40})
        assert main(["train-policy", *args]) == 0
        history = json.loads((tmp_path / "mbpo_ppo.json").read_text())
        assert history["rolled_back"] == rolled_back
        assert ("stopped_by_guard" in history) == (len(rolled_back) < 4)


def test_mbpo_ppo_resumes_from_an_earlier_runs_policy(tmp_path, monkeypatch):
    """``agent.resume`` starts PPO from the earlier run's kept actor (with its critic from
    ``ppo_state.safetensors``, or the actor alone when only the wam policy is there); a policy
    that does not fit the task's actor is refused, naming the problem."""
    import agents.mbpo_ppo as mbpo_ppo
    from agents.policy import MLPPolicy

    r = tiny_anymal_run(tmp_path, steps=600)
    probe = torch.randn(8, 48, generator=torch.Generator().manual_seed(0))
    starts, learn = [], mbpo_ppo.OnPolicyRunner.learn

    def learn_spy(self, *args, **kwargs):
        starts.append((MLPPolicy.from_rsl_rl(self).act(probe), torch.cat([p.detach().flatten() for p in self.alg._raw_critic.parameters()])))
        learn(self, *args, **kwargs)

    monkeypatch.setattr(mbpo_ppo.OnPolicyRunner, "learn", learn_spy)
    run = ["train-policy", *r, "agent=mbpo_ppo", "agent.num_envs=16", "agent.params.iterations=1", "agent.params.offline=true",
           "agent.params.ppo_iterations=1", "agent.params.ppo.num_steps_per_env=4", "agent.params.guard_steps=4", "agent.params.guard_envs=4"]
    assert main([*run, f"paths.policy={tmp_path / 'first'}"]) == 0
    assert (tmp_path / "first" / "ppo_state.safetensors").is_file()
    kept = MLPPolicy.load(tmp_path / "first").act(probe)
    assert not torch.allclose(starts[0][0], kept)  # PPO changed the fresh actor...
    assert main([*run, f"agent.resume={tmp_path / 'first'}", f"paths.policy={tmp_path / 'second'}"]) == 0
    assert torch.allclose(starts[1][0], kept, atol=1e-6)  # ...and the second run started from the kept one,
    assert "start_real_reward" in json.loads((tmp_path / "mbpo_ppo.json").read_text())  # whose real reward is the one to beat
    (tmp_path / "first" / "ppo_state.safetensors").unlink()  # the actor alone (e.g. a policy from elsewhere)
    assert main([*run, f"agent.resume={tmp_path / 'first'}", f"paths.policy={tmp_path / 'third'}"]) == 0
    assert torch.allclose(starts[2][0], kept, atol=1e-6) and not torch.allclose(starts[2][1], starts[1][1])  # fresh critic
    assert main([*run, f"agent.resume={tmp_path / 'no_such_policy'}"]) == 2
    foreign = MLPPolicy(obs_dim=99, action_dim=29, action_low=[-1.0] * 29, action_high=[1.0] * 29, hidden=[8])
    foreign.save(tmp_path / "g1_policy")
    assert main([*run, f"agent.resume={tmp_path / 'g1_policy'}"]) == 2


def test_g1_has_its_imagined_twin(tmp_path):
    data = collect_legged("g1_flat", None, 512, num_envs=32, seed=0, action_noise=0.3, progress=False)
    meta = legged_dataset_meta("g1_flat")
    assert meta["obs_dim"] == 3 * 3 + 3 * 29 + 1 and meta["contact_dim"] == data["contacts"].shape[1]
    train, val = split_episodes(data, 0.2)
    model = build_model("rwm_gru", model_spec_from_data(meta, train, 4, 2, dt=0.02), hidden=16, head_hidden=16, ensemble=2, learn_reward=False)
    train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=5, eval_every=5), progress=False)
    save_checkpoint(model, tmp_path / "m", extra={"task": "g1_flat"}, tensors={f"start/{k}": torch.as_tensor(data[k]) for k in ("obs", "action", "episode")})
    venv = gym.make_vec("wam/G1-Flat-Imagined-v0", num_envs=4, model=str(tmp_path / "m"))
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 99)
    obs, reward, *_ = venv.step(torch.zeros(4, 29))
    assert obs.shape == (4, 99) and torch.isfinite(reward).all()


def test_exploitation_guard_stops_the_measured_anymal_run():
    """The guard on the real/imagined rewards per step of the ANYmal C MBPO-PPO run in
    BENCHMARKS.md: the relative gap alone struck once while the real reward fell 8x; the drop
    below the best real reward strikes from iteration 1 on, so the run stops at iteration 3."""
    from agents.mbpo_ppo import MbpoPPOConfig, guard_strike

    real = [-0.0061, -0.0134, -0.0384, -0.0288, -0.0355, -0.0466, -0.0560, -0.0485]
    imagined = [-0.0011, -0.0000, 0.0018, -0.0032, -0.0014, -0.0078, -0.0061, -0.0069]
    cfg = MbpoPPOConfig()
    strikes = [guard_strike(r, i, max(real[:k]), cfg) for k, (r, i) in enumerate(zip(real, imagined)) if k > 0]
    assert all(s is not None for s in strikes[:3]) and "fell below the best" in strikes[0]
    gap_only = MbpoPPOConfig(guard_drop=float("inf"))
    gap_strikes = [guard_strike(r, i, max(real[:k]), gap_only) is not None for k, (r, i) in enumerate(zip(real, imagined)) if k > 0]
    assert gap_strikes == [False, True, False, False, False, False, False]  # never 3 in a row
    assert guard_strike(0.020, 0.021, 0.022, cfg) is None  # a small wobble around a good policy is no strike
    assert "runs away" in guard_strike(0.001, 0.05, 0.001, cfg)
    # the resumed run rwm9: imagined 0.004-0.01 per step above a real reward near 0; the old
    # floor of 0.01 struck once (iteration 3), the floor of 0.005 every iteration
    real = [-0.0048, -0.0028, 0.0008, -0.0034, -0.0016, 0.0019, 0.0000]
    imagined = [0.0042, 0.0059, 0.0071, 0.0083, 0.0083, 0.0093, 0.0098]
    assert all(guard_strike(r, i, float("-inf"), cfg) is not None for r, i in zip(real, imagined))
    old_floor = MbpoPPOConfig(guard_floor=0.01)
    assert [guard_strike(r, i, float("-inf"), old_floor) is not None for r, i in zip(real, imagined)] == [False] * 3 + [True] + [False] * 3
    # the rerun of rwm20 (stop 21): after a best of -0.0118 at iteration 0, PPO's search scored a
    # few thousandths worse; guard_drop 0.5 struck at iterations 1-3 (each roll-back restarting
    # from iteration 0), guard_drop 1.0 (used by rwm22) none, and still stops the run above
    real, imagined = [-0.0180, -0.0179, -0.0227, -0.0142], [-0.0034, -0.0096, -0.0112, -0.0097]
    assert [guard_strike(r, i, -0.0118, cfg) is not None for r, i in zip(real, imagined)] == [True, True, True, False]
    twice_as_bad = MbpoPPOConfig(guard_drop=1.0)
    assert all(guard_strike(r, i, -0.0118, twice_as_bad) is None for r, i in zip(real, imagined))
    real, imagined = [-0.0061, -0.0134, -0.0384, -0.0288], [-0.0011, -0.0000, 0.0018, -0.0032]
    assert all(guard_strike(r, i, max(real[:k]), twice_as_bad) is not None for k, (r, i) in enumerate(zip(real, imagined)) if k > 0)
