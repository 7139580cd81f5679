"""Action-conditioned latent flow-matching transformer (a small DiT), IRASim / Cosmos style.

Latent frames (C, h, w) are cut into p x p patches: h*w/p^2 tokens per frame. Every frame
carries a conditioning vector built from the action that led to it, the agent state it shows
and its noise level; adaLN-Zero modulates each frame's tokens with its own vector
(frame-level action conditioning, IRASim).

A noisy frame's tokens also carry, channel-wise, the clean frame before it (GameNGen's
context concatenation): every token sees where things were at its own position, so the
transformer learns the change, while attention reaches the rest of the context. Optional
per-token features (``token_extra``; the pixel model puts spatial heat maps of the agent's
position and of the action's target there) join every token's input, so that where the
pusher is and where it is sent is known at the token that shows it.

Training is teacher-forced over a whole window in one pass: the sequence holds a *clean*
copy of every frame (context, lightly noised: noise augmentation, level embedded) and a
*noisy* copy of frames 1..L-1 (flow-matching targets). A noisy frame attends to the clean
frames before it and to itself; a clean frame to the clean frames up to it. Generation uses
the same mask with K clean context frames and one noisy frame, integrated by a few Euler
steps of the flow x_tau = tau * x1 + (1 - tau) * x0 (x0 ~ N(0, I), tau = 1 clean). Since no
clean token attends to a noisy one, the clean stream runs once (:meth:`LatentFlowDiT.context`,
keeping every block's keys and values) and each Euler step runs only the noisy frame's tokens
against them (:meth:`LatentFlowDiT.velocity`); training calls the same two over its window.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F


def timestep_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of noise levels tau (...,) in [0, 1] -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)
    arg = (tau.float() * 1000.0)[..., None] * freqs
    return torch.cat([arg.cos(), arg.sin()], dim=-1)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation by per-frame conditioning."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, F, n, dim): n tokens of each of F frames; cond (B, F, dim) per-frame conditioning;
        mask (F * n, S) bool (True = may attend) over the keys: ``past``'s S - F * n tokens, then x's.
        ``past``: keys and values (B, heads, S - F * n, dim / heads) of earlier tokens that x attends to
        (the clean context while generating). Returns x's new tokens and their keys and values."""
        b, f, n, d = x.shape
        s1, g1, a1, s2, g2, a2 = self.ada(F.silu(cond))[:, :, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + g1) + s1
        q, k, v = self.qkv(h).view(b, f * n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        h = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask).transpose(1, 2).reshape(b, f, n, d)
        x = x + a1 * self.proj(h)
        h = self.norm2(x) * (1 + g2) + s2
        return x + a2 * self.mlp(h), (k, v)


class DiTContext(NamedTuple):
    """The clean stream of one window: its latents (B, L, C, h, w) and every block's keys and
    values (B, heads, L * tokens, dim / heads)."""

    clean: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def frame_mask(frame: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Attention mask (S, S) from each token's frame index (S,) and stream flag (S,) bool."""
    fq, fk = frame[:, None], frame[None, :]
    nq, nk = noisy[:, None], noisy[None, :]
    clean_key = ~nk & ((~nq & (fk <= fq)) | (nq & (fk < fq)))
    return clean_key | (nk & nq & (fk == fq))


class LatentFlowDiT(nn.Module):
    """Velocity field v(x_tau, tau | clean context, per-frame conditioning) over latent frames.

    Args:
        latent_channels, latent_size: C and (h, w) of a latent frame.
        patch: p, latent pixels per token side.
        cond_dim: size of the per-frame conditioning input (action + agent state features).
        max_frames: longest window (context + target frames) the positional table covers.
        token_extra: size E of optional per-token input features (0: none).
    """

    def __init__(self, latent_channels: int, latent_size: tuple[int, int], cond_dim: int, dim: int = 128,
                 depth: int = 4, heads: int = 4, patch: int = 2, max_frames: int = 16, token_extra: int = 0):
        super().__init__()
        h, w = latent_size
        if h % patch or w % patch or dim % heads:
            raise ValueError(f"latent size {latent_size} must be divisible by patch {patch} and dim {dim} by heads {heads}")
        self.c, self.h, self.w, self.p, self.dim = latent_channels, h, w, patch, dim
        self.tokens = (h // patch) * (w // patch)
        token_in = latent_channels * patch * patch
        self.token_extra = token_extra
        self.embed = nn.Linear(token_in + token_extra, dim)
        self.embed_noisy = nn.Linear(2 * token_in + token_extra, dim)  # [x_tau, the clean frame before it, extra]
        self.pos_space = nn.Parameter(torch.randn(self.tokens, dim) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(max_frames, dim) * 0.02)
        self.stream = nn.Parameter(torch.zeros(2, dim))  # clean / noisy stream embedding
        self.cond = nn.Sequential(nn.Linear(cond_dim + dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, token_in)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.max_frames = max_frames

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, tokens, C*p*p)."""
        b, t, c, h, w = z.shape
        p = self.p
        z = z.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return z.reshape(b, t, self.tokens, c * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, tokens, C*p*p) -> (B, T, C, h, w)."""
        b, t = x.shape[:2]
        p = self.p
        x = x.reshape(b, t, self.h // p, self.w // p, self.c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, t, self.c, self.h, self.w)

    def _tokens(self, x: torch.Tensor, frames: torch.Tensor, noisy: bool, tau: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded tokens (B, F, n, dim) + positions / stream, and per-frame conditioning (B, F, dim)."""
        x = x + self.pos_space + self.pos_time[frames][None, :, None] + self.stream[int(noisy)]
        return x, self.cond(torch.cat([cond, timestep_embedding(tau, self.dim)], dim=-1))

    def context(self, clean: torch.Tensor, clean_tau: torch.Tensor, clean_cond: torch.Tensor,
                clean_extra: torch.Tensor | None = None) -> DiTContext:
        """Run the clean stream once: a clean frame attends only to clean frames up to it, so its tokens
        do not depend on the noisy frames, and every Euler step of a generation reuses them.

        Args:
            clean: (B, L, C, h, w) context latents (normalized, possibly noise-augmented).
            clean_tau: (B, L) their noise level (1 = clean).
            clean_cond: (B, L, cond_dim) their conditioning.
            clean_extra: (B, L, tokens, E) per-token features (required when ``token_extra`` > 0).
        """
        b, l = clean.shape[:2]
        if l > self.max_frames:
            raise ValueError(f"window of {l} frames exceeds max_frames={self.max_frames}")
        dev = clean.device
        inputs = [self.patchify(clean)]
        if self.token_extra:
            if clean_extra is None:
                raise ValueError(f"this DiT takes {self.token_extra} per-token features: pass clean_extra and noisy_extra")
            inputs.append(clean_extra)
        frames = torch.arange(l, device=dev)
        x, cond = self._tokens(self.embed(torch.cat(inputs, dim=-1)), frames, False, clean_tau, clean_cond)
        mask = frame_mask(frames.repeat_interleave(self.tokens), torch.zeros(l * self.tokens, dtype=torch.bool, device=dev))
        kv = []
        for block in self.blocks:
            x, past = block(x, cond, mask)
            kv.append(past)
        return DiTContext(clean, kv)

    def velocity(self, context: DiTContext, noisy: torch.Tensor, noisy_tau: torch.Tensor, noisy_cond: torch.Tensor,
                 noisy_frames: torch.Tensor, noisy_extra: torch.Tensor | None = None) -> torch.Tensor:
        """Velocities (B, G, C, h, w) (x1 - x0) of noisy frames given the clean stream's ``context``.

        Args:
            noisy: (B, G, C, h, w) noisy latents x_tau of the frames being generated.
            noisy_tau: (B, G) flow time of each.
            noisy_cond: (B, G, cond_dim) their conditioning.
            noisy_frames: (G,) long, the window position of each noisy frame (>= 1; it attends
                to the clean frames before it).
            noisy_extra: (B, G, tokens, E) per-token features (required when ``token_extra`` > 0).
        """
        clean = context.clean
        l, g, n, dev = clean.shape[1], noisy.shape[1], self.tokens, clean.device
        if int(noisy_frames.max()) >= self.max_frames:
            raise ValueError(f"window of {int(noisy_frames.max()) + 1} frames exceeds max_frames={self.max_frames}")
        noisy_frames = noisy_frames.to(dev)
        inputs = [self.patchify(noisy), self.patchify(clean[:, noisy_frames - 1])]  # with the frame each noisy frame follows
        if self.token_extra:
            if noisy_extra is None:
                raise ValueError(f"this DiT takes {self.token_extra} per-token features: pass clean_extra and noisy_extra")
            inputs.append(noisy_extra)
        x, cond = self._tokens(self.embed_noisy(torch.cat(inputs, dim=-1)), noisy_frames, True, noisy_tau, noisy_cond)
        frames = torch.cat([torch.arange(l, device=dev), noisy_frames]).repeat_interleave(n)
        is_noisy = torch.cat([torch.zeros(l, dtype=torch.bool, device=dev), torch.ones(g, dtype=torch.bool, device=dev)]).repeat_interleave(n)
        mask = frame_mask(frames, is_noisy)[l * n:]
        for block, past in zip(self.blocks, context.kv):
            x, _ = block(x, cond, mask, past)
        shift, scale = self.ada_out(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        return self.unpatchify(self.out(self.norm_out(x) * (1 + scale) + shift))

    def forward(self, clean: torch.Tensor, clean_tau: torch.Tensor, clean_cond: torch.Tensor,
                noisy: torch.Tensor, noisy_tau: torch.Tensor, noisy_cond: torch.Tensor,
                noisy_frames: torch.Tensor, clean_extra: torch.Tensor | None = None,
                noisy_extra: torch.Tensor | None = None) -> torch.Tensor:
        """Velocities (B, G, C, h, w) of the noisy frames: :meth:`context` then :meth:`velocity` (see
        their arguments); the whole teacher-forced window in one pass while training."""
        return self.velocity(self.context(clean, clean_tau, clean_cond, clean_extra), noisy, noisy_tau, noisy_cond,
                             noisy_frames, noisy_extra)
