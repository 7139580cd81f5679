"""Tasks: real envs, their observation / action layout, analytic rewards and terminations."""

from __future__ import annotations

import gymnasium as gym

from tasks.base import RewardFn, Task, TerminationFn
from tasks.pendulum import TASK as PENDULUM

TASKS: dict[str, Task] = {t.name: t for t in (PENDULUM,)}


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


__all__ = ["Task", "RewardFn", "TerminationFn", "TASKS", "get_task"]
