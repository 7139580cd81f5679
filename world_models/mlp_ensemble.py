"""Probabilistic MLP ensemble (PETS, arXiv 1805.12114; MBPO, arXiv 1906.08253).

E independent MLPs read ``[norm(obs_t), action_t scaled to [-1, 1]]`` and each predict a
Gaussian over the normalized delta ``norm_delta(obs_{t+1} - obs_t)``, with PETS' learned
soft bounds on the log-variance. Single-step: every valid forecast position of a window is
an independent transition and the history is ignored. Each member trains on its own
bootstrap of every batch (Poisson(1) weights per transition, the online form of resampling
with replacement); after training :meth:`select_elites` keeps the ``elites`` members with
the lowest validation MSE, and only those imagine.

Carry: ``{"obs": (B, D)}`` — the model has no latent state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from world_models.base import Carry, ModelSpec, Prediction, check_batch_shapes
from world_models.heads import EnsembleMLP, fold_input_change, fold_output_change, member_mean, member_std, soft_clamp
from world_models.state_delta import StateDeltaModel


class ProbabilisticEnsemble(StateDeltaModel):
    """PETS / MBPO dynamics ensemble with learned reward / termination heads.

    Args:
        spec: obs / action layout (only ``forecast`` matters: positions per window trained on).
        members: E networks trained.
        elites: K <= E networks kept for imagination (lowest validation MSE).
        hidden / layers: per-member MLP size (``layers`` hidden layers, SiLU).
        learn_reward / learn_termination: train :class:`TransitionHeads` for them.
    """

    elite_idx: torch.Tensor

    def __init__(
        self,
        spec: ModelSpec,
        members: int = 7,
        elites: int = 5,
        hidden: int = 200,
        layers: int = 4,
        learn_reward: bool = True,
        learn_termination: bool = True,
    ):
        super().__init__()
        if not 1 <= elites <= members or min(hidden, layers) < 1:
            raise ValueError(f"need 1 <= elites <= members and hidden, layers >= 1, got {elites}, {members}, {hidden}, {layers}")
        self.members, self.elites, self.hidden, self.num_layers = members, elites, hidden, layers
        self._init_state_delta(spec, learn_reward, learn_termination)
        D, A = spec.obs_dim, spec.action_dim
        self.net = EnsembleMLP(members, D + A, hidden, layers, 2 * D, nn.SiLU)
        self.max_logvar = nn.Parameter(torch.full((D,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((D,), -10.0))
        self.register_buffer("elite_idx", torch.arange(elites))

    def config(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "elites": self.elites,
            "hidden": self.hidden,
            "layers": self.num_layers,
            "learn_reward": self.has_reward_head,
            "learn_termination": self.has_termination_head,
        }

    def flops_per_step(self, sample: bool = True) -> int:
        """Multiply-add FLOPs (x2) of one env-step of :meth:`imagine`: elites, then the transition heads (see :meth:`_heads_flops`)."""
        return 2 * sum(lin.weight[0].numel() for lin in self.net.layers) * self.elites + self._heads_flops(sample)

    # ----------------------------------------------------------------------------- pieces

    def _predict(
        self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, D), action (B, A) env units -> (mean, log-variance), each (E, B, D) in
        normalized delta units, for all members or the ``members`` given."""
        x = torch.cat([self.obs_normalizer.normalize(obs), self._scale(action)], dim=-1)
        mean, logvar = self.net(x, members).split(self.spec.obs_dim, dim=-1)
        return mean, soft_clamp(logvar, self.min_logvar, self.max_logvar)

    def _fold_input_change(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        first = self.net.layers[0]
        fold_input_change(first.weight, first.bias, slice(0, scale.shape[0]), scale, shift)

    @torch.no_grad()
    def _fold_delta_change(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        D = self.spec.obs_dim
        last = self.net.layers[-1]
        fold_output_change(last, slice(0, D), scale, shift)
        log_var_scale = 2 * scale.log()  # var_new = var_old / scale^2
        last.bias[..., D:] -= log_var_scale
        self.min_logvar -= log_var_scale
        self.max_logvar -= log_var_scale

    def _check(self, carry: Carry, x: torch.Tensor) -> torch.Tensor:
        if "obs" not in carry:
            raise ValueError(f"carry must hold 'obs', got keys {sorted(carry)}")
        check_batch_shapes(self.spec, carry["obs"], x)
        if not (carry["obs"].is_floating_point() and x.is_floating_point()):
            raise ValueError(f"obs and action must be floating point, got {carry['obs'].dtype} and {x.dtype}")
        return carry["obs"]

    # ----------------------------------------------------------------------------- protocol

    def initial(self, batch: int) -> Carry:
        return {"obs": self.max_logvar.new_zeros(batch, self.spec.obs_dim)}

    def observe(self, carry: Carry, obs: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor) -> Carry:
        prev_obs = self._check(carry, prev_action)
        if obs.shape != prev_obs.shape or not obs.is_floating_point():
            raise ValueError(f"obs must be a float tensor of shape {tuple(prev_obs.shape)}, got {obs.dtype} {tuple(obs.shape)}")
        if is_first.shape != (obs.shape[0],) or is_first.dtype != torch.bool:
            raise ValueError(f"is_first must be a bool tensor of shape ({obs.shape[0]},), got {is_first.dtype} {tuple(is_first.shape)}")
        return {"obs": obs}

    def observe_sequence(
        self, carry: Carry, obs: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor
    ) -> Carry:
        """Only the last observation matters: obs (B, T, D) -> carry of ``obs[:, -1]``."""
        if obs.ndim != 3 or obs.shape[1] == 0:
            raise ValueError(f"observe_sequence needs obs (B, T >= 1, D), got {tuple(obs.shape)}")
        return self.observe(carry, obs[:, -1], prev_action[:, -1], is_first[:, -1])

    def imagine(
        self, carry: Carry, action: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Carry, Prediction]:
        obs = self._check(carry, action)
        mean, logvar = self._predict(obs, action, self.elite_idx)  # (K, B, D)
        if sample:
            rows = torch.arange(obs.shape[0], device=obs.device)
            pick = torch.randint(self.elites, (obs.shape[0],), device=obs.device, generator=generator)
            std = (0.5 * logvar[pick, rows]).exp()
            noise = torch.randn(std.shape, device=std.device, dtype=std.dtype, generator=generator)
            delta = torch.addcmul(mean[pick, rows], std, noise)
        else:
            delta = member_mean(mean)
        pred = self._prediction(obs, action, delta, mean, sample, member_std(mean).mean(-1))
        return {"obs": pred.obs}, pred

    # ----------------------------------------------------------------------------- training

    def _forecast(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The forecast positions of a window batch as flat transitions (B * N, ...)."""
        M = int(batch["history"])
        keys = ("obs", "action", "next_obs", "reward", "terminated", "valid", "contacts")
        return {k: batch[k][:, M:].flatten(0, 1) for k in keys if k in batch}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gaussian NLL of every member on its bootstrap of the batch's valid forecast
        transitions (mean over D, members averaged), PETS' log-variance bound penalty, and
        the reward / termination head losses."""
        tr = self._forecast(batch)
        mean, logvar = self._predict(tr["obs"], tr["action"])  # (E, n, D)
        target = self.delta_normalizer.normalize(tr["next_obs"] - tr["obs"])
        err2 = (mean - target) ** 2
        nll = 0.5 * (err2 * torch.exp(-logvar) + logvar).mean(-1)  # (E, n)
        weight = torch.poisson(torch.ones_like(nll)) * tr["valid"]
        nll = ((nll * weight).sum(-1) / weight.sum(-1).clamp_min(1)).mean()
        valid = tr["valid"].to(err2.dtype)
        mse = (err2.mean(-1) * valid).sum(-1).mean() / valid.sum().clamp_min(1)
        bound_penalty = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        norm = self.obs_normalizer.normalize
        heads = self.heads.loss(
            norm(tr["obs"]), self._scale(tr["action"]), norm(tr["next_obs"]), tr["reward"], tr["terminated"], tr["valid"],
            tr.get("contacts"),
        )
        loss = nll + bound_penalty + heads.pop("heads_loss")
        return {"loss": loss, "dynamics_nll": nll, "dynamics_mse": mse, **heads}

    @torch.no_grad()
    def select_elites(self, val_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Keep the ``elites`` members with the lowest MSE (normalized delta units) on the
        valid forecast transitions of ``val_batch``; returns the per-member MSE (E,)."""
        tr = self._forecast(val_batch)
        mean, _ = self._predict(tr["obs"], tr["action"])
        target = self.delta_normalizer.normalize(tr["next_obs"] - tr["obs"])
        valid = tr["valid"].to(mean.dtype)
        mse = (((mean - target) ** 2).mean(-1) * valid).sum(-1) / valid.sum().clamp_min(1)
        self.elite_idx.copy_(torch.sort(torch.topk(mse, self.elites, largest=False).indices).values)
        return mse
