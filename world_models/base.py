"""The one protocol every world model follows: explicit carry in, carry out.

A *carry* is a plain ``dict[str, Tensor]`` whose tensors all have the batch as their
leading dimension ``B``. It always holds ``"obs"`` (B, D): the observation the model is
currently conditioned on (real after :meth:`WorldModel.observe`, predicted after
:meth:`WorldModel.imagine`); recurrent models add their latent state (e.g. ``"h"``).
Because the carry is explicit, batched imagination, partial resets (index the carry) and
pixel vs state models all look the same to the environment.

Time convention (DreamerV3's ``observe(obs_t, a_{t-1}, is_first)``):

- ``observe(carry, obs, prev_action, is_first)`` folds one *real* step into the carry: where
  ``is_first`` the latent is cleared and ``obs`` becomes the start; elsewhere the model
  consumes ``(carry["obs"], prev_action)`` and then conditions on the real ``obs``.
- ``imagine(carry, action)`` consumes ``(carry["obs"], action)`` and predicts the next step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

Carry = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """What a model consumes and produces.

    Attributes:
        obs_dim: size D of the (flat, float) observation vector the model predicts.
        action_dim: size A of the (flat, float) action vector.
        action_low / action_high: bounds of the action box, length A (actions are scaled
            to [-1, 1] inside the model).
        history: M, real (obs, action) pairs the model is warmed up on before imagining.
        forecast: N, autoregressive steps the training loss sums over.
        dt: seconds of real time per step (informational; rewards are per step).
        obs_low / obs_high: per-dimension range seen in the training data, length D. An
            imagined observation far outside it is flagged as divergence.
        obs_names: optional names of the observation dimensions (for reports).
        contact_dim: C, binary contact flags per transition the model predicts as logits
            (RWM's privileged contact heads; 0: none).
    """

    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    history: int = 32
    forecast: int = 8
    dt: float = 0.05
    obs_low: tuple[float, ...] = ()
    obs_high: tuple[float, ...] = ()
    obs_names: tuple[str, ...] = ()
    contact_dim: int = 0

    def __post_init__(self) -> None:
        if self.obs_dim <= 0 or self.action_dim <= 0:
            raise ValueError(f"ModelSpec needs obs_dim > 0 and action_dim > 0, got {self.obs_dim}, {self.action_dim}")
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(
                f"ModelSpec action bounds must have length action_dim={self.action_dim}, "
                f"got {len(self.action_low)} and {len(self.action_high)}"
            )
        for name in ("obs_low", "obs_high"):
            v = getattr(self, name)
            if v and len(v) != self.obs_dim:
                raise ValueError(f"ModelSpec.{name} must have length obs_dim={self.obs_dim}, got {len(v)}")
        if self.contact_dim < 0:
            raise ValueError(f"ModelSpec needs contact_dim >= 0, got {self.contact_dim}")
        if self.history < 0 or self.forecast < 1:
            raise ValueError(f"ModelSpec needs history >= 0 and forecast >= 1, got {self.history}, {self.forecast}")
        if not all(math.isfinite(x) for x in self.action_low + self.action_high):
            raise ValueError("ModelSpec action bounds must be finite (world models need a bounded Box action space)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec keys: {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


@dataclass
class Prediction:
    """One imagined step for a batch of B envs.

    Attributes:
        obs: (B, D) predicted next observation (sampled if ``sample=True``).
        reward: (B,) learned-head reward for the transition, or None if the model has no head.
        termination_logit: (B,) logit of P(terminal) for the transition, or None.
        contacts: (B, C) contact logits of the next state, or None (``spec.contact_dim`` = 0).
        uncertainty: (B,) epistemic uncertainty (disagreement of ensemble members, in
            normalized units); zeros for a model without an ensemble.
    """

    obs: torch.Tensor
    uncertainty: torch.Tensor
    reward: torch.Tensor | None = None
    termination_logit: torch.Tensor | None = None
    contacts: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class WorldModel(nn.Module):
    """Base class of all world models. Subclasses set ``spec`` and implement the methods.

    Subclasses also provide ``config()`` (a JSON-able dict that, with ``spec``, rebuilds the
    model: ``cls(spec, **config)``) so that :mod:`world_models.checkpoint` can save them.
    """

    spec: ModelSpec
    has_reward_head: bool = False
    has_termination_head: bool = False

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def upgrade_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights saved by an earlier layout of this class, renamed / reshaped to the current one
        (:func:`world_models.checkpoint.load_checkpoint` calls it before checking the keys). As they are by default."""
        return state

    def initial(self, batch: int) -> Carry:
        """An empty carry for ``batch`` envs (every entry zero)."""
        raise NotImplementedError

    def observe(self, carry: Carry, obs: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor) -> Carry:
        """Fold one real step into the carry.

        Args:
            carry: current carry, batch B.
            obs: (B, D) real observation at time t.
            prev_action: (B, A) action taken at t-1 (ignored where ``is_first``).
            is_first: (B,) bool, True where ``obs`` starts an episode.
        """
        raise NotImplementedError

    def observe_sequence(
        self, carry: Carry, obs: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor
    ) -> Carry:
        """Warm up on a real history: ``observe`` over time. obs (B, T, D), prev_action (B, T, A),
        is_first (B, T). Models may override with a fused implementation."""
        for t in range(obs.shape[1]):
            carry = self.observe(carry, obs[:, t], prev_action[:, t], is_first[:, t])
        return carry

    def imagine(
        self, carry: Carry, action: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Carry, Prediction]:
        """Predict one step: consume ``(carry["obs"], action)`` with action (B, A) in env units.

        ``sample=True`` draws from the model's predictive distribution (random ensemble member
        per env, Gaussian noise) using ``generator`` (seeded envs are deterministic);
        ``sample=False`` returns the mean prediction.

        Returns the new carry (whose ``"obs"`` is the predicted observation) and the Prediction.
        """
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training losses on a batch of windows (see :class:`world_models.data.WindowSampler`).
        Must contain ``"loss"`` (the scalar to minimize) plus scalar diagnostics."""
        raise NotImplementedError

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        """Set input/output normalizers from flat transitions (``obs``, ``action``, ``next_obs``,
        ``reward``): called once before training; the statistics are saved with the weights."""
        raise NotImplementedError

    def refit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        """Refit the normalizers of a trained model on new flat transitions while keeping the
        function it computes (warm starts on a grown dataset)."""
        raise NotImplementedError(f"{type(self).__name__} cannot refit its normalizers in place")


def check_batch_shapes(spec: ModelSpec, obs: torch.Tensor, action: torch.Tensor) -> None:
    """Raise a ValueError naming the problem when ``obs`` (B, D) / ``action`` (B, A) do not
    match ``spec``."""
    if obs.ndim != 2 or obs.shape[-1] != spec.obs_dim:
        raise ValueError(f"obs must have shape (B, {spec.obs_dim}), got {tuple(obs.shape)}")
    if action.ndim != 2 or action.shape[-1] != spec.action_dim:
        raise ValueError(f"action must have shape (B, {spec.action_dim}), got {tuple(action.shape)}")
    if action.shape[0] != obs.shape[0]:
        raise ValueError(f"obs and action batch sizes differ: {obs.shape[0]} vs {action.shape[0]}")
