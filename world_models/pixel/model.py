"""The pixel world model behind the common protocol: causal tokenizer + latent flow DiT +
coverage head + agent-state head.

Observations are dicts, as the Gymnasium env's: ``{"pixels": (B, H, W, 3) uint8,
"agent_pos": (B, S) float}``; ``spec.obs_dim`` = S (the agent state; ``spec.obs_low`` /
``obs_high`` its box, used for normalization), ``spec.history`` = K context frames. The carry:

- ``obs`` (B, S) agent state, ``pixels`` (B, H, W, 3) uint8 last frame (real or imagined),
- ``latents`` (B, K, C, h, w) the last K latent frames (raw tokenizer units),
- ``features`` (B, F, h, w) the tokenizer's per-frame features of the last frame it encoded (the
  last real frame, or with an object head the last imagined one, which is encoded again), mixed
  into the next encoded frame's latent (:meth:`CausalVideoTokenizer.mix`) instead of encoding
  that frame a second time,
- ``agent_pos`` (B, K, S) and ``prev_action`` (B, K, A): state shown by, and action that led to,
  each of those frames,
- ``object_pose`` (B, K, 4) with ``decoder_object_extent`` > 0: the object's pose in those frames
  (normalized x, y, cos, sin; imagined: the object-dynamics members' mean), and ``object_members``
  (B, E, K, 4) each member's own pose in them.

``imagine`` returns ``Prediction(obs=agent state, reward, termination_logit, uncertainty=the
members' spread of the object's position (B,) world units (zeros for one member or no object),
extras={"pixels": uint8 frames, "coverage": (B,) in [0, 1], "latent": (B, C, h, w)})``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from world_models.base import Carry, ModelSpec, Prediction, WorldModel
from world_models.heads import member_std
from world_models.pixel.dynamics import LatentFlowDiT
from world_models.pixel.reward import AgentHead, CoverageHead, ObjectDynamicsHead, ObjectPoseHead
from world_models.pixel.tokenizer import CausalVideoTokenizer, heat_map, to_uint8, to_unit


def draw_noise(shape: tuple[int, ...] | torch.Size, rows: torch.Tensor | None, dim: int,
               generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` whose batch dimension ``dim`` is indexed by ``rows`` (B,) long:
    one draw per distinct index, shared by the rows that carry it (None: every row its own draw)."""
    if rows is None:
        return torch.randn(shape, device=device, generator=generator)
    streams = list(shape)
    streams[dim] = int(rows.max()) + 1
    return torch.randn(streams, device=device, generator=generator).index_select(dim, rows)


class PixelWorldModel(WorldModel):
    """Cosmos-style pixel world model (see module doc).

    Args:
        spec: agent-state dim / box, action dim / box, ``history`` = K context frames (>= 1).
        frame_size: H = W of the square RGB frames (multiple of 8 * patch).
        latent_channels: C of the tokenizer's latent (spatial compression x8).
        tokenizer_channels: stage widths of the tokenizer (4 multiples of 8).
        dim, depth, heads, patch: DiT width, blocks, attention heads, latent patch size.
        sample_steps: Euler steps of the flow when generating a frame (few-step sampling).
        context_noise: max noise level of the context-frame augmentation during training.
        infer_context_noise: noise level put on context frames while imagining (``sample=True``).
        success_coverage: coverage above which the task counts as solved; the reward is
            clip(coverage / success_coverage, 0, 1) (Push-T's).
        reward_hidden: width of the coverage head.
        agent_maps: give every DiT token heat maps (4 x 4 cells per token) of the agent's
            position in its frame and of the action's target (spatial action conditioning).
        residual: the flow generates the change from the last context latent, in units of the
            per-channel std of frame-to-frame changes (``delta_std``), instead of the latent itself:
            still parts of the scene stay exactly as they were unless the model moves them.
        agent_loss_weight: extra flow-loss weight on the latent cells around the agent before and
            after each step (see :meth:`flow_weights`; 0 = a plain mean over cells).
        decoder_agent_radius: > 0: the tokenizer's decoder draws the agent from its (imagined)
            state, a heat map of this std in pixels (see :class:`CausalVideoTokenizer`); 0: the
            agent is drawn from the latent alone.
        decoder_object_extent: > 0 (needs ``decoder_agent_radius`` > 0 and rows with ``block_pose``):
            the decoder also draws the pushed object from its pose, a learned template spanning +-
            this many pixels in the object's frame; an object-pose head reads the pose from every
            latent, and every imagined frame is encoded again to give the next context latent, so
            the DiT always continues from a frame whose object has its shape. 0: off.
        object_dynamics_hidden: width of the object-dynamics head (an MLP on poses and agent states).
        object_dynamics_frame: "image" or "object": the frame the object-dynamics head sees the push in
            (:class:`~world_models.pixel.reward.ObjectDynamicsHead`; "image" for checkpoints before run 14).
        object_dynamics_members: E independent object-dynamics MLPs (bootstrap-weighted rows). Each
            member moves its own copy of the object through an imagined rollout; the frame draws their
            mean pose and ``Prediction.uncertainty`` is the spread of their positions (world units).
        object_dynamics_noise: the object-dynamics head predicts the spread of the object's change too
            (``ObjectDynamicsHead(stochastic=True)``, trained by its likelihood) and a sampled imagination
            (``imagine(sample=True)``) draws each step's change from it; off: the mean change.
    """

    MAP_CELLS = 4  # heat-map cells per token side

    has_reward_head = True
    has_termination_head = True

    def __init__(self, spec: ModelSpec, frame_size: int = 64, latent_channels: int = 16,
                 tokenizer_channels: tuple[int, ...] = (16, 32, 64, 96), dim: int = 128, depth: int = 4,
                 heads: int = 4, patch: int = 2, sample_steps: int = 4, context_noise: float = 0.2,
                 infer_context_noise: float = 0.05, success_coverage: float = 0.95, reward_hidden: int = 64,
                 agent_maps: bool = False, residual: bool = False, agent_loss_weight: float = 0.0,
                 decoder_agent_radius: float = 0.0, decoder_object_extent: float = 0.0, object_dynamics_hidden: int = 256,
                 object_dynamics_frame: str = "image", object_dynamics_members: int = 1, object_dynamics_noise: bool = False):
        super().__init__()
        if spec.history < 1:
            raise ValueError(f"PixelWorldModel needs spec.history >= 1 context frames, got {spec.history}")
        if not spec.obs_low:
            raise ValueError("PixelWorldModel needs spec.obs_low / obs_high (the agent-state box) for normalization")
        if frame_size % (8 * patch):
            raise ValueError(f"frame_size {frame_size} must be a multiple of 8 * patch = {8 * patch}")
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        self.spec = spec
        self._config = dict(frame_size=frame_size, latent_channels=latent_channels,
                            tokenizer_channels=list(tokenizer_channels), dim=dim, depth=depth, heads=heads,
                            patch=patch, sample_steps=sample_steps, context_noise=context_noise,
                            infer_context_noise=infer_context_noise, success_coverage=success_coverage,
                            reward_hidden=reward_hidden, agent_maps=agent_maps, residual=residual,
                            agent_loss_weight=agent_loss_weight, decoder_agent_radius=decoder_agent_radius,
                            decoder_object_extent=decoder_object_extent, object_dynamics_hidden=object_dynamics_hidden,
                            object_dynamics_frame=object_dynamics_frame, object_dynamics_members=object_dynamics_members,
                            object_dynamics_noise=object_dynamics_noise)
        self.frame_size, self.k = frame_size, spec.history
        self.latent_size = frame_size // 8
        self.sample_steps, self.context_noise, self.infer_context_noise = sample_steps, context_noise, infer_context_noise
        self.success_coverage = success_coverage
        self.agent_maps, self.residual, self.agent_loss_weight = agent_maps, residual, agent_loss_weight
        s, a = spec.obs_dim, spec.action_dim
        if agent_maps and (s != 2 or a != 2):
            raise ValueError(f"agent_maps needs a 2-D agent state and action (image x, y), got {s} and {a}")
        for name, value in (("agent_loss_weight", agent_loss_weight), ("decoder_agent_radius", decoder_agent_radius)):
            if value < 0 or (value and s != 2):
                raise ValueError(f"{name} must be >= 0 and needs a 2-D agent state (image x, y), got {value} and {s}")
        self.map_side = (self.latent_size // patch) * self.MAP_CELLS
        if decoder_object_extent < 0 or (decoder_object_extent and not decoder_agent_radius):
            raise ValueError(f"decoder_object_extent must be >= 0 and needs decoder_agent_radius > 0, got {decoder_object_extent}")
        self.tokenizer = CausalVideoTokenizer(latent_channels, tuple(tokenizer_channels), decoder_agent_radius,
                                              decoder_object_extent)
        self.object_head = ObjectPoseHead(latent_channels, self.latent_size) if decoder_object_extent else None
        self.object_dynamics = (ObjectDynamicsHead(self.k, object_dynamics_hidden, object_dynamics_frame, object_dynamics_members,
                                                   object_dynamics_noise) if decoder_object_extent else None)
        self.pose_fit_steps, self.pose_fit_lr = 40, 0.02  # render-and-compare at observe (fit_object_pose; run 10)
        self.dit = LatentFlowDiT(latent_channels, (self.latent_size,) * 2, cond_dim=s + a, dim=dim, depth=depth,
                                 heads=heads, patch=patch, max_frames=self.k + 1,
                                 token_extra=2 * self.MAP_CELLS**2 if agent_maps else 0)
        self.coverage_head = CoverageHead(latent_channels, reward_hidden)
        self.agent_head = AgentHead(self.k, s, a)
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))
        if residual:
            self.register_buffer("delta_std", torch.ones(latent_channels))
        for name, lo, hi in (("obs", spec.obs_low, spec.obs_high), ("action", spec.action_low, spec.action_high)):
            lo_t, hi_t = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
            self.register_buffer(f"{name}_mid", (lo_t + hi_t) / 2)
            self.register_buffer(f"{name}_half", ((hi_t - lo_t) / 2).clamp_min(1e-6))

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def upgrade_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints saved before the object-dynamics ensemble load as a one-member ensemble."""
        return ObjectDynamicsHead.upgrade_state_dict(state, "object_dynamics.") if self.object_dynamics is not None else state

    # ---- normalization -------------------------------------------------------------------
    def norm_latent(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denorm_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def norm_obs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mid) / self.obs_half

    def norm_action(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.action_mid) / self.action_half

    def norm_object_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """Object poses (..., 3) = (x, y, angle rad) in the agent state's units -> (..., 4) =
        (normalized x, y, cos, sin), as the decoder and the object-pose head take them."""
        xy = (pose[..., :2] - self.obs_mid) / self.obs_half
        return torch.cat([xy, pose[..., 2:].cos(), pose[..., 2:].sin()], dim=-1)

    def object_spread(self, members: torch.Tensor) -> torch.Tensor:
        """The object-dynamics members' disagreement about the object's position: normalized poses
        (E, ..., 4) -> (...) world units (the norm of the per-axis std over members; zeros for one member)."""
        return member_std(members[..., :2] * self.obs_half).norm(dim=-1)

    def object_pose(self, carry: Carry) -> torch.Tensor | None:
        """The pushed object's current pose (B, 3) = (x, y, angle rad) in the agent state's units, as
        the carry holds it (None for a model without an object head)."""
        if self.object_head is None:
            return None
        p = carry["object_pose"][:, -1]
        return torch.cat([p[:, :2] * self.obs_half + self.obs_mid, torch.atan2(p[:, 3], p[:, 2])[:, None]], dim=-1)

    def fit_object_pose(self, z: torch.Tensor, agent: torch.Tensor, frame: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Render-and-compare: refine object poses (B, 4) (start: ``pose``) so that the decoder's
        frame of latents ``z`` (B, C, h, w) at normalized agent positions ``agent`` (B, 2) matches
        the real ``frame`` (B, 3, H, W) in [-1, 1]; ``pose_fit_steps`` Adam steps on (x, y, angle).
        Returns the refined poses (B, 4), detached."""
        if not self.pose_fit_steps:
            return pose
        with torch.enable_grad():
            xy = pose[:, :2].detach().clone().requires_grad_(True)
            ang = torch.atan2(pose[:, 3], pose[:, 2]).detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([xy, ang], lr=self.pose_fit_lr)
            with torch.no_grad():
                features = self.tokenizer.dec[:6](z)  # the part of decoding that does not depend on the state
            for _ in range(self.pose_fit_steps):
                full = torch.cat([xy, ang.cos()[:, None], ang.sin()[:, None]], dim=-1)
                err = (self.tokenizer.draw(features, agent, full) - frame).pow(2).mean(dim=(1, 2, 3)).sum()
                opt.zero_grad()
                err.backward()
                opt.step()
        return torch.cat([xy, ang.cos()[:, None], ang.sin()[:, None]], dim=-1).detach()

    @torch.no_grad()
    def fit_latent_stats(self, latents: torch.Tensor, episode: torch.Tensor | None = None) -> None:
        """Per-channel mean / std of raw tokenizer latents (N, C, h, w): the DiT's units; with
        ``residual``, also the std of the normalized change between consecutive rows of the
        same episode (``episode`` (N,) ids, rows in step order)."""
        self.latent_mean.copy_(latents.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(latents.std(dim=(0, 2, 3)).clamp_min(1e-4))
        if self.residual:
            if episode is None:
                raise ValueError("a residual PixelWorldModel needs the rows' episode ids to fit delta_std")
            same = torch.as_tensor(episode[1:] == episode[:-1])
            z = self.norm_latent(latents)
            delta = (z[1:] - z[:-1])[same]
            self.delta_std.copy_(delta.std(dim=(0, 2, 3)).clamp_min(0.05))

    def fit_normalizers(self, data: dict[str, torch.Tensor]) -> None:
        """Latent statistics from ``data["latents"]`` (N, C, h, w) (and ``data["episode"]`` (N,)
        for a residual model); states / actions use their boxes."""
        self.fit_latent_stats(data["latents"], data.get("episode"))

    def token_maps(self, pos: torch.Tensor, action: torch.Tensor) -> torch.Tensor | None:
        """Per-token heat maps (..., tokens, 2 * MAP_CELLS^2) of normalized agent positions and
        action targets (..., 2) in [-1, 1] (x = image column, y = image row); None without ``agent_maps``."""
        if not self.agent_maps:
            return None
        r, c = self.map_side, self.MAP_CELLS
        t = r // c

        def per_token(p: torch.Tensor) -> torch.Tensor:
            m = heat_map(p, r, 0.75)  # three quarters of a cell
            m = m.reshape(*m.shape[:-2], t, c, t, c).transpose(-3, -2)
            return m.reshape(*m.shape[:-4], t * t, c * c)

        return torch.cat([per_token(pos), per_token(action)], dim=-1)

    def flow_weights(self, states: torch.Tensor) -> torch.Tensor | None:
        """Per-latent-cell weights (B, L-1, h, w) of the flow loss for frames 1..L-1 from the
        normalized agent states (B, L, 2) of a window: 1 + ``agent_loss_weight`` x a heat map
        (std one cell) of where the agent was before the step and where it is after it. The
        weights depend on the conditioning only, so the loss's minimizer stays the conditional
        mean velocity; they move the model's capacity to the few cells where the agent moves
        and pushes (the pusher is half a latent cell). None when the weight is 0."""
        if not self.agent_loss_weight:
            return None
        heat = heat_map(states, self.latent_size, 1.0)  # (B, L, h, w)
        return 1.0 + self.agent_loss_weight * torch.maximum(heat[:, :-1], heat[:, 1:])

    # ---- protocol ------------------------------------------------------------------------
    def initial(self, batch: int) -> Carry:
        dev, s, a, c, h = self.latent_mean.device, self.spec.obs_dim, self.spec.action_dim, self.tokenizer.latent_channels, self.latent_size
        carry = {
            "obs": torch.zeros(batch, s, device=dev),
            "pixels": torch.zeros(batch, self.frame_size, self.frame_size, 3, dtype=torch.uint8, device=dev),
            "latents": torch.zeros(batch, self.k, c, h, h, device=dev),
            "features": torch.zeros(batch, self.tokenizer.feature_channels, h, h, device=dev),
            "agent_pos": torch.zeros(batch, self.k, s, device=dev),
            "prev_action": torch.zeros(batch, self.k, a, device=dev),
        }
        if self.object_head is not None:
            carry["object_pose"] = torch.zeros(batch, self.k, 4, device=dev)
            carry["object_members"] = torch.zeros(batch, self.object_dynamics.members, self.k, 4, device=dev)
        return carry

    def check_obs(self, obs: dict[str, torch.Tensor]) -> None:
        """Raise a ValueError naming the problem when ``obs`` is not {pixels (B, H, W, 3) uint8, agent_pos (B, S)}."""
        if not isinstance(obs, dict) or set(obs) != {"pixels", "agent_pos"}:
            raise ValueError(f"pixel observations must be a dict with keys 'pixels' and 'agent_pos', got {type(obs).__name__} {list(obs) if isinstance(obs, dict) else ''}")
        px, pos = obs["pixels"], obs["agent_pos"]
        want = (self.frame_size, self.frame_size, 3)
        if px.ndim != 4 or tuple(px.shape[1:]) != want or px.dtype != torch.uint8:
            raise ValueError(f"obs['pixels'] must be uint8 (B, {want[0]}, {want[1]}, 3), got {px.dtype} {tuple(px.shape)}")
        if pos.shape != (px.shape[0], self.spec.obs_dim):
            raise ValueError(f"obs['agent_pos'] must have shape ({px.shape[0]}, {self.spec.obs_dim}), got {tuple(pos.shape)}")

    def observe(self, carry: Carry, obs: dict[str, torch.Tensor], prev_action: torch.Tensor, is_first: torch.Tensor) -> Carry:
        """Fold one real frame into the carry (``obs`` as in the module doc; ``prev_action`` (B, A)
        ignored where ``is_first`` (B,) — a first frame fills the whole context, at rest)."""
        self.check_obs(obs)
        px, pos = obs["pixels"], obs["agent_pos"].float()
        first = is_first.bool()
        feat = self.tokenizer.features(to_unit(px))
        z = self.tokenizer.mix(feat, torch.where(first[:, None, None, None], feat, carry["features"]))
        prev_action = torch.where(first[:, None], pos, prev_action.float())

        def push(hist: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            rolled = torch.cat([hist[:, 1:], new[:, None]], dim=1)
            filled = new[:, None].expand_as(hist)
            return torch.where(first.view(-1, *([1] * (hist.ndim - 1))), filled, rolled)

        new = {"obs": pos, "pixels": px, "latents": push(carry["latents"], z), "features": feat,
               "agent_pos": push(carry["agent_pos"], pos), "prev_action": push(carry["prev_action"], prev_action)}
        if self.object_head is not None:
            pose = self.fit_object_pose(z, self.norm_obs(pos), to_unit(px), self.object_head(z))
            new["object_pose"] = push(carry["object_pose"], pose)
            new["object_members"] = push(carry["object_members"].transpose(1, 2),
                                         pose[:, None].expand(-1, self.object_dynamics.members, -1)).transpose(1, 2)
        return new

    def observe_sequence(self, carry: Carry, obs: dict[str, torch.Tensor], prev_action: torch.Tensor, is_first: torch.Tensor) -> Carry:
        """``observe`` over time: obs dict of (B, T, ...) tensors, prev_action (B, T, A), is_first (B, T)."""
        for t in range(prev_action.shape[1]):
            carry = self.observe(carry, {k: v[:, t] for k, v in obs.items()}, prev_action[:, t], is_first[:, t])
        return carry

    def imagine(self, carry: Carry, action: torch.Tensor, *, sample: bool = True,
                generator: torch.Generator | None = None, autocast: torch.dtype | None = None) -> tuple[Carry, Prediction]:
        """One imagined frame (see the module doc). ``autocast``: compute dtype of the DiT and the
        tokenizer (``torch.bfloat16``: about 1.8x on a CPU with AVX-512 BF16 / AMX, BENCHMARKS issue 8);
        the state heads (agent, object dynamics), the carry and the outputs stay float32. A carry with
        ``noise_rows`` (B,) long (``PixelImagination(common_noise=True)``) keeps it: rows with the same index get
        the same draws (common random numbers: rollouts compared with each other, e.g. a PGPE group's, meet the
        same noise); without it every row draws its own."""
        if action.ndim != 2 or action.shape != (carry["obs"].shape[0], self.spec.action_dim):
            raise ValueError(f"action must have shape ({carry['obs'].shape[0]}, {self.spec.action_dim}), got {tuple(action.shape)}")
        b, dev = action.shape[0], action.device
        noise_rows = carry.get("noise_rows")
        states, acts = self.norm_obs(carry["agent_pos"]), self.norm_action(carry["prev_action"])
        a = self.norm_action(action.float())
        pos_n = states[:, -1] + self.agent_head(states, torch.cat([acts, a[:, None]], dim=1))
        pos_n = pos_n.clamp(-1, 1)
        ctx = self.norm_latent(carry["latents"])
        level = self.infer_context_noise if sample else 0.0
        if level > 0:
            ctx = (1 - level) * ctx + level * draw_noise(ctx.shape, noise_rows, 0, generator, dev)
        ctx_tau = torch.full(ctx.shape[:2], 1.0 - self.infer_context_noise, device=dev)
        ctx_cond = torch.cat([acts, states], dim=-1)
        cond = torch.cat([a, pos_n], dim=-1)
        ctx_maps, maps = self.token_maps(states, acts), self.token_maps(pos_n, a)
        shape = ctx.shape[:1] + ctx.shape[2:]
        x = draw_noise(shape, noise_rows, 0, generator, dev) if sample else torch.zeros(shape, device=dev)
        amp = torch.autocast(dev.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None)
        frames = torch.tensor([ctx.shape[1]], device=dev)
        n = self.sample_steps
        with amp:
            context = self.dit.context(ctx, ctx_tau, ctx_cond, ctx_maps)  # the clean stream, once for every Euler step
            for i in range(n):
                tau = torch.full((b, 1), i / n, device=dev)
                v = self.dit.velocity(context, x[:, None], tau, cond[:, None], frames, None if maps is None else maps[:, None])
                x = x + v[:, 0].float() / n
        if self.residual:
            x = ctx[:, -1] + self.delta_std[:, None, None] * x
        z = self.denorm_latent(x)
        if self.object_head is None:
            with amp:
                pixels = to_uint8(self.tokenizer.decode(z, pos_n).float())
            feat = carry["features"]
            spread = torch.zeros(b, device=dev)
        else:  # move the object by the object-dynamics members, draw it at their mean, then take the drawn frame's latent as the state
            members = self.roll_object(carry["object_members"].transpose(0, 1), torch.cat([states, pos_n[:, None]], dim=1),
                                       torch.cat([acts, a[:, None]], dim=1), sample, generator, noise_rows)[:, :, 0]  # (E, B, 4)
            pose = self.object_dynamics.mean_pose(members)
            spread = self.object_spread(members)
            with amp:
                pixels = to_uint8(self.tokenizer.decode(z, pos_n, pose).float())
                feat = self.tokenizer.features(to_unit(pixels)).float()
                z = self.tokenizer.mix(feat, carry["features"]).float()
        logit = self.coverage_head(z)
        coverage = torch.sigmoid(logit)
        pos = pos_n * self.obs_half + self.obs_mid
        thr = torch.tensor(self.success_coverage, device=dev)
        term_logit = logit - torch.log(thr / (1 - thr))  # > 0 exactly where coverage > success_coverage
        new = {"obs": pos, "pixels": pixels,
               "latents": torch.cat([carry["latents"][:, 1:], z[:, None]], dim=1),
               "features": feat,
               "agent_pos": torch.cat([carry["agent_pos"][:, 1:], pos[:, None]], dim=1),
               "prev_action": torch.cat([carry["prev_action"][:, 1:], action.float()[:, None]], dim=1)}
        if self.object_head is not None:
            new["object_pose"] = torch.cat([carry["object_pose"][:, 1:], pose[:, None]], dim=1)
            new["object_members"] = torch.cat([carry["object_members"][:, :, 1:], members.transpose(0, 1)[:, :, None]], dim=2)
        if noise_rows is not None:
            new["noise_rows"] = noise_rows
        pred = Prediction(obs=pos, uncertainty=spread,
                          reward=(coverage / self.success_coverage).clamp(0, 1), termination_logit=term_logit,
                          extras={"pixels": pixels, "coverage": coverage, "latent": z})
        return new, pred

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`flow_loss` + :meth:`latent_head_loss` + :meth:`state_head_loss` on the same
        windows (training gives each part its own batch and steps:
        :func:`world_models.pixel.training.train_dynamics`)."""
        parts = self.flow_loss(batch), self.latent_head_loss(batch), self.state_head_loss(batch)
        return {**{k: v for p in parts for k, v in p.items()}, "loss": sum(p["loss"] for p in parts)}

    def _windows(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Normalized latents z (B, K+1, C, h, w), a context-noised copy of them and its noise levels
        (B, K+1) (up to ``context_noise``: imagined latents are never exact), the normalized agent
        states (B, K+1, S) and actions (B, K+1, A) of a batch of windows."""
        z = self.norm_latent(batch["latents"].float())
        b, l = z.shape[:2]
        self._check_window(l)
        level = torch.rand(b, l, device=z.device) * self.context_noise
        noised = (1 - level)[..., None, None, None] * z + level[..., None, None, None] * torch.randn_like(z)
        return z, noised, level, self.norm_obs(batch["agent_pos"].float()), self.norm_action(batch["prev_action"].float())

    def flow_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The DiT's flow-matching loss on windows of K + 1 rows (see
        :class:`world_models.pixel.frames.FrameWindows` with ``context=K, future=1``):
        ``latents`` (B, K+1, C, h, w) raw tokenizer latents, ``agent_pos`` (B, K+1, S),
        ``prev_action`` (B, K+1, A), ``valid`` (B, K+1) bool. Every frame 1..K is a flow-matching
        target given the (context-noised) clean frames before it."""
        z, clean, level, states, acts = self._windows(batch)
        b, l, dev = z.shape[0], z.shape[1], z.device
        cond = torch.cat([acts, states], dim=-1)
        x1 = (z[:, 1:] - clean[:, :-1]) / self.delta_std[:, None, None] if self.residual else z[:, 1:]
        x0 = torch.randn_like(x1)
        tau = torch.rand(b, l - 1, device=dev)
        xt = tau[..., None, None, None] * x1 + (1 - tau[..., None, None, None]) * x0
        maps = self.token_maps(states, acts)
        v = self.dit(clean, 1 - level, cond, xt, tau, cond[:, 1:], torch.arange(1, l, device=dev),
                     maps, None if maps is None else maps[:, 1:])
        valid = batch["valid"][:, 1:].float()
        err = (v - (x1 - x0)).pow(2).mean(dim=2)  # (B, L-1, h, w)
        weights = self.flow_weights(states)
        per_frame = err.mean(dim=(2, 3)) if weights is None else (err * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
        flow = (per_frame * valid).sum() / valid.sum().clamp_min(1)
        return {"loss": flow, "flow": flow.detach()}

    def latent_head_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses of the heads that read latents, on windows as in :meth:`flow_loss` plus
        ``coverage`` (B, K+1) and, with ``decoder_object_extent`` > 0, ``block_pose`` (B, K+1, 3):
        coverage head (BCE) and object-pose head (pose MSE), both on the clean and the
        context-noised latents of every frame."""
        _, noised, _, _, _ = self._windows(batch)
        zs = torch.cat([batch["latents"].float(), self.denorm_latent(noised)], dim=0).flatten(0, 1)
        cov = torch.cat([batch["coverage"].float()] * 2, dim=0).flatten()
        loss = self.coverage_head.loss(zs, cov)
        out = {"coverage_bce": loss.detach()}
        if self.object_head is not None:
            poses = self._object_poses(batch)
            pose = self.object_head.loss(zs, torch.cat([poses] * 2).flatten(0, 1))
            loss = loss + 10.0 * pose
            out["pose_mse"] = pose.detach()
        return {"loss": loss, **out}

    def member_weights(self, batch: int, device: torch.device) -> torch.Tensor:
        """Bootstrap weights (E, B) of a batch's rows for the object-dynamics members: Poisson(1) per member
        and row (online bagging), so that the members see different resamples of the data; ones for E = 1."""
        e = self.object_dynamics.members
        ones = torch.ones(e, batch, device=device)
        return ones if e == 1 else torch.poisson(ones)

    def state_head_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses of the heads that read states only, on windows as in :meth:`latent_head_loss`:
        agent head (next-position MSE) and, with ``decoder_object_extent`` > 0, object-dynamics
        head (pose-change MSE in units of its ``SCALE``, and for a stochastic head the Gaussian negative
        log-likelihood of the change under its std, the mean held fixed, so that the mean stays the
        squared-error fit: trained by the likelihood alone, the mean fitted the scattered pushes worse,
        BENCHMARKS issue 8 stop 42; every member on its bootstrap weights)."""
        states, acts = self.norm_obs(batch["agent_pos"].float()), self.norm_action(batch["prev_action"].float())
        self._check_window(states.shape[1])
        agent = F.mse_loss(self.agent_head(states[:, :-1], acts), states[:, -1] - states[:, -2])
        loss, out = 10.0 * agent, {"agent_mse": agent.detach()}
        if self.object_head is not None:
            poses = self._object_poses(batch)
            scale = self.object_dynamics.SCALE
            change, log_std = self.object_dynamics.distribution(poses[:, :-1], states, acts)  # (E, B, 3) each
            sq = ((change - self.object_dynamics.change(poses[:, -2], poses[:, -1])) / scale).pow(2)  # (E, B, 3)
            w = self.member_weights(sq.shape[1], sq.device)

            def weighted(per_row: torch.Tensor) -> torch.Tensor:  # (E, B) -> the bootstrap-weighted mean
                return (per_row * w).sum() / w.sum().clamp_min(1.0)

            mse = weighted(sq.mean(-1))
            loss = loss + mse
            out["object_change_mse"] = mse.detach()
            if log_std is not None:  # the std learns from the mean's residual; the mean stays the squared-error fit
                nll = weighted((0.5 * sq.detach() * torch.exp(-2 * log_std) + log_std).mean(-1))
                loss = loss + nll
                out["object_change_nll"] = nll.detach()
        return {"loss": loss, **out}

    def roll_object(self, poses: torch.Tensor, states: torch.Tensor, acts: torch.Tensor, sample: bool = False,
                    generator: torch.Generator | None = None, noise_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Every object-dynamics member fed its own output for H steps: from the last K normalized object
        poses (B, K, 4) (shared) or (E, B, K, 4) (each member's), the normalized agent positions (B, K + H, S)
        and the normalized actions that led to them (B, K + H, A), each member's poses (E, B, H, 4) after
        each step (as :meth:`imagine` moves the object). ``sample`` with a stochastic head
        (``object_dynamics_noise``): each step's change is drawn (``generator``; ``noise_rows`` as in
        :meth:`imagine`), else its mean."""
        k, out = self.k, []
        e = self.object_dynamics.members
        if poses.ndim == 3:
            poses = poses.expand(e, -1, -1, -1)
        draw = sample and self.object_dynamics.stochastic
        for t in range(states.shape[1] - k):
            noise = draw_noise((e, poses.shape[1], 3), noise_rows, 1, generator, poses.device) if draw else None
            change = self.object_dynamics(poses, states[:, t:t + k + 1], acts[:, t:t + k + 1], noise)
            new = self.object_dynamics.step(poses[:, :, -1], change)
            poses = torch.cat([poses[:, :, 1:], new[:, :, None]], dim=2)
            out.append(new)
        return torch.stack(out, dim=2)

    def object_rollout_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Multi-step loss of the object-dynamics head on windows of K + H rows (H >= 1): the head rolls
        the object H steps from the K true poses on its own predictions (true agent positions and
        actions) and every step's pose error (dx, dy, d-angle in units of its ``SCALE``) is penalised
        where the window is inside its episode, every member rolling its own poses on its bootstrap
        weights. Teaches the head to keep its compounding error small,
        as RWM's autoregressive training does for state models; H = 1 is the one-step loss."""
        if self.object_head is None:
            raise ValueError("object_rollout_loss needs a model whose decoder draws the object (decoder_object_extent > 0)")
        poses = self._object_poses(batch)
        k = self.k
        if poses.shape[1] <= k:
            raise ValueError(f"object_rollout_loss needs windows of K + H > K = {k} rows, got {poses.shape[1]}")
        states, acts = self.norm_obs(batch["agent_pos"].float()), self.norm_action(batch["prev_action"].float())
        pred = self.roll_object(poses[:, :k], states, acts)
        err = (self.object_dynamics.change(pred, poses[:, k:]) / self.object_dynamics.SCALE).pow(2).sum(-1)  # (E, B, H)
        valid = batch["valid"][:, k:].float() * self.member_weights(err.shape[1], err.device)[..., None]
        loss = (err * valid).sum() / valid.sum().clamp_min(1.0) / 3
        return {"loss": loss, "object_rollout_mse": loss.detach()}

    def _check_window(self, length: int) -> None:
        if length != self.k + 1:
            raise ValueError(f"PixelWorldModel losses need windows of K + 1 = {self.k + 1} frames, got {length}")

    def _object_poses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized object poses (B, K+1, 4) of a batch's ``block_pose`` (B, K+1, 3)."""
        if "block_pose" not in batch:
            raise ValueError("a model whose decoder draws the object needs the rows' block_pose (B, K+1, 3)")
        return self.norm_object_pose(batch["block_pose"].float())
