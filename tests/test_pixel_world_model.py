"""Pixel world models: frame store, causal tokenizer, action-conditioned DiT, imagined pixel envs,
Cosmos adapter (diffusers, the ``pixels`` extra), Push-T task (gym-pusht, the ``pixels`` extra)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import wam_env  # noqa: F401  (registers the env ids)
from wam_env.pixels import PixelImagination
from world_models import ModelSpec, build_model, load_checkpoint, save_checkpoint
from world_models.data import DatasetError
from world_models.pixel.dynamics import LatentFlowDiT, frame_mask
from world_models.pixel.frames import FrameStore, FrameWindows
from world_models.pixel.tokenizer import CausalVideoTokenizer, to_uint8, to_unit
from world_models.pixel.reward import ObjectDynamicsHead
from world_models.pixel.training import (PixelTrainConfig, encode_rows, object_open_loop, open_loop, psnr, ssim,
                                         train_dynamics, train_pixel_model, train_tokenizer)

SIZE = 16
HEADS = dict(head_steps=300, head_batch=32, head_lr=3e-3, state_head_steps=300, state_head_batch=32,
             state_head_lr=3e-3)  # both groups of heads, as long as the tests' DiT
TINY = dict(frame_size=SIZE, latent_channels=4, tokenizer_channels=(8, 8, 16, 16), dim=32, depth=2, heads=2,
            patch=1, reward_hidden=16)


def spec(history: int = 2) -> ModelSpec:
    return ModelSpec(obs_dim=2, action_dim=2, action_low=(0.0, 0.0), action_high=(512.0, 512.0), history=history,
                     forecast=1, dt=0.1, obs_low=(0.0, 0.0), obs_high=(512.0, 512.0))


def square_frames(pos: np.ndarray) -> np.ndarray:
    """White (SIZE, SIZE) frames with a 4x4 dark square at world position pos (N, 2) in [0, 512]."""
    out = np.full((len(pos), SIZE, SIZE, 3), 255, np.uint8)
    cells = np.clip((pos / 512 * SIZE).astype(int) - 2, 0, SIZE - 4)
    for i, (u, v) in enumerate(cells):
        out[i, v : v + 4, u : u + 4] = (40, 60, 200)
    return out


def square_rows(episodes: int = 40, steps: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Frame rows of a toy world: the square jumps to the commanded position (action) each step;
    coverage = how close it is to the centre."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("pixels", "agent_pos", "action", "coverage", "success", "last", "episode", "step")}
    for ep in range(episodes):
        pos = rng.uniform(64, 448, 2)
        for t in range(steps + 1):
            action = rng.uniform(64, 448, 2) if t < steps else np.zeros(2)
            cov = float(np.exp(-np.linalg.norm(pos - 256) / 100))
            for k, v in (("pixels", square_frames(pos[None])[0]), ("agent_pos", pos), ("action", action), ("coverage", cov),
                         ("success", cov > 0.95), ("last", t == steps), ("episode", ep), ("step", t)):
                rows[k].append(v)
            pos = action
    return {k: np.asarray(v) for k, v in rows.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_square_model(one_torch_thread):
    torch.manual_seed(0)
    rows = square_rows()
    model = build_model("pixel_dit", spec(), **TINY)
    cfg = PixelTrainConfig(tokenizer_steps=80, tokenizer_batch=16, tokenizer_lr=3e-3, dynamics_steps=300, dynamics_batch=32,
                           dynamics_lr=3e-3, **HEADS)
    metrics = train_pixel_model(model, rows, square_rows(4, seed=1), cfg, progress=False)
    return model, rows, metrics


def test_frame_store_round_trip_and_windows(tmp_path):
    rows = square_rows(3, steps=4)
    store = FrameStore(tmp_path / "d", {"task": "toy", "frame_shape": [SIZE, SIZE, 3], "state_dim": 2, "action_dim": 2,
                                        "action_low": [0, 0], "action_high": [512, 512]})
    store.append(rows)
    store.append(rows)
    back = FrameStore(tmp_path / "d").load()
    assert back["pixels"].dtype == np.uint8 and len(back["step"]) == 2 * len(rows["step"])
    assert np.unique(back["episode"]).tolist() == list(range(6))
    with pytest.raises(DatasetError, match="pixels"):
        store.append({**rows, "pixels": rows["pixels"][:, :8]})
    w = FrameWindows(back, context=3, future=1).window(torch.tensor([0, 2]))
    # row 0 starts an episode: the context repeats it, at rest (prev_action = own position)
    assert torch.equal(w["pixels"][0, 0], w["pixels"][0, 2])
    assert torch.allclose(w["prev_action"][0, :3], w["agent_pos"][0, :3])
    assert torch.allclose(w["prev_action"][1, 2], torch.as_tensor(back["action"][1]))  # action that led to row 2


def test_tokenizer_is_causal_and_round_trips(trained_square_model):
    tok = CausalVideoTokenizer(4, (8, 8, 16, 16)).eval()
    video = to_unit(torch.as_tensor(square_frames(np.random.default_rng(0).uniform(0, 512, (3, 2)))))[None]
    z = tok.encode(video)
    assert z.shape == (1, 3, 4, SIZE // 8, SIZE // 8)
    assert torch.allclose(tok.encode(video[:, :1])[:, 0], z[:, 0], atol=1e-5)  # the first frame is encoded alone
    changed = video.clone()
    changed[:, 2] = -changed[:, 2]
    assert torch.allclose(tok.encode(changed)[:, :2], z[:, :2], atol=1e-5)  # no frame sees the future
    assert torch.equal(to_uint8(to_unit(torch.as_tensor(square_frames(np.array([[100.0, 200.0]]))))), torch.as_tensor(square_frames(np.array([[100.0, 200.0]]))))
    _, _, metrics = trained_square_model
    assert metrics["tokenizer_psnr"] > 18.0 and metrics["tokenizer_ssim"] > 0.5


def test_dit_clean_stream_is_computed_once_and_matches_the_joint_pass():
    """Generation runs the clean context through the DiT once and reuses its keys and values at every
    Euler step: the velocity must equal one pass over clean and noisy tokens together under the mask."""
    torch.manual_seed(0)
    dit = LatentFlowDiT(4, (4, 4), cond_dim=3, dim=32, depth=2, heads=4, patch=2, token_extra=5)
    for p in dit.parameters():  # adaLN-Zero starts at zero; give every path weight
        p.data.normal_(0, 0.2)
    b, l, n = 2, 3, dit.tokens
    clean, clean_tau, clean_cond = torch.randn(b, l, 4, 4, 4), torch.rand(b, l), torch.randn(b, l, 3)
    noisy, noisy_tau, noisy_cond = torch.randn(b, 1, 4, 4, 4), torch.rand(b, 1), torch.randn(b, 1, 3)
    clean_extra, noisy_extra, at = torch.randn(b, l, n, 5), torch.randn(b, 1, n, 5), torch.tensor([l])
    context = dit.context(clean, clean_tau, clean_cond, clean_extra)
    fast = dit.velocity(context, noisy, noisy_tau, noisy_cond, at, noisy_extra)
    # reference: clean and noisy tokens through every block together, the full frame mask
    xc, cc = dit._tokens(dit.embed(torch.cat([dit.patchify(clean), clean_extra], -1)), torch.arange(l), False, clean_tau, clean_cond)
    xn, cn = dit._tokens(dit.embed_noisy(torch.cat([dit.patchify(noisy), dit.patchify(clean[:, -1:]), noisy_extra], -1)), at,
                         True, noisy_tau, noisy_cond)
    x, cond = torch.cat([xc, xn], 1), torch.cat([cc, cn], 1)
    mask = frame_mask(torch.arange(l + 1).repeat_interleave(n), (torch.arange(l + 1) == l).repeat_interleave(n))
    for block in dit.blocks:
        x, _ = block(x, cond, mask)
    shift, scale = dit.ada_out(torch.nn.functional.silu(cn))[:, :, None].chunk(2, dim=-1)
    joint = dit.unpatchify(dit.out(dit.norm_out(x[:, l:]) * (1 + scale) + shift))
    assert fast.abs().mean() > 0.1
    assert torch.allclose(fast, joint, atol=1e-5)
    # the context does not depend on the noisy frame: a second Euler step reuses it unchanged
    again = dit.velocity(context, torch.randn_like(noisy), noisy_tau, noisy_cond, at, noisy_extra)
    assert not torch.allclose(again, fast) and torch.equal(context.kv[0][0], dit.context(clean, clean_tau, clean_cond, clean_extra).kv[0][0])


def test_psnr_ssim_sanity():
    a = torch.as_tensor(square_frames(np.array([[100.0, 100.0]])))
    b = torch.as_tensor(square_frames(np.array([[400.0, 400.0]])))
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-4) and float(psnr(a, a)) > 90
    assert float(ssim(a, b)) < 0.95 and float(psnr(a, b)) < 20


def test_action_conditioning_matters(trained_square_model):
    model, rows, _ = trained_square_model
    start = {"pixels": torch.as_tensor(square_frames(np.array([[256.0, 256.0]] * 2))), "agent_pos": torch.full((2, 2), 256.0)}
    carry = model.observe(model.initial(2), start, start["agent_pos"], torch.ones(2, dtype=torch.bool))
    targets = torch.tensor([[100.0, 100.0], [420.0, 400.0]])
    with torch.no_grad():
        _, pred = model.imagine(carry, targets, sample=False)
    frames = pred.extras["pixels"]
    truth = torch.as_tensor(square_frames(targets.numpy()))
    assert float(psnr(frames[0], frames[1])) < 25  # different actions -> different frames
    assert float(psnr(frames[0], truth[0])) > float(psnr(frames[0], truth[1])) + 1
    assert float(psnr(frames[1], truth[1])) > float(psnr(frames[1], truth[0])) + 1
    assert torch.allclose(pred.obs, targets, atol=60)  # agent head
    ol = open_loop(model, rows, horizon=3, starts=4)
    assert ol["psnr"].shape == (4, 3) and ol["imagined"].dtype == torch.uint8


def test_residual_model_with_agent_maps_follows_actions(trained_square_model):
    """The residual flow with spatial action maps: heat maps peak at the token showing the
    point, a fresh model's normalization is fitted from data, and after training actions
    move the square where they send it."""
    base, rows, _ = trained_square_model
    torch.manual_seed(0)
    model = build_model("pixel_dit", spec(), **TINY, agent_maps=True, residual=True)
    model.tokenizer.load_state_dict(base.tokenizer.state_dict())
    maps = model.token_maps(torch.tensor([[-0.9, 0.9]]), torch.tensor([[0.9, -0.9]]))  # (1, tokens, 2 * 16)
    side = SIZE // 8  # tokens per side (patch 1)
    assert maps.shape == (1, side * side, 2 * model.MAP_CELLS**2)
    assert int(maps[0, :, :16].sum(-1).argmax()) == (side - 1) * side  # agent at bottom left: last row, first column
    assert int(maps[0, :, 16:].sum(-1).argmax()) == side - 1  # target at top right
    cfg = PixelTrainConfig(dynamics_steps=300, dynamics_batch=32, dynamics_lr=3e-3, **HEADS)
    train_dynamics(model, rows, cfg, fit_stats=True, progress=False)
    assert float(model.delta_std.min()) >= 0.05 and not torch.equal(model.latent_std, torch.ones_like(model.latent_std))
    start = {"pixels": torch.as_tensor(square_frames(np.array([[256.0, 256.0]] * 2))), "agent_pos": torch.full((2, 2), 256.0)}
    carry = model.observe(model.initial(2), start, start["agent_pos"], torch.ones(2, dtype=torch.bool))
    targets = torch.tensor([[100.0, 100.0], [420.0, 400.0]])
    with torch.no_grad():
        _, pred = model.imagine(carry, targets, sample=False)
    frames, truth = pred.extras["pixels"], torch.as_tensor(square_frames(targets.numpy()))
    assert float(psnr(frames[0], truth[0])) > float(psnr(frames[0], truth[1])) + 1
    assert float(psnr(frames[1], truth[1])) > float(psnr(frames[1], truth[0])) + 1
    with pytest.raises(ValueError, match="episode"):
        model.fit_latent_stats(torch.zeros(4, 4, 2, 2))


def test_agent_loss_weight_focuses_the_flow_loss_on_the_agent():
    """The flow loss's per-cell weights peak (1 + weight) at the latent cells where the agent is
    before and after a step, stay near 1 far from it, and change the loss only through those
    cells; a negative weight is refused."""
    model = build_model("pixel_dit", spec(), **TINY, agent_maps=True, residual=True, agent_loss_weight=4.0)
    states = torch.tensor([[[-0.5, -0.5], [-0.5, -0.5], [0.5, 0.5]]])  # (B=1, L=3, 2): top left, then bottom right
    w = model.flow_weights(states)
    side = SIZE // 8
    assert w.shape == (1, 2, side, side)
    assert float(w[0, 0, 0, 0]) == pytest.approx(5.0, abs=1e-4)  # stayed at the top-left cell
    assert float(w[0, 1, 0, 0]) == pytest.approx(5.0, abs=1e-4) and float(w[0, 1, 1, 1]) == pytest.approx(5.0, abs=1e-4)
    assert float(w[0, 0, 1, 1]) == pytest.approx(1 + 4.0 * np.exp(-1.0), abs=1e-4)  # one cell off on both axes (std 1 cell)
    assert build_model("pixel_dit", spec(), **TINY).flow_weights(states) is None
    rows = square_rows(4, steps=6)
    windows = FrameWindows({**{k: rows[k] for k in ("agent_pos", "action", "coverage", "episode")},
                            "latents": torch.randn(len(rows["step"]), 4, side, side)}, context=2, future=1, seed=0)
    batch = windows.sample(8)
    torch.manual_seed(0)
    plain = build_model("pixel_dit", spec(), **TINY, agent_maps=True, residual=True)
    plain.dit.out.weight.data.normal_()  # a velocity field that is not zero, so that errors differ per cell
    model.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    flow_plain = plain.loss(batch)["flow"]
    torch.manual_seed(1)
    flow_weighted = model.loss(batch)["flow"]
    assert torch.isfinite(flow_weighted) and float(flow_weighted) != pytest.approx(float(flow_plain), rel=1e-3)
    with pytest.raises(ValueError, match="agent_loss_weight"):
        build_model("pixel_dit", spec(), **TINY, agent_loss_weight=-1.0)


def test_decoder_draws_the_agent_from_its_state():
    """With ``decoder_agent_radius`` the decoder draws the agent where its state says: trained
    with the swap loss on clips where only the agent moved, a frame's latent decoded at another
    position shows the square there and not where the latent saw it. Without a position it
    refuses to decode."""
    torch.manual_seed(0)
    rows = square_rows()
    rows["block_pose"] = np.zeros((len(rows["step"]), 3), np.float32)  # nothing but the agent moves
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0)
    cfg = PixelTrainConfig(tokenizer_steps=150, tokenizer_batch=16, tokenizer_lr=3e-3)
    train_tokenizer(model, rows, square_rows(4, seed=1), cfg, progress=False)
    here, there = np.array([[100.0, 100.0]] * 2), np.array([[400.0, 380.0], [100.0, 100.0]])
    with torch.no_grad():
        z = model.tokenizer.encode(to_unit(torch.as_tensor(square_frames(here)))[:, None])[:, 0]
        frames = to_uint8(model.tokenizer.decode(z, model.norm_obs(torch.as_tensor(there, dtype=torch.float32))))
    moved, stayed = torch.as_tensor(square_frames(there)), torch.as_tensor(square_frames(here))
    assert float(psnr(frames[0], moved[0])) > float(psnr(frames[0], stayed[0])) + 3  # drawn at the state, not the latent
    assert float(psnr(frames[1], stayed[1])) > 20
    with pytest.raises(ValueError, match="agent_pos"):
        model.tokenizer.decode(z)
    clip = to_unit(torch.as_tensor(square_frames(np.concatenate([here[:1], there[:1]])))[None])  # (1, 2, 3, H, W)
    pos = model.norm_obs(torch.tensor([[[100.0, 100.0], [400.0, 380.0]]]))
    assert "swap_mse" in model.tokenizer.loss(clip, pos, torch.tensor([True]))
    assert "swap_mse" not in model.tokenizer.loss(clip, pos, torch.tensor([False]))


def bar_rows(episodes: int = 40, steps: int = 8, seed: int = 0, pushed: bool = False) -> dict[str, np.ndarray]:
    """Frame rows with a pusher (2x2 square, the agent) and a 2x8 bar (the object) that jumps to a
    random pose (position, angle) every step, or with ``pushed`` moves a quarter of the way toward
    the agent and turns by 0.2 rad; ``block_pose`` is the bar's (x, y, angle)."""
    rng = np.random.default_rng(seed)
    cols, rws = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)
    rows = {k: [] for k in ("pixels", "agent_pos", "action", "coverage", "success", "last", "episode", "step", "block_pose")}
    for ep in range(episodes):
        bar = np.array([*rng.uniform(160, 352, 2), rng.uniform(-np.pi, np.pi)])
        for t in range(steps + 1):
            agent = rng.uniform(64, 448, 2)
            if pushed and t:
                bar = np.array([*(bar[:2] + 0.25 * (agent - bar[:2])), bar[2] + 0.2])
            elif not pushed:
                bar = np.array([*rng.uniform(160, 352, 2), rng.uniform(-np.pi, np.pi)])
            frame = np.full((SIZE, SIZE, 3), 255, np.uint8)
            dx, dy = cols - bar[0] / 512 * SIZE, rws - bar[1] / 512 * SIZE
            u, v = np.cos(bar[2]) * dx + np.sin(bar[2]) * dy, -np.sin(bar[2]) * dx + np.cos(bar[2]) * dy
            frame[(np.abs(u) < 4) & (np.abs(v) < 1)] = (110, 130, 150)
            a = np.clip((agent / 512 * SIZE).astype(int) - 1, 0, SIZE - 2)
            frame[a[1]:a[1] + 2, a[0]:a[0] + 2] = (40, 60, 200)
            for k, val in (("pixels", frame), ("agent_pos", agent), ("action", agent), ("coverage", 0.0), ("success", False),
                           ("last", t == steps), ("episode", ep), ("step", t), ("block_pose", bar)):
                rows[k].append(val)
    return {k: np.asarray(v, np.float32 if k in ("agent_pos", "action", "coverage", "block_pose") else None) for k, v in rows.items()}


def test_decoder_draws_the_object_from_its_pose():
    """With ``decoder_object_extent`` the decoder draws the object from its pose: a frame's latent
    decoded at another frame's agent position and object pose looks like that other frame, not
    like its own; the object-pose head reads the pose back from latents of frames it never saw;
    observing refines that pose by rendering (the drawn frame matches the real one better); imagining
    moves the object by the object-dynamics head and encodes the drawn frame again. Without a pose
    the decoder refuses to decode."""
    torch.manual_seed(0)
    rows, held_out = bar_rows(), bar_rows(6, seed=1)
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0)
    cfg = PixelTrainConfig(tokenizer_steps=150, tokenizer_batch=16, tokenizer_lr=3e-3, object_decoder_steps=250,
                           object_decoder_lr=3e-3, dynamics_steps=300, dynamics_batch=32, dynamics_lr=3e-3,
                           **HEADS)
    train_tokenizer(model, rows, held_out, cfg, progress=False)
    r = {k: torch.as_tensor(v) for k, v in held_out.items()}
    a, b = torch.arange(0, 40, 2), torch.arange(1, 41, 2)  # pairs of different poses
    with torch.no_grad():
        z = model.tokenizer.encode(to_unit(r["pixels"][a])[:, None])[:, 0]
        drawn = to_uint8(model.tokenizer.decode(z, model.norm_obs(r["agent_pos"][b]), model.norm_object_pose(r["block_pose"][b])))
    to_b, to_a = float(psnr(drawn, r["pixels"][b]).mean()), float(psnr(drawn, r["pixels"][a]).mean())
    assert to_b > to_a + 3, (to_b, to_a)
    with pytest.raises(ValueError, match="object_pose"):
        model.tokenizer.decode(z, model.norm_obs(r["agent_pos"][b]))

    train_dynamics(model, rows, cfg, fit_stats=True, progress=False)
    with torch.no_grad():
        pose = model.object_head(encode_rows(model, r))
    true = model.norm_object_pose(r["block_pose"])[:, :2]
    err, guess = (pose[:, :2] - true).norm(dim=-1).mean(), (true - true.mean(0)).norm(dim=-1).mean()
    assert float(err) < 0.75 * float(guess), (float(err), float(guess))  # better than the mean position
    carry = model.observe(model.initial(3), {"pixels": r["pixels"][:3], "agent_pos": r["agent_pos"][:3]},
                          r["agent_pos"][:3], torch.ones(3, dtype=torch.bool))
    with torch.no_grad():
        def render_error(pose: torch.Tensor) -> float:
            drawn = model.tokenizer.decode(carry["latents"][:, -1], model.norm_obs(r["agent_pos"][:3]), pose)
            return float((drawn - to_unit(r["pixels"][:3])).pow(2).mean())

        assert render_error(carry["object_pose"][:, -1]) < render_error(model.object_head(carry["latents"][:, -1]))  # fitted
    world = model.object_pose(carry)  # the carried pose in the agent state's units (x, y, angle)
    assert world.shape == (3, 3) and torch.allclose(model.norm_object_pose(world), carry["object_pose"][:, -1], atol=1e-5)
    before = carry
    carry, pred = model.imagine(carry, r["agent_pos"][3:6])
    dyn = model.object_dynamics  # the object moves by the object-dynamics head's change
    assert torch.allclose(dyn.change(before["object_pose"][:, -1], carry["object_pose"][:, -1]), dyn(
        before["object_pose"], torch.cat([model.norm_obs(before["agent_pos"]), model.norm_obs(pred.obs)[:, None]], dim=1),
        torch.cat([model.norm_action(before["prev_action"]), model.norm_action(r["agent_pos"][3:6])[:, None]], dim=1))[0], atol=1e-5)
    again = model.tokenizer.encode(to_unit(torch.stack([r["pixels"][:3], pred.extras["pixels"]], dim=1)))[:, 1]
    assert torch.allclose(carry["latents"][:, -1], again, atol=1e-5)  # the context is the drawn frame's latent
    windows = FrameWindows({**{k: rows[k] for k in ("agent_pos", "action", "coverage", "episode")},
                            "latents": encode_rows(model, {k: torch.as_tensor(v) for k, v in rows.items()})}, context=2, future=1)
    with pytest.raises(ValueError, match="block_pose"):
        model.loss(windows.sample(4))


def test_state_heads_train_apart_and_learn_the_push():
    """``train_dynamics`` trains the DiT, the heads on latents and the heads on states as separate
    parts: with only the state heads' steps the DiT and the latent heads are untouched, and the
    object-dynamics head learns how the pusher moves the bar (held-out pose-change error well
    under that of predicting no motion)."""
    torch.manual_seed(0)
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("dit.", "coverage_head.", "object_head."))}
    cfg = PixelTrainConfig(dynamics_steps=0, head_steps=0, state_head_steps=400, state_head_batch=128, state_head_lr=3e-3)
    train_dynamics(model, bar_rows(40, pushed=True), cfg, fit_stats=True, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    held = {k: torch.as_tensor(v) for k, v in bar_rows(6, seed=1, pushed=True).items()}
    windows = FrameWindows({**{k: held[k] for k in ("agent_pos", "action", "coverage", "episode", "block_pose")},
                            "latents": encode_rows(model, held)}, context=2, future=1, seed=0)
    batch = windows.sample(256)
    poses = model.norm_object_pose(batch["block_pose"])
    still = (model.object_dynamics.change(poses[:, -2], poses[:, -1]) / model.object_dynamics.SCALE).pow(2).mean()
    with torch.no_grad():
        learned = model.state_head_loss(batch)["object_change_mse"]
    assert float(learned) < 0.2 * float(still), (float(learned), float(still))


def test_object_rollouts_learn_from_state_rows():
    """The object-dynamics head learns from rows without frames (``state_rows``; with only the state
    parts training no frame is encoded, so ``train`` needs none either), its one-step rollout loss is
    ``state_head_loss``'s one-step loss, and after the rollout part its open-loop error on held-out
    episodes stays under that of predicting no motion at every step of the horizon."""
    torch.manual_seed(0)
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0,
                        object_dynamics_hidden=64)

    def no_frames(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in rows.items() if k != "pixels"}

    cfg = PixelTrainConfig(dynamics_steps=0, head_steps=0, state_head_steps=300, state_head_batch=128, state_head_lr=3e-3,
                           object_rollout_steps=150, object_rollout_horizon=4, object_rollout_batch=64, object_rollout_lr=1e-3)
    metrics = train_dynamics(model, no_frames(bar_rows(20, pushed=True)), cfg, progress=False,
                             state_rows=no_frames(bar_rows(20, seed=2, pushed=True)))
    assert "final_object_rollout_mse" in metrics
    held = bar_rows(6, seed=1, pushed=True)
    windows = FrameWindows({k: torch.as_tensor(held[k]) for k in ("agent_pos", "action", "coverage", "episode", "block_pose")},
                           context=2, future=1, seed=0)
    batch = windows.sample(64)
    with torch.no_grad():
        one_step = model.state_head_loss(batch)["object_change_mse"]
        assert torch.allclose(model.object_rollout_loss(batch)["object_rollout_mse"], one_step, rtol=1e-3)
    with pytest.raises(ValueError, match="K \\+ H > K"):  # windows without a step to roll
        model.object_rollout_loss(FrameWindows(windows.data, context=2, future=0).sample(4))
    with pytest.raises(ValueError, match="draws the object"):
        build_model("pixel_dit", spec(), **TINY).object_rollout_loss(batch)
    err = object_open_loop(model, held, horizon=4, starts=32)
    assert err["position_error"].shape == (30, 4)  # every held-out row with 4 successors (5 of 9 per episode)
    assert (err["position_error"].mean(0) < err["still_position_error"].mean(0)).all(), err
    # the trained head moves the bar about as far as it really moved (a still prediction would give 0)
    assert ((err["predicted_motion"].mean(0) / err["still_position_error"].mean(0) - 1).abs() < 0.5).all(), err


def test_checkpoint_and_pixel_envs(tmp_path, trained_square_model):
    from gymnasium.utils.env_checker import check_env

    model, rows, _ = trained_square_model
    first = rows["step"] == 0
    save_checkpoint(model, tmp_path / "m", extra={"task": "toy"},
                    tensors={"start/pixels": torch.as_tensor(rows["pixels"][first]), "start/agent_pos": torch.as_tensor(rows["agent_pos"][first])})
    loaded, extra, tensors = load_checkpoint(tmp_path / "m")
    assert extra["task"] == "toy" and tensors["start/pixels"].dtype == torch.uint8
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])

    env = gym.make("wam/PushT-Pixels-Imagined-v0", model=str(tmp_path / "m"), render_mode="rgb_array", max_episode_steps=20)
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=3)
    assert obs["pixels"].shape == (SIZE, SIZE, 3) and obs["pixels"].dtype == np.uint8
    obs2, r, term, trunc, info = env.step(np.array([300.0, 200.0], np.float32))
    assert 0.0 <= r <= 1.0 and "coverage" in info and env.render().shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.array([600.0, 0.0], np.float32))

    venv = gym.make_vec("wam/PushT-Pixels-Imagined-v0", num_envs=5, vectorization_mode="vector_entry_point",
                        model=model, start_data={"pixels": rows["pixels"][first], "agent_pos": rows["agent_pos"][first]},
                        max_episode_steps=3)
    obs, _ = venv.reset(seed=0)
    assert obs["pixels"].shape == (5, SIZE, SIZE, 3) and torch.is_tensor(obs["pixels"]) and obs["agent_pos"].dtype == torch.float32
    for t in range(3):
        obs, reward, term, trunc, info = venv.step(torch.full((5, 2), 256.0))
    assert bool(trunc.all()) and info["final_obs"]["pixels"].shape == (5, SIZE, SIZE, 3)
    assert venv.render().shape == (5, SIZE, SIZE, 3)

    imagination = PixelImagination(model, {"pixels": rows["pixels"][first], "agent_pos": rows["agent_pos"][first]})
    carry = imagination.start(4, index=torch.tensor([2, 0, 2, 1]))  # a repeated start frame is observed once
    pick = torch.tensor([2, 0, 1])
    obs = {"pixels": imagination.start_pixels[pick], "agent_pos": imagination.start_pos[pick]}
    each = model.observe(model.initial(3), obs, obs["agent_pos"], torch.ones(3, dtype=torch.bool))
    assert set(carry) == set(each)
    for k, v in each.items():
        assert torch.allclose(carry[k].float(), v[torch.tensor([0, 1, 0, 2])].float(), atol=1e-5), k

    with pytest.raises(ValueError, match="precision"):
        PixelImagination(model, {"pixels": rows["pixels"][first], "agent_pos": rows["agent_pos"][first]}, precision="fp8")
    half = PixelImagination(model, {"pixels": rows["pixels"][first], "agent_pos": rows["agent_pos"][first]}, precision="bfloat16")
    steps = {}
    for name, im in (("float32", imagination), ("bfloat16", half)):
        im.seed(0)
        steps[name] = im.step(carry, torch.full((4, 2), 300.0))[0]
    for k, v in steps["float32"].items():  # bfloat16 inside the DiT and tokenizer only: the carry keeps its dtypes
        assert steps["bfloat16"][k].dtype == v.dtype, k
    assert (steps["bfloat16"]["pixels"].float() - steps["float32"]["pixels"].float()).abs().mean() < 3.0


def test_cosmos_adapter_builds_and_steps():
    pytest.importorskip("diffusers", reason="the Cosmos adapter needs the `pixels` extra (diffusers)")
    from world_models.pixel.cosmos_adapter import load_cosmos, tiny_cosmos

    torch.manual_seed(0)
    model = tiny_cosmos(spec(), frame_size=32)
    start = {"pixels": torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8), "agent_pos": torch.full((2, 2), 200.0)}
    carry = model.observe(model.initial(2), start, start["agent_pos"], torch.ones(2, dtype=torch.bool))
    batch = {"latents": torch.randn(2, 3, 4, 4, 4), "agent_pos": torch.rand(2, 3, 2) * 512,
             "prev_action": torch.rand(2, 3, 2) * 512, "coverage": torch.rand(2, 3), "valid": torch.ones(2, 3, dtype=torch.bool)}
    model.loss(batch)["loss"].backward()
    assert model.dit.transformer.time_embed.to_temb.weight.grad is not None  # the action path trains
    with torch.no_grad():
        for p in (model.dit.transformer.time_embed.to_temb.weight, model.dit.transformer.time_embed.to_emb.weight):
            p.normal_(0, 0.5)  # as after post-training: actions now reach the adaLN
        preds = [model.imagine(carry, torch.full((2, 2), a), generator=torch.Generator().manual_seed(0))[1] for a in (50.0, 450.0)]
    assert preds[0].extras["pixels"].shape == (2, 32, 32, 3)
    assert not torch.allclose(preds[0].extras["latent"], preds[1].extras["latent"])
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_cosmos("/nonexistent/cosmos", spec(), 32)


def test_pusht_task_collects_frames():
    pytest.importorskip("gym_pusht", reason="Push-T needs the `pixels` extra (gym-pusht)")
    from tasks.pusht import PushPolicy, block_centroid, centroid_from_frame, collect_pusht, make_pusht_env

    rows = collect_pusht(2, max_steps=10, seed=0, progress=False)
    assert rows["pixels"].shape[1:] == (64, 64, 3) and rows["pixels"].dtype == np.uint8
    assert rows["last"].sum() == 2 and (rows["coverage"] >= 0).all()
    states = collect_pusht(2, max_steps=10, seed=0, progress=False, pixels=False)  # the same episodes, nothing rendered
    assert "pixels" not in states and all(np.allclose(states[k], rows[k]) for k in states)
    env = make_pusht_env()
    obs, info = env.reset(seed=5)
    est = centroid_from_frame(obs["pixels"])
    assert np.linalg.norm(est - block_centroid(info["block_pose"])) < 15.0
    a = PushPolicy(noise=50.0).act(obs)
    assert env.action_space.contains(a)


def test_loop_collects_and_trains_pusht(tmp_path):
    pytest.importorskip("gym_pusht", reason="Push-T needs the `pixels` extra (gym-pusht)")
    from wam.config import ConfigError, load_config
    from wam.loop import run_collect, run_train_model

    cfg = load_config([
        "task=pusht", "model=pixel_dit", f"run_dir={tmp_path}", "progress=false", "collect.steps=160",
        "model.val_fraction=0.5", "model.history=2", "model.train.tokenizer_steps=2", "model.train.dynamics_steps=2",
        "model.train.tokenizer_batch=2", "model.train.dynamics_batch=2", "model.train.object_decoder_steps=2",
        "model.train.head_batch=2", "model.train.head_steps=2",
        "model.train.state_head_steps=2", "model.train.state_head_batch=2", "model.train.object_rollout_steps=2",
        "model.train.object_rollout_batch=2", "model.params.dim=16", "model.params.depth=1",
        "model.params.heads=2", "model.params.tokenizer_channels=[8,8,8,8]", "model.params.latent_channels=4",
    ])
    run_collect(cfg)  # collect.steps // 151 = one episode of up to 150 actions ...
    run_collect(cfg, seed_offset=1)  # ... appended: 2 episodes, one held out
    model, metrics = run_train_model(cfg)
    assert metrics["tokenizer_psnr"] > 0 and model.k == 2
    env = gym.make("wam/PushT-Pixels-Imagined-v0", model=str(tmp_path / "world_model"))
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (64, 64, 3)
    with pytest.raises(ConfigError, match="pixel_dit"):
        run_train_model({**cfg, "model": {**cfg["model"], "name": "rwm_gru"}})


def test_object_frame_dynamics_is_rotation_equivariant():
    """``object_dynamics_frame="object"``: the head sees the push in the object's frame, so turning the
    whole scene (earlier poses, agent positions, actions) about the object turns the predicted change with
    it (exactly, once the weights on the absolute pose, which is there for the walls, are zero); the
    image-frame head does not have that property; an unknown frame is refused by name."""
    torch.manual_seed(0)
    head = ObjectDynamicsHead(context=3, hidden=32, frame="object", members=2)
    with torch.no_grad():
        head.net.layers[0].weight[:, 3 * 4:3 * 4 + 4] = 0  # the absolute pose (x, y, cos, sin) of the last row
    b = 16
    poses = torch.randn(b, 3, 4)
    poses[..., 2:] = torch.nn.functional.normalize(poses[..., 2:], dim=-1)
    agent, actions, turn = torch.randn(b, 4, 2), torch.randn(b, 4, 2), torch.rand(b) * 6.28
    c, s = turn.cos()[:, None], turn.sin()[:, None]

    def rotate(p: torch.Tensor) -> torch.Tensor:  # about the last pose's position
        rel = p - poses[:, -1:, :2]
        return poses[:, -1:, :2] + torch.stack([c * rel[..., 0] - s * rel[..., 1], s * rel[..., 0] + c * rel[..., 1]], -1)

    heading = torch.atan2(poses[..., 3], poses[..., 2]) + turn[:, None]
    turned = torch.cat([rotate(poses[..., :2]), heading.cos()[..., None], heading.sin()[..., None]], -1)
    with torch.no_grad():
        d, d_turned = head(poses, agent, actions), head(turned, rotate(agent), rotate(actions))  # (E, B, 3)
    expected = torch.stack([c[:, 0] * d[..., 0] - s[:, 0] * d[..., 1], s[:, 0] * d[..., 0] + c[:, 0] * d[..., 1], d[..., 2]], -1)
    assert torch.allclose(d_turned, expected, atol=1e-5)
    image = ObjectDynamicsHead(context=3, hidden=32, frame="image")
    with torch.no_grad():
        assert not torch.allclose(image(turned, rotate(agent), rotate(actions))[..., :2], image(poses, agent, actions)[..., :2], atol=1e-3)
    with pytest.raises(ValueError, match="frame must be one of"):
        ObjectDynamicsHead(context=3, frame="world")
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0)
    assert model.object_dynamics.frame == "image"  # checkpoints saved before the option load as they were trained


def test_object_dynamics_ensemble_disagrees_off_its_data_and_flags_imagined_steps():
    """``object_dynamics_members`` > 1: bootstrap-weighted members learn the push alike on pushes like their
    data and disagree more on windows unlike it (a bar that jumps at random); every member moves its own
    copy of the object through an imagined rollout, the frame draws their mean pose, ``uncertainty`` is
    their spread in world units, and ``PixelImagination(max_spread=...)`` marks the steps above it."""
    torch.manual_seed(0)
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0,
                        object_dynamics_hidden=64, object_dynamics_members=4)
    assert model.member_weights(6, torch.device("cpu")).shape == (4, 6)
    cfg = PixelTrainConfig(dynamics_steps=0, head_steps=0, state_head_steps=400, state_head_batch=128, state_head_lr=3e-3)
    train_dynamics(model, {k: v for k, v in bar_rows(30, pushed=True).items() if k != "pixels"}, cfg, progress=False)
    pushed = object_open_loop(model, bar_rows(6, seed=1, pushed=True), horizon=1, starts=64)
    jumps = object_open_loop(model, bar_rows(6, seed=1, pushed=False), horizon=1, starts=64)
    assert (pushed["position_error"] < pushed["still_position_error"]).float().mean() > 0.9  # the mean pose learned the push
    assert float(jumps["spread"].mean()) > 2.0 * float(pushed["spread"].mean()), (jumps["spread"].mean(), pushed["spread"].mean())

    rows = bar_rows(3, seed=2, pushed=True)
    start = {"pixels": torch.as_tensor(rows["pixels"][:2]), "agent_pos": torch.as_tensor(rows["agent_pos"][:2])}
    carry = PixelImagination(model, start).start(2, torch.tensor([0, 1]))
    assert carry["object_members"].shape == (2, 4, 2, 4)
    assert torch.allclose(carry["object_members"], carry["object_pose"][:, None].expand(-1, 4, -1, -1))  # observed: all agree
    action = torch.as_tensor(rows["agent_pos"][3:5])
    with torch.no_grad():
        new, pred = model.imagine(carry, action, sample=False)
    members = new["object_members"][:, :, -1]  # (B, E, 4)
    assert torch.allclose(new["object_pose"][:, -1], ObjectDynamicsHead.mean_pose(members.transpose(0, 1)), atol=1e-6)
    spread = (members[..., :2] * model.obs_half).std(dim=1).norm(dim=-1)
    assert torch.allclose(pred.uncertainty, spread, atol=1e-4) and bool((spread > 0).all())
    for limit, flagged in ((None, False), (float(spread.min()) / 2, True), (float(spread.max()) * 2, False)):
        imagination = PixelImagination(model, start, max_spread=limit)
        _, step = imagination.step(imagination.start(2, torch.tensor([0, 1])), action)
        assert bool(step["uncertain"].all()) == flagged and bool(step["uncertain"].any()) == flagged
    with pytest.raises(ValueError, match="max_spread"):
        PixelImagination(model, start, max_spread=0.0)
    with pytest.raises(ValueError, match="members must be >= 1"):
        ObjectDynamicsHead(context=2, members=0)


def test_stochastic_object_dynamics_learns_the_spread_and_imagination_draws_from_it():
    """``object_dynamics_noise``: the head learns the spread of the object's change by its likelihood — wide where
    the push's outcome varies (the bar's position jittered by 8 world units every step), narrow where it does not —
    and a sampled imagination draws each step's change (two generators: two outcomes), the mean path stays
    deterministic; the mean-only head of the same data has no spread to draw."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def state_rows(seed: int, jitter: float) -> dict[str, np.ndarray]:
        rows = {k: v for k, v in bar_rows(30, seed=seed, pushed=True).items() if k != "pixels"}
        rows["block_pose"][:, :2] += rng.normal(0.0, jitter, rows["block_pose"][:, :2].shape).astype(np.float32)
        return rows

    cfg = PixelTrainConfig(dynamics_steps=0, head_steps=0, state_head_steps=600, state_head_batch=128, state_head_lr=3e-3)
    held = state_rows(5, 0.0)
    windows = FrameWindows({k: torch.as_tensor(held[k]) for k in ("agent_pos", "action", "coverage", "episode", "block_pose")},
                           context=2, future=1, seed=0)
    batch = windows.sample(256)
    std = {}
    for jitter in (0.0, 8.0):
        model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0,
                            object_dynamics_hidden=64, object_dynamics_noise=True)
        metrics = train_dynamics(model, state_rows(0, jitter), cfg, progress=False)
        assert "final_object_change_nll" in metrics
        states, acts = model.norm_obs(batch["agent_pos"]), model.norm_action(batch["prev_action"])
        with torch.no_grad():
            _, log_std = model.object_dynamics.distribution(model.norm_object_pose(batch["block_pose"])[:, :-1], states, acts)
        std[jitter] = float((log_std[..., 0].exp() * model.object_dynamics.SCALE * model.obs_half[0]).median())
    # one step's change of a position jittered by 8 units at both ends varies by 8 * sqrt(2) = 11.3 units
    assert 5.0 < std[8.0] < 25.0 and std[8.0] > 3 * std[0.0], std

    rows = bar_rows(3, seed=2, pushed=True)
    start = {"pixels": torch.as_tensor(rows["pixels"][:2]), "agent_pos": torch.as_tensor(rows["agent_pos"][:2])}
    carry = PixelImagination(model, start).start(2, torch.tensor([0, 1]))
    action = torch.as_tensor(rows["agent_pos"][3:5])
    with torch.no_grad():
        drawn = [model.imagine(carry, action, generator=torch.Generator().manual_seed(s))[0]["object_pose"][:, -1] for s in (0, 1)]
        mean = [model.imagine(carry, action, sample=False)[0]["object_pose"][:, -1] for _ in range(2)]
    moved = ((drawn[0] - drawn[1])[:, :2] * model.obs_half).norm(dim=-1)
    assert bool((moved > 1.0).all()) and torch.equal(mean[0], mean[1]), moved
    plain = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0, object_dynamics_hidden=64)
    poses = plain.norm_object_pose(batch["block_pose"])[:, :-1]
    assert plain.object_dynamics.distribution(poses, plain.norm_obs(batch["agent_pos"]), plain.norm_action(batch["prev_action"]))[1] is None


def test_common_noise_gives_rollouts_from_one_start_the_same_draws():
    """``PixelImagination(common_noise=True)``: episodes started from the same frame meet the same draws (flow,
    context noise and the drawn object change), so under the same actions they imagine the same frames and object
    poses, while episodes from other starts and, without it, every episode draw their own."""
    torch.manual_seed(0)
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0,
                        object_dynamics_hidden=16, object_dynamics_noise=True).eval()
    rows = bar_rows(3, seed=2, pushed=True)
    start = {"pixels": torch.as_tensor(rows["pixels"][:2]), "agent_pos": torch.as_tensor(rows["agent_pos"][:2])}
    action = torch.as_tensor(rows["agent_pos"][3:4]).expand(4, -1).contiguous()
    for common in (True, False):
        imagination = PixelImagination(model, start, common_noise=common)
        imagination.seed(0)
        carry = imagination.start(4, torch.tensor([0, 0, 1, 1]))
        for _ in range(3):
            carry, _ = imagination.step(carry, action)
        for a, b in ((0, 1), (2, 3)):
            twins = torch.equal(carry["pixels"][a], carry["pixels"][b]) and torch.equal(carry["object_pose"][a], carry["object_pose"][b])
            assert twins == common, (common, a, b)
        assert not torch.equal(carry["object_pose"][0], carry["object_pose"][2])


def test_object_dynamics_checkpoints_before_the_ensemble_load_as_one_member(tmp_path):
    """A head saved as one ``nn.Sequential`` (before the ensemble) loads as a one-member ensemble that
    computes the same changes."""
    torch.manual_seed(0)
    head = ObjectDynamicsHead(context=2, hidden=16, frame="object")
    seq = torch.nn.Sequential(*[m for i, o in ((24, 16), (16, 16), (16, 16), (16, 3))
                                for m in (torch.nn.Linear(i, o), torch.nn.SiLU())][:-1])
    old = {f"object_dynamics.net.{k}": v for k, v in seq.state_dict().items()}
    state = ObjectDynamicsHead.upgrade_state_dict(old, "object_dynamics.")
    head.load_state_dict({k.removeprefix("object_dynamics."): v for k, v in state.items()})
    x = torch.randn(5, 24)
    with torch.no_grad():
        assert torch.allclose(head.net(x)[0], seq(x), atol=1e-6)
    model = build_model("pixel_dit", spec(), **TINY, decoder_agent_radius=1.0, decoder_object_extent=5.0, object_dynamics_hidden=16)
    save_checkpoint(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    saved = load_file(weights)
    for i in range(4):  # write the old layout
        w, b = saved.pop(f"object_dynamics.net.layers.{i}.weight"), saved.pop(f"object_dynamics.net.layers.{i}.bias")
        saved[f"object_dynamics.net.{2 * i}.weight"], saved[f"object_dynamics.net.{2 * i}.bias"] = w[0].t().contiguous(), b[0, 0]
    save_file(saved, weights)
    back, _, _ = load_checkpoint(tmp_path / "m")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
