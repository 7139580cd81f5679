"""Tasks: real envs, their observation / action layout, analytic rewards and terminations."""

from __future__ import annotations

import os

# MuJoCo picks its OpenGL backend when first imported: offscreen EGL unless the user chose one
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from tasks.base import RewardFn, Task, TerminationFn  # noqa: E402
from tasks.gym_mujoco import TASKS as GYM_MUJOCO_TASKS  # noqa: E402
from tasks.pendulum import TASK as PENDULUM  # noqa: E402
from tasks.pusht import PUSHT  # noqa: E402

# Legged velocity tasks on MuJoCo (tasks/locomotion): their real envs are batched torch envs.
ANYMAL_C_FLAT = Task(name="anymal_c_flat", env_id="wam/AnymalC-Flat-v0", max_episode_steps=1000)
G1_FLAT = Task(name="g1_flat", env_id="wam/G1-Flat-v0", max_episode_steps=1000)
TASKS: dict[str, Task] = {t.name: t for t in (PENDULUM, ANYMAL_C_FLAT, G1_FLAT, PUSHT, *GYM_MUJOCO_TASKS)}
LEGGED_TASKS = ("anymal_c_flat", "g1_flat")


def register_real_envs() -> None:
    """Register ``wam/AnymalC-Flat-v0`` and ``wam/G1-Flat-v0`` (idempotent).

    ``gym.make`` gives the numpy single env (it truncates at 20 s itself), ``gym.make_vec``
    the batched torch env; both take ``cfg`` (default: the task's) and ``render_mode``.
    """
    for name in LEGGED_TASKS:
        env_id = TASKS[name].env_id
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point="tasks.locomotion.velocity_env:LeggedVelocityEnv",
                vector_entry_point="tasks.locomotion.velocity_env:LeggedVelocityVecEnv",
                kwargs={"cfg": name},
            )


register_real_envs()


def get_task(name: str) -> Task:
    """The task called ``name``, or a generic task for any registered Gymnasium env id.

    A generic task has no analytic reward or termination: the world model's learned heads
    provide them.
    """
    if name in TASKS:
        return TASKS[name]
    for task in TASKS.values():
        if name == task.env_id:
            return task
    if name not in gym.registry:
        raise KeyError(
            f"unknown task {name!r}: not one of {sorted(TASKS)} and not a registered Gymnasium env id"
        )
    spec = gym.spec(name)
    return Task(name=name, env_id=name, max_episode_steps=spec.max_episode_steps or 1000)


__all__ = ["Task", "RewardFn", "TerminationFn", "TASKS", "LEGGED_TASKS", "get_task", "register_real_envs"]
