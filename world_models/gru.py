"""Dual-autoregressive GRU world model (Robotic World Model, arXiv 2501.10100).

A GRU base reads ``x_t = [norm(obs_t), action_t scaled to [-1, 1]]``; an ensemble of E
Gaussian heads on ``[GRU output, x_t]`` (the skip connection lets the heads read the current
state exactly, the GRU supplies the history context) predicts the *normalized delta* ``norm_delta(obs_{t+1} - obs_t)``.
Training is dual-autoregressive: the GRU is teacher-forced over M history steps, then
rolls out N forecast steps on its own reparameterized samples, and the loss sums the
Gaussian NLL over the forecast (N = 1 is the teacher-forced baseline).

Carry: ``{"obs": (B, D), "h": (B, layers, H)}``. ``h`` keeps the batch leading (as every
carry entry does); the model hands it to ``nn.GRU`` as the (layers, B, H) view it wrote,
so stepping copies nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from world_models.base import Carry, ModelSpec, Prediction, check_batch_shapes
from world_models.heads import EnsembleLinear, fold_input_change, fold_output_change, masked_mean, member_mean, member_std, soft_clamp
from world_models.state_delta import StateDeltaModel


class DualAutoregressiveGRU(StateDeltaModel):
    """RWM: shared GRU base, ensemble of Gaussian delta heads, learned reward / termination.

    Args:
        spec: obs / action layout, history M and forecast N used by :meth:`loss`.
        hidden: GRU hidden size H.
        layers: GRU layers.
        head_hidden: hidden width of each ensemble head (one ELU layer).
        ensemble: E heads on the shared base (epistemic uncertainty = their disagreement).
        learn_reward / learn_termination: train :class:`TransitionHeads` for them.
        history_weight: weight of the teacher-forced one-step loss on the M history positions
            (0: forecast loss only, as the paper).
        forecast_noise: scale of the reparameterized noise on the states the training forecast
            feeds back (1: a full sample of the predicted Gaussian, as the paper; 0: the drawn
            member's mean). Noise the loss must undo teaches the mean prediction to revert
            any deviation, real tilts included (BENCHMARKS.md, issue 4).
    """


    def __init__(
        self,
        spec: ModelSpec,
        hidden: int = 256,
        layers: int = 2,
        head_hidden: int = 128,
        ensemble: int = 5,
        learn_reward: bool = True,
        learn_termination: bool = True,
        history_weight: float = 0.0,
        forecast_noise: float = 1.0,
    ):
        super().__init__()
        if min(hidden, layers, head_hidden, ensemble) < 1:
            raise ValueError(
                f"hidden, layers, head_hidden, ensemble must be >= 1, got {hidden}, {layers}, {head_hidden}, {ensemble}"
            )
        self.hidden, self.layers, self.head_hidden, self.ensemble = hidden, layers, head_hidden, ensemble
        if not 0.0 <= forecast_noise <= 1.0:
            raise ValueError(f"forecast_noise must lie in [0, 1], got {forecast_noise}")
        self.history_weight, self.forecast_noise = history_weight, forecast_noise
        self._init_state_delta(spec, learn_reward, learn_termination)
        D, A = spec.obs_dim, spec.action_dim
        self.gru = nn.GRU(D + A, hidden, layers, batch_first=True)
        # E heads: the first layer reads [shared GRU output, x_t], so all members are one wide matmul
        self.head_in = nn.Linear(hidden + D + A, ensemble * head_hidden)
        self.head_out = EnsembleLinear(ensemble, head_hidden, 2 * D)
        self.max_logstd = nn.Parameter(torch.full((D,), 0.5))
        self.min_logstd = nn.Parameter(torch.full((D,), -5.0))

    def config(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "layers": self.layers,
            "head_hidden": self.head_hidden,
            "ensemble": self.ensemble,
            "learn_reward": self.has_reward_head,
            "learn_termination": self.has_termination_head,
            "history_weight": self.history_weight,
            "forecast_noise": self.forecast_noise,
        }

    def flops_per_step(self, sample: bool = True) -> int:
        """Multiply-add FLOPs (x2) of one env-step of :meth:`imagine`: GRU, ensemble heads,
        reward / termination / contact heads (see :meth:`_heads_flops`). Elementwise work (gates, activations) not counted."""
        D, A, H = self.spec.obs_dim, self.spec.action_dim, self.hidden
        macs = sum(3 * H * ((D + A if layer == 0 else H) + H) for layer in range(self.layers))
        macs += (H + D + A) * self.ensemble * self.head_hidden + self.ensemble * self.head_hidden * 2 * D
        return 2 * macs + self._heads_flops(sample)

    # ----------------------------------------------------------------------------- pieces

    def _inputs(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs (..., D) env units, action (..., A) env units -> GRU input (..., D + A)."""
        return torch.cat([self.obs_normalizer.normalize(obs), self._scale(action)], dim=-1)

    def _predict(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head input feat (B, H + D + A) = [GRU output, x_t] -> every member's (mean, raw log-std), each (E, B, D) in
        normalized delta units (log-std not yet clamped).

        Computed batch-last, (E * head_hidden, B) then (E, 2D, B), so that both matmuls read
        contiguous operands; the (E, B, D) results are views."""
        zt = torch.addmm(self.head_in.bias[:, None], self.head_in.weight, feat.T)  # (E * hh, B)
        zt = F.elu(zt, inplace=True).view(self.ensemble, self.head_hidden, feat.shape[0])
        out = self.head_out.forward_batch_last(zt)  # (E, 2D, B)
        return out.transpose(1, 2).split(self.spec.obs_dim, dim=-1)

    def _logstd(self, raw: torch.Tensor) -> torch.Tensor:
        return soft_clamp(raw, self.min_logstd, self.max_logstd)

    def _check(self, carry: Carry, x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``carry`` against ``x`` (B, A) and return (obs (B, D), h (layers, B, H))."""
        if "obs" not in carry or "h" not in carry:
            raise ValueError(f"carry must hold 'obs' and 'h', got keys {sorted(carry)}")
        obs, h = carry["obs"], carry["h"]
        check_batch_shapes(self.spec, obs, x)
        if h.shape != (obs.shape[0], self.layers, self.hidden):
            raise ValueError(f"carry['h'] must have shape {(obs.shape[0], self.layers, self.hidden)}, got {tuple(h.shape)}")
        if not (obs.is_floating_point() and x.is_floating_point()):
            raise ValueError(f"obs and {what} must be floating point, got {obs.dtype} and {x.dtype}")
        return obs, h.transpose(0, 1)

    def _fold_input_change(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        n = scale.shape[0]
        fold_input_change(self.gru.weight_ih_l0, self.gru.bias_ih_l0, slice(0, n), scale, shift)
        fold_input_change(self.head_in.weight, self.head_in.bias, slice(self.hidden, self.hidden + n), scale, shift)

    @torch.no_grad()
    def _fold_delta_change(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        D = self.spec.obs_dim
        fold_output_change(self.head_out, slice(0, D), scale, shift)
        log_scale = scale.log()  # std_new = std_old / scale
        self.head_out.bias[..., D:] -= log_scale
        self.min_logstd -= log_scale
        self.max_logstd -= log_scale

    # ----------------------------------------------------------------------------- protocol

    def initial(self, batch: int) -> Carry:
        p = self.head_in.weight
        return {
            "obs": p.new_zeros(batch, self.spec.obs_dim),
            "h": p.new_zeros(self.layers, batch, self.hidden).transpose(0, 1),
        }

    def observe(self, carry: Carry, obs: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor) -> Carry:
        prev_obs, h = self._check(carry, prev_action, "prev_action")
        if obs.shape != prev_obs.shape or not obs.is_floating_point():
            raise ValueError(f"obs must be a float tensor of shape {tuple(prev_obs.shape)}, got {obs.dtype} {tuple(obs.shape)}")
        if is_first.shape != (obs.shape[0],) or is_first.dtype != torch.bool:
            raise ValueError(f"is_first must be a bool tensor of shape ({obs.shape[0]},), got {is_first.dtype} {tuple(is_first.shape)}")
        _, h = self.gru(self._inputs(prev_obs, prev_action).unsqueeze(1), h)
        h = torch.where(is_first[None, :, None], 0.0, h)
        return {"obs": obs, "h": h.transpose(0, 1)}

    def observe_sequence(
        self, carry: Carry, obs: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor
    ) -> Carry:
        """Fused warm-up: when every row starts at t = 0 and nowhere later (the common case),
        one ``nn.GRU`` call over the whole sequence; otherwise the per-step loop."""
        bt = obs.shape[:2]
        if obs.ndim != 3 or prev_action.shape[:2] != bt or is_first.shape != bt or is_first.dtype != torch.bool:
            raise ValueError(
                f"observe_sequence needs obs (B, T, D), prev_action (B, T, A), is_first (B, T) bool; got "
                f"{tuple(obs.shape)}, {tuple(prev_action.shape)}, {is_first.dtype} {tuple(is_first.shape)}"
            )
        B, T = obs.shape[:2]
        if T == 0 or not (is_first[:, 0].all() and not is_first[:, 1:].any()):
            return super().observe_sequence(carry, obs, prev_action, is_first)
        check_batch_shapes(self.spec, obs[:, -1], prev_action[:, -1])
        h = obs.new_zeros(self.layers, B, self.hidden)
        if T > 1:
            _, h = self.gru(self._inputs(obs[:, :-1], prev_action[:, 1:]), h)
        return {"obs": obs[:, -1], "h": h.transpose(0, 1)}

    def imagine(
        self, carry: Carry, action: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Carry, Prediction]:
        obs, h = self._check(carry, action, "action")
        x = self._inputs(obs, action)
        out, h = self.gru(x.unsqueeze(1), h)
        mean, raw_logstd = self._predict(torch.cat([out.squeeze(1), x], dim=-1))
        if sample:
            rows = torch.arange(obs.shape[0], device=obs.device)
            member = torch.randint(self.ensemble, (obs.shape[0],), device=obs.device, generator=generator)
            std = self._logstd(raw_logstd[member, rows]).exp()
            noise = torch.randn(std.shape, device=std.device, dtype=std.dtype, generator=generator)
            delta = torch.addcmul(mean[member, rows], std, noise)
        else:
            delta = member_mean(mean)
        pred = self._prediction(obs, action, delta, mean, sample, member_std(mean).mean(-1))
        return {"obs": pred.obs, "h": h.transpose(0, 1)}, pred

    # ----------------------------------------------------------------------------- training

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dual-autoregressive loss on a :class:`~world_models.data.WindowSampler` batch.

        obs / next_obs (B, L, D), action (B, L, A), valid / is_first (B, L), history M,
        L = M + N. History positions are teacher-forced (h cleared at ``is_first``, left
        unchanged on invalid positions); forecast positions feed the model its own
        reparameterized samples (noise times ``forecast_noise``) from the second step on. Per forecast step, every member's
        Gaussian NLL + MSE of the next obs (normalized delta units, mean over D) is averaged
        over members and valid rows; the loss sums the steps, adds PETS' penalty on the
        learned log-std bounds, and the reward / termination head losses (trained on the real
        transitions of the valid forecast positions; contacts too, where the batch has them). With ``history_weight`` > 0 the history
        positions add a teacher-forced one-step NLL + MSE term (mean over valid positions),
        times that weight (0 by default: the paper's loss covers the forecast only).
        """
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        valid, is_first, M = batch["valid"], batch["is_first"], int(batch["history"])
        B, L, _ = obs.shape
        x = self._inputs(obs, action)
        h = obs.new_zeros(self.layers, B, self.hidden)
        history_out = []
        for t in range(M):
            h = torch.where(is_first[None, :, t, None], 0.0, h)
            _, h_next = self.gru(x[:, t : t + 1], h)
            history_out.append(h_next[-1])
            h = torch.where(valid[None, :, t, None], h_next, h)
        if M > 0 and self.history_weight > 0:  # teacher-forced one-step loss on the history
            mean, raw_logstd = self._predict(torch.cat([torch.stack(history_out, 1), x[:, :M]], dim=-1).flatten(0, 1))
            target = self.delta_normalizer.normalize(next_obs[:, :M] - obs[:, :M]).flatten(0, 1)
            err2 = (mean - target) ** 2
            logstd = self._logstd(raw_logstd)
            nll = (0.5 * err2 * torch.exp(-2 * logstd) + logstd).mean(-1).mean(0)
            history_loss = masked_mean(nll + err2.mean(-1).mean(0), valid[:, :M].flatten())
        else:
            history_loss = obs.new_zeros(())
        rows = torch.arange(B, device=obs.device)
        cur = obs[:, M]
        nll_sum = mse_sum = obs.new_zeros(())
        for t in range(M, L):
            h = torch.where(is_first[None, :, t, None], 0.0, h)
            inp = x[:, t] if t == M else self._inputs(cur, action[:, t])
            out, h = self.gru(inp.unsqueeze(1), h)
            mean, raw_logstd = self._predict(torch.cat([out.squeeze(1), inp], dim=-1))
            logstd = self._logstd(raw_logstd)
            target = self.delta_normalizer.normalize(next_obs[:, t] - cur)  # (B, D)
            err2 = (mean - target) ** 2  # (E, B, D)
            nll = (0.5 * err2 * torch.exp(-2 * logstd) + logstd).mean(-1).mean(0)  # (B,)
            nll_sum = nll_sum + masked_mean(nll, valid[:, t])
            mse_sum = mse_sum + masked_mean(err2.mean(-1).mean(0), valid[:, t])
            if t + 1 < L:
                member = torch.randint(self.ensemble, (B,), device=obs.device)
                delta = mean[member, rows] + self.forecast_noise * logstd[member, rows].exp() * torch.randn_like(cur)
                sample = cur + self.delta_normalizer.denormalize(delta)
                cur = torch.where(valid[:, t + 1, None], sample, obs[:, t + 1])  # padding stays finite
        n = L - M
        fc = slice(M, L)
        norm = self.obs_normalizer.normalize
        heads = self.heads.loss(
            norm(obs[:, fc]).flatten(0, 1),
            self._scale(action[:, fc]).flatten(0, 1),
            norm(next_obs[:, fc]).flatten(0, 1),
            batch["reward"][:, fc].flatten(),
            batch["terminated"][:, fc].flatten(),
            valid[:, fc].flatten(),
            batch["contacts"][:, fc].flatten(0, 1) if "contacts" in batch else None,
        )
        bound_penalty = 0.01 * (self.max_logstd.sum() - self.min_logstd.sum())
        loss = nll_sum + mse_sum + self.history_weight * history_loss + bound_penalty + heads.pop("heads_loss")
        out = {"loss": loss, "dynamics_nll": nll_sum / n, "dynamics_mse": mse_sum / n, **heads}
        if self.history_weight > 0:
            out["history_loss"] = history_loss
        return out
