"""A small vision-language-action policy: frame + instruction + proprioception -> action chunk.

Interface as LeRobot's policies: a batch dict

- ``observation.image``: (B, 3, H, W) float in [0, 1], or (B, H, W, 3) uint8 (camera frames),
- ``observation.state``: (B, S) float (Push-T: the pusher's position, world units),
- ``task``: list of B instruction strings (embedded once each, cached; or pass
  ``observation.language`` (B, 384) precomputed embeddings instead),

``select_action(batch)`` -> (B, A), popping a queue refilled by ``predict_action_chunk(batch)``
-> (B, chunk, A) (the deterministic chunk), ``reset()`` empties the queue. A LeRobot policy with these
two methods can stand in wherever a :class:`VLAPolicy` is rolled out deterministically.

Network: conv encoder (stride-2 convs to 8x8, linear), the instruction embedding through a
linear + tanh, the normalized state; an MLP maps the concatenation to a distribution over the
chunk's ``u`` (B, chunk * A): a diagonal Gaussian (``components=1``) or a mixture of ``components``
diagonal Gaussians (mixture weights from the MLP), with a learned state-independent log-std.
The mixture is for multimodal demonstrations (a Gaussian fit averages the modes); its
deterministic chunk is the mean of its most probable component (on Push-T's demos it clones no
better than the Gaussian: BENCHMARKS.md, issue 8). An
action is a pusher target relative to the current state: a_k = clip(state + action_scale * u_k,
low, high). ``sample`` returns u, its log-probability (summed over the chunk, the clip is
outside the distribution as in rsl-rl) and the actions, ``log_prob(obs, u)`` re-scores u for RL.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from agents.vla.language import EMBED_DIM, InstructionEmbedder

FORMAT = "wam.vla_policy"
FORMAT_VERSION = 1


class VLAInputError(ValueError):
    """A VLA batch or policy file is malformed; the message names the key."""


@dataclass
class VLAConfig:
    """Sizes and units of :class:`VLAPolicy` (every field saved with the policy)."""

    image_size: int = 64                 # H = W of the frames
    state_dim: int = 2
    action_dim: int = 2
    chunk: int = 4                       # actions per policy call
    components: int = 1                  # 1: Gaussian over the chunk; K > 1: mixture of K Gaussians
    lang_dim: int = EMBED_DIM
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    hidden: int = 256
    lang_hidden: int = 64
    state_low: float = 0.0               # state / action box (world units), for normalization and clipping
    state_high: float = 512.0
    action_scale: float = 100.0          # world units per unit of u (target offset from the state)
    init_log_std: float = -0.5
    min_log_std: float = -3.0
    max_log_std: float = 0.5


def conv_encoder(channels: list[int], size: int, out: int) -> nn.Sequential:
    """Stride-2 4x4 convs until 8x8, then a linear layer: (B, 3, size, size) -> (B, out)."""
    layers: list[nn.Module] = []
    c, s = 3, size
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 4, 2, 1), nn.SiLU()]
        c, s = ch, s // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, out), nn.SiLU())


class VLAPolicy(nn.Module):
    """See the module doc. ``embedder`` turns instructions into (B, lang_dim) (default MiniLM)."""

    def __init__(self, cfg: VLAConfig | None = None, embedder: InstructionEmbedder | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VLAConfig()
        if cfg.image_size % 8 or cfg.image_size // 2 ** len(cfg.channels) < 1:
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of 8 and >= 2^{len(cfg.channels)}")
        self.embedder = embedder
        self.image = conv_encoder(list(cfg.channels), cfg.image_size, cfg.hidden)
        self.lang = nn.Sequential(nn.Linear(cfg.lang_dim, cfg.lang_hidden), nn.Tanh())
        if cfg.components < 1:
            raise ValueError(f"components must be >= 1, got {cfg.components}")
        out = cfg.components * cfg.chunk * cfg.action_dim + (cfg.components if cfg.components > 1 else 0)
        self.head = nn.Sequential(nn.Linear(cfg.hidden + cfg.lang_hidden + cfg.state_dim, cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, out))
        nn.init.zeros_(self.head[-1].bias)
        self.head[-1].weight.data.mul_(0.1)
        self.log_std = nn.Parameter(torch.full((cfg.chunk * cfg.action_dim,), cfg.init_log_std))
        self._queue: torch.Tensor | None = None

    # ---- inputs ---------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> torch.Tensor:
        if self.embedder is None:
            self.embedder = InstructionEmbedder(self.log_std.device)
        return self.embedder(texts).to(self.log_std.device)

    def images(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] from either accepted layout."""
        size = self.cfg.image_size
        if image.dtype == torch.uint8 and image.ndim == 4 and tuple(image.shape[1:]) == (size, size, 3):
            return image.permute(0, 3, 1, 2).float() / 255.0
        if image.is_floating_point() and image.ndim == 4 and tuple(image.shape[1:]) == (3, size, size):
            return image.float()
        raise VLAInputError(f"observation.image must be (B, 3, {size}, {size}) float in [0, 1] or (B, {size}, {size}, 3) "
                            f"uint8, got {image.dtype} {tuple(image.shape)}")

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validated (images (B, 3, H, W) float, state (B, S), language (B, lang_dim)) of a batch dict."""
        if not isinstance(batch, dict):
            raise VLAInputError(f"a VLA batch is a dict, got {type(batch).__name__}")
        need = ["observation.image", "observation.state"] + ([] if "observation.language" in batch else ["task"])
        missing = [k for k in need if k not in batch]
        if missing:
            raise VLAInputError(f"VLA batch is missing {missing} (needs observation.image, observation.state and task)")
        dev = self.log_std.device
        img = self.images(torch.as_tensor(batch["observation.image"], device=dev))
        b = img.shape[0]
        state = torch.as_tensor(batch["observation.state"], device=dev).float()
        if state.shape != (b, self.cfg.state_dim):
            raise VLAInputError(f"observation.state must be ({b}, {self.cfg.state_dim}), got {tuple(state.shape)}")
        if "observation.language" in batch:
            lang = torch.as_tensor(batch["observation.language"], device=dev).float()
        else:
            task = batch["task"]
            if isinstance(task, str) or len(task) != b:
                raise VLAInputError(f"task must be a list of {b} instruction strings, got {task!r:.80}")
            lang = self.embed(list(task))
        if lang.shape != (b, self.cfg.lang_dim):
            raise VLAInputError(f"language embeddings must be ({b}, {self.cfg.lang_dim}), got {tuple(lang.shape)}")
        return img, state, lang

    # ---- distribution ---------------------------------------------------------------------
    def norm_state(self, state: torch.Tensor) -> torch.Tensor:
        mid, half = (self.cfg.state_low + self.cfg.state_high) / 2, (self.cfg.state_high - self.cfg.state_low) / 2
        return (state - mid) / half

    def distribution(self, img: torch.Tensor, state: torch.Tensor, lang: torch.Tensor) -> Distribution:
        """Distribution over u (B, chunk * A) for images (B, 3, H, W) in [0, 1], state (B, S), language (B, L):
        ``log_prob(u)`` is (B,) (summed over the chunk)."""
        h = torch.cat([self.image(img), self.lang(lang), self.norm_state(state)], dim=-1)
        out = self.head(h)
        std = self.log_std.clamp(self.cfg.min_log_std, self.cfg.max_log_std).exp()
        k, d = self.cfg.components, self.cfg.chunk * self.cfg.action_dim
        if k == 1:
            return Independent(Normal(out, std.expand(img.shape[0], -1)), 1)
        means = out[:, : k * d].view(-1, k, d)
        return MixtureSameFamily(Categorical(logits=out[:, k * d:]), Independent(Normal(means, std.expand_as(means)), 1))

    @staticmethod
    def mode(dist: Distribution) -> torch.Tensor:
        """Deterministic u (B, chunk * A): the Gaussian's mean, or the most probable component's mean."""
        if isinstance(dist, MixtureSameFamily):
            means = dist.component_distribution.mean
            return means[torch.arange(means.shape[0], device=means.device), dist.mixture_distribution.logits.argmax(-1)]
        return dist.mean

    @staticmethod
    def entropy(dist: Distribution) -> torch.Tensor:
        """Entropy (B,) of the Gaussian; for a mixture its upper bound H(weights) + sum_k w_k H(component k)."""
        if isinstance(dist, MixtureSameFamily):
            w = dist.mixture_distribution.probs
            return dist.mixture_distribution.entropy() + (w * dist.component_distribution.entropy()).sum(-1)
        return dist.entropy()

    def to_actions(self, u: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Action chunk (B, chunk, A) in the box from u (B, chunk * A) and state (B, S)."""
        a = state[:, None, :] + self.cfg.action_scale * u.view(u.shape[0], self.cfg.chunk, self.cfg.action_dim)
        return a.clamp(self.cfg.state_low, self.cfg.state_high)

    def sample(self, img: torch.Tensor, state: torch.Tensor, lang: torch.Tensor,
               deterministic: bool = False) -> dict[str, torch.Tensor]:
        """``u`` (B, chunk * A), ``log_prob`` (B,), ``actions`` (B, chunk, A) for tensor inputs."""
        dist = self.distribution(img, state, lang)
        u = self.mode(dist) if deterministic else dist.sample()
        return {"u": u, "log_prob": dist.log_prob(u), "actions": self.to_actions(u, state)}

    def log_prob(self, img: torch.Tensor, state: torch.Tensor, lang: torch.Tensor,
                 u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability (B,) of chunks u (B, chunk * A) and the entropy (B,) (:meth:`entropy`)."""
        dist = self.distribution(img, state, lang)
        return dist.log_prob(u), self.entropy(dist)

    # ---- LeRobot-style API ----------------------------------------------------------------
    def reset(self) -> None:
        """Forget queued actions (call at every episode start)."""
        self._queue = None

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        """Deterministic action chunk (B, chunk, A) in world units (:meth:`mode`)."""
        img, state, lang = self.inputs(batch)
        return self.sample(img, state, lang, deterministic=True)["actions"]

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        """Next action (B, A): a new chunk is predicted when the queue is empty."""
        if self._queue is None or self._queue.shape[1] == 0:
            self._queue = self.predict_action_chunk(batch)
        action, self._queue = self._queue[:, 0], self._queue[:, 1:]
        return action


def write_module(module: nn.Module, folder: str | Path, weights: str, meta: dict[str, Any]) -> Path:
    """Write ``module``'s state dict as ``folder/weights`` (safetensors) and ``meta`` as ``folder/config.json`` (atomic writes)."""
    from safetensors.torch import save as safetensors_save

    from world_models.data import atomic_write_bytes, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = safetensors_save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    atomic_write_bytes(folder / weights, lambda f: f.write(blob))
    atomic_write_json(folder / "config.json", meta)
    return folder


def read_meta(folder: str | Path, fmt: str, version: int, config_cls: type, what: str) -> dict[str, Any]:
    """``folder/config.json`` of a :func:`write_module` folder, checked: format ``fmt`` v``version`` and a
    ``config`` whose keys are ``config_cls``'s fields; anything else is a VLAInputError naming ``what``."""
    try:
        meta = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VLAInputError(f"{folder} is not a {what} folder: {e}") from e
    if meta.get("format") != fmt or meta.get("format_version") != version:
        raise VLAInputError(f"{folder}: expected format {fmt} v{version}, got {meta.get('format')} v{meta.get('format_version')}")
    unknown = sorted(set(meta.get("config", {})) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise VLAInputError(f"{folder}: unknown {what} config keys {unknown}")
    return meta


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module``; a corrupt file or weights that do not fit are a VLAInputError."""
    from safetensors.torch import load as safetensors_load

    try:
        module.load_state_dict(safetensors_load(Path(path).read_bytes()))
    except Exception as e:  # safetensors raises its own SafetensorError; shape mismatches are RuntimeErrors
        raise VLAInputError(f"{path} cannot be loaded: {e}") from e


def save_vla(policy: VLAPolicy, folder: str | Path) -> Path:
    """Write ``policy.safetensors`` + ``config.json`` (format ``wam.vla_policy``) into ``folder`` (atomic writes)."""
    return write_module(policy, folder, "policy.safetensors",
                        {"format": FORMAT, "format_version": FORMAT_VERSION, "config": asdict(policy.cfg)})


def load_vla(folder: str | Path, device: str | torch.device = "cpu", embedder: InstructionEmbedder | None = None) -> VLAPolicy:
    """Read a policy written by :func:`save_vla`; a wrong format, version or file is a VLAInputError."""
    meta = read_meta(folder, FORMAT, FORMAT_VERSION, VLAConfig, "VLA policy")
    policy = VLAPolicy(VLAConfig(**meta["config"]), embedder)
    load_weights(policy, Path(folder) / "policy.safetensors")
    return policy.to(device)
