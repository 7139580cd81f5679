"""Training of the pixel world model in two stages, and its image metrics.

1. the tokenizer on pairs of consecutive frames (reconstruction),
2. frozen tokenizer: every frame is encoded once (causally), then the DiT, the heads on latents
   and the heads on states train on latent windows, one part after the other
   (:meth:`PixelWorldModel.flow_loss`, ``latent_head_loss``, ``state_head_loss``).

Metrics: PSNR (dB, frames in [0, 1]) and SSIM (11x11 Gaussian window, sigma 1.5, per channel,
averaged), and open-loop rollouts from real context with the real actions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from world_models.pixel.frames import FrameWindows
from world_models.pixel.model import PixelWorldModel
from world_models.pixel.tokenizer import to_uint8, to_unit


@dataclass
class PixelTrainConfig:
    """Steps, batch sizes (clips / windows) and learning rates of the two stages. Training runs on
    the model's device (move the model first); frames stay on the CPU and travel per batch."""

    tokenizer_steps: int = 1500
    tokenizer_batch: int = 16
    tokenizer_lr: float = 1e-3
    object_decoder_steps: int = 800  # tokenizers that draw the object: decoder-only steps after the rest
    object_decoder_lr: float = 5e-4
    dynamics_steps: int = 1500
    dynamics_batch: int = 32
    dynamics_lr: float = 5e-4
    head_steps: int = 1500  # heads on latents (coverage, object pose): apart from the DiT, own optimizer and schedule
    head_batch: int = 64  # windows per step (K + 1 latents each, clean and context-noised)
    head_lr: float = 1e-3
    state_head_steps: int = 12000  # heads on states only (agent, object dynamics): small MLPs, cheap steps
    state_head_batch: int = 256
    state_head_lr: float = 1e-3
    object_rollout_steps: int = 0  # then the object-dynamics head on its own H-step rollouts (object_rollout_loss); 0: none
    object_rollout_horizon: int = 16  # H, steps the head is fed its own output
    object_rollout_batch: int = 128
    object_rollout_lr: float = 3e-4
    grad_clip: float = 1.0
    seed: int = 0


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of uint8 frames (..., H, W, 3): (...,)."""
    mse = (pred.float() - target.float()).div(255).pow(2).mean(dim=(-3, -2, -1))
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image of uint8 frames (..., H, W, 3): (...,)."""
    lead = pred.shape[:-3]
    x = pred.reshape(-1, *pred.shape[-3:]).movedim(-1, 1).float() / 255
    y = target.reshape(-1, *target.shape[-3:]).movedim(-1, 1).float() / 255
    g = torch.exp(-((torch.arange(11, dtype=torch.float32) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(3, 1, 11, 11).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=3)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(lead)


def _prev(rows: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Row of the frame before each row ``idx`` (the row itself for an episode's first frame)."""
    return torch.where(rows["step"][idx] > 0, idx - 1, idx)


def _clip_rows(rows: dict[str, torch.Tensor], idx: torch.Tensor, target: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Row indices (prev, frame) of rows ``idx`` (first frames repeat); with ``target`` (B,) rows,
    (prev, frame, target)."""
    return [_prev(rows, idx), idx] + ([] if target is None else [target])


def _clips(rows: dict[str, torch.Tensor], clip: list[torch.Tensor]) -> torch.Tensor:
    """The frames of a clip of rows (list of T (B,) row indices) as (B, T, 3, H, W) in [-1, 1]."""
    return to_unit(torch.stack([rows["pixels"][i] for i in clip], dim=1))


SWAP_HORIZON = 16  # how far ahead (rows) the swap target of a state-drawing tokenizer lies, at most


def _swap_rows(rows: dict[str, torch.Tensor], idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A row 1..SWAP_HORIZON steps after each row ``idx`` in its episode (clipped at its end)."""
    ep = rows["episode"]
    target = (idx + torch.randint(1, SWAP_HORIZON + 1, idx.shape, generator=generator)).clamp_max(len(ep) - 1)
    for _ in range(SWAP_HORIZON):  # step back until in the same episode (at worst: idx itself)
        target = torch.where(ep[target] == ep[idx], target, target - 1)
    return target


def _clip_state(model: PixelWorldModel, rows: dict[str, torch.Tensor], clip: list[torch.Tensor], object_drawn: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """For a clip of rows (list of (B,) row indices): the agent's normalized positions (B, T, 2),
    the object's poses (B, T, 4) when the tokenizer draws the object (else None), and which clips
    (B,) bool show the scene still between its first and last rows but for the agent (and, with
    ``object_drawn``, the object): rows with ``block_pose``; None without it."""
    pos = model.norm_obs(torch.stack([rows["agent_pos"][i] for i in clip], dim=1).float())
    pose = None
    if model.object_head is not None:
        if "block_pose" not in rows:
            raise ValueError("a tokenizer that draws the object from its pose needs rows with block_pose")
        pose = model.norm_object_pose(torch.stack([rows["block_pose"][i] for i in clip], dim=1).float())
    if "block_pose" not in rows:
        return pos, pose, None
    moved = clip[-1] != clip[0]
    if object_drawn:
        return pos, pose, moved
    still = (rows["block_pose"][clip[-1]] - rows["block_pose"][clip[0]]).abs().amax(dim=-1) < 1e-3
    return pos, pose, still & moved


@torch.no_grad()
def encode_rows(model: PixelWorldModel, rows: dict[str, torch.Tensor], batch: int = 256) -> torch.Tensor:
    """Causal latents (N, C, h, w) of every frame row (each frame with the one before it)."""
    model.eval()
    dev = model.latent_mean.device
    n = len(rows["step"])
    out = [model.tokenizer.encode(_clips(rows, _clip_rows(rows, torch.arange(i, min(i + batch, n)))).to(dev))[:, 1].cpu()
           for i in range(0, n, batch)]
    return torch.cat(out)


def _rows(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in data.items()}


def train_pixel_model(model: PixelWorldModel, train: dict[str, Any], val: dict[str, Any], cfg: PixelTrainConfig,
                      progress: bool = True, state_rows: dict[str, Any] | None = None) -> dict[str, float]:
    """Train ``model`` on frame rows (see :mod:`world_models.pixel.frames`), in place: the
    tokenizer (:func:`train_tokenizer`), then the DiT and heads (:func:`train_dynamics`; ``state_rows``:
    rows without frames for the heads on states).

    Returns metrics: ``tokenizer_psnr`` / ``tokenizer_ssim`` (held-out reconstructions),
    final losses, and wall-clock seconds per stage.
    """
    metrics = train_tokenizer(model, train, val, cfg, progress=progress)
    metrics.update(train_dynamics(model, train, cfg, fit_stats=True, progress=progress, state_rows=state_rows))
    return metrics


def train_tokenizer(model: PixelWorldModel, train: dict[str, Any], val: dict[str, Any], cfg: PixelTrainConfig,
                    progress: bool = True) -> dict[str, float]:
    """Stage 1: ``cfg.tokenizer_steps`` AdamW steps (cosine schedule) of the tokenizer's
    reconstruction loss on clips of ``train`` rows. A tokenizer that draws the object from its
    pose (``decoder_object_extent`` > 0) learns in two parts: first everything but the object's template
    (the encoder learns the whole scene, the object included, so the DiT can move it and the
    pose head can read it), then ``cfg.object_decoder_steps`` of the decoder alone, encoder
    frozen, drawing agent and object at the state of a row up to SWAP_HORIZON steps later
    (:func:`_swap_rows`). Returns ``tokenizer_seconds`` and the round trip on ``val``
    (:func:`reconstruction_metrics`)."""
    torch.manual_seed(cfg.seed)
    tr = _rows(train)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    tok = model.tokenizer
    tok.train()
    scene = [p for n, p in tok.named_parameters() if not n.startswith("object_")]  # object convs stay zero: no effect
    _fit_tokenizer(model, tr, scene, cfg.tokenizer_steps, cfg.tokenizer_lr, False, cfg, gen, progress)
    if model.object_head is not None:
        decoder = [p for n, p in tok.named_parameters() if not n.startswith(("enc.", "temporal.", "to_latent."))]
        _fit_tokenizer(model, tr, decoder, cfg.object_decoder_steps, cfg.object_decoder_lr, True, cfg, gen, progress)
    return {"tokenizer_seconds": time.time() - t0, **reconstruction_metrics(model, val)}


def _fit_tokenizer(model: PixelWorldModel, tr: dict[str, torch.Tensor], params: list[torch.nn.Parameter], steps: int,
                   lr: float, object_stage: bool, cfg: PixelTrainConfig, gen: torch.Generator, progress: bool) -> None:
    """``steps`` AdamW steps (cosine schedule) of the tokenizer's loss on ``params``: on (prev,
    frame) clips, or with ``object_stage`` on (prev, frame, later row) clips whose last frame is
    drawn from the first's latent."""
    dev = model.latent_mean.device

    def loss() -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(tr["step"]), (cfg.tokenizer_batch,), generator=gen)
        target = _swap_rows(tr, idx, gen) if object_stage else None
        clip = _clip_rows(tr, idx, target)
        pos, pose, still = _clip_state(model, tr, clip, object_stage)  # unused by a tokenizer that does not draw the agent
        return model.tokenizer.loss(_clips(tr, clip).to(dev), pos.to(dev), None if still is None else still.to(dev),
                                    None if pose is None else pose.to(dev))

    _fit(params, loss, steps, lr, cfg.grad_clip, "object decoder" if object_stage else "tokenizer", progress)


def train_dynamics(model: PixelWorldModel, train: dict[str, Any], cfg: PixelTrainConfig, fit_stats: bool = False,
                   progress: bool = True, state_rows: dict[str, Any] | None = None) -> dict[str, float]:
    """Stage 2 alone, the tokenizer frozen, in parts with their own steps, batch, AdamW, cosine
    schedule and gradient clip: the DiT's flow loss (``cfg.dynamics_*``), the heads on latents
    (``cfg.head_*``: coverage, object pose), the heads on states (``cfg.state_head_*``: agent,
    object dynamics) and, with ``cfg.object_rollout_steps``, the object-dynamics head on its own
    multi-step rollouts (``cfg.object_rollout_*``). No head reads the DiT's output, and under the
    DiT's schedule and clip they did not learn (run 8 in BENCHMARKS.md); the state heads are cheap
    MLPs that need many samples (run 9): ``state_rows`` (rows of real episodes without ``pixels``,
    e.g. ``collect_pusht(..., pixels=False)``) join ``train``'s rows for them. Frames are encoded
    only when the DiT or the latent heads train. ``fit_stats`` refits the latent normalization (a
    fresh model); without it the trained model's units are kept, so this also fine-tunes a trained
    model on new rows. Returns the final losses and ``dynamics_seconds``."""
    torch.manual_seed(cfg.seed)
    tr = _rows(train)
    dev = model.latent_mean.device
    t0 = time.time()
    fields = ("agent_pos", "action", "coverage", "episode") + (("block_pose",) if model.object_head is not None else ())
    windows = None
    if cfg.dynamics_steps or cfg.head_steps or fit_stats:
        latents_tr = encode_rows(model, tr)
        if fit_stats:
            model.fit_latent_stats(latents_tr, tr["episode"])
        windows = FrameWindows({**{k: tr[k] for k in fields}, "latents": latents_tr},
                               context=model.k, future=1, seed=cfg.seed)
    states = {k: tr[k] for k in fields}
    if state_rows is not None:
        extra = _rows({k: state_rows[k] for k in fields})
        extra["episode"] = extra["episode"] + int(states["episode"].max()) + 1
        states = {k: torch.cat([states[k], extra[k].to(states[k].dtype)]) for k in fields}
    state_windows = FrameWindows(states, context=model.k, future=1, seed=cfg.seed)
    model.train()
    parts = [("dynamics", [model.dit], model.flow_loss, cfg.dynamics_steps, cfg.dynamics_batch, cfg.dynamics_lr, windows),
             ("latent heads", [model.coverage_head, model.object_head], model.latent_head_loss, cfg.head_steps,
              cfg.head_batch, cfg.head_lr, windows),
             ("state heads", [model.agent_head, model.object_dynamics], model.state_head_loss, cfg.state_head_steps,
              cfg.state_head_batch, cfg.state_head_lr, state_windows)]
    if cfg.object_rollout_steps and model.object_head is not None:
        rollouts = FrameWindows(states, context=model.k, future=cfg.object_rollout_horizon, seed=cfg.seed)
        parts.append(("object rollouts", [model.object_dynamics], model.object_rollout_loss, cfg.object_rollout_steps,
                      cfg.object_rollout_batch, cfg.object_rollout_lr, rollouts))
    out: dict[str, torch.Tensor] = {}
    for desc, modules, loss, steps, batch, lr, source in parts:  # each part runs to the end before the next
        if not steps:
            continue
        params = [p for m in modules if m is not None for p in m.parameters()]
        out.update(_fit(params, lambda: loss({k: v.to(dev) for k, v in source.sample(batch).items()}),
                        steps, lr, cfg.grad_clip, desc, progress))
    out.pop("loss", None)
    model.eval()
    metrics = {f"final_{k}": float(v) for k, v in out.items()}
    metrics["dynamics_seconds"] = time.time() - t0
    return metrics


def _fit(params: list[torch.nn.Parameter], loss: Callable[[], dict[str, torch.Tensor]], steps: int, lr: float,
         clip: float, desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """``steps`` AdamW steps (cosine schedule, gradient-norm clip ``clip``) on ``params`` of
    ``loss()`` (a dict with ``"loss"`` and detached parts); returns the last step's dict."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    out: dict[str, torch.Tensor] = {}
    for _ in bar:
        out = loss()
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        bar.set_postfix({k: f"{float(v):.4f}" for k, v in out.items() if k != "loss"})
    return {k: v.detach() for k, v in out.items()}


@torch.no_grad()
def reconstruction_metrics(model: PixelWorldModel, rows: dict[str, Any], limit: int = 512) -> dict[str, float]:
    """Tokenizer round trip on (up to ``limit``) frame rows: mean PSNR (dB) and SSIM."""
    model.eval()
    r = _rows(rows)
    idx = torch.linspace(0, len(r["step"]) - 1, min(limit, len(r["step"]))).long()
    z = model.tokenizer.encode(_clips(r, _clip_rows(r, idx)).to(model.latent_mean.device))[:, 1]
    pose = model.norm_object_pose(r["block_pose"][idx].float()).to(z.device) if model.object_head is not None else None
    rec = to_uint8(model.tokenizer.decode(z, model.norm_obs(r["agent_pos"][idx].float()).to(z.device), pose)).cpu()
    return {"tokenizer_psnr": float(psnr(rec, r["pixels"][idx]).mean()), "tokenizer_ssim": float(ssim(rec, r["pixels"][idx]).mean())}


def start_rows(episode: torch.Tensor, horizon: int, count: int, seed: int = 0) -> torch.Tensor:
    """Up to ``count`` random rows (long, on ``episode``'s device) whose episode (``episode`` (N,) ids,
    rows in step order) goes on for ``horizon`` more rows; a ValueError when there are none."""
    idx = torch.arange(len(episode) - horizon, device=episode.device)
    cand = idx[episode[idx + horizon] == episode[idx]]
    if len(cand) == 0:
        raise ValueError(f"no held-out episode has {horizon} steps after a start row")
    return cand[torch.randperm(len(cand), generator=torch.Generator().manual_seed(seed))[:count].to(cand.device)]


@torch.no_grad()
def open_loop(model: PixelWorldModel, rows: dict[str, Any], horizon: int, starts: int = 32, sample: bool = False,
              seed: int = 0, autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Open-loop rollouts on held-out rows: warm up on the real frames up to a start row (the
    frames before it in its episode, at most K), then imagine ``horizon`` steps with the real
    actions (``autocast``: see :meth:`PixelWorldModel.imagine`). Starts are drawn among rows with
    ``horizon`` real successors.

    Returns ``real`` / ``imagined`` (S, horizon, H, W, 3) uint8, ``psnr`` / ``ssim`` (S, horizon),
    ``coverage`` (S, horizon) true and ``coverage_pred`` (S, horizon) from the head, and
    ``agent_error`` (S, horizon): distance of the imagined agent state from the real one (state units).
    """
    r = {k: v.to(model.latent_mean.device) for k, v in _rows(rows).items()}
    start = start_rows(r["episode"], horizon, starts, seed)
    k = model.k
    carry = model.initial(len(start))
    step = r["step"][start]
    for j in range(k - 1, -1, -1):  # warm-up on rows start-j .. start; before the episode start: its first row
        first = (step <= j) | (j == k - 1)
        idx = start - torch.minimum(torch.full_like(step, j), step)
        carry = model.observe(carry, {"pixels": r["pixels"][idx], "agent_pos": r["agent_pos"][idx]},
                              r["action"][(idx - 1).clamp_min(0)], first)
    gen = torch.Generator(device=start.device).manual_seed(seed)
    imagined, cov_pred, agent_pred = [], [], []
    for h in range(horizon):
        carry, pred = model.imagine(carry, r["action"][start + h], sample=sample, generator=gen, autocast=autocast)
        imagined.append(pred.extras["pixels"])
        cov_pred.append(pred.extras["coverage"])
        agent_pred.append(pred.obs)
    future = start[:, None] + torch.arange(1, horizon + 1, device=start.device)[None]
    real, fake = r["pixels"][future], torch.stack(imagined, dim=1)
    out = {"real": real, "imagined": fake, "psnr": psnr(fake, real), "ssim": ssim(fake, real),
           "coverage": r["coverage"][future], "coverage_pred": torch.stack(cov_pred, dim=1),
           "agent_error": (torch.stack(agent_pred, dim=1) - r["agent_pos"][future].float()).norm(dim=-1)}
    return {k: v.cpu() for k, v in out.items()}


@torch.no_grad()
def object_open_loop(model: PixelWorldModel, rows: dict[str, Any], horizon: int, starts: int = 256,
                     seed: int = 0, sample: bool = False) -> dict[str, torch.Tensor]:
    """The object-dynamics head alone, open loop on held-out rows (``block_pose`` needed): from the K
    true poses up to a start row, :meth:`PixelWorldModel.roll_object` over ``horizon`` steps with the real
    agent positions and actions (``sample``: each step's change drawn from a stochastic head, seeded
    with ``seed``; else the mean). Returns ``position_error`` (S, horizon) world units (the object's
    position) and ``angle_error`` (S, horizon) radians of the members' mean pose, beside ``still_position_error`` /
    ``still_angle_error``: the errors of predicting no motion (the floor to beat; the first is how far the object
    really moved), ``predicted_motion`` (S, horizon) world units: how far the prediction moved it, and ``spread``
    (S, horizon) world units: the members' disagreement about the position (zeros for one member)."""
    if model.object_head is None:
        raise ValueError("object_open_loop needs a model whose decoder draws the object (decoder_object_extent > 0)")
    r = _rows(rows)
    start = start_rows(r["episode"], horizon, starts, seed)
    windows = FrameWindows({k: r[k] for k in ("agent_pos", "action", "episode", "block_pose")}, context=model.k, future=horizon)
    w = {k: v.to(model.latent_mean.device) for k, v in windows.window(start).items()}
    poses = model.norm_object_pose(w["block_pose"].float())
    k = model.k
    members = model.roll_object(poses[:, :k], model.norm_obs(w["agent_pos"].float()), model.norm_action(w["prev_action"].float()),
                                sample, torch.Generator(poses.device).manual_seed(seed))
    pred = model.object_dynamics.mean_pose(members)  # (S, horizon, 4)

    def errors(guess: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = model.object_dynamics.change(guess, poses[:, k:])
        return (d[..., :2] * model.obs_half).norm(dim=-1).cpu(), d[..., 2].abs().cpu()

    last = poses[:, k - 1:k].expand_as(pred)
    pos, ang = errors(pred)
    still_pos, still_ang = errors(last)
    moved = (model.object_dynamics.change(last, pred)[..., :2] * model.obs_half).norm(dim=-1).cpu()
    spread = model.object_spread(members).cpu()
    return {"position_error": pos, "angle_error": ang, "still_position_error": still_pos, "still_angle_error": still_ang,
            "predicted_motion": moved, "spread": spread}

