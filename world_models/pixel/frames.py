"""Frame store on disk (uint8 video episodes) and the window sampler of the pixel models.

A frame dataset is a folder::

    meta.json            format, version, task, frame shape, action box, chunk list, counts
    chunk_00000.npz      whole episodes: one row per *frame* (see FRAME_FIELDS)

An episode of T actions holds T + 1 rows: row t has frame t (what the camera saw before
action t), the agent state, the coverage of frame t, and action t; the last row's action is
zero (nothing was done after it) and ``last`` is True. Writes are atomic (temporary file +
``os.replace``), as in :mod:`world_models.data`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.base import ModelSpec
from world_models.data import DatasetError, atomic_write_bytes, atomic_write_json, load_chunks

FORMAT = "wam.frames"
FORMAT_VERSION = 1

# name -> (dtype, trailing shape: "F" frame (H, W, 3), "S" agent state, "A" action, "" scalar)
FRAME_FIELDS: dict[str, tuple[np.dtype, str]] = {
    "pixels": (np.dtype(np.uint8), "F"),
    "agent_pos": (np.dtype(np.float32), "S"),
    "action": (np.dtype(np.float32), "A"),
    "coverage": (np.dtype(np.float32), ""),
    "success": (np.dtype(bool), ""),
    "last": (np.dtype(bool), ""),
    "episode": (np.dtype(np.int64), ""),
    "step": (np.dtype(np.int64), ""),
}
# fields a dataset may carry when its meta lists them in ``optional_fields``
OPTIONAL_FRAME_FIELDS: dict[str, tuple[np.dtype, str]] = {
    "block_pose": (np.dtype(np.float32), "P"),  # (x, y, angle) of the pushed object (world units, rad)
}


class FrameStore:
    """An appendable, atomically written store of video episodes (uint8 frames).

    Args:
        path: dataset folder.
        meta: required for a new dataset: ``frame_shape`` [H, W, 3], ``state_dim``,
            ``action_dim``, ``action_low`` / ``action_high``, optionally ``state_low`` /
            ``state_high`` (the agent-state box), the ``task`` name and ``optional_fields``
            (names in OPTIONAL_FRAME_FIELDS that every append must then carry).
    """

    def __init__(self, path: str | Path, meta: dict[str, Any] | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            try:
                self.meta = json.loads(meta_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DatasetError(f"corrupt frame-dataset meta file {meta_path}: {e}") from e
            if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
                raise DatasetError(f"{meta_path} is not a wam frame dataset (expected format {FORMAT!r})")
            if self.meta.get("format_version", 0) > FORMAT_VERSION:
                raise DatasetError(f"frame dataset {self.path} is newer than this wam reads: upgrade wam")
            if meta is not None and list(meta.get("frame_shape", self.meta["frame_shape"])) != self.meta["frame_shape"]:
                raise DatasetError(f"frame dataset {self.path} has frames {self.meta['frame_shape']}, cannot append {meta['frame_shape']}")
        elif meta is None:
            raise DatasetError(f"no frame dataset at {self.path} (meta.json missing)")
        else:
            for key in ("frame_shape", "state_dim", "action_dim", "action_low", "action_high"):
                if key not in meta:
                    raise DatasetError(f"new frame dataset meta must contain {key!r}")
            unknown = set(meta.get("optional_fields", [])) - set(OPTIONAL_FRAME_FIELDS)
            if unknown:
                raise DatasetError(f"unknown optional frame fields {sorted(unknown)}; known: {sorted(OPTIONAL_FRAME_FIELDS)}")
            self.meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "frame_shape": list(meta["frame_shape"]),
                         "chunks": [], "num_frames": 0, "num_episodes": 0}
            atomic_write_json(meta_path, self.meta)

    def __len__(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def fields(self) -> dict[str, tuple[np.dtype, str]]:
        """Every field this dataset stores: FRAME_FIELDS plus its optional ones."""
        return {**FRAME_FIELDS, **{k: OPTIONAL_FRAME_FIELDS[k] for k in self.meta.get("optional_fields", [])}}

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Append whole episodes: every field of FRAME_FIELDS with leading dim N, rows grouped by
        episode in step order (episode ids local to this call; they are renumbered)."""
        missing = set(self.fields) - set(rows)
        if missing:
            raise DatasetError(f"frame rows are missing fields {sorted(missing)}")
        n = len(rows["episode"])
        dims = {"F": tuple(self.meta["frame_shape"]), "S": (self.meta["state_dim"],), "A": (self.meta["action_dim"],),
                "P": (3,), "": ()}
        arrays = {}
        for name, (dtype, key) in self.fields.items():
            a = np.asarray(rows[name])
            if a.shape != (n, *dims[key]):
                raise DatasetError(f"field {name!r} must have shape {(n, *dims[key])}, got {a.shape}")
            arrays[name] = a.astype(dtype, copy=False)
        if n == 0:
            return
        _, local = np.unique(arrays["episode"], return_inverse=True)
        first = int(self.meta["num_episodes"])
        arrays["episode"] = (local + first).astype(np.int64)
        name = f"chunk_{len(self.meta['chunks']):05d}.npz"
        atomic_write_bytes(self.path / name, lambda f: np.savez_compressed(f, **arrays))
        meta = {**self.meta, "chunks": [*self.meta["chunks"], name], "num_frames": len(self) + n,
                "num_episodes": first + int(local.max()) + 1}
        atomic_write_json(self.path / "meta.json", meta)
        self.meta = meta

    def load(self) -> dict[str, np.ndarray]:
        """Every row, concatenated in chunk order (split by episodes with
        :func:`world_models.data.split_episodes`)."""
        return load_chunks(self.path, self.meta["chunks"], self.fields, "frame dataset")


class FrameWindows:
    """Windows of K context rows + F future rows from frame-store rows (numpy or torch arrays).

    A window at row ``i`` covers rows ``i-K+1 .. i+F`` of ``i``'s episode; positions before the
    episode start repeat its first row (Push-T starts at rest, so a repeated first frame is
    what the camera would have seen), positions past its end repeat the last
    row and are marked invalid in ``valid``. Windows start only where at least one future row
    exists. ``window(idx)`` returns every field gathered to (B, K+F, ...) plus ``valid``
    (B, K+F) bool and ``prev_action`` (B, K+F, A): the action that led to each row; at and
    before the episode start it is the agent's own position (a Push-T action is a target
    position: "stay where you are", which is what a body at rest did).
    """

    def __init__(self, data: dict[str, Any], context: int, future: int, seed: int = 0):
        if context < 1 or future < 0:
            raise ValueError(f"FrameWindows needs context >= 1 and future >= 0, got {context}, {future}")
        self.data = {k: torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v for k, v in data.items()}
        ep = self.data["episode"]
        n = ep.shape[0]
        if n == 0:
            raise DatasetError("cannot sample windows from an empty frame dataset")
        new = torch.ones(n, dtype=torch.bool)
        new[1:] = ep[1:] != ep[:-1]
        starts = torch.arange(n)[new]
        ends = torch.cat([starts[1:], torch.tensor([n])])
        of = torch.cumsum(new.long(), 0) - 1
        self.ep_start, self.ep_end = starts[of], ends[of]
        self.starts = torch.nonzero(torch.arange(n) + 1 < self.ep_end).squeeze(1)  # rows with a successor
        self.context, self.future = context, future
        self.offsets = torch.arange(-context + 1, future + 1)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = rows[:, None] + self.offsets[None]
        lo, hi = self.ep_start[rows][:, None], self.ep_end[rows][:, None] - 1
        valid = idx <= hi
        safe = torch.minimum(torch.maximum(idx, lo), hi)
        out = {k: v[safe] for k, v in self.data.items()}
        prev = self.data["action"][(safe - 1).clamp_min(0)]
        out["prev_action"] = torch.where((idx > lo)[..., None], prev, out["agent_pos"])
        out["valid"] = valid
        return out

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        pick = torch.randint(0, len(self.starts), (batch,), generator=self.generator)
        return self.window(self.starts[pick])


def frame_model_spec(meta: dict[str, Any], history: int, forecast: int = 1, dt: float = 0.1) -> ModelSpec:
    """The :class:`ModelSpec` of a pixel model for a frame dataset: agent-state dim and box
    (``state_low`` / ``state_high``, default: the action box), action dim and box, K = ``history``."""
    lo = meta.get("state_low", meta["action_low"])
    hi = meta.get("state_high", meta["action_high"])
    return ModelSpec(obs_dim=int(meta["state_dim"]), action_dim=int(meta["action_dim"]),
                     action_low=tuple(float(x) for x in meta["action_low"]), action_high=tuple(float(x) for x in meta["action_high"]),
                     history=history, forecast=forecast, dt=dt, obs_low=tuple(float(x) for x in lo), obs_high=tuple(float(x) for x in hi))
