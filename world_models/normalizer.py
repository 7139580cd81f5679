"""Fixed per-dimension affine normalizer, fit once from data and saved with the weights."""

from __future__ import annotations

import torch
from torch import nn


class Normalizer(nn.Module):
    """``(x - mean) / std`` per dimension, with statistics stored as buffers.

    Statistics are fit once (:meth:`fit`) and stay fixed while the model trains. A dimension
    whose spread is below ``max(abs_floor, rel_floor * max|x_d|)`` (a constant, or a
    float32 rounding-level wobble) gets ``std = 1``: it is only centred, so a constant
    dimension neither divides by zero nor amplifies tiny drifts.

    Args:
        dim: size of the last dimension of the inputs.
        abs_floor / rel_floor: the spread below which a dimension counts as constant.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, abs_floor: float = 1e-6, rel_floor: float = 1e-6):
        super().__init__()
        self.abs_floor, self.rel_floor = abs_floor, rel_floor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set mean / std from samples ``x`` (N, dim) (or (N,) when dim == 1)."""
        x = x.reshape(-1, self.mean.shape[0]).to(self.mean)
        if x.shape[0] == 0:
            raise ValueError("cannot fit a Normalizer on zero samples")
        if not torch.isfinite(x).all():
            raise ValueError("cannot fit a Normalizer on non-finite samples")
        mean = x.mean(0)
        std = x.std(0, correction=0)
        floor = torch.clamp(self.rel_floor * x.abs().amax(0), min=self.abs_floor)
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std < floor, torch.ones_like(std), std))

    @torch.no_grad()
    def change_to(self, new: "Normalizer") -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map from ``new``'s normalized units to this one's, per dimension:
        ``self.normalize(x) = scale * new.normalize(x) + shift``. Returns (scale, shift), each (dim,)."""
        return new.std / self.std, (new.mean - self.mean) / self.std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) in data units -> (..., dim) normalized."""
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) normalized -> (..., dim) in data units."""
        return torch.addcmul(self.mean, x, self.std)
