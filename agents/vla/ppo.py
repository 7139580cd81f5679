"""PPO post-training of a VLA policy on imagined rollouts (one update per batch of rollouts).

Rewards per policy call d (a chunk of actions), from the success heads on the frame after it:
progress (distance to the instructed target before minus after, / ``progress_scale``) plus
``success_bonus`` where the heads say success (:func:`agents.vla.grpo.judged_success`); zero where the heads disagree (flagged) or the
model diverged. GAE over the calls with a critic on (frame, state, instruction), the last
frame's value bootstraps (the imagined horizon is a time limit). Clipped surrogate as CleanRL's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agents.vla.grpo import judged_success
from agents.vla.policy import VLAPolicy, conv_encoder


@dataclass
class VLAPPOConfig:
    """PPO hyperparameters (per policy call, not per env step)."""

    lr: float = 1e-4
    critic_lr: float = 1e-3
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2
    gamma: float = 0.95
    lam: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 1.0
    target_kl: float = 0.05            # stop the epochs early past this approximate KL
    progress_scale: float = 100.0      # world units of distance per unit of reward
    success_bonus: float = 1.0


class VLACritic(nn.Module):
    """Value of (frame (B, H, W, 3) uint8, state (B, S), language (B, L)) -> (B,)."""

    def __init__(self, policy: VLAPolicy, hidden: int = 128):
        super().__init__()
        c = policy.cfg
        self.policy_cfg = c
        self.image = conv_encoder(list(c.channels), c.image_size, hidden)
        self.net = nn.Sequential(nn.Linear(hidden + c.lang_dim + c.state_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, pixels: torch.Tensor, state: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        c = self.policy_cfg
        s = (state - (c.state_low + c.state_high) / 2) / ((c.state_high - c.state_low) / 2)
        return self.net(torch.cat([self.image(pixels.permute(0, 3, 1, 2).float() / 255.0), lang, s], -1))[:, 0]


def ppo_rewards(roll: dict[str, torch.Tensor], cfg: VLAPPOConfig) -> torch.Tensor:
    """Rewards (D, B) of an imagined rollout (see :func:`agents.vla.rollout.rollout_imagined`)."""
    flagged = roll["flagged"][1:]
    progress = (roll["distance"][:-1] - roll["distance"][1:]) / cfg.progress_scale
    success = judged_success(roll).float() * cfg.success_bonus
    r = progress + success
    return torch.where(flagged | roll["diverged"], torch.zeros_like(r), r)


class VLAPPO:
    """PPO on a VLA policy; ``update(roll, lang)`` with a rollout of ``rollout_imagined``."""

    def __init__(self, policy: VLAPolicy, cfg: VLAPPOConfig, seed: int = 0):
        self.policy, self.cfg = policy, cfg
        self.critic = VLACritic(policy).to(policy.log_std.device)
        self.opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, roll: dict[str, torch.Tensor], lang: torch.Tensor) -> dict[str, float]:
        cfg, p = self.cfg, self.policy
        d, b = roll["u"].shape[:2]
        reward = ppo_rewards(roll, cfg)
        with torch.no_grad():
            values = torch.stack([self.critic(roll["pixels"][t], roll["state"][t], lang) for t in range(d + 1)])
            adv = torch.zeros(d, b, device=reward.device)
            last = torch.zeros(b, device=reward.device)
            for t in reversed(range(d)):
                delta = reward[t] + cfg.gamma * values[t + 1] - values[t]
                last = delta + cfg.gamma * cfg.lam * last
                adv[t] = last
            ret = adv + values[:-1]
        flat = {"pixels": roll["pixels"][:-1].flatten(0, 1), "state": roll["state"][:-1].flatten(0, 1),
                "lang": lang.repeat(d, 1), "u": roll["u"].flatten(0, 1), "logp": roll["log_prob"].flatten(0, 1),
                "adv": adv.flatten(), "ret": ret.flatten()}
        n = d * b
        mb = max(n // cfg.minibatches, 1)
        p.train()
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "clip_frac": 0.0}
        count = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=self.gen).to(reward.device)
            kl_epoch = []
            for i in range(0, n, mb):
                j = perm[i:i + mb]
                a = flat["adv"][j]
                a = (a - a.mean()) / (a.std() + 1e-8)
                logp, ent = p.log_prob(p.images(flat["pixels"][j]), flat["state"][j], flat["lang"][j], flat["u"][j])
                log_ratio = logp - flat["logp"][j]
                ratio = log_ratio.exp()
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                loss = pg - cfg.entropy_coef * ent.mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(p.parameters(), cfg.max_grad_norm)
                self.opt.step()
                v = self.critic(flat["pixels"][j], flat["state"][j], flat["lang"][j])
                vloss = cfg.value_coef * (v - flat["ret"][j]).pow(2).mean()
                self.critic_opt.zero_grad(set_to_none=True)
                vloss.backward()
                nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.critic_opt.step()
                with torch.no_grad():
                    kl = float(((ratio - 1) - log_ratio).mean())
                kl_epoch.append(kl)
                stats["policy_loss"] += pg.item()
                stats["value_loss"] += vloss.item()
                stats["approx_kl"] += kl
                stats["clip_frac"] += float(((ratio - 1).abs() > cfg.clip).float().mean())
                count += 1
            if sum(kl_epoch) / len(kl_epoch) > cfg.target_kl:
                break
        p.eval()
        out = {k: v / max(count, 1) for k, v in stats.items()}
        out["mean_reward"] = float(reward.sum(0).mean())
        return out
