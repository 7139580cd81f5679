"""Pixel-space world models: causal video tokenizer + action-conditioned latent flow DiT (and a
Cosmos adapter in :mod:`world_models.pixel.cosmos_adapter`, which needs the ``pixels`` extra)."""

from world_models.pixel.dynamics import LatentFlowDiT
from world_models.pixel.frames import FrameStore, FrameWindows
from world_models.pixel.model import PixelWorldModel
from world_models.pixel.tokenizer import CausalVideoTokenizer

__all__ = ["CausalVideoTokenizer", "FrameStore", "FrameWindows", "LatentFlowDiT", "PixelWorldModel"]
