"""Cosmos adapter: NVIDIA Cosmos-Predict2 Video2World (``diffusers``' ``CosmosTransformer3DModel``
with a causal VAE such as ``AutoencoderKLWan``) as the tokenizer and dynamics of a
:class:`PixelWorldModel`, made action-conditioned the way Cosmos' action-conditioned
post-training does it: an action embedding added to each frame's timestep embedding (so it
reaches every adaLN of that frame).

Only local weights are read (``local_files_only=True``, nothing is downloaded); the
``pixels`` extra provides ``diffusers``. diffusers' ``Cosmos3OmniTransformer`` action mode is a
different model family; this adapter targets the Video2World classes, which every Cosmos-
Predict2 checkpoint in the diffusers format has. The result trains (action embedding, heads,
optionally the transformer) with :func:`world_models.pixel.training.train_pixel_model` and steps
in :mod:`wam_env.pixels` like the native model. It is not a registered checkpoint class: save
the diffusers parts with ``save_pretrained``.

Conventions (Cosmos-Predict2's rectified flow): noise fraction t = sigma / (sigma + 1),
x_t = (1 - t) x + t eps, the transformer predicts eps - x; conditioning frames are fed clean
with a small t and ``condition_mask`` = 1. The native model's tau = 1 - t and velocity
x - eps, so the wrapper returns the negated output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from world_models.base import ModelSpec
from world_models.pixel.model import PixelWorldModel


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("the Cosmos adapter needs diffusers: pip install 'wam[pixels]'") from e
    return diffusers


class DiffusersVideoTokenizer(nn.Module):
    """A diffusers causal video VAE (``AutoencoderKLWan`` / ``AutoencoderKLCosmos``) behind the
    tokenizer interface: every frame is encoded as a one-frame video (a causal VAE encodes
    the first frame alone, so this is exact per frame), latents are normalized with the VAE's
    ``latents_mean`` / ``latents_std`` when its config has them."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.latent_channels = int(getattr(cfg, "z_dim", None) or cfg.latent_channels)
        c = self.feature_channels = self.latent_channels
        mean = getattr(cfg, "latents_mean", None)
        std = getattr(cfg, "latents_std", None)
        self.register_buffer("mean", torch.tensor(mean[:c] if mean else [0.0] * c, dtype=torch.float32).view(c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std[:c] if std else [1.0] * c, dtype=torch.float32).view(c, 1, 1), persistent=False)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> (B, T, C, H/8, W/8), each frame encoded alone."""
        b, t = frames.shape[:2]
        video = frames.flatten(0, 1).unsqueeze(2)  # (B*T, 3, 1, H, W)
        z = self.vae.encode(video.to(self.vae.dtype)).latent_dist.mean[:, :, 0].float()
        return ((z - self.mean) / self.std).unflatten(0, (b, t))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> latents (N, C, h, w): the VAE encodes every frame alone."""
        return self.encode(frames[:, None])[:, 0]

    def mix(self, features: torch.Tensor, prev_features: torch.Tensor) -> torch.Tensor:
        return features

    def decode(self, latents: torch.Tensor, agent_pos: torch.Tensor | None = None) -> torch.Tensor:
        """(..., C, h, w) -> (..., 3, H, W); ``agent_pos`` is unused (the VAE draws the whole frame)."""
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]) * self.std + self.mean
        video = self.vae.decode(z.unsqueeze(2).to(self.vae.dtype)).sample[:, :, 0].float()
        return video.reshape(*lead, *video.shape[1:])


class _ActionTimeEmbedding(nn.Module):
    """Wraps the transformer's ``time_embed``: adds an embedding of each frame's conditioning
    (action, agent state) to the frame's timestep embeddings. Zero-initialized, so a pretrained
    transformer starts out unchanged."""

    def __init__(self, time_embed: nn.Module, cond_dim: int, hidden: int):
        super().__init__()
        self.time_embed = time_embed
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU())
        self.to_temb, self.to_emb = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        for m in (self.to_temb, self.to_emb):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.cond: torch.Tensor | None = None  # (B*T, cond_dim), set before each transformer call

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor):
        temb, emb = self.time_embed(hidden_states, timestep)
        if self.cond is None or self.cond.shape[0] != temb.shape[0]:
            raise RuntimeError("per-frame timesteps (B, 1, T, 1, 1) and the frame conditioning must be set together")
        h = self.mlp(self.cond.to(temb.dtype))
        return temb + self.to_temb(h), emb + self.to_emb(h)


class CosmosDenoiser(nn.Module):
    """``CosmosTransformer3DModel`` behind :class:`~world_models.pixel.dynamics.LatentFlowDiT`'s call
    signature (clean context + noisy frames -> velocities, native conventions; ``context`` /
    ``velocity`` too, the context kept as inputs). Each noisy frame is denoised in its own
    Video2World call over the clean frames before it."""

    def __init__(self, transformer: nn.Module, cond_dim: int, fps: int = 10):
        super().__init__()
        cfg = transformer.config
        if cfg.concat_padding_mask:
            raise ValueError("build the transformer with concat_padding_mask=False (True needs torchvision)")
        hidden = cfg.num_attention_heads * cfg.attention_head_dim
        self.transformer = transformer
        self.transformer.time_embed = _ActionTimeEmbedding(transformer.time_embed, cond_dim, hidden)
        self.prompt = nn.Parameter(torch.zeros(1, 1, cfg.text_embed_dim))  # learned "empty prompt"
        self.fps = fps

    def context(self, clean: torch.Tensor, clean_tau: torch.Tensor, clean_cond: torch.Tensor,
                clean_extra: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The clean frames as they are: Video2World attends over them afresh in every call."""
        if clean_extra is not None:
            raise ValueError("the Cosmos denoiser takes no per-token features: build the model with agent_maps=False")
        return clean, clean_tau, clean_cond

    def velocity(self, context: tuple[torch.Tensor, ...], noisy: torch.Tensor, noisy_tau: torch.Tensor, noisy_cond: torch.Tensor,
                 noisy_frames: torch.Tensor, noisy_extra: torch.Tensor | None = None) -> torch.Tensor:
        return self(*context, noisy, noisy_tau, noisy_cond, noisy_frames, None, noisy_extra)

    def forward(self, clean: torch.Tensor, clean_tau: torch.Tensor, clean_cond: torch.Tensor, noisy: torch.Tensor,
                noisy_tau: torch.Tensor, noisy_cond: torch.Tensor, noisy_frames: torch.Tensor,
                clean_extra: torch.Tensor | None = None, noisy_extra: torch.Tensor | None = None) -> torch.Tensor:
        if clean_extra is not None or noisy_extra is not None:
            raise ValueError("the Cosmos denoiser takes no per-token features: build the model with agent_maps=False")
        out = []
        for j, pos in enumerate(noisy_frames.tolist()):
            ctx = clean[:, :pos]
            x = torch.cat([ctx, noisy[:, j : j + 1]], dim=1).transpose(1, 2)  # (B, C, T, h, w)
            b, _, t, h, w = x.shape
            t_noise = torch.cat([(1 - clean_tau[:, :pos]).clamp_min(1e-4), 1 - noisy_tau[:, j : j + 1]], dim=1)
            cond_mask = torch.zeros(b, 1, t, h, w, device=x.device, dtype=x.dtype)
            cond_mask[:, :, :pos] = 1.0
            self.transformer.time_embed.cond = torch.cat([clean_cond[:, :pos], noisy_cond[:, j : j + 1]], dim=1).flatten(0, 1)
            try:
                eps_minus_x = self.transformer(hidden_states=x, timestep=t_noise.view(b, 1, t, 1, 1).to(x.dtype),
                                               encoder_hidden_states=self.prompt.expand(b, -1, -1), fps=self.fps,
                                               condition_mask=cond_mask, return_dict=False)[0]
            finally:
                self.transformer.time_embed.cond = None
            out.append(-eps_minus_x[:, :, -1])
        return torch.stack(out, dim=1)


class CosmosPixelWorldModel(PixelWorldModel):
    """A :class:`PixelWorldModel` whose tokenizer and dynamics are diffusers Cosmos modules (build it
    with :func:`cosmos_world_model`)."""


def cosmos_world_model(spec: ModelSpec, transformer: nn.Module, vae: nn.Module, frame_size: int, **params) -> CosmosPixelWorldModel:
    """Wrap a ``CosmosTransformer3DModel`` and a diffusers causal VAE as a pixel world model for ``spec``
    (K = ``spec.history`` context frames; ``params`` as :class:`PixelWorldModel`'s, minus the
    native tokenizer / DiT sizes). The transformer's ``in_channels`` must be the VAE's latent
    channels + 1 (the condition mask), its ``out_channels`` the latent channels."""
    tokenizer = DiffusersVideoTokenizer(vae)
    c = tokenizer.latent_channels
    cfg = transformer.config
    if cfg.in_channels != c + 1 or cfg.out_channels != c:
        raise ValueError(f"transformer in/out channels {cfg.in_channels}/{cfg.out_channels} do not fit a VAE with "
                         f"{c} latent channels (need {c + 1}/{c})")
    model = CosmosPixelWorldModel(spec, frame_size=frame_size, latent_channels=c, tokenizer_channels=(8, 8, 8, 8),
                                  dim=8, depth=1, heads=1, patch=1, **params)
    model.tokenizer = tokenizer
    model.dit = CosmosDenoiser(transformer, cond_dim=spec.obs_dim + spec.action_dim)
    return model


def load_cosmos(path: str | Path, spec: ModelSpec, frame_size: int, torch_dtype: torch.dtype = torch.float32, **params) -> CosmosPixelWorldModel:
    """A Cosmos Video2World checkpoint already on disk (a diffusers pipeline folder with
    ``transformer/`` and ``vae/``) as an action-conditioned pixel world model. Never downloads."""
    path = Path(path)
    for sub in ("transformer", "vae"):
        if not (path / sub / "config.json").is_file():
            raise FileNotFoundError(f"no Cosmos weights at {path}: {sub}/config.json missing (wam never downloads them; "
                                    "point to a local diffusers Cosmos-Predict2 Video2World folder)")
    d = _diffusers()
    transformer = d.CosmosTransformer3DModel.from_pretrained(path, subfolder="transformer", local_files_only=True, torch_dtype=torch_dtype)
    vae_cls = d.AutoencoderKLWan if "z_dim" in (path / "vae" / "config.json").read_text() else d.AutoencoderKLCosmos
    vae = vae_cls.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=torch_dtype)
    return cosmos_world_model(spec, transformer, vae, frame_size, **params)


def tiny_cosmos(spec: ModelSpec, frame_size: int = 32, latent_channels: int = 4, **params) -> CosmosPixelWorldModel:
    """A randomly initialized, tiny Cosmos world model (the same diffusers classes as the real one:
    ``CosmosTransformer3DModel`` 2 layers x 2 heads x 16, ``AutoencoderKLWan`` base 8) for tests."""
    d = _diffusers()
    c = latent_channels
    vae = d.AutoencoderKLWan(base_dim=8, z_dim=c, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                             temperal_downsample=[False, True, True], latents_mean=[0.0] * c, latents_std=[1.0] * c)
    transformer = d.CosmosTransformer3DModel(
        in_channels=c + 1, out_channels=c, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=32, adaln_lora_dim=8, max_size=(spec.history + 1, frame_size // 8, frame_size // 8),
        patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type=None)
    return cosmos_world_model(spec, transformer, vae, frame_size, **params)
