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

    act_mid: torch.Tensor
    act_half: torch.Tensor

    def _init_state_delta(self, spec: ModelSpec, learn_reward: bool, learn_termination: bool) -> None:
        self.spec = spec
        self.has_reward_head, self.has_termination_head = learn_reward, learn_termination
        low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
        self.register_buffer("act_mid", (high + low) / 2)
        self.register_buffer("act_half", ((high - low) / 2).clamp_min(1e-6))
        self.obs_normalizer = Normalizer(spec.obs_dim)
        self.delta_normalizer = Normalizer(spec.obs_dim)
        self.heads = TransitionHeads(spec.obs_dim, spec.action_dim, learn_reward, learn_termination)

    def _scale(self, action: torch.Tensor) -> torch.Tensor:
        """action (..., A) env units -> [-1, 1] over the spec's bounds."""
        return (action - self.act_mid) / self.act_half

    def reward_termination(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Learned heads on a transition: obs / next_obs (B, D), action (B, A) env units ->
        (reward (B,) per step in env units, termination logit (B,)); None where not learned."""
        if self.heads.net is None:
            return None, None
        norm = self.obs_normalizer.normalize
        return self.heads(norm(obs), self._scale(action), norm(next_obs))

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        self.obs_normalizer.fit(data["obs"])
        self.delta_normalizer.fit(data["next_obs"] - data["obs"])
        self.heads.fit(data["reward"], data.get("terminated", torch.zeros_like(data["reward"], dtype=torch.bool)))
