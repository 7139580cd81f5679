"""Transition store on disk and the window sampler that feeds world-model training.

On disk a dataset is a folder::

    meta.json            format, version, task, env id, spaces, chunk list, counts
    chunk_00000.npz      one appended batch of transitions (see FIELDS)
    chunk_00001.npz      ...

Transitions are stored flat and grouped by episode, in time order inside each episode.
Every write goes to a temporary file first and is moved into place with ``os.replace``,
so an interrupted collection never leaves a half-written chunk or meta file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.base import ModelSpec

FORMAT = "wam.dataset"
FORMAT_VERSION = 1

# name -> (dtype, trailing shape key): "D" obs dim, "A" action dim, "" scalar per transition
FIELDS: dict[str, tuple[np.dtype, str]] = {
    "obs": (np.dtype(np.float32), "D"),
    "action": (np.dtype(np.float32), "A"),
    "reward": (np.dtype(np.float32), ""),
    "next_obs": (np.dtype(np.float32), "D"),
    "terminated": (np.dtype(bool), ""),
    "truncated": (np.dtype(bool), ""),
    "episode": (np.dtype(np.int64), ""),
    "step": (np.dtype(np.int64), ""),
}
# optional fields, stored when the dataset's meta names their size: "C" = meta["contact_dim"]
OPTIONAL_FIELDS: dict[str, tuple[np.dtype, str]] = {
    "contacts": (np.dtype(bool), "C"),  # (N, C) binary contacts of next_obs (feet, thighs, ...)
}


class DatasetError(ValueError):
    """A dataset folder is missing, foreign, corrupt, or does not match what is appended."""


def atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_bytes(Path(path), lambda f: f.write(json.dumps(obj, indent=2).encode()))


class TransitionStore:
    """An appendable, atomically written transition dataset.

    Args:
        path: dataset folder.
        meta: required when creating a new dataset: ``obs_dim``, ``action_dim``, and
            whatever describes its source (``task``, ``env_id``, ``observation_space``,
            ``action_space`` as JSON dicts). Ignored (but checked for obs/action dims) when
            the folder already holds a dataset.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any] | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            self.meta = self._read_meta(meta_path)
            if meta is not None:
                for key in ("obs_dim", "action_dim", "env_id", "contact_dim"):
                    if key in meta and meta[key] != self.meta.get(key):
                        raise DatasetError(
                            f"dataset {self.path} has {key}={self.meta.get(key)!r}, "
                            f"cannot append data with {key}={meta[key]!r}"
                        )
        elif meta is None:
            raise DatasetError(f"no dataset at {self.path} (meta.json missing)")
        else:
            for key in ("obs_dim", "action_dim"):
                if key not in meta:
                    raise DatasetError(f"new dataset meta must contain {key!r}")
            self.meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **meta,
                "chunks": [],
                "num_transitions": 0,
                "num_episodes": 0,
            }
            atomic_write_json(meta_path, self.meta)

    @staticmethod
    def _read_meta(meta_path: Path) -> dict[str, Any]:
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"corrupt dataset meta file {meta_path}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DatasetError(f"{meta_path} is not a wam dataset (format={meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise DatasetError(
                f"dataset {meta_path.parent} has format version {meta['format_version']}, "
                f"this wam reads up to {FORMAT_VERSION}: upgrade wam"
            )
        return meta

    @property
    def obs_dim(self) -> int:
        return int(self.meta["obs_dim"])

    @property
    def action_dim(self) -> int:
        return int(self.meta["action_dim"])

    def __len__(self) -> int:
        return int(self.meta["num_transitions"])

    @property
    def fields(self) -> dict[str, tuple[np.dtype, str]]:
        """The fields this dataset stores: FIELDS, plus ``contacts`` when ``meta["contact_dim"]`` > 0."""
        extra = {"contacts": OPTIONAL_FIELDS["contacts"]} if int(self.meta.get("contact_dim", 0)) > 0 else {}
        return {**FIELDS, **extra}

    def append(self, transitions: dict[str, np.ndarray]) -> None:
        """Append flat transitions (all of :attr:`fields`, leading dim N). ``episode`` ids are local to
        this batch (any integers); they are renumbered to follow the stored episodes."""
        fields = self.fields
        missing = set(fields) - set(transitions)
        if missing:
            raise DatasetError(f"transitions are missing fields {sorted(missing)}")
        n = len(transitions["reward"])
        dims = {"D": self.obs_dim, "A": self.action_dim, "C": int(self.meta.get("contact_dim", 0)), "": None}
        arrays = {}
        for name, (dtype, dim_key) in fields.items():
            a = np.asarray(transitions[name])
            want = (n,) if dims[dim_key] is None else (n, dims[dim_key])
            if a.shape != want:
                raise DatasetError(f"field {name!r} must have shape {want}, got {a.shape}")
            arrays[name] = a.astype(dtype, copy=False)
        if n == 0:
            return
        for name in ("obs", "action", "reward", "next_obs"):
            if not np.isfinite(arrays[name]).all():
                raise DatasetError(f"field {name!r} contains non-finite values; refusing to store them")
        # renumber episodes, keep grouping: stable sort by (episode, step)
        order = np.lexsort((arrays["step"], arrays["episode"]))
        arrays = {k: v[order] for k, v in arrays.items()}
        _, local_ids = np.unique(arrays["episode"], return_inverse=True)
        first_id = int(self.meta["num_episodes"])
        arrays["episode"] = (local_ids + first_id).astype(np.int64)
        name = f"chunk_{len(self.meta['chunks']):05d}.npz"
        atomic_write_bytes(self.path / name, lambda f: np.savez(f, **arrays))
        meta = dict(self.meta)
        meta["chunks"] = [*self.meta["chunks"], name]
        meta["num_transitions"] = int(self.meta["num_transitions"]) + n
        meta["num_episodes"] = first_id + int(local_ids.max()) + 1
        atomic_write_json(self.path / "meta.json", meta)
        self.meta = meta

    def load(self) -> dict[str, np.ndarray]:
        """All transitions, concatenated in chunk order: dict of arrays with leading dim N."""
        return load_chunks(self.path, self.meta["chunks"], self.fields, "dataset")


def load_chunks(path: Path, chunks: list[str], fields: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """The ``fields`` of every ``.npz`` chunk in ``path``, concatenated in order (leading dim N).

    A missing, truncated or foreign chunk raises :class:`DatasetError` naming it; so does a
    store with no rows. ``what`` names the store in messages ("dataset", "frame dataset").
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in fields}
    for name in chunks:
        try:
            with np.load(path / name, allow_pickle=False) as z:
                for k in parts:
                    parts[k].append(z[k])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f"corrupt {what} chunk {path / name}: {e}") from e
    if not chunks:
        raise DatasetError(f"{what} {path} holds no rows")
    return {k: np.concatenate(v) for k, v in parts.items()}


def split_episodes(data: dict[str, np.ndarray], val_fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """Split flat transitions into (train, held-out) by whole episodes."""
    episodes = np.unique(data["episode"])
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(len(episodes) * val_fraction))) if val_fraction > 0 else 0
    if n_val >= len(episodes):
        raise DatasetError(f"cannot hold out {n_val} of {len(episodes)} episodes")
    val_eps = rng.choice(episodes, size=n_val, replace=False)
    is_val = np.isin(data["episode"], val_eps)
    return {k: v[~is_val] for k, v in data.items()}, {k: v[is_val] for k, v in data.items()}


def to_torch(data: dict[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in data.items()}


def check_oversampling(near_fall_fraction: float, near_fall_steps: int, recent_fraction: float = 0.0, recent_transitions: int = 1) -> None:
    """Raise ValueError unless :class:`WindowSampler`'s oversampling is valid: shares
    ``near_fall_fraction`` (windows before a termination) and ``recent_fraction`` (windows in
    the newest transitions) each >= 0 and together < 1, ``near_fall_steps`` and
    ``recent_transitions`` >= 1."""
    if (min(near_fall_fraction, recent_fraction) < 0.0 or near_fall_fraction + recent_fraction >= 1.0
            or near_fall_steps < 1 or recent_transitions < 1):
        raise ValueError(f"need 0 <= near_fall_fraction, 0 <= recent_fraction, near_fall_fraction + recent_fraction < 1, "
                         f"near_fall_steps >= 1 and recent_transitions >= 1; got {near_fall_fraction}, {recent_fraction}, "
                         f"{near_fall_steps}, {recent_transitions}")


class WindowSampler:
    """Samples (history M, forecast N) windows from flat transitions, on one device.

    A window at transition ``i`` covers transitions ``i-M .. i+N-1`` of ``i``'s episode: M of
    history, then N of forecast starting at ``i``. Positions before the episode start
    (left) or after its end (right) are padding, marked invalid. Every transition is a
    possible forecast start, so terminal transitions are sampled as often as any other.

    Batch (L = M + N): ``obs`` (B, L, D), ``action`` (B, L, A), ``next_obs`` (B, L, D),
    ``reward`` (B, L), ``terminated`` (B, L) bool, ``valid`` (B, L) bool, ``is_first`` (B, L)
    bool (the first valid position of each window), ``history`` = M (int), and ``contacts``
    (B, L, C) bool when the data hold them.

    ``near_fall_fraction`` f > 0 draws f of every batch uniformly from the forecast starts
    that lie fewer than ``near_fall_steps`` transitions before a termination of their episode
    (the rest uniformly from all): falls are rare (< 0.5% of legged transitions), and a model
    trained on uniform windows learns that the robot stays upright.

    ``recent_fraction`` r > 0 draws r of every batch uniformly from the forecast starts among
    the newest ``recent_transitions`` transitions (the data are in collection order): in MBPO
    the latest policy's data are a few percent of all data, and a warm-started model sees them
    too rarely to learn the new gait before the policy exploits it.
    """

    def __init__(self, data: dict[str, torch.Tensor], history: int, forecast: int, seed: int = 0,
                 near_fall_fraction: float = 0.0, near_fall_steps: int = 50,
                 recent_fraction: float = 0.0, recent_transitions: int = 20_000):
        if history < 0 or forecast < 1:
            raise ValueError(f"need history >= 0 and forecast >= 1, got {history}, {forecast}")
        check_oversampling(near_fall_fraction, near_fall_steps, recent_fraction, recent_transitions)
        self.data = {k: data[k] for k in ("obs", "action", "next_obs", "reward", "terminated", "contacts") if k in data}
        self.device = self.data["obs"].device
        episode = data["episode"].to(self.device)
        n = episode.shape[0]
        if n == 0:
            raise DatasetError("cannot sample windows from an empty dataset")
        idx = torch.arange(n, device=self.device)
        new_ep = torch.ones(n, dtype=torch.bool, device=self.device)
        new_ep[1:] = episode[1:] != episode[:-1]
        starts = idx[new_ep]
        ep_of = torch.cumsum(new_ep.long(), 0) - 1
        ends = torch.cat([starts[1:], torch.tensor([n], device=self.device)])
        self.ep_start = starts[ep_of]
        self.ep_end = ends[ep_of]
        self.history, self.forecast = history, forecast
        self.offsets = torch.arange(-history, forecast, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.near_fall_fraction = near_fall_fraction
        self.near_fall = idx[:0]  # forecast starts (k,) fewer than near_fall_steps before their episode's termination
        if near_fall_fraction > 0 and "terminated" in data:
            last = self.ep_end - 1  # the episode's last transition
            ends_in_fall = data["terminated"].to(self.device).bool()[last]
            self.near_fall = idx[ends_in_fall & (last - idx < near_fall_steps)]
        self.recent_fraction = recent_fraction
        self.recent = idx[-recent_transitions:]  # the newest forecast starts (k,)

    def __len__(self) -> int:
        return self.ep_start.shape[0]

    def window(self, start: torch.Tensor) -> dict[str, torch.Tensor]:
        """Windows whose forecast starts at transition indices ``start`` (B,)."""
        idx = start[:, None] + self.offsets[None, :]
        valid = (idx >= self.ep_start[start][:, None]) & (idx < self.ep_end[start][:, None])
        safe = torch.where(valid, idx, start[:, None])
        out = {k: v[safe] for k, v in self.data.items()}
        out["valid"] = valid
        first_valid = valid.float().argmax(dim=1)
        out["is_first"] = torch.zeros_like(valid)
        out["is_first"][torch.arange(len(start), device=self.device), first_valid] = True
        out["history"] = self.history
        return out

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        start = torch.randint(0, len(self), (batch_size,), device=self.device, generator=self.generator)
        k = round(self.near_fall_fraction * batch_size) if self.near_fall.numel() else 0
        if k:
            pick = torch.randint(0, self.near_fall.numel(), (k,), device=self.device, generator=self.generator)
            start[:k] = self.near_fall[pick]
        r = round(self.recent_fraction * batch_size)
        if r:
            pick = torch.randint(0, self.recent.numel(), (r,), device=self.device, generator=self.generator)
            start[k:k + r] = self.recent[pick]
        return self.window(start)


def model_spec_from_data(
    meta: dict[str, Any], data: dict[str, np.ndarray], history: int, forecast: int, dt: float = 0.05
):
    """The :class:`~world_models.base.ModelSpec` of a dataset: dims and action bounds from its
    meta, the observed range of ``data["obs"]`` / ``data["next_obs"]`` as the divergence range."""
    space = meta.get("action_space")
    if not space or space.get("type") != "Box":
        raise DatasetError("dataset meta has no Box action_space; world models need bounded Box actions")
    obs = np.concatenate([np.asarray(data["obs"]), np.asarray(data["next_obs"])])
    names = tuple(meta.get("obs_names", ()))
    return ModelSpec(
        contact_dim=int(meta.get("contact_dim", 0)),
        obs_dim=int(meta["obs_dim"]),
        action_dim=int(meta["action_dim"]),
        action_low=tuple(float(x) for x in space["low"]),
        action_high=tuple(float(x) for x in space["high"]),
        history=history,
        forecast=forecast,
        dt=dt,
        obs_low=tuple(float(x) for x in obs.min(axis=0)),
        obs_high=tuple(float(x) for x in obs.max(axis=0)),
        obs_names=names,
    )
