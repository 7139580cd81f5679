"""Env-steps/s of the MuJoCo legged envs (ANYmal C, G1) at 1, 64 and 512 envs.

    python benchmarks/legged_throughput.py [--envs 1 64 512] [--seconds 5] [--threads 1 2]

One env step is one policy step (4 physics steps of 5 ms, PD at 200 Hz, rewards, commands,
observations). Actions are Gaussian (std 0.3, the spread of a half-trained policy) so robots
move, fall and reset as in training. ``physics`` is the share of wall time spent inside the
worker threads (mj_step plus copying MjData rows); the rest is the batched torch side
(terms, commands, observations, resets). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from tasks.locomotion.velocity_env import LeggedVelocityVecEnv


def measure(task: str, num_envs: int, threads: int, seconds: float) -> tuple[float, float]:
    env = LeggedVelocityVecEnv(task, num_envs=num_envs, num_threads=threads)
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    action = lambda: (0.3 * torch.randn(num_envs, env.num_joints, generator=gen)).clamp(-10, 10)  # noqa: E731
    for _ in range(3):
        env.step(action())
    physics = 0.0
    inner = env._physics_step

    def timed() -> None:
        nonlocal physics
        t = time.perf_counter()
        inner()
        physics += time.perf_counter() - t

    env._physics_step = timed
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(action())
        steps += 1
    wall = time.perf_counter() - start
    env.close()
    return steps * num_envs / wall, physics / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["anymal_c_flat", "g1_flat"])
    parser.add_argument("--envs", nargs="+", type=int, default=[1, 64, 512])
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| task | envs | threads | env-steps/s | physics share |")
    print("|---|---:|---:|---:|---:|")
    for task in args.tasks:
        for n in args.envs:
            for threads in args.threads:
                rate, share = measure(task, n, threads, args.seconds)
                print(f"| {task} | {n} | {threads} | {rate:,.0f} | {share:.0%} |", flush=True)


if __name__ == "__main__":
    main()
