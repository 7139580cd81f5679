"""PGPE post-training of a VLA policy: parameter-space exploration of an action adapter.

PPO and GRPO explore with action noise and move every weight; on Push-T at this budget neither
moves the deterministic chunk's real success, even with an oracle reward in the real physics
(BENCHMARKS.md, issue 8). PGPE (Sehnke et al. 2010, "policy gradients with parameter-based
exploration") keeps the warm start and explores a small *action adapter* on its deterministic chunk

    u' = u * exp(g) + b        u, g, b: (chunk * A,)   (g = b = 0: the policy as it is)

with one adapter per rollout, ``theta = sigma * eps`` around the current policy (antithetic pairs
``eps``, ``-eps``), so every rollout is the deterministic policy the evaluation runs. A rollout's fitness
is GRPO's binary outcome (the success heads say success, confidently, before the model diverged)
minus the closest distance to the target the progress head saw (``fitness="progress"``, the default;
``"success"``: the outcome alone), with group-relative advantages over the G rollouts of a (start
frame, instruction); the step
``lr * mean(adv * eps) / sigma`` is folded into the head's output layer (the adapter is affine on
the chunk's mean), so the policy file keeps its format and the next update explores around the new
policy. ``shared`` ties g and b over the chunk's steps (2 * A numbers instead of 2 * chunk * A).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.vla.grpo import group_advantages, informative_groups
from agents.vla.policy import VLAPolicy


@dataclass
class VLAPGPEConfig:
    """PGPE hyperparameters (per update)."""

    sigma: float = 0.2    # exploration std of the adapter's numbers (log-gain; bias in units of u, x action_scale world units)
    lr: float = 0.25      # step per unit of the PGPE gradient mean(adv * eps) / sigma
    group: int = 8        # G rollouts per (start frame, instruction); even (antithetic pairs)
    shared: bool = True   # one gain and bias per action dimension, shared over the chunk (False: per chunk entry)
    fitness: str = "progress"  # "progress": success - closest distance / progress_scale; "success": the binary outcome
    progress_scale: float = 100.0  # world units of closest distance worth one success (fitness "progress")


PGPE_FITNESS = ("success", "progress")


def pgpe_fitness(success: torch.Tensor, closest: torch.Tensor, cfg: VLAPGPEConfig) -> torch.Tensor:
    """A rollout's fitness (B,) from its binary ``success`` (B,) and its ``closest`` distance (B,) of the T to
    the instructed target (world units): the success alone, or with ``"progress"`` minus the closest distance
    in units of ``progress_scale`` (every group of rollouts then ranks its adapters, not only groups that mix
    successes and failures)."""
    if cfg.fitness == "success":
        return success.float()
    return success.float() - closest.float() / cfg.progress_scale


def expand_adapter(theta: torch.Tensor, chunk: int, action_dim: int, shared: bool) -> torch.Tensor:
    """Adapter numbers (..., P) -> (..., 2 * chunk * A): log-gains, then biases, of every chunk entry
    (P = 2 * A when ``shared``, else 2 * chunk * A)."""
    if not shared:
        return theta
    return torch.cat([theta[..., :action_dim].tile(chunk), theta[..., action_dim:].tile(chunk)], -1)


def apply_adapter(u: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
    """u (B, D) under per-row adapters (B, 2 D): u * exp(log-gain) + bias."""
    d = u.shape[-1]
    if adapter.shape[-1] != 2 * d:
        raise ValueError(f"an adapter of chunks with {d} numbers has {2 * d} (log-gains, biases), got {adapter.shape[-1]}")
    return u * adapter[..., :d].exp() + adapter[..., d:]


@torch.no_grad()
def fold_adapter(policy: VLAPolicy, adapter: torch.Tensor) -> None:
    """Fold one adapter (2 * chunk * A,) into the head's output layer, in place: the new deterministic
    chunk is the old one under the adapter (every mixture component's mean moves alike)."""
    d = policy.cfg.chunk * policy.cfg.action_dim
    if adapter.shape != (2 * d,):
        raise ValueError(f"adapter must be ({2 * d},), got {tuple(adapter.shape)}")
    last = policy.head[-1]
    gain = adapter[:d].exp().to(last.weight).repeat(policy.cfg.components)
    bias = adapter[d:].to(last.weight).repeat(policy.cfg.components)
    means = slice(0, policy.cfg.components * d)
    last.weight[means] *= gain[:, None]
    last.bias[means] = last.bias[means] * gain + bias


class VLAPGPE:
    """PGPE on a VLA policy's action adapter: ``sample(starts)`` draws the rollouts' adapters (groups laid
    out consecutively), ``update(eps, outcome)`` folds the step into the policy."""

    def __init__(self, policy: VLAPolicy, cfg: VLAPGPEConfig, seed: int = 0):
        if cfg.group < 2 or cfg.group % 2:
            raise ValueError(f"pgpe.group must be even and >= 2 (antithetic pairs), got {cfg.group}")
        if cfg.sigma <= 0:
            raise ValueError(f"pgpe.sigma must be > 0, got {cfg.sigma}")
        if cfg.fitness not in PGPE_FITNESS:
            raise ValueError(f"pgpe.fitness must be one of {PGPE_FITNESS}, got {cfg.fitness!r}")
        if cfg.progress_scale <= 0:
            raise ValueError(f"pgpe.progress_scale must be > 0 (world units), got {cfg.progress_scale}")
        self.policy, self.cfg = policy, cfg
        a = policy.cfg.action_dim
        self.params = 2 * a if cfg.shared else 2 * policy.cfg.chunk * a
        self.gen = torch.Generator().manual_seed(seed)
        self.last_step = torch.zeros(self.params)

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        return expand_adapter(theta, self.policy.cfg.chunk, self.policy.cfg.action_dim, self.cfg.shared)

    def sample(self, starts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``eps`` (starts * G, P) standard normal in antithetic pairs within each group, and the rollouts'
        adapters (starts * G, 2 * chunk * A) = sigma * eps, expanded."""
        half = torch.randn(starts, self.cfg.group // 2, self.params, generator=self.gen)
        eps = torch.cat([half, -half], 1).flatten(0, 1)
        return eps, self.expand(self.cfg.sigma * eps)

    def update(self, eps: torch.Tensor, fitness: torch.Tensor) -> dict[str, float]:
        """One PGPE step from the fitness (B,) of rollouts run with ``sample``'s adapters (:func:`pgpe_fitness`;
        higher is better)."""
        if eps.shape != (fitness.shape[0], self.params):
            raise ValueError(f"eps must be ({fitness.shape[0]}, {self.params}), got {tuple(eps.shape)}")
        adv = group_advantages(fitness.float().cpu(), self.cfg.group)
        step = self.cfg.lr * (adv[:, None] * eps).mean(0) / self.cfg.sigma
        fold_adapter(self.policy, self.expand(step))
        self.last_step = step
        d = self.params // 2
        return {"mean_fitness": float(fitness.float().mean()),
                "informative_groups": informative_groups(fitness, self.cfg.group),
                "gain_step": float(step[:d].exp().mean()), "bias_step_world": float(step[d:].abs().mean()) * self.policy.cfg.action_scale}
