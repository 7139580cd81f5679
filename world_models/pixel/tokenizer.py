"""Causal video tokenizer: a convolutional autoencoder with x8 spatial compression, continuous
latents, and a causal temporal mixing layer (Cosmos tokenizer's causality, without temporal
compression).

Frame t's latent depends on frames t and t-1 only; the frame before the first is the first
itself (replicate padding, as Cosmos' causal convolutions), so the first frame of a video is
encoded alone and a video can be encoded one frame at a time. Decoding is per frame.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def heat_map(pos: torch.Tensor, side: int, sigma_cells: float) -> torch.Tensor:
    """Gaussian heat maps (..., side rows, side cols) of normalized image positions (..., 2) in
    [-1, 1] (x = image column, y = image row), std ``sigma_cells`` cells, peak 1."""
    centers = (torch.arange(side, device=pos.device, dtype=torch.float32) + 0.5) / side * 2 - 1
    sigma = sigma_cells * 2 / side
    gx = torch.exp(-(centers - pos[..., :1]) ** 2 / (2 * sigma**2))  # (..., side) over columns
    gy = torch.exp(-(centers - pos[..., 1:]) ** 2 / (2 * sigma**2))  # (..., side) over rows
    return gy[..., :, None] * gx[..., None, :]


def object_map(pose: torch.Tensor, template: torch.Tensor, side: int, extent: float) -> torch.Tensor:
    """A learned appearance ``template`` (1, E, S, S), spanning +-``extent`` (normalized image units)
    in the object's own frame, placed at object poses (N, 4) = (x, y, cos a, sin a) (normalized
    image position, x = column, y = row; a = rotation from the object's frame to the image's):
    (N, E, side, side) feature maps, zero outside the template."""
    centers = (torch.arange(side, device=pose.device, dtype=torch.float32) + 0.5) / side * 2 - 1
    dx = centers[None, None, :] - pose[:, 0, None, None]  # (N, 1, side) over columns
    dy = centers[None, :, None] - pose[:, 1, None, None]  # (N, side, 1) over rows
    c, s = pose[:, 2, None, None], pose[:, 3, None, None]
    grid = torch.stack([c * dx + s * dy, c * dy - s * dx], dim=-1) / extent  # rotate by -a into the object's frame
    return F.grid_sample(template.expand(len(pose), -1, -1, -1), grid, align_corners=False, padding_mode="zeros")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 frames (..., H, W, 3) (clipped)."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class CausalVideoTokenizer(nn.Module):
    """Frames (B, T, 3, H, W) in [-1, 1] <-> latents (B, T, C, H/8, W/8).

    Args:
        latent_channels: C, channels of the continuous latent.
        channels: widths of the stem and the three stride-2 stages (4 numbers, each a multiple of 8).
        agent_radius: > 0: the decoder also takes the agent's position (normalized image x, y) and
            draws the agent from it: a Gaussian heat map of std ``agent_radius`` pixels joins its
            last two resolutions. The latent then need not carry the agent (see :meth:`loss`).
        object_extent: > 0: the decoder also draws one rigid object (Push-T's T) from its pose: a
            learned appearance template (``template_channels`` maps, spanning +- ``object_extent``
            pixels in the object's frame) is placed at the pose (:func:`object_map`) and joins the
            same two resolutions. The object cannot lose its shape in decoding however the latent drifts.
        template_channels: E, feature maps of the object's template.
    """

    def __init__(self, latent_channels: int = 16, channels: tuple[int, ...] = (16, 32, 64, 96),
                 agent_radius: float = 0.0, object_extent: float = 0.0, template_channels: int = 8):
        super().__init__()
        if len(channels) != 4 or any(c % 8 for c in channels):
            raise ValueError(f"tokenizer channels must be 4 multiples of 8, got {channels}")
        c0, c1, c2, c3 = channels
        self.latent_channels = latent_channels
        self.feature_channels = c3
        self.enc = nn.Sequential(
            nn.Conv2d(3, c0, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c0, c1, 4, stride=2, padding=1), ResBlock(c1),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), ResBlock(c2),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1), ResBlock(c3),
        )
        # causal temporal mixing of frame t's features with frame t-1's (kernel 2 in time)
        self.temporal = nn.Sequential(nn.Conv2d(2 * c3, c3, 1), nn.SiLU(), nn.Conv2d(c3, c3, 1))
        self.to_latent = nn.Sequential(nn.GroupNorm(8, c3), nn.SiLU(), nn.Conv2d(c3, latent_channels, 1))
        self.dec = nn.Sequential(
            nn.Conv2d(latent_channels, c3, 3, padding=1), ResBlock(c3),
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), ResBlock(c2),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), ResBlock(c1),
            nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1), nn.GroupNorm(8, c0), nn.SiLU(),
            nn.Conv2d(c0, 3, 3, padding=1),
        )
        self.agent_radius, self.object_extent = agent_radius, object_extent
        if object_extent > 0 and agent_radius <= 0:
            raise ValueError("a tokenizer that draws the object from its pose must draw the agent too (agent_radius > 0)")
        if agent_radius > 0:  # residual 3x3 convs over [features, heat map] at H/2 and H
            self.agent_half = nn.Conv2d(c1 + 1, c1, 3, padding=1)
            self.agent_full = nn.Conv2d(c0 + 1, c0, 3, padding=1)
        if object_extent > 0:  # residual 3x3 convs over [features, template placed at the pose], zero at start
            self.object_template = nn.Parameter(torch.randn(1, template_channels, 32, 32) * 0.5)
            self.object_half = nn.Conv2d(c1 + template_channels, c1, 3, padding=1)
            self.object_full = nn.Conv2d(c0 + template_channels, c0, 3, padding=1)
            for conv in (self.object_half, self.object_full):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.to(memory_format=torch.channels_last)  # NHWC convolutions: 1.1-1.2x on CPU (BENCHMARKS, issue 8)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Causal encoding: frames (B, T, 3, H, W) in [-1, 1] -> latents (B, T, C, H/8, W/8)."""
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[-1] % 8 or frames.shape[-2] % 8:
            raise ValueError(f"frames must have shape (B, T, 3, H, W) with H, W multiples of 8, got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        feat = self.features(frames.flatten(0, 1)).unflatten(0, (b, t))
        prev = torch.cat([feat[:, :1], feat[:, :-1]], dim=1)  # replicate padding: frame -1 := frame 0
        return self.mix(feat.flatten(0, 1), prev.flatten(0, 1)).unflatten(0, (b, t))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame encoder features (N, ``feature_channels``, H/8, W/8) of frames (N, 3, H, W) in [-1, 1],
        before the causal mix with the frame before (a rollout keeps them for the next frame's :meth:`mix`)."""
        return self.enc(frames)

    def mix(self, features: torch.Tensor, prev_features: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) of frames with :meth:`features` ``features`` given the frame before's
        ``prev_features`` (the frame's own for the first frame of a video)."""
        return self.to_latent(features + self.temporal(torch.cat([features, prev_features], dim=1)))

    def decode(self, latents: torch.Tensor, agent_pos: torch.Tensor | None = None,
               object_pose: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (..., C, h, w) -> images (..., 3, 8h, 8w) in about [-1, 1] (not clipped);
        ``agent_pos`` (..., 2) normalized image positions, required with ``agent_radius`` > 0;
        ``object_pose`` (..., 4) (see :func:`object_map`), required with ``object_extent`` > 0
        (each ignored otherwise)."""
        lead, (h, w) = latents.shape[:-3], latents.shape[-2:]
        z = latents.reshape(-1, *latents.shape[-3:])
        if self.agent_radius <= 0:  # agent_pos unused
            return self.dec(z).reshape(*lead, 3, h * 8, w * 8)
        if agent_pos is None or agent_pos.shape != (*lead, 2):
            raise ValueError(f"this tokenizer draws the agent: pass agent_pos of shape {(*lead, 2)}, got "
                             f"{None if agent_pos is None else tuple(agent_pos.shape)}")
        if h != w:
            raise ValueError(f"agent maps need square latents, got {h} x {w}")
        if self.object_extent > 0 and (object_pose is None or object_pose.shape != (*lead, 4)):
            raise ValueError(f"this tokenizer draws the object: pass object_pose of shape {(*lead, 4)}, got "
                             f"{None if object_pose is None else tuple(object_pose.shape)}")
        pose = None if object_pose is None else object_pose.reshape(-1, 4)
        return self.draw(self.dec[:6](z), agent_pos.reshape(-1, 2), pose).reshape(*lead, 3, h * 8, w * 8)

    def draw(self, features: torch.Tensor, agent_pos: torch.Tensor, object_pose: torch.Tensor | None = None) -> torch.Tensor:
        """The state-dependent end of :meth:`decode` (``agent_radius`` > 0): decoder features
        ``self.dec[:6](z)`` (N, c1, 4h, 4w), which do not depend on the state, at agent positions
        (N, 2) (and object poses (N, 4)) -> images (N, 3, 8h, 8w). Split out so that a pose can be
        fitted by rendering without recomputing the features."""
        side = features.shape[-1]  # 4h
        pos = agent_pos.float()
        pose = None if self.object_extent <= 0 else object_pose.float()
        extent = self.object_extent / side  # pixels -> normalized image units (the frame is 2 * side pixels wide)
        x = features + self.agent_half(torch.cat([features, heat_map(pos, side, self.agent_radius / 2)[:, None]], dim=1))
        if pose is not None:
            x = x + self.object_half(torch.cat([x, object_map(pose, self.object_template, side, extent)], dim=1))
        x = self.dec[6](x)  # (N, c0, 8h, 8w)
        x = x + self.agent_full(torch.cat([x, heat_map(pos, side * 2, self.agent_radius)[:, None]], dim=1))
        if pose is not None:
            x = x + self.object_full(torch.cat([x, object_map(pose, self.object_template, side * 2, extent)], dim=1))
        return self.dec[7:](x)

    def loss(self, frames: torch.Tensor, agent_pos: torch.Tensor | None = None, still: torch.Tensor | None = None,
             object_pose: torch.Tensor | None = None, latent_weight: float = 1e-4) -> dict[str, torch.Tensor]:
        """Reconstruction loss on a clip (B, T, 3, H, W) in [-1, 1]: MSE + 0.1 L1 + a small latent
        L2 (keeps the continuous latent's scale bounded).

        With ``agent_radius`` > 0, ``agent_pos`` (B, T, 2) is each frame's agent position (and with
        ``object_extent`` > 0, ``object_pose`` (B, T, 4) the object's pose), and ``still`` (B,) bool
        marks clips in which nothing but what the decoder draws from state moved: for those, frame
        0's latent decoded at the last frame's state must give the last frame (``swap_mse``), so
        the decoder draws the agent (object) where it is told and erases it where the latent shows it.
        """
        z = self.encode(frames)
        rec = self.decode(z, agent_pos, object_pose)
        mse = F.mse_loss(rec, frames)
        loss = mse + 0.1 * (rec - frames).abs().mean() + latent_weight * z.pow(2).mean()
        out = {"mse": mse.detach()}
        if self.agent_radius > 0 and still is not None and bool(still.any()):
            swap = self.decode(z[still, 0], agent_pos[still, -1], None if object_pose is None else object_pose[still, -1])
            swap_mse = F.mse_loss(swap, frames[still, -1])
            loss = loss + swap_mse + 0.1 * (swap - frames[still, -1]).abs().mean()
            out["swap_mse"] = swap_mse.detach()
        return {"loss": loss, **out}
