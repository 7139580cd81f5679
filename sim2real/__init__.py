"""Sim-to-real: validation across backends and randomized dynamics, export with parity checks.

``sim2real.validate(policy, task, backends=[...])`` is :func:`sim2real.validate.validate`
(the submodule is callable), imported on first use: the Isaac Lab worker imports the
numpy-only modules of this package (``metrics_np``, ``joint_map``) in a Python without mujoco.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "validate":
        return importlib.import_module("sim2real.validate")
    raise AttributeError(f"module 'sim2real' has no attribute {name!r}")
