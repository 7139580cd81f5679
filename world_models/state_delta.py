"""What every state-space world model here shares: action scaling, the observation and
delta normalizers, and the learned reward / termination heads on transitions."""

from __future__ import annotations

import copy
import dataclasses

import torch

from world_models.base import ModelSpec, Prediction, WorldModel
from world_models.heads import TransitionHeads, member_mean
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

    def _heads_flops(self, sample: bool) -> int:
        """Multiply-add FLOPs (x2) of the transition heads in one :meth:`_prediction`: reward /
        termination and contacts of the taken next state, and when ``sample``ing the contacts of the ensemble-mean one too."""
        macs = 0
        for net, calls in ((self.heads.net, 1), (self.heads.contact_net, 2 if sample else 1)):
            if net is not None:
                macs += calls * sum(lin.weight.numel() for lin in net.layers)
        return 2 * macs

    def _prediction(self, obs: torch.Tensor, action: torch.Tensor, delta: torch.Tensor, member_means: torch.Tensor,
                    sample: bool, uncertainty: torch.Tensor) -> Prediction:
        """The :class:`Prediction` of one step: ``delta`` (B, D) the normalized delta taken
        (sampled or mean), ``member_means`` (E, B, D) every member's mean. The heads read the
        taken next state. When sampling, ``extras["mean_obs"]`` (B, D) is the ensemble-mean next
        state and ``extras["mean_contacts"]`` (B, C) its contact logits: what the dynamics
        expect, for consumers that score a step without the sample's noise."""
        next_obs = obs + self.delta_normalizer.denormalize(delta)
        reward, logit = self.reward_termination(obs, action, next_obs)
        contacts = self.contact_logits(obs, action, next_obs)
        extras: dict[str, torch.Tensor] = {}
        if sample:
            extras["mean_obs"] = obs + self.delta_normalizer.denormalize(member_mean(member_means))
            if contacts is not None:
                extras["mean_contacts"] = self.contact_logits(obs, action, extras["mean_obs"])
        return Prediction(obs=next_obs, uncertainty=uncertainty, reward=reward, termination_logit=logit, contacts=contacts, extras=extras)

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        self.obs_normalizer.fit(data["obs"])
        self.action_normalizer.fit(data["action"])
        self.delta_normalizer.fit(data["next_obs"] - data["obs"])
        self.heads.fit(data["reward"], data.get("terminated", torch.zeros_like(data["reward"], dtype=torch.bool)))

    @torch.no_grad()
    def refit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        """Refit every normalizer on ``data`` (flat transitions) and keep the function the
        trained model computes: the change of the obs / action statistics is folded into the
        first layers that read normalized inputs, the change of the delta / reward statistics
        into the last layers that write them (log-std and its bounds shift with it). The
        uncertainty (ensemble disagreement in normalized delta units) is rescaled with them.
        ``spec.obs_low`` / ``obs_high`` (the divergence range) widen to the new data's range.

        For warm starts on a grown dataset (MBPO): the policy's data leave the statistics of
        the first collection far behind, and frozen normalizers would feed the network inputs
        and targets many standard deviations wide. A fresh model uses :meth:`fit_normalizers`.
        """
        old_obs, old_action, old_delta = (copy.deepcopy(n) for n in (self.obs_normalizer, self.action_normalizer, self.delta_normalizer))
        old_reward = copy.deepcopy(self.heads.reward_normalizer)
        self.fit_normalizers(data)
        obs_change = old_obs.change_to(self.obs_normalizer)
        action_change = old_action.change_to(self.action_normalizer)
        if self.spec.obs_low:  # the divergence range grows with the data
            seen = torch.cat([data["obs"], data["next_obs"]])
            low = torch.minimum(torch.tensor(self.spec.obs_low), seen.amin(0).cpu())
            high = torch.maximum(torch.tensor(self.spec.obs_high), seen.amax(0).cpu())
            self.spec = dataclasses.replace(self.spec, obs_low=tuple(low.tolist()), obs_high=tuple(high.tolist()))
        self._fold_input_change(*(torch.cat([o, a]) for o, a in zip(obs_change, action_change)))
        self._fold_delta_change(*old_delta.change_to(self.delta_normalizer))
        self.heads.fold_normalizer_change(obs_change, action_change, old_reward.change_to(self.heads.reward_normalizer))

    def _fold_input_change(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold ``old_normalized([obs, action]) = scale * new_normalized + shift`` ((D + A,) each) into the input layers."""
        raise NotImplementedError

    def _fold_delta_change(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold ``old_normalized(delta) = scale * new_normalized + shift`` ((D,) each) into the output layer."""
        raise NotImplementedError
