"""Shared fixtures: small real Pendulum datasets, built once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: offscreen rendering

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: one torch thread is faster and immune to oversubscribed cores.
    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pendulum_transitions() -> dict[str, np.ndarray]:
    """3000 real Pendulum-v1 transitions (random policy, 6 envs, 15 episodes)."""
    from tasks import get_task
    from tasks.collect import collect

    return collect(get_task("pendulum"), None, 3000, num_envs=6, seed=0, progress=False)
