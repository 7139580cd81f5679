"""Output heads shared by the state world models.

- :class:`EnsembleLinear` / :class:`EnsembleMLP`: E independent layers evaluated with one
  batched matmul per layer (weights stacked as (E, in, out)), never a Python loop.
- :class:`TransitionHeads`: learned reward and termination of a transition
  ``(obs, action, next_obs)``, the one code path every state model uses for them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from world_models.normalizer import Normalizer


def soft_clamp(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Smoothly keep ``x`` inside (low, high) (PETS' bounded log-variance); gradients never vanish."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` (same shape) is True; 0 if none.
    Masked-out entries are dropped, not multiplied by 0, so a non-finite one cannot leak in."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp_min(1)


def member_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean across members: x (E, ...) -> (...). Accumulated member by member: the members'
    outputs are batch-last views (E, B, D) with strides (., 1, B), on which ``Tensor.mean(0)``
    takes 8x longer (2.0 vs 0.25 ms at E = 5, B = 4096, D = 46; BENCHMARKS.md)."""
    out = x[0].clone()
    for member in x[1:]:
        out.add_(member)
    return out.div_(x.shape[0])


def member_std(x: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation across members: x (E, ...) -> (...); zeros when E == 1.
    Accumulated member by member as :func:`member_mean` (``Tensor.std(0)`` is ~30x slower on
    (E, B, D) with small D; centring and reducing over dim 0 of a batch-last view, 6x)."""
    if x.shape[0] == 1:
        return torch.zeros_like(x[0])
    mean = member_mean(x)
    out = torch.zeros_like(mean)
    for member in x:
        centered = member - mean
        out.addcmul_(centered, centered)
    return out.div_(x.shape[0] - 1).sqrt_()


@torch.no_grad()
def fold_input_change(weight: torch.Tensor, bias: torch.Tensor, rows: slice, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make a layer that read inputs ``x_old = scale * x_new + shift`` at positions ``rows``
    compute the same from ``x_new``: weight (out, in) with bias (out,) (``nn.Linear``,
    ``nn.GRU``), or an :class:`EnsembleLinear`'s weight (E, in, out) with bias (E, 1, out).
    In place; scale / shift (len(rows),)."""
    if weight.dim() == 2:
        bias += weight[:, rows] @ shift
        weight[:, rows] *= scale
    else:
        bias += (shift @ weight[:, rows]).unsqueeze(1)
        weight[:, rows] *= scale[:, None]


@torch.no_grad()
def fold_output_change(layer: "EnsembleLinear", cols: slice, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make outputs ``cols`` of ``layer`` (written in old normalized units, ``y_old = scale * y_new + shift``)
    come out in the new units. In place; scale / shift (len(cols),)."""
    layer.weight[..., cols] /= scale
    layer.bias[..., cols] = (layer.bias[..., cols] - shift) / scale


class EnsembleLinear(nn.Module):
    """E independent affine maps ``x_e @ W_e + b_e``, all in one ``torch.baddbmm``.

    Args:
        members: E.
        in_features / out_features: per-member sizes. Each member is initialised as
            ``nn.Linear`` would be (uniform in ±1/sqrt(in_features)).
    """

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x (E, B, in), or (B, in) shared by all members -> (E, B, out).

        ``members`` (E',) long selects a subset of members (then E = E')."""
        w, b = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        if x.dim() == 2:
            x = x.expand(w.shape[0], -1, -1)
        return torch.baddbmm(b, x, w)

    def forward_batch_last(self, xt: torch.Tensor) -> torch.Tensor:
        """The same maps with the batch last: xt (E, in, B) -> (E, out, B)."""
        return torch.baddbmm(self.bias.transpose(1, 2), self.weight.transpose(1, 2), xt)


class EnsembleMLP(nn.Module):
    """E independent MLPs ``in -> hidden x layers -> out`` (activation between layers).

    Args:
        members: E.
        in_features / hidden / layers / out_features: per-member sizes (``layers`` hidden layers).
        activation: module class, e.g. ``nn.ELU`` or ``nn.SiLU``.
    """

    def __init__(
        self, members: int, in_features: int, hidden: int, layers: int, out_features: int, activation: type[nn.Module]
    ):
        super().__init__()
        sizes = [in_features] + [hidden] * layers + [out_features]
        self.layers = nn.ModuleList(EnsembleLinear(members, i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.activation = activation()

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x (E, B, in) or (B, in) shared -> (E, B, out); ``members`` as in :class:`EnsembleLinear`."""
        for i, layer in enumerate(self.layers):
            x = layer(x, members)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


class TransitionHeads(nn.Module):
    """Learned reward, termination and contacts of a transition.

    Both heads read ``[norm(obs), action scaled to [-1, 1], norm(next_obs)]`` (B, 2D + A)
    and are separate MLPs (``hidden`` x ``layers``, ELU), evaluated together as a
    two-member :class:`EnsembleMLP`.

    - reward: regression on the normalized reward (MSE); :meth:`forward` returns env units.
    - termination: a logit trained with class-balanced BCE, ``pos_weight = n_neg / n_pos``
      (fit from data, clipped to [1/max_pos_weight, max_pos_weight]; 1 when the data hold
      no terminal transitions, and the loss still runs).
    - contacts: C logits of the next state's binary contacts (RWM's privileged contact
      heads: feet, thighs / knees), a third MLP trained with BCE; absent when C = 0.

    Args:
        obs_dim / action_dim: D and A.
        reward / termination: which heads exist.
        contacts: C, number of contact flags (0: no contact head).
        hidden / layers: MLP size.
        max_pos_weight: clip of the class-balance weight.
    """

    pos_weight: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        reward: bool = True,
        termination: bool = True,
        hidden: int = 128,
        layers: int = 2,
        max_pos_weight: float = 1000.0,
        contacts: int = 0,
    ):
        super().__init__()
        self.contact_dim = contacts
        self.contact_net = EnsembleMLP(1, 2 * obs_dim + action_dim, hidden, layers, contacts, nn.ELU) if contacts else None
        self.has_reward, self.has_termination = reward, termination
        self.max_pos_weight = max_pos_weight
        n = int(reward) + int(termination)
        self.net = EnsembleMLP(n, 2 * obs_dim + action_dim, hidden, layers, 1, nn.ELU) if n else None
        self.reward_normalizer = Normalizer(1)
        self.register_buffer("pos_weight", torch.ones(()))

    @torch.no_grad()
    def fit(self, reward: torch.Tensor, terminated: torch.Tensor) -> None:
        """Reward normalizer and termination class balance from flat data: reward (N,), terminated (N,) bool."""
        self.reward_normalizer.fit(reward.reshape(-1, 1).float())
        n_pos = float(terminated.sum())
        n_neg = float(terminated.numel()) - n_pos
        w = n_neg / n_pos if n_pos > 0 and n_neg > 0 else 1.0
        self.pos_weight.fill_(min(max(w, 1.0 / self.max_pos_weight), self.max_pos_weight))

    @torch.no_grad()
    def fold_normalizer_change(
        self,
        obs_change: tuple[torch.Tensor, torch.Tensor],
        action_change: tuple[torch.Tensor, torch.Tensor],
        reward_change: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """Keep the heads' function when the normalizers were refit: each change is (scale, shift)
        with ``old_normalized = scale * new_normalized + shift`` ((D,), (A,), (1,))."""
        scale = torch.cat([obs_change[0], action_change[0], obs_change[0]])
        shift = torch.cat([obs_change[1], action_change[1], obs_change[1]])
        rows = slice(0, scale.shape[0])
        for net in (self.net, self.contact_net):
            if net is not None:
                fold_input_change(net.layers[0].weight, net.layers[0].bias, rows, scale, shift)
        if self.has_reward:  # the reward is member 0 of self.net
            last = self.net.layers[-1]
            last.weight[0] /= reward_change[0]
            last.bias[0] = (last.bias[0] - reward_change[1]) / reward_change[0]

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """x (B, 2D + A) -> (normalized reward (B,) or None, termination logit (B,) or None)."""
        if self.net is None:
            return None, None
        out = self.net(x).squeeze(-1)
        reward = out[0] if self.has_reward else None
        logit = out[-1] if self.has_termination else None
        return reward, logit

    def forward(
        self, obs_n: torch.Tensor, action_s: torch.Tensor, next_obs_n: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """obs_n (B, D) normalized, action_s (B, A) scaled, next_obs_n (B, D) normalized ->
        (reward (B,) in env units per step, or None; termination logit (B,), or None)."""
        reward, logit = self._raw(torch.cat([obs_n, action_s, next_obs_n], dim=-1))
        if reward is not None:
            reward = self.reward_normalizer.denormalize(reward.unsqueeze(-1)).squeeze(-1)
        return reward, logit

    def contacts(self, obs_n: torch.Tensor, action_s: torch.Tensor, next_obs_n: torch.Tensor) -> torch.Tensor | None:
        """Contact logits (B, C) of the next state, or None without a contact head (inputs as :meth:`forward`)."""
        if self.contact_net is None:
            return None
        return self.contact_net(torch.cat([obs_n, action_s, next_obs_n], dim=-1))[0]

    def loss(
        self,
        obs_n: torch.Tensor,
        action_s: torch.Tensor,
        next_obs_n: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        mask: torch.Tensor,
        contacts: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses on real transitions: obs_n / next_obs_n (B, D), action_s (B, A), reward (B,)
        env units, terminated (B,) bool, mask (B,) bool (which rows count), contacts (B, C)
        bool (required when the contact head exists).

        Returns ``heads_loss`` (sum of the terms), ``reward_mse`` (normalized units),
        ``termination_bce`` (class-balanced) and ``contact_bce``, each present when its head exists."""
        x = torch.cat([obs_n, action_s, next_obs_n], dim=-1)
        pred_reward, logit = self._raw(x)
        out: dict[str, torch.Tensor] = {}
        total = obs_n.new_zeros(())
        if pred_reward is not None:
            target = self.reward_normalizer.normalize(reward.unsqueeze(-1)).squeeze(-1)
            out["reward_mse"] = masked_mean((pred_reward - target) ** 2, mask)
            total = total + out["reward_mse"]
        if logit is not None:
            bce = F.binary_cross_entropy_with_logits(
                logit, terminated.to(logit.dtype), pos_weight=self.pos_weight, reduction="none"
            )
            out["termination_bce"] = masked_mean(bce, mask)
            total = total + out["termination_bce"]
        if self.contact_net is not None:
            if contacts is None or contacts.shape != (x.shape[0], self.contact_dim):
                got = None if contacts is None else tuple(contacts.shape)
                raise ValueError(f"the contact head needs contacts of shape ({x.shape[0]}, {self.contact_dim}), got {got}")
            c_logit = self.contact_net(x)[0]
            bce = F.binary_cross_entropy_with_logits(c_logit, contacts.to(c_logit.dtype), reduction="none").mean(-1)
            out["contact_bce"] = masked_mean(bce, mask)
            total = total + out["contact_bce"]
        out["heads_loss"] = total
        return out


def termination_metrics(
    logit: torch.Tensor, terminated: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision and recall of ``logit > 0`` against ``terminated`` (B,), over rows where
    ``mask``. Each is 1.0 when its denominator is 0 (nothing predicted / nothing to find)."""
    pred, true = logit > 0, terminated.bool()
    if mask is not None:
        pred, true = pred & mask, true & mask
    tp, fp, fn = float((pred & true).sum()), float((pred & ~true).sum()), float((~pred & true).sum())
    return {
        "termination_precision": tp / (tp + fp) if tp + fp > 0 else 1.0,
        "termination_recall": tp / (tp + fn) if tp + fn > 0 else 1.0,
    }
