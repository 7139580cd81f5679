"""Heads of the pixel model: the learned coverage / success head on latent frames (Push-T's
reward comes from it), the agent-state head (the pusher's next position from its recent
positions and actions) and the object-pose head on latent frames (where the pushed object is)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from world_models.heads import EnsembleMLP


class CoverageHead(nn.Module):
    """Coverage logit (B,) of a latent frame (B, C, h, w); sigmoid(logit) is the coverage in [0, 1]
    (trained with BCE on the true coverage as a soft label, so it is calibrated as a mean)."""

    def __init__(self, latent_channels: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)

    def loss(self, z: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """BCE of the logits of latents (B, C, h, w) against coverage (B,) in [0, 1]."""
        return F.binary_cross_entropy_with_logits(self(z), coverage.clamp(0, 1))


class AgentHead(nn.Module):
    """Next agent state from the last K normalized states (B, K, S) and the actions that led to
    them plus the new action, normalized (B, K + 1, A): predicts the normalized change (B, S)."""

    def __init__(self, context: int, state_dim: int, action_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear((context + 1) * state_dim + (context + 1) * action_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, state_dim),
        )

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        rel = states - states[:, -1:]  # positions relative to the current one
        x = torch.cat([rel.flatten(1), states[:, -1], actions.flatten(1)], dim=-1)
        return self.net(x)


class ObjectPoseHead(nn.Module):
    """Pose (B, 4) = (x, y, cos a, sin a) of the pushed object read from a latent frame
    (B, C, h, w): normalized image position and unit heading (see
    :func:`world_models.pixel.tokenizer.object_map`). Coordinate channels join the latent so
    that convolutions can tell where things are."""

    def __init__(self, latent_channels: int, latent_size: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels + 2, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(), nn.Flatten(),
            nn.Linear(hidden * ((latent_size + 1) // 2) ** 2, 256), nn.SiLU(), nn.Linear(256, 4),
        )
        axis = (torch.arange(latent_size, dtype=torch.float32) + 0.5) / latent_size * 2 - 1
        self.register_buffer("coords", torch.stack(torch.meshgrid(axis, axis, indexing="xy")), persistent=False)  # (2, h, w): x, y

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Pose (B, 4) with a unit-length heading."""
        out = self.net(torch.cat([z, self.coords.expand(len(z), -1, -1, -1)], dim=1))
        return torch.cat([out[:, :2], F.normalize(out[:, 2:], dim=-1)], dim=-1)

    def loss(self, z: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """MSE of the poses of latents (B, C, h, w) against true poses (B, 4)."""
        return F.mse_loss(self(z), pose)


class ObjectDynamicsHead(nn.Module):
    """Change of the pushed object's pose over one step, from its last K normalized poses
    (B, K, 4) = (x, y, cos a, sin a), the agent's positions (B, K + 1, 2) up to the new one and the
    actions that led to them (B, K + 1, 2), all normalized: (E, B, 3) = (dx, dy, da) (normalized
    image units, radians), one change per ensemble member.

    ``members`` E independent MLPs (:class:`~world_models.heads.EnsembleMLP`; trained on bootstrap
    weights of the same rows, :meth:`PixelWorldModel.state_head_loss`): where they disagree the
    object's motion is epistemically uncertain (the imagination's ``uncertainty``). E = 1 is one MLP.

    ``stochastic``: each member also predicts the spread of the change (a Gaussian with one std for the
    position, isotropic, and one for the angle; :meth:`distribution`), trained by its negative
    log-likelihood with the mean held fixed (the mean stays the squared-error fit). The push's outcome
    varies beyond what these inputs tell (contacts within a step), and a mean-only head then moves the
    object less than it really moves (BENCHMARKS, issue 8, stop 42). Imagination draws the change
    (``forward(noise=...)``).

    ``frame="image"`` (checkpoints before run 14): the agent's positions and actions enter relative to
    the object in the image's frame (and the agent's also in the object's), the change comes out in the
    image's frame. ``frame="object"``: every relative input (earlier poses, agent positions, actions)
    enters in the object's frame and the change comes out in it, turned back to the image's: a push
    seen at one heading teaches every heading (the physics is the same under a rotation of the scene,
    walls aside; the current pose still enters in the image's frame for the walls)."""

    SCALE = 0.1  # outputs are small: a pushed T moves about 2 px (0.06 normalized) per step
    FRAMES = ("image", "object")
    LAYERS = 3  # hidden layers of each member

    LOG_STD_RANGE = (-6.0, 2.0)  # of the std in units of SCALE

    def __init__(self, context: int, hidden: int = 256, frame: str = "image", members: int = 1, stochastic: bool = False):
        super().__init__()
        if frame not in self.FRAMES:
            raise ValueError(f"object-dynamics frame must be one of {self.FRAMES}, got {frame!r}")
        if members < 1:
            raise ValueError(f"object-dynamics members must be >= 1, got {members}")
        self.frame, self.members, self.stochastic = frame, members, stochastic
        inputs = context * 4 + 4 + (3 if frame == "image" else 2) * (context + 1) * 2
        self.net = EnsembleMLP(members, inputs, hidden, self.LAYERS, 5 if stochastic else 3, nn.SiLU)

    @classmethod
    def upgrade_state_dict(cls, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Weights of a head saved before the ensemble (one ``nn.Sequential``: ``net.{0,2,4,6}.weight`` (out, in),
        ``.bias`` (out,)) as a one-member ensemble (``net.layers.{i}.weight`` (1, in, out), ``.bias`` (1, 1, out))."""
        state = dict(state)
        for i in range(cls.LAYERS + 1):
            w, b = state.pop(f"{prefix}net.{2 * i}.weight", None), state.pop(f"{prefix}net.{2 * i}.bias", None)
            if w is not None and b is not None:
                state[f"{prefix}net.layers.{i}.weight"] = w.t()[None].contiguous()
                state[f"{prefix}net.layers.{i}.bias"] = b[None, None]
        return state

    def forward(self, poses: torch.Tensor, agent: torch.Tensor, actions: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """poses (B, K, 4), shared by the members, or (E, B, K, 4), each member's own; agent (B, K + 1, 2);
        actions (B, K + 1, 2) -> changes (E, B, 3): the mean, or with ``noise`` (E, B, 3) standard normal and a
        ``stochastic`` head the drawn change mean + std * noise."""
        mean, log_std = self.distribution(poses, agent, actions)
        if noise is None or log_std is None:
            return mean
        return mean + log_std.exp() * self.SCALE * noise

    def distribution(self, poses: torch.Tensor, agent: torch.Tensor, actions: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The change's mean (E, B, 3) (as :meth:`forward`) and, for a ``stochastic`` head, the log of its std
        (E, B, 3) in units of ``SCALE`` (the position's two equal: isotropic, the same in every frame); None else."""
        e = self.members
        if poses.ndim == 3:
            poses = poses.expand(e, -1, -1, -1)
        if poses.shape[0] != e:
            raise ValueError(f"poses must be (B, K, 4) or ({e}, B, K, 4), got {tuple(poses.shape)}")
        agent, actions = agent.expand(e, -1, -1, -1), actions.expand(e, -1, -1, -1)
        last = poses[:, :, -1]  # (E, B, 4)
        c, s = last[..., None, 2], last[..., None, 3]  # (E, B, 1): the object's heading a

        def turned(p: torch.Tensor, sign: float) -> torch.Tensor:  # (E, B, N, 2) rotated by sign * a
            return torch.stack([c * p[..., 0] - sign * s * p[..., 1], sign * s * p[..., 0] + c * p[..., 1]], dim=-1)

        rel_poses, rel_agent, rel_action = (poses[..., :2] - last[:, :, None, :2], agent - last[:, :, None, :2],
                                            actions - last[:, :, None, :2])
        if self.frame == "image":
            x = torch.cat([rel_poses.flatten(2), poses[..., 2:].flatten(2), last,
                           rel_agent.flatten(2), turned(rel_agent, -1).flatten(2), rel_action.flatten(2)], dim=-1)
        else:  # every input in the object's frame (the headings too: (cos, sin) of a_i - a)
            x = torch.cat([turned(rel_poses, -1).flatten(2), turned(poses[..., 2:], -1).flatten(2), last,
                           turned(rel_agent, -1).flatten(2), turned(rel_action, -1).flatten(2)], dim=-1)
        out = self.net(x)
        d = out[..., :3] * self.SCALE
        if self.frame == "object":  # (dx, dy) came out in the object's frame: turned back to the image's
            d = torch.cat([turned(d[..., None, :2], 1)[..., 0, :], d[..., 2:]], dim=-1)
        if not self.stochastic:
            return d, None
        log_std = out[..., 3:].clamp(*self.LOG_STD_RANGE)
        return d, torch.cat([log_std[..., :1], log_std], dim=-1)

    @staticmethod
    def mean_pose(poses: torch.Tensor) -> torch.Tensor:
        """The members' mean pose: poses (E, ..., 4) -> (..., 4) (mean position, heading of the mean (cos, sin))."""
        m = poses.mean(0)
        return torch.cat([m[..., :2], F.normalize(m[..., 2:], dim=-1)], dim=-1)

    @staticmethod
    def step(pose: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """Poses (..., 4) moved by changes (..., 3) -> (..., 4)."""
        angle = torch.atan2(pose[..., 3], pose[..., 2]) + change[..., 2]
        return torch.cat([pose[..., :2] + change[..., :2], angle.cos()[..., None], angle.sin()[..., None]], dim=-1)

    @staticmethod
    def change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """The change (..., 3) between poses (..., 4): the target of :meth:`forward`."""
        da = torch.atan2(after[..., 3] * before[..., 2] - after[..., 2] * before[..., 3],
                         after[..., 2] * before[..., 2] + after[..., 3] * before[..., 3])
        return torch.cat([after[..., :2] - before[..., :2], da[..., None]], dim=-1)
