"""GRPO post-training of a VLA policy on imagined rollouts (DeepSeekMath's group-relative PPO).

G rollouts share a start frame and an instruction (a group). Each rollout's outcome is binary:
1 when the success heads say success, confidently (not flagged by the ensemble's
disagreement) and before the model diverged (and, with the pose guard, while the model's own T
is in the region), at any policy call, else 0. A rollout's advantage
is its outcome minus the group mean over the group std (zero for a group that all agree);
every call of the rollout carries it. Clipped surrogate plus a k3 KL estimate to the frozen
reference policy (the warm start); no critic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from agents.vla.policy import VLAPolicy


@dataclass
class VLAGRPOConfig:
    """GRPO hyperparameters (per policy call)."""

    lr: float = 1e-4
    group: int = 8                 # G rollouts per (start frame, instruction)
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2
    kl_coef: float = 0.02          # weight of KL(policy || reference)
    max_grad_norm: float = 1.0


def grpo_outcomes(roll: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary outcome (B,) of imagined rollouts (see :func:`agents.vla.rollout.rollout_imagined`): a success at any call."""
    return judged_success(roll).any(0).float()


def judged_success(roll: dict[str, torch.Tensor]) -> torch.Tensor:
    """(D, B) bool: the frames after each policy call that count as successes: the heads say success on a frame
    they trust, and, when the rollout carries ``pose_inside`` (D + 1, B) (the pose guard), the imagination's own
    T is in the region on that frame too."""
    ok = (roll["prob"][1:] > 0.5) & trusted(roll)
    return ok & roll["pose_inside"][1:] if "pose_inside" in roll else ok


def closest_distance(roll: dict[str, torch.Tensor]) -> torch.Tensor:
    """The closest the progress head saw the T come to the instructed target (B,) world units, over the
    start frame and the imagined frames it trusts (not flagged, the model not diverged)."""
    after = torch.where(trusted(roll), roll["distance"][1:], roll["distance"][:1])
    return torch.minimum(roll["distance"][0], after.min(0).values)


def trusted(roll: dict[str, torch.Tensor]) -> torch.Tensor:
    """(D, B) bool: the imagined frames after each policy call that count (the heads are confident, the model did not diverge)."""
    return ~roll["flagged"][1:] & ~roll["diverged"]


def group_advantages(outcome: torch.Tensor, group: int) -> torch.Tensor:
    """(R - mean_g) / (std_g + eps) within consecutive groups of ``group`` rollouts: (B,) -> (B,)."""
    if outcome.shape[0] % group:
        raise ValueError(f"batch {outcome.shape[0]} is not a multiple of the group size {group}")
    r = outcome.view(-1, group)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + 1e-6)).flatten()


def informative_groups(outcome: torch.Tensor, group: int) -> float:
    """Share of the consecutive groups of ``group`` outcomes (B,) that do not all agree (the ones with a signal)."""
    return float((outcome.float().view(-1, group).std(1) > 0).float().mean())


class VLAGRPO:
    """GRPO on a VLA policy; ``update(roll, lang)`` with groups laid out consecutively in the batch."""

    def __init__(self, policy: VLAPolicy, cfg: VLAGRPOConfig, seed: int = 0):
        self.policy, self.cfg = policy, cfg
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, roll: dict[str, torch.Tensor], lang: torch.Tensor) -> dict[str, float]:
        cfg, p = self.cfg, self.policy
        d, b = roll["u"].shape[:2]
        outcome = grpo_outcomes(roll)
        adv = group_advantages(outcome, cfg.group)
        flat = {"pixels": roll["pixels"][:-1].flatten(0, 1), "state": roll["state"][:-1].flatten(0, 1),
                "lang": lang.repeat(d, 1), "u": roll["u"].flatten(0, 1), "logp": roll["log_prob"].flatten(0, 1),
                "adv": adv.repeat(d)}
        keep = (flat["adv"] != 0).nonzero().squeeze(1)  # groups that all agree carry no signal
        stats = {"policy_loss": 0.0, "kl_ref": 0.0, "clip_frac": 0.0}
        count = 0
        if len(keep):
            mb = max(len(keep) // cfg.minibatches, 1)
            p.train()
            for _ in range(cfg.epochs):
                perm = keep[torch.randperm(len(keep), generator=self.gen).to(keep.device)]
                for i in range(0, len(perm), mb):
                    j = perm[i:i + mb]
                    img = p.images(flat["pixels"][j])
                    logp, _ = p.log_prob(img, flat["state"][j], flat["lang"][j], flat["u"][j])
                    with torch.no_grad():
                        ref, _ = self.reference.log_prob(img, flat["state"][j], flat["lang"][j], flat["u"][j])
                    ratio = (logp - flat["logp"][j]).exp()
                    a = flat["adv"][j]
                    pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                    kl = ((ref - logp).exp() - (ref - logp) - 1).mean()
                    loss = pg + cfg.kl_coef * kl
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(p.parameters(), cfg.max_grad_norm)
                    self.opt.step()
                    stats["policy_loss"] += pg.item()
                    stats["kl_ref"] += kl.item()
                    stats["clip_frac"] += float(((ratio - 1).abs() > cfg.clip).float().mean())
                    count += 1
            p.eval()
        out = {k: v / max(count, 1) for k, v in stats.items()}
        out["mean_outcome"] = float(outcome.mean())
        out["informative_groups"] = informative_groups(outcome, cfg.group)
        return out
