"""World models: protocol semantics, training on real Pendulum data, heads, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tasks import get_task
from tasks.collect import collect
from world_models import (
    CheckpointError,
    ModelSpec,
    Prediction,
    TransitionHeads,
    WorldModelTrainConfig,
    build_model,
    load_checkpoint,
    open_loop_error,
    save_checkpoint,
    termination_metrics,
    train_world_model,
    WorldModel,
)
from world_models.data import WindowSampler, split_episodes, to_torch
from world_models.heads import member_mean, member_std

SPEC = ModelSpec(obs_dim=3, action_dim=1, action_low=(-2.0,), action_high=(2.0,), history=4, forecast=4)
SMALL = {
    "rwm_gru": {"hidden": 64, "layers": 2, "head_hidden": 64, "ensemble": 3},
    "mlp_ensemble": {"members": 4, "elites": 3, "hidden": 64, "layers": 3},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(name: str, spec: ModelSpec = SPEC, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, spec, **{**SMALL[name], **overrides})


@pytest.fixture(scope="module")
def pendulum() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Real Pendulum transitions (random policy), split by episode into (train, val)."""
    data = collect(get_task("pendulum"), None, 2000, num_envs=4, progress=False)
    train, val = split_episodes(data, 0.25, seed=0)
    return to_torch(train), to_torch(val)


@pytest.fixture(scope="module")
def trained(pendulum) -> dict[str, tuple[torch.nn.Module, dict[str, float]]]:
    """Each small model trained briefly on the Pendulum data (shared by several tests)."""
    train, val = pendulum
    cfg = WorldModelTrainConfig(batch_size=64, learning_rate=3e-3, max_steps=150, eval_every=50, patience=100)
    out = {}
    for name in SMALL:
        model = small_model(name)
        out[name] = (model, train_world_model(model, train, val, cfg, progress=False))
    return out


def fixed_loss(model, data: dict[str, torch.Tensor], key: str = "dynamics_mse") -> float:
    batch = WindowSampler(data, model.spec.history, model.spec.forecast, seed=1).sample(256)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return float(model.loss(batch)[key])


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", list(SMALL))
def test_loss_falls_on_real_pendulum_data(name, pendulum, tmp_path):
    train, val = pendulum
    model = small_model(name)
    model.fit_normalizers(train)
    before = fixed_loss(model, val)
    cfg = WorldModelTrainConfig(batch_size=64, learning_rate=3e-3, max_steps=60, eval_every=20)
    metrics = train_world_model(model, train, val, cfg, log_dir=str(tmp_path / "tb"), progress=False)
    after = fixed_loss(model, val)
    assert after < 0.5 * before, (before, after)
    assert {"val_loss", "val_dynamics_nll", "val_dynamics_mse", "val_reward_mse", "val_termination_bce"} <= set(metrics)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", list(SMALL))
def test_models_beat_zero_delta_baseline_open_loop(name, trained, pendulum):
    _, val = pendulum
    model, _ = trained[name]
    horizon = 16
    err = open_loop_error(model, val, history=4, horizon=horizon, num_windows=128, seed=0)
    assert err.shape == (horizon,) and torch.isfinite(err).all()
    base = open_loop_error(ZeroDelta(model), val, history=4, horizon=horizon, num_windows=128, seed=0)
    assert err[0] < 0.2 * base[0]
    assert err[-1] < 0.7 * base[-1], (err, base)


class ZeroDelta(WorldModel):
    """The trivial baseline: predicts no change (reports errors in ``model``'s normalizer units)."""

    def __init__(self, model: WorldModel):
        super().__init__()
        self.spec, self.obs_normalizer = model.spec, model.obs_normalizer
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def initial(self, batch):
        return {"obs": torch.zeros(batch, self.spec.obs_dim)}

    def observe(self, carry, obs, prev_action, is_first):
        return {"obs": obs}

    def imagine(self, carry, action, *, sample=True):
        return carry, Prediction(obs=carry["obs"], uncertainty=torch.zeros(action.shape[0]))


def test_dual_autoregressive_training_beats_teacher_forcing(pendulum):
    """RWM's claim: training on its own N = 8 step rollouts gives lower open-loop error at
    long horizons than teacher-forced N = 1 (same steps, same data)."""
    train, val = pendulum
    cfg = WorldModelTrainConfig(batch_size=64, learning_rate=3e-3, max_steps=150, eval_every=50, patience=100)
    errors = {}
    for forecast in (8, 1):
        spec = ModelSpec(3, 1, (-2.0,), (2.0,), history=4, forecast=forecast)
        model = small_model("rwm_gru", spec)
        train_world_model(model, train, val, cfg, progress=False)
        errors[forecast] = open_loop_error(model, val, history=4, horizon=32, num_windows=128, seed=0)
    assert errors[8][-1] < 0.8 * errors[1][-1], errors
    assert errors[8][15] < 0.8 * errors[1][15], errors


def _train_termination_head(balanced: bool) -> dict[str, float]:
    """Fit TransitionHeads on synthetic transitions with ~0.2 % terminals; precision / recall."""
    torch.manual_seed(0)
    n, D = 20000, 3
    obs, action = torch.randn(n, D), torch.rand(n, 1) * 2 - 1
    next_obs = obs + 0.1 * torch.randn(n, D)
    terminated = next_obs[:, 0] > 2.9
    reward = -next_obs.pow(2).sum(-1)
    heads = TransitionHeads(D, 1, reward=True, termination=True, hidden=64)
    heads.fit(reward, terminated)
    assert heads.pos_weight.item() == pytest.approx(float((~terminated).sum() / terminated.sum()), rel=1e-5)
    if not balanced:
        heads.pos_weight.fill_(1.0)
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    mask = torch.ones(n, dtype=torch.bool)
    for _ in range(100):
        idx = torch.randint(0, n, (512,))
        losses = heads.loss(obs[idx], action[idx], next_obs[idx], reward[idx], terminated[idx], mask[idx])
        opt.zero_grad()
        losses["heads_loss"].backward()
        opt.step()
    with torch.no_grad():
        _, logit = heads(obs, action, next_obs)
    return termination_metrics(logit, terminated)


def test_termination_head_class_balance_finds_rare_terminals():
    balanced = _train_termination_head(balanced=True)
    assert balanced["termination_recall"] > 0.8, balanced
    assert balanced["termination_precision"] > 0.05, balanced  # not "always terminal" (0.002)
    unbalanced = _train_termination_head(balanced=False)
    assert unbalanced["termination_recall"] < 0.4, unbalanced


def test_termination_head_without_positives_still_trains():
    heads = TransitionHeads(3, 1)
    heads.fit(torch.randn(100), torch.zeros(100, dtype=torch.bool))
    assert heads.pos_weight.item() == 1.0
    x = torch.randn(100, 3)
    losses = heads.loss(x, torch.zeros(100, 1), x, torch.randn(100), torch.zeros(100, dtype=torch.bool), torch.ones(100, dtype=torch.bool))
    assert torch.isfinite(losses["termination_bce"]) and losses["termination_bce"] > 0


# ----------------------------------------------------------------------------- protocol


def rand_step(B: int, spec: ModelSpec = SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, spec.obs_dim), torch.rand(B, spec.action_dim) * 4 - 2


@pytest.mark.parametrize("name", list(SMALL))
def test_imagine_shapes_and_uncertainty(name):
    model = small_model(name)
    B = 7
    obs, act = rand_step(B)
    carry = model.observe(model.initial(B), obs, act, torch.ones(B, dtype=torch.bool))
    for sample in (True, False):
        new, pred = model.imagine(carry, act, sample=sample)
        assert pred.obs.shape == (B, 3) and new["obs"].shape == (B, 3)
        assert pred.reward.shape == (B,) and pred.termination_logit.shape == (B,)
        assert pred.uncertainty.shape == (B,)
        assert (pred.uncertainty > 0).all()  # ensembles disagree somewhere on every row
        assert all(v.shape[0] == B for v in new.values())
    # a seeded generator makes sampling reproducible
    draws = [model.imagine(carry, act, generator=torch.Generator().manual_seed(3))[1].obs for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    # a single-member model has no disagreement: uncertainty is exactly zero
    single = small_model("rwm_gru", ensemble=1) if name == "rwm_gru" else small_model(name, elites=1)
    _, pred = single.imagine(single.initial(B), act)
    assert (pred.uncertainty == 0).all()


def test_member_mean_and_std_match_torch_on_batch_last_views():
    out = torch.randn(5, 2 * 6, 9)  # (E, 2D, B): the GRU's ensemble heads compute batch-last
    mean, _ = out.transpose(1, 2).split(6, dim=-1)  # (E, B, D) views, as imagine reduces them
    torch.testing.assert_close(member_mean(mean), mean.mean(0))
    torch.testing.assert_close(member_std(mean), mean.std(0))
    assert (member_std(mean[:1]) == 0).all()


def test_gru_without_heads_predicts_no_reward():
    model = small_model("rwm_gru", learn_reward=False, learn_termination=False)
    _, pred = model.imagine(model.initial(2), torch.zeros(2, 1))
    assert pred.reward is None and pred.termination_logit is None


@pytest.mark.parametrize("name", list(SMALL))
def test_observe_imagine_shape_errors_name_the_problem(name):
    model = small_model(name)
    B = 4
    carry = model.initial(B)
    obs, act = rand_step(B)
    first = torch.ones(B, dtype=torch.bool)
    with pytest.raises(ValueError, match="action must have shape"):
        model.imagine(carry, torch.zeros(B, 2))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.imagine(carry, torch.zeros(B + 1, 1))
    with pytest.raises(ValueError, match=r"obs must be a float tensor of shape \(4, 3\)"):
        model.observe(carry, torch.zeros(B, 5), act, first)
    with pytest.raises(ValueError, match="obs must be a float tensor"):
        model.observe(carry, obs.long(), act, first)
    with pytest.raises(ValueError, match=r"obs must have shape \(B, 3\)"):
        model.imagine({**carry, "obs": torch.zeros(B, 2)}, act)
    with pytest.raises(ValueError, match="is_first"):
        model.observe(carry, obs, act, torch.ones(B))
    with pytest.raises(ValueError, match="carry must hold"):
        model.imagine({}, act)
    with pytest.raises(ValueError, match="floating point"):
        model.imagine(carry, torch.zeros(B, 1, dtype=torch.long))
    if name == "rwm_gru":
        with pytest.raises(ValueError, match=r"carry\['h'\]"):
            model.imagine({"obs": obs, "h": torch.zeros(B, 1, 1)}, act)


def test_gru_observe_semantics():
    """observe after imagine reproduces imagine's latent; is_first clears the latent; the
    fused observe_sequence equals the per-step loop."""
    model = small_model("rwm_gru")
    B, T = 5, 6
    obs, act = torch.randn(B, T, 3), torch.rand(B, T, 1) * 4 - 2
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    with torch.no_grad():
        fused = model.observe_sequence(model.initial(B), obs, act, first)
        loop = model.initial(B)
        for t in range(T):
            loop = model.observe(loop, obs[:, t], act[:, t], first[:, t])
        torch.testing.assert_close(fused["h"], loop["h"])
        torch.testing.assert_close(fused["obs"], obs[:, -1])
        imagined, _ = model.imagine(loop, act[:, 0])
        observed = model.observe(loop, obs[:, 0], act[:, 0], torch.zeros(B, dtype=torch.bool))
        torch.testing.assert_close(imagined["h"], observed["h"])
        # a start in the middle: same latent as a sequence that begins there
        first[:, 3] = True
        mid = model.observe_sequence(model.initial(B), obs, act, first)
        fresh = model.observe_sequence(model.initial(B), obs[:, 3:], act[:, 3:], first[:, 3:])
        torch.testing.assert_close(mid["h"], fresh["h"])


@pytest.mark.parametrize("name", list(SMALL))
def test_flops_per_step_counts_the_contact_head_once_more_when_sampling(name):
    model = small_model(name, dataclasses.replace(SPEC, contact_dim=2))
    contact_macs = sum(lin.weight.numel() for lin in model.heads.contact_net.layers)
    assert model.flops_per_step(sample=True) - model.flops_per_step(sample=False) == 2 * contact_macs
    assert model.flops_per_step(sample=False) - small_model(name).flops_per_step(sample=False) == 2 * contact_macs


def test_gru_loss_ignores_padding(pendulum):
    """Invalid (padded) window positions do not influence the loss."""
    train, _ = pendulum
    model = small_model("rwm_gru")
    model.fit_normalizers(train)
    sampler = WindowSampler(train, SPEC.history, SPEC.forecast)
    ep_starts = torch.nonzero(train["step"] == 2).squeeze(1)  # 2 steps of history, 2 padded
    batch = sampler.window(ep_starts)
    assert not batch["valid"].all()
    garbage = {k: v.clone() for k, v in batch.items() if k != "history"}
    for k in ("obs", "action", "next_obs"):
        garbage[k][~batch["valid"]] = 1e3
    garbage["history"] = batch["history"]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = model.loss(batch)
        torch.manual_seed(0)
        b = model.loss(garbage)
    torch.testing.assert_close(a["loss"], b["loss"])


def test_ensemble_select_elites(pendulum):
    train, val = pendulum
    model = small_model("mlp_ensemble")
    model.fit_normalizers(train)
    batch = WindowSampler(val, 0, 1).sample(128)
    mse = model.select_elites(batch)
    assert mse.shape == (4,)
    assert set(model.elite_idx.tolist()) == set(torch.topk(mse, 3, largest=False).indices.tolist())


def test_build_model_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="unknown world model 'nope'"):
        build_model("nope", SPEC)
    with pytest.raises(ValueError, match=r"unknown config keys \['hiden'\]"):
        build_model("rwm_gru", SPEC, hiden=3)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", list(SMALL))
def test_checkpoint_round_trip(name, trained, tmp_path):
    model, _ = trained[name]
    start = {"obs": torch.randn(10, 3), "episode": torch.arange(10)}
    save_checkpoint(model, tmp_path / "ckpt", extra={"task": "pendulum"}, tensors=start)
    loaded, extra, tensors = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config() == model.config() and loaded.spec == model.spec
    assert extra == {"task": "pendulum"}
    assert tensors.keys() == start.keys() and all(torch.equal(tensors[k], start[k]) for k in start)
    B = 16
    obs, act = rand_step(B)
    with torch.no_grad():
        outs = []
        for m in (model, loaded):
            carry = m.observe(m.initial(B), obs, act, torch.ones(B, dtype=torch.bool))
            torch.manual_seed(0)
            outs.append(m.imagine(carry, act, sample=True)[1])
    for field in ("obs", "reward", "termination_logit", "uncertainty"):
        assert torch.equal(getattr(outs[0], field), getattr(outs[1], field)), field


def _corrupt_config(**changes):
    def corrupt(ckpt: Path) -> None:
        cfg = json.loads((ckpt / "config.json").read_text())
        for key, value in changes.items():
            section, _, sub = key.partition(".")
            if sub:
                cfg[section][sub] = value
            else:
                cfg[section] = value
        (ckpt / "config.json").write_text(json.dumps(cfg))

    return corrupt


def _truncate(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])


def _rewrite_weights(edit):
    def corrupt(ckpt: Path) -> None:
        state = safetensors.torch.load_file(ckpt / "model.safetensors")
        edit(state)
        safetensors.torch.save_file(state, ckpt / "model.safetensors")

    return corrupt


BAD_CHECKPOINTS = {
    "missing_path": (lambda ckpt: None, "does not exist"),
    "no_config": (lambda ckpt: (ckpt / "config.json").unlink(), "not a wam world-model checkpoint: config.json missing"),
    "corrupt_json": (lambda ckpt: (ckpt / "config.json").write_text('{"format": '), "corrupt checkpoint config"),
    "foreign_format": (_corrupt_config(format="wam.dataset"), "not a wam world-model checkpoint .format='wam.dataset'"),
    "newer_version": (_corrupt_config(format_version=99), "format version 99.*upgrade wam"),
    "unknown_class": (_corrupt_config(**{"class": "transformer"}), "unknown model class 'transformer'"),
    "unknown_config_key": (_corrupt_config(**{"config.dropout": 0.1}), r"unknown config keys \['dropout'\]"),
    "truncated_weights": (_truncate, "corrupt or truncated weights file"),
    "garbage_weights": (lambda ckpt: (ckpt / "model.safetensors").write_bytes(b"\x00" * 64), "corrupt or truncated weights"),
    "missing_weights": (lambda ckpt: (ckpt / "model.safetensors").unlink(), "model.safetensors missing"),
    "missing_key": (_rewrite_weights(lambda s: s.pop("max_logstd")), r"missing keys \['max_logstd'\]"),
    "unexpected_key": (_rewrite_weights(lambda s: s.update(extra=torch.zeros(1))), r"unexpected keys \['extra'\]"),
    "wrong_shape": (_rewrite_weights(lambda s: s.update(max_logstd=torch.zeros(4))), "wrong shapes.*max_logstd"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_raises_and_leaves_files_untouched(case, tmp_path):
    corrupt, message = BAD_CHECKPOINTS[case]
    ckpt = tmp_path / "ckpt"
    save_checkpoint(small_model("rwm_gru"), ckpt)
    if case == "missing_path":
        ckpt = tmp_path / "nowhere"
    corrupt(ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.glob("*")} if ckpt.exists() else {}
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(info.value)
    after = {p.name: p.read_bytes() for p in ckpt.glob("*")} if ckpt.exists() else {}
    assert before == after


def test_checkpoint_write_leaves_no_temp_files(tmp_path):
    model = small_model("mlp_ensemble")
    save_checkpoint(model, tmp_path / "c")
    save_checkpoint(model, tmp_path / "c")  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "model.safetensors", "tensors.safetensors"]
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_checkpoint(model, tmp_path / "d", extra={"x": object()})
    assert not (tmp_path / "d").exists()


def test_gru_history_weight_adds_a_teacher_forced_history_term(pendulum):
    """history_weight > 0 trains the history positions too; 0 (the paper's loss) leaves them out."""
    train, _ = pendulum
    batch = WindowSampler(train, SPEC.history, SPEC.forecast, seed=0).sample(32)
    losses = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = small_model("rwm_gru", history_weight=weight)
        model.fit_normalizers(train)
        torch.manual_seed(1)
        losses[weight] = model.loss(batch)
    assert "history_loss" not in losses[0.0]
    h = losses[1.0]["history_loss"]
    assert torch.isfinite(h) and h.requires_grad
    torch.testing.assert_close(losses[1.0]["loss"], losses[0.0]["loss"] + h)


def test_gru_forecast_noise_scales_the_fed_back_samples(pendulum):
    """forecast_noise 0 feeds the forecast the member's mean: with one member the loss no
    longer depends on the random draws; 1 (the paper's samples) does. Out of [0, 1] is refused."""
    train, _ = pendulum
    batch = WindowSampler(train, SPEC.history, SPEC.forecast, seed=0).sample(32)
    spread = {}
    for noise in (0.0, 1.0):
        model = small_model("rwm_gru", ensemble=1, forecast_noise=noise)
        model.fit_normalizers(train)
        with torch.no_grad():
            model.max_logstd.fill_(0.0)  # wide predicted Gaussians: samples far from the mean
            model.min_logstd.fill_(-0.5)
        losses = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            with torch.no_grad():
                losses.append(float(model.loss(batch)["dynamics_mse"]))
        spread[noise] = abs(losses[0] - losses[1])
        assert model.config()["forecast_noise"] == noise
    assert spread[0.0] == 0.0 and spread[1.0] > 1e-3
    with pytest.raises(ValueError, match="forecast_noise"):
        small_model("rwm_gru", forecast_noise=1.5)


@pytest.mark.parametrize("name", list(SMALL))
def test_refit_normalizers_keeps_the_trained_function(name, trained, pendulum):
    """A warm start on grown data refits the statistics; the model must predict exactly what
    it did before (deltas, log-std, reward, termination, contacts), in the new units."""

    spec = ModelSpec(**{**SPEC.__dict__, "contact_dim": 2})
    model = copy.deepcopy(trained[name][0])
    fresh = small_model(name, spec)  # a contact head too
    train, _ = pendulum
    fresh.fit_normalizers(train)
    B = 64
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(B, 3, generator=g) * torch.tensor([0.7, 0.7, 3.0])
    act = torch.rand(B, 1, generator=g) * 4 - 2
    # the new data: wider and shifted, as a policy's data are against the first collection
    grown = {k: v.clone() for k, v in train.items()}
    grown["obs"] = grown["obs"] * 3 + 1
    grown["next_obs"] = grown["next_obs"] * 2 - 0.5
    grown["action"] = grown["action"] * 0.5 + 0.2
    grown["reward"] = grown["reward"] * 4 + 3
    for m in (model, fresh):
        carry = m.observe(m.initial(B), obs, act, torch.ones(B, dtype=torch.bool))
        before = m.imagine(carry, act, sample=False)[1]
        drawn_before = m.imagine(carry, act, generator=torch.Generator().manual_seed(5))[1].obs
        old_std = m.obs_normalizer.std.clone()
        m.refit_normalizers(grown)
        assert not torch.allclose(m.obs_normalizer.std, old_std)
        carry = m.observe(m.initial(B), obs, act, torch.ones(B, dtype=torch.bool))
        after = m.imagine(carry, act, sample=False)[1]
        for field in ("obs", "reward", "termination_logit", "contacts"):  # uncertainty is in normalized delta units: rescaled
            a, b = getattr(before, field), getattr(after, field)
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=f"{name}: {field} changed")
        # the predictive spread too: draws with one seed agree
        drawn_after = m.imagine(carry, act, generator=torch.Generator().manual_seed(5))[1].obs
        torch.testing.assert_close(drawn_after, drawn_before, rtol=1e-4, atol=1e-4, msg=f"{name}: log-std changed")


def test_refit_normalizers_widens_the_divergence_range(trained, pendulum):

    model = copy.deepcopy(trained["rwm_gru"][0])
    train, _ = pendulum
    model.fit_normalizers(train)
    model.spec = ModelSpec(**{**model.spec.__dict__, "obs_low": (-1.0, -1.0, -8.0), "obs_high": (1.0, 1.0, 8.0)})
    grown = {k: v.clone() for k, v in train.items()}
    grown["next_obs"][0, 2] = 20.0
    model.refit_normalizers(grown)
    assert model.spec.obs_high[2] == 20.0 and model.spec.obs_low == (-1.0, -1.0, -8.0)
