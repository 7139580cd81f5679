"""What every state-space world model here shares: action scaling, the observation and
delta normalizers, and the learned reward / termination heads on transitions."""

from __future__ import annotations

import torch

from world_models.base import ModelSpec, WorldModel
from world_models.heads import TransitionHeads
from world_models.normalizer import Normalizer


class StateDeltaModel(WorldModel):
    """Base of models that predict normalized deltas ``norm_delta(obs_{t+1} - obs_t)``.

    Subclasses call :meth:`_init_state_delta` in their constructor, then build their own
    dynamics network.
    """

    def _init_state_delta(self, spec: ModelSpec, learn_reward: bool, learn_termination: bool) -> None:
        self.spec = spec
        self.has_reward_head, self.has_termination_head = learn_reward, learn_termination
        self.action_normalizer = Normalizer(spec.action_dim)
        self.obs_normalizer = Normalizer(spec.obs_dim)
        self.delta_normalizer = Normalizer(spec.obs_dim)
        self.heads = TransitionHeads(spec.obs_dim, spec.action_dim, learn_reward, learn_termination, contacts=spec.contact_dim)

    def _scale(self, action: torch.Tensor) -> torch.Tensor:
        """action (..., A) env units -> normalized by the data's action statistics (a wide
        action box, e.g. legged tasks' ±10, would otherwise squeeze real actions near 0)."""
        return self.action_normalizer.normalize(action)

    def reward_termination(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Learned heads on a transition: obs / next_obs (B, D), action (B, A) env units ->
        (reward (B,) per step in env units, termination logit (B,)); None where not learned."""
        if self.heads.net is None:
            return None, None
        norm = self.obs_normalizer.normalize
        return self.heads(norm(obs), self._scale(action), norm(next_obs))

    def contact_logits(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor | None:
        """Contact logits (B, C) of ``next_obs`` from the contact head (None when ``spec.contact_dim`` = 0)."""
        norm = self.obs_normalizer.normalize
        return self.heads.contacts(norm(obs), self._scale(action), norm(next_obs))

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        self.obs_normalizer.fit(data["obs"])
        self.action_normalizer.fit(data["action"])
        self.delta_normalizer.fit(data["next_obs"] - data["obs"])
        self.heads.fit(data["reward"], data.get("terminated", torch.zeros_like(data["reward"], dtype=torch.bool)))
