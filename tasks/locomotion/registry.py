"""Velocity-task configs by name (imported lazily: the robot builders need the assets)."""

from __future__ import annotations

from tasks.locomotion.config import VelocityEnvCfg


def env_cfg(name: str) -> VelocityEnvCfg:
    """The :class:`VelocityEnvCfg` of ``anymal_c_flat`` or ``g1_flat``."""
    if name == "anymal_c_flat":
        from tasks.anymal_c_flat import ENV_CFG
    elif name == "g1_flat":
        from tasks.g1_flat import ENV_CFG
    else:
        raise KeyError(f"unknown legged task {name!r}; available: ['anymal_c_flat', 'g1_flat']")
    return ENV_CFG
