"""Supervised warm start of a VLA policy from demonstrations (behaviour cloning, negative log-likelihood)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.vla.policy import VLAPolicy


@dataclass
class BCConfig:
    """Behaviour-cloning steps, batch (frames) and learning rate."""

    steps: int = 12000
    batch: int = 64
    lr: float = 1e-3
    seed: int = 0


def chunk_targets(rows: dict[str, np.ndarray], chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (M,) of every frame an action was taken from and their action chunks
    (M, chunk, A): actions t .. t + chunk - 1 of the same episode, the last one repeated at the end."""
    last = np.asarray(rows["last"], bool)
    n = len(last)
    idx = np.flatnonzero(~last)
    # the last action row of each row's episode: the next `last` row minus one
    next_last = np.minimum.accumulate(np.where(last, np.arange(n), n)[::-1])[::-1]
    j = np.minimum(idx[:, None] + np.arange(chunk)[None, :], (next_last[idx] - 1)[:, None])
    return idx, np.asarray(rows["action"], np.float32)[j]


def train_bc(policy: VLAPolicy, rows: dict[str, np.ndarray], lang: torch.Tensor, cfg: BCConfig,
             progress: bool = False) -> dict[str, float]:
    """Fit ``policy`` to demonstration rows (frame-store layout, ``pixels`` (N, H, W, 3) uint8,
    ``agent_pos``, ``action``, ``last``) whose instruction embeddings are ``lang`` (N, L):
    maximize the log-likelihood of each frame's demonstrated action chunk. Returns the
    final NLL and the mean absolute error of the deterministic chunk (world units)."""
    from tqdm import tqdm

    dev = policy.log_std.device
    idx, chunks = chunk_targets(rows, policy.cfg.chunk)
    pixels = torch.as_tensor(rows["pixels"][idx])
    state = torch.as_tensor(rows["agent_pos"][idx]).float()
    u = ((torch.as_tensor(chunks) - state[:, None, :]) / policy.cfg.action_scale).flatten(1)
    lang = lang[torch.as_tensor(idx)]
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    policy.train()
    bar = tqdm(range(cfg.steps), desc="behaviour cloning", disable=not progress)
    for _ in bar:
        b = torch.randint(0, len(idx), (cfg.batch,), generator=gen)
        img = policy.images(pixels[b].to(dev))
        logp, _ = policy.log_prob(img, state[b].to(dev), lang[b].to(dev), u[b].to(dev))
        loss = -logp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(nll=f"{loss.item():.3f}")
    policy.eval()
    with torch.no_grad():
        b = torch.arange(min(len(idx), 1024))
        mode = policy.sample(policy.images(pixels[b].to(dev)), state[b].to(dev), lang[b].to(dev), deterministic=True)["u"]
        mae = float((mode - u[b].to(dev)).abs().mean()) * policy.cfg.action_scale
    return {"bc_nll": loss.item(), "bc_mae_world": mae, "bc_frames": float(len(idx))}
