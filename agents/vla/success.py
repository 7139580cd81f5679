"""Instruction-conditioned success / progress heads: the reward of post-training in imagination.

A head reads a camera frame (B, H, W, 3) uint8 and an instruction embedding (B, L) and gives a
success logit ("the instruction is fulfilled in this frame": Push-T variants, the T's centroid
within the region radius of the named target) and a progress estimate (the centroid's distance
to the target, world units). It reads frames, not world-model latents, so the same head scores
real and imagined frames and does not depend on one tokenizer. An ensemble of heads (bootstrap
draws of the training pairs, own seeds) gives the mean probability and the members'
disagreement (std of their probabilities), which flags frames the heads cannot judge
(typically imagined frames off the data).

Training pairs are (frame, instruction) over every real frame x every instruction, labelled
from the true block pose, half of each batch drawn from the positive pairs (successes are rare).
Drawing positives that often shifts a head's prior: it learns the odds of success in its batches,
not in the data. Each head's logit carries the correction (Saerens et al., 2002: the log-odds of
the data's positive rate minus the batches'), so probabilities are those of the data's base rate
(measured: precision on held-out real pairs 0.54 without it, BENCHMARKS.md issue 8).
:func:`calibrate` measures precision / recall on held-out real episodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from agents.vla.policy import conv_encoder, load_weights, read_meta, write_module

FORMAT = "wam.success_heads"
FORMAT_VERSION = 1


@dataclass
class SuccessConfig:
    """Ensemble size, network widths and training of the success heads."""

    ensemble: int = 4
    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 128
    lang_hidden: int = 64
    steps: int = 1500
    batch: int = 128
    lr: float = 1e-3
    positive_fraction: float = 0.5       # share of each batch drawn from positive pairs
    distance_scale: float = 256.0        # world units per unit of the progress output
    distance_weight: float = 1.0         # weight of the progress (distance) regression
    uncertainty_threshold: float = 0.2   # ensemble std of the success probability above which a frame is flagged
    seed: int = 0


class SuccessHead(nn.Module):
    """One head: frame (B, H, W, 3) uint8 + language (B, L) -> (success logit (B,), distance (B,) in units of distance_scale)."""

    def __init__(self, image_size: int, lang_dim: int, cfg: SuccessConfig):
        super().__init__()
        self.image = conv_encoder(list(cfg.channels), image_size, cfg.hidden)
        self.lang = nn.Sequential(nn.Linear(lang_dim, cfg.lang_hidden), nn.Tanh())
        self.film = nn.Linear(cfg.lang_hidden, 2 * cfg.hidden)
        self.out = nn.Sequential(nn.Linear(cfg.hidden + cfg.lang_hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 2))

    def forward(self, pixels: torch.Tensor, lang: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.image(pixels.permute(0, 3, 1, 2).float() / 255.0)
        l = self.lang(lang)
        gamma, beta = self.film(l).chunk(2, dim=-1)
        o = self.out(torch.cat([h * (1 + gamma) + beta, l], dim=-1))
        return o[:, 0], o[:, 1]


class SuccessEnsemble(nn.Module):
    """``cfg.ensemble`` heads. ``forward`` returns ``prob`` (B,) mean success probability,
    ``std`` (B,) the members' disagreement, ``distance`` (B,) world units, ``logits`` (E, B)."""

    def __init__(self, image_size: int, lang_dim: int, cfg: SuccessConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SuccessConfig()
        self.heads = nn.ModuleList(SuccessHead(image_size, lang_dim, cfg) for _ in range(cfg.ensemble))
        self.image_size, self.lang_dim = image_size, lang_dim
        # (E,) added to each head's logit: log-odds of the training data's positive rate minus its batches' (train_success)
        self.register_buffer("prior_shift", torch.zeros(cfg.ensemble))

    def check(self, pixels: torch.Tensor, lang: torch.Tensor) -> None:
        s = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (s, s, 3) or pixels.dtype != torch.uint8:
            raise ValueError(f"success head frames must be uint8 (B, {s}, {s}, 3), got {pixels.dtype} {tuple(pixels.shape)}")
        if lang.shape != (pixels.shape[0], self.lang_dim):
            raise ValueError(f"success head language must be ({pixels.shape[0]}, {self.lang_dim}), got {tuple(lang.shape)}")

    def forward(self, pixels: torch.Tensor, lang: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check(pixels, lang)
        logits, dist = zip(*(h(pixels, lang) for h in self.heads))
        logits, dist = torch.stack(logits) + self.prior_shift[:, None], torch.stack(dist)
        p = torch.sigmoid(logits)
        return {"prob": p.mean(0), "std": p.std(0, unbiased=False), "distance": dist.mean(0) * self.cfg.distance_scale,
                "logits": logits}

    @torch.no_grad()
    def judge(self, pixels: torch.Tensor, lang: torch.Tensor, batch: int = 512) -> dict[str, torch.Tensor]:
        """``forward`` in batches without gradients, plus ``success`` (prob > 0.5) and ``flagged``
        (std > uncertainty_threshold) (B,) bool."""
        outs = [self(pixels[i:i + batch], lang[i:i + batch]) for i in range(0, len(pixels), batch)]
        out = {k: torch.cat([o[k] for o in outs], dim=-1) for k in ("prob", "std", "distance")}
        out["success"] = out["prob"] > 0.5
        out["flagged"] = out["std"] > self.cfg.uncertainty_threshold
        return out


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def pair_labels(distance: torch.Tensor, radius: float) -> torch.Tensor:
    """Success labels (N, V) float from distances (N, V) of the T's centroid to each target."""
    return (distance < radius).float()


def train_success(ens: SuccessEnsemble, pixels: torch.Tensor, distance: torch.Tensor, lang: torch.Tensor,
                  radius: float, progress: bool = False) -> dict[str, float]:
    """Train every head on pairs (frame i, instruction v): ``pixels`` (N, H, W, 3) uint8,
    ``distance`` (N, V) world units of frame i's T centroid to target v, ``lang`` (V, L) the V
    instructions' embeddings. Each head draws its own bootstrap of frames; its ``prior_shift`` is set
    to logit(positive rate of its bootstrap) - logit(positive rate of its batches). Returns final losses
    and the shifts."""
    from tqdm import tqdm

    cfg = ens.cfg
    n, v = distance.shape
    if pixels.shape[0] != n or lang.shape[0] != v:
        raise ValueError(f"pixels ({pixels.shape[0]}), distance {tuple(distance.shape)} and lang ({lang.shape[0]}) disagree")
    dev = next(ens.parameters()).device
    label = pair_labels(distance, radius)
    out: dict[str, float] = {"pairs": float(n * v), "positive_pairs": float(label.sum())}
    for e, head in enumerate(ens.heads):
        gen = torch.Generator().manual_seed(cfg.seed * 100 + e)
        boot = torch.randint(0, n, (n,), generator=gen)  # bootstrap draw of frames
        lab_b = label[boot]
        pos = lab_b.nonzero()
        k = int(cfg.batch * cfg.positive_fraction) if len(pos) else 0
        rate = float(lab_b.mean())
        batch_rate = (k + (cfg.batch - k) * rate) / cfg.batch  # drawn positives + the uniform rest's positives
        with torch.no_grad():
            ens.prior_shift[e] = _logit(rate) - _logit(batch_rate) if 0.0 < rate < 1.0 else 0.0
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
        head.train()
        bar = tqdm(range(cfg.steps), desc=f"success head {e}", disable=not progress)
        for _ in bar:
            ri = torch.randint(0, n, (cfg.batch,), generator=gen)
            vi = torch.randint(0, v, (cfg.batch,), generator=gen)
            if k:
                pick = pos[torch.randint(0, len(pos), (k,), generator=gen)]
                ri[:k], vi[:k] = pick[:, 0], pick[:, 1]
            rows = boot[ri]
            logit, d = head(pixels[rows].to(dev), lang[vi].to(dev))
            y = label[rows, vi].to(dev)
            bce = F.binary_cross_entropy_with_logits(logit, y)
            mse = F.mse_loss(d, distance[rows, vi].to(dev) / cfg.distance_scale)
            loss = bce + cfg.distance_weight * mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out[f"head{e}_bce"], out[f"head{e}_distance_mse"] = bce.item(), mse.item()
        out[f"head{e}_prior_shift"] = float(ens.prior_shift[e])
    ens.eval()
    return out


@torch.no_grad()
def calibrate(ens: SuccessEnsemble, pixels: torch.Tensor, distance: torch.Tensor, lang: torch.Tensor,
              radius: float) -> dict[str, float]:
    """Precision / recall / accuracy of ``prob > 0.5`` over every (frame, instruction) pair of
    held-out real frames (shapes as :func:`train_success`), the flagged rate, the distance MAE."""
    n, v = distance.shape
    dev = next(ens.parameters()).device
    px = pixels.repeat_interleave(v, dim=0).to(dev)
    lg = lang.repeat(n, 1).to(dev)
    out = ens.judge(px, lg)
    pred = out["success"].cpu()
    truth = pair_labels(distance, radius).flatten().bool()
    tp = float((pred & truth).sum())
    return {"pairs": float(n * v), "positives": float(truth.sum()), "predicted_positives": float(pred.sum()),
            "precision": tp / max(float(pred.sum()), 1.0), "recall": tp / max(float(truth.sum()), 1.0),
            "accuracy": float((pred == truth).float().mean()), "flagged_rate": float(out["flagged"].float().mean()),
            "distance_mae": float((out["distance"].cpu() - distance.flatten()).abs().mean())}


def fit_success_heads(rows: dict[str, np.ndarray], targets: np.ndarray, lang: torch.Tensor, radius: float,
                      cfg: SuccessConfig, holdout_fraction: float, device: str | torch.device = "cpu",
                      progress: bool = False) -> tuple[SuccessEnsemble, dict[str, float], dict[str, float]]:
    """Train an ensemble on real frame rows (``pixels`` (N, H, W, 3) uint8, ``block_pose`` (N, 3), ``episode``
    (N,)) against the V ``targets`` (V, 2) and instructions ``lang`` (V, L), holding out a share
    ``holdout_fraction`` of the episodes (drawn with ``cfg.seed``) for :func:`calibrate`. Returns the
    ensemble, :func:`train_success`'s metrics and the held-out calibration."""
    dist = variant_distances(rows["block_pose"], targets)
    episodes = np.unique(rows["episode"])
    held = np.random.default_rng(cfg.seed).permutation(episodes)[: int(round(holdout_fraction * len(episodes)))]
    test = torch.as_tensor(np.isin(rows["episode"], held))
    ens = SuccessEnsemble(rows["pixels"].shape[1], lang.shape[1], cfg).to(device)
    px = torch.as_tensor(rows["pixels"])
    train = train_success(ens, px[~test], dist[~test], lang, radius, progress=progress)
    return ens, train, calibrate(ens, px[test], dist[test], lang, radius)


def variant_distances(block_pose: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """(N, V) world-unit distances of the T's centroid at poses (N, 3) to targets (V, 2) (Push-T)."""
    from tasks.pusht import region_distance

    return torch.as_tensor(region_distance(np.asarray(block_pose)[:, None, :], np.asarray(targets)[None, :, :]),
                           dtype=torch.float32)


def save_success_heads(ens: SuccessEnsemble, folder: str | Path, calibration: dict[str, float] | None = None) -> Path:
    """Write ``heads.safetensors`` + ``config.json`` (format ``wam.success_heads``: the ensemble's config, frame
    size, instruction width and its held-out ``calibration``) into ``folder`` (atomic writes)."""
    return write_module(ens, folder, "heads.safetensors",
                        {"format": FORMAT, "format_version": FORMAT_VERSION, "config": asdict(ens.cfg),
                         "image_size": ens.image_size, "lang_dim": ens.lang_dim, "calibration": calibration or {}})


def load_success_heads(folder: str | Path, device: str | torch.device = "cpu") -> tuple[SuccessEnsemble, dict[str, float]]:
    """Read heads written by :func:`save_success_heads`: the ensemble (eval mode) and its stored calibration.
    A missing folder, a foreign format or version, unknown config keys or weights that do not fit are a VLAInputError."""
    meta = read_meta(folder, FORMAT, FORMAT_VERSION, SuccessConfig, "success-heads")
    cfg = SuccessConfig(**{**meta["config"], "channels": tuple(meta["config"].get("channels", SuccessConfig.channels))})
    ens = SuccessEnsemble(int(meta["image_size"]), int(meta["lang_dim"]), cfg)
    load_weights(ens, Path(folder) / "heads.safetensors")
    return ens.to(device).eval(), dict(meta.get("calibration", {}))
