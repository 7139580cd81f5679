"""Run an exported policy with onnxruntime: no torch on the action path.

An exported folder (written by :func:`sim2real.export.export_policy`) holds ``policy.onnx``
(input ``obs`` float32 (N, D), output ``actions`` float32 (N, A), the observation normalizer
and the action clip / squash inside the graph) and the ``deploy.json`` sidecar (observation
layout, joint order, action scale / offset, PD gains, control dt). :class:`OnnxPolicy` is a
policy callable, usable wherever one is (``agents.evaluate.evaluate_velocity_tracking``, the
sim2real backends, the Isaac Lab worker): this module imports only the standard library,
numpy and onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DEPLOY_FORMAT = "wam.deploy"
DEPLOY_VERSION = 1
ONNX_FILE = "policy.onnx"
DEPLOY_FILE = "deploy.json"
INPUT_NAME = "obs"
OUTPUT_NAME = "actions"


class ExportError(ValueError):
    """A policy that cannot be exported, or an exported folder that cannot be run; the
    message names the thing and the problem."""


def read_deploy(path: str | Path) -> dict[str, Any]:
    """The ``deploy.json`` sidecar of an exported folder (or the file itself), checked for its
    format and version.

    Raises:
        ExportError: the file is missing, not JSON, not a ``wam.deploy`` file, or newer than
            this reader.
    """
    p = Path(path)
    p = p / DEPLOY_FILE if p.is_dir() else p
    if not p.is_file():
        raise ExportError(f"{p} is missing: not an exported policy folder (write one with `wam export`)")
    try:
        deploy = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{p} is corrupt: not valid JSON ({e})") from e
    if not isinstance(deploy, dict) or deploy.get("format") != DEPLOY_FORMAT:
        found = deploy.get("format") if isinstance(deploy, dict) else type(deploy).__name__
        raise ExportError(f"{p} is not a deploy sidecar (format {found!r}, expected {DEPLOY_FORMAT!r})")
    version = deploy.get("version")
    if not isinstance(version, int) or not 1 <= version <= DEPLOY_VERSION:
        raise ExportError(f"{p} has version {version!r}; this wam reads versions 1..{DEPLOY_VERSION}")
    return deploy


class OnnxPolicy:
    """An exported policy run by onnxruntime on the CPU.

    Args:
        path: the exported folder, or its ``policy.onnx`` (``deploy.json`` must sit beside it).
        threads: onnxruntime intra-op threads (1: the latency-friendly setting for an MLP
            at batch 1; one inter-op thread always).

    Attributes:
        deploy: the sidecar dict (see :func:`sim2real.export.export_policy`).
        obs_dim / action_dim: D and A.

    Call it with obs (N, D) or (D,) (any real dtype, converted to float32) to get actions
    (N, A) or (A,) float32 numpy, in the policy's action units (for legged tasks the joint
    target is ``action_offset + action_scale * clip(action, -action_clip, action_clip)``).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("OnnxPolicy needs onnxruntime: install the export extra "
                              "(bash scripts/setup_venv.sh test,export)") from e
        p = Path(path)
        onnx_path = p / ONNX_FILE if p.is_dir() else p
        if not onnx_path.is_file():
            raise ExportError(f"{onnx_path} is missing: not an exported policy folder (write one with `wam export`)")
        self.path = onnx_path
        self.deploy = read_deploy(onnx_path.parent)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ExportError(f"{onnx_path} is not a loadable ONNX model: {e}") from e
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise ExportError(
                f"{onnx_path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got inputs "
                f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        self.obs_dim, self.action_dim = int(self.deploy["obs_dim"]), int(self.deploy["action_dim"])
        if inputs[0].shape[-1] != self.obs_dim:
            raise ExportError(f"{onnx_path} takes obs of width {inputs[0].shape[-1]}, {DEPLOY_FILE} says {self.obs_dim}")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, D) or (D,) -> actions (N, A) or (A,) float32."""
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must have shape (N, {self.obs_dim}) or ({self.obs_dim},), got {x.shape}")
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x.reshape(-1, self.obs_dim))})[0]
        return out.reshape(*x.shape[:-1], self.action_dim)

    def __repr__(self) -> str:
        return f"OnnxPolicy({str(self.path)!r}, obs_dim={self.obs_dim}, action_dim={self.action_dim})"
