"""The portable policy every agent produces and evaluation / export consume.

:class:`MLPPolicy` is the deterministic action path of a trained actor, nothing else:

    obs (N, D) -> [normalize: (obs - mean) / std, optional clip] -> MLP -> mean (N, A)
               -> [optional clamp of the mean] -> clip to the action box, or tanh-squash into it

On disk it is a folder with ``policy.safetensors`` (weights and normalizer statistics) and
``policy.json`` (architecture, action bounds, format version, provenance). Loading never
unpickles; a missing, foreign, corrupt, newer-version or inconsistent file raises
:class:`PolicyFileError` naming the file and the problem.

Constructors copy the deterministic action path out of stable-baselines3 (PPO / A2C
``ActorCriticPolicy``, SAC) and rsl-rl 5.x (``MLPModel`` actor with its empirical
normalizer), so that ``policy.act(obs)`` equals the source's deterministic action.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save
from torch import nn

from world_models.data import atomic_write_bytes, atomic_write_json

FORMAT = "wam.policy"
FORMAT_VERSION = 1
WEIGHTS_FILE = "policy.safetensors"
CONFIG_FILE = "policy.json"

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}

# policy.json keys -> accepted JSON types (besides the format keys)
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "obs_dim": (int,),
    "action_dim": (int,),
    "hidden": (list,),
    "activation": (str,),
    "action_low": (list,),
    "action_high": (list,),
    "normalize": (bool,),
    "obs_clip": (int, float, type(None)),
    "mean_clip": (int, float, type(None)),
    "squash": (bool,),
    "source": (str,),
}


class PolicyFileError(ValueError):
    """A policy folder that cannot be loaded; the message names the file and the problem."""


class MLPPolicy(nn.Module):
    """Deterministic MLP policy with its observation normalizer and action bounds.

    Args:
        obs_dim: D, size of the flat observation.
        action_dim: A, size of the flat action.
        action_low / action_high: the action box, length A, finite.
        hidden: hidden layer sizes (may be empty: one linear layer).
        activation: one of :data:`ACTIVATIONS`, after every hidden layer.
        normalize: apply ``(obs - obs_mean) / obs_std`` (buffers, length D) first.
        obs_clip: clip normalized observations to ``[-obs_clip, obs_clip]`` (SB3 VecNormalize).
        mean_clip: clamp the MLP output to ``[-mean_clip, mean_clip]`` before squashing (SB3
            SAC with gSDE).
        squash: map the MLP output into the box with ``low + 0.5 (tanh(x) + 1) (high - low)``
            (SAC); otherwise clip it to the box (PPO).
        source: provenance, e.g. ``"sb3:PPO"``.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        normalize: bool = False,
        obs_clip: float | None = None,
        mean_clip: float | None = None,
        squash: bool = False,
        source: str = "",
    ) -> None:
        super().__init__()
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {list(hidden)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; one of {sorted(ACTIVATIONS)}")
        try:
            low, high = [float(x) for x in action_low], [float(x) for x in action_high]
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"action_low / action_high must be lists of numbers, got {action_low!r} and {action_high!r}"
            ) from e
        if len(low) != action_dim or len(high) != action_dim:
            raise ValueError(
                f"action_low / action_high must have length action_dim={action_dim}, got {len(low)} and {len(high)}"
            )
        if not all(math.isfinite(x) for x in low + high) or any(lo > hi for lo, hi in zip(low, high)):
            raise ValueError(f"action bounds must be finite with low <= high, got {low} and {high}")
        for name, clip in (("obs_clip", obs_clip), ("mean_clip", mean_clip)):
            if clip is not None and not clip > 0:
                raise ValueError(f"{name} must be positive or None, got {clip}")
        if obs_clip is not None and not normalize:
            raise ValueError("obs_clip needs normalize=True (it clips normalized observations)")

        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.hidden, self.activation = tuple(int(h) for h in hidden), activation
        self.normalize, self.obs_clip, self.mean_clip = normalize, obs_clip, mean_clip
        self.squash, self.source = squash, source
        if normalize:
            self.register_buffer("obs_mean", torch.zeros(obs_dim))
            self.register_buffer("obs_std", torch.ones(obs_dim))
        # bounds live in policy.json, not in the weights file
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(high, dtype=torch.float32), persistent=False)
        sizes = [obs_dim, *self.hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], action_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions. obs (N, D) float32 -> actions (N, A) inside the box."""
        x = obs
        if self.normalize:
            x = (x - self.obs_mean) / self.obs_std
            if self.obs_clip is not None:
                x = x.clamp(-self.obs_clip, self.obs_clip)
        mean = self.mlp(x)
        if self.mean_clip is not None:
            mean = mean.clamp(-self.mean_clip, self.mean_clip)
        if self.squash:
            return self.action_low + 0.5 * (torch.tanh(mean) + 1.0) * (self.action_high - self.action_low)
        return torch.clamp(mean, self.action_low, self.action_high)

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Deterministic actions for obs (N, D) or (D,); numpy in -> float32 numpy out, tensor in
        -> tensor out (on the input's device)."""
        is_numpy = not torch.is_tensor(obs)
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32)) if is_numpy else obs
        if x.shape[-1:] != (self.obs_dim,) or x.ndim not in (1, 2):
            raise ValueError(f"obs must have shape (N, {self.obs_dim}) or ({self.obs_dim},), got {tuple(x.shape)}")
        out = self(x.to(self.action_low.device, torch.float32).reshape(-1, self.obs_dim))
        out = out.reshape(*x.shape[:-1], self.action_dim)
        return out.cpu().numpy() if is_numpy else out.to(x.device)

    # ------------------------------------------------------------------ files

    def config(self) -> dict[str, Any]:
        """The ``policy.json`` content."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "normalize": self.normalize,
            "obs_clip": self.obs_clip,
            "mean_clip": self.mean_clip,
            "squash": self.squash,
            "source": self.source,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``policy.safetensors`` and ``policy.json`` into the folder ``path`` (created if
        needed; each file replaced atomically). Returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        blob = safetensors_save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        atomic_write_bytes(folder / WEIGHTS_FILE, lambda f: f.write(blob))
        atomic_write_json(folder / CONFIG_FILE, self.config())
        return folder

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> MLPPolicy:
        """Load a policy folder written by :meth:`save` (eval mode, on ``device``).

        Raises:
            PolicyFileError: the folder or a file is missing, the file is not a wam policy,
                is corrupt, has a newer format version, or its tensors do not match its config.
        """
        folder = Path(path)
        if not folder.is_dir():
            what = "does not exist" if not folder.exists() else "is a file"
            raise PolicyFileError(f"{folder} {what}: a policy is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise PolicyFileError(f"{p} is missing: not a wam policy folder (or an incomplete one)")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PolicyFileError(f"{cfg_path} is corrupt: not valid JSON ({e})") from e
        kwargs = _check_config(cfg, cfg_path)
        try:
            policy = cls(**kwargs)
        except ValueError as e:
            raise PolicyFileError(f"{cfg_path}: {e}") from e
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as e:
            raise PolicyFileError(f"{weights_path} is corrupt: not a readable safetensors file ({e})") from e
        expected = policy.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise PolicyFileError(
                f"{weights_path} does not match {CONFIG_FILE}: missing tensors {missing}, unexpected tensors {unexpected}"
            )
        for name, t in tensors.items():
            if t.shape != expected[name].shape:
                raise PolicyFileError(
                    f"{weights_path}: tensor {name!r} has shape {tuple(t.shape)}, "
                    f"{CONFIG_FILE} implies {tuple(expected[name].shape)}"
                )
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise PolicyFileError(f"{weights_path}: tensor {name!r} is not finite floating point")
        policy.load_state_dict({k: v.float() for k, v in tensors.items()})
        return policy.to(device).eval()

    # ----------------------------------------------------------- constructors

    @classmethod
    def from_sb3(cls, model: Any) -> MLPPolicy:
        """The deterministic action path of a stable-baselines3 model.

        Supports PPO / A2C (``ActorCriticPolicy`` "MlpPolicy": MLP -> action_net, clipped to the
        box, or tanh-squashed if ``squash_output``) and SAC (``latent_pi`` -> ``mu`` ->
        tanh-squash, with gSDE's ``clip_mean``), flat Box observations and actions. If the
        model's env is wrapped in ``VecNormalize`` with ``norm_obs``, its observation
        statistics become the normalizer (computed in float32 here, float64 in SB3: actions
        agree to ~1e-6); without one, actions equal ``model.predict(obs, deterministic=True)``.
        """
        from gymnasium import spaces
        from stable_baselines3.common.policies import ActorCriticPolicy
        from stable_baselines3.common.torch_layers import FlattenExtractor
        from stable_baselines3.sac.policies import SACPolicy

        policy = model.policy
        obs_space, act_space = policy.observation_space, policy.action_space
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise TypeError(f"from_sb3 needs a flat Box observation space, got {obs_space}")
        if not isinstance(act_space, spaces.Box) or len(act_space.shape) != 1:
            raise TypeError(f"from_sb3 needs a flat Box action space, got {act_space}")
        mean_clip = None
        if isinstance(policy, ActorCriticPolicy):
            extractor = policy.pi_features_extractor
            modules = [*policy.mlp_extractor.policy_net, policy.action_net]
            squash = bool(policy.squash_output)
        elif isinstance(policy, SACPolicy):
            extractor = policy.actor.features_extractor
            mu = policy.actor.mu
            if isinstance(mu, nn.Sequential):  # gSDE: Linear -> Hardtanh(-clip_mean, clip_mean)
                mu, hardtanh = mu
                mean_clip = float(hardtanh.max_val)
            modules = [*policy.actor.latent_pi, mu]
            squash = True
        else:
            raise TypeError(f"from_sb3 supports PPO / A2C / SAC MlpPolicy, got {type(policy).__name__}")
        if not isinstance(extractor, FlattenExtractor):
            raise TypeError(f"from_sb3 needs the default FlattenExtractor, got {type(extractor).__name__}")
        linears, activation = _mlp_layers(modules)
        vec_normalize = model.get_vec_normalize_env()
        normalize = vec_normalize is not None and bool(vec_normalize.norm_obs)
        net = cls(
            obs_dim=obs_space.shape[0],
            action_dim=act_space.shape[0],
            action_low=act_space.low.tolist(),
            action_high=act_space.high.tolist(),
            hidden=[m.out_features for m in linears[:-1]],
            activation=activation,
            normalize=normalize,
            obs_clip=float(vec_normalize.clip_obs) if normalize else None,
            mean_clip=mean_clip,
            squash=squash,
            source=f"sb3:{type(model).__name__}",
        )
        if normalize:
            rms = vec_normalize.obs_rms
            net.obs_mean.copy_(torch.as_tensor(rms.mean, dtype=torch.float32))
            net.obs_std.copy_(torch.as_tensor(np.sqrt(rms.var + vec_normalize.epsilon), dtype=torch.float32))
        copy_linears(linears, linear_layers(net.mlp))
        return net.eval()

    @classmethod
    def from_rsl_rl(
        cls,
        runner_or_policy: Any,
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
    ) -> MLPPolicy:
        """The deterministic action path of an rsl-rl 5.x actor (``MLPModel`` with a Gaussian
        output distribution, optionally with its ``EmpiricalNormalization``).

        Args:
            runner_or_policy: an ``OnPolicyRunner`` (its ``alg.get_policy()``) or the actor
                ``MLPModel`` itself; the actor's observation groups are concatenated in order.
            action_low / action_high: the action box; default: the runner env's
                ``single_action_space`` (rsl-rl actors are unbounded; the env clips, and so
                does this policy).
        """
        from rsl_rl.models import MLPModel
        from rsl_rl.modules.distribution import GaussianDistribution, HeteroscedasticGaussianDistribution

        actor = runner_or_policy.alg.get_policy() if hasattr(runner_or_policy, "alg") else runner_or_policy
        if type(actor) is not MLPModel:
            raise TypeError(f"from_rsl_rl supports a feed-forward rsl-rl MLPModel actor, got {type(actor).__name__}")
        dist = actor.distribution
        if dist is not None and (
            not isinstance(dist, GaussianDistribution) or isinstance(dist, HeteroscedasticGaussianDistribution)
        ):
            raise TypeError(
                f"from_rsl_rl supports GaussianDistribution actors (mean = MLP output), got {type(dist).__name__}"
            )
        if action_low is None or action_high is None:
            space = getattr(getattr(runner_or_policy, "env", None), "single_action_space", None)
            if space is None:
                raise ValueError("from_rsl_rl needs action_low / action_high (the actor does not know its action box)")
            action_low, action_high = space.low.tolist(), space.high.tolist()
        linears, activation = _mlp_layers(list(actor.mlp))
        normalizer = actor.obs_normalizer
        net = cls(
            obs_dim=actor.obs_dim,
            action_dim=linears[-1].out_features,
            action_low=action_low,
            action_high=action_high,
            hidden=[m.out_features for m in linears[:-1]],
            activation=activation,
            normalize=bool(actor.obs_normalization),
            source="rsl_rl:PPO",
        )
        if actor.obs_normalization:
            net.obs_mean.copy_(normalizer._mean.squeeze(0))
            net.obs_std.copy_(normalizer._std.squeeze(0) + normalizer.eps)  # rsl-rl divides by (std + eps)
        copy_linears(linears, linear_layers(net.mlp))
        return net.eval()


def _check_config(cfg: Any, cfg_path: Path) -> dict[str, Any]:
    """Check the format, version, keys and JSON types of a parsed ``policy.json``; return the
    constructor arguments (whose values the constructor checks) or raise PolicyFileError."""
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise PolicyFileError(f"{cfg_path} is not a wam policy file (format {found!r}, expected {FORMAT!r})")
    version = cfg.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PolicyFileError(f"{cfg_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise PolicyFileError(
            f"{cfg_path} has format_version {version}, newer than this wam reads ({FORMAT_VERSION}): upgrade wam"
        )
    kwargs = {k: v for k, v in cfg.items() if k not in ("format", "format_version")}
    missing, unknown = sorted(set(_CONFIG_TYPES) - set(kwargs)), sorted(set(kwargs) - set(_CONFIG_TYPES))
    if missing:
        raise PolicyFileError(f"{cfg_path}: missing keys {missing}")
    if unknown:
        raise PolicyFileError(f"{cfg_path}: unknown keys {unknown} (known: {sorted(_CONFIG_TYPES)})")
    for key, types in _CONFIG_TYPES.items():
        value = kwargs[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise PolicyFileError(f"{cfg_path}: {key!r} must be {'/'.join(t.__name__ for t in types)}, got {value!r}")
    return kwargs


def _mlp_layers(modules: list[nn.Module]) -> tuple[list[nn.Linear], str]:
    """Split ``Linear, act, Linear, act, ..., Linear`` into the linears and the activation name."""
    linears = modules[0::2]
    acts = modules[1::2]
    if not linears or len(linears) != len(acts) + 1 or not all(isinstance(m, nn.Linear) for m in linears):
        raise TypeError(f"expected an MLP of Linear layers with one activation between each, got {modules}")
    names = {_activation_name(m) for m in acts}
    if len(names) > 1:
        raise TypeError(f"MLPPolicy needs one activation throughout, got {sorted(names)}")
    return linears, names.pop() if names else "tanh"


def _activation_name(module: nn.Module) -> str:
    for name, cls in ACTIVATIONS.items():
        if type(module) is cls and repr(module) == repr(cls()):  # default parameters only
            return name
    raise TypeError(f"unsupported activation {module!r}; supported (default parameters): {sorted(ACTIVATIONS)}")


def linear_layers(mlp: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of an MLP, in order."""
    return [m for m in mlp.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def copy_linears(src: Sequence[nn.Linear], dst: Sequence[nn.Linear]) -> None:
    """Copy weights and biases layer by layer (same count and shapes: else an error)."""
    for a, b in zip(src, dst, strict=True):
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
