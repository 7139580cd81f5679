"""Exported policy: parity, CPU latency per step, and the ONNX controller on MuJoCo.

    OMP_NUM_THREADS=1 python benchmarks/export_latency.py [--policy runs/anymal_ppo/policy]
        [--task anymal_c_flat] [--steps 2000] [--calls 5000] [--episodes 100] [--seed 0]

1. Policy: the folder ``--policy`` if it exists, else a random ``MLPPolicy`` with rsl-rl's
   default actor for the task (obs D -> [128, 128, 128] elu -> J, D and J from the task's env).
2. Parity: ``--steps`` observations recorded by rolling the policy on MuJoCo
   (``record_observations``), max |exported - MLPPolicy.act| per format (``export_policy``).
3. Latency: batch 1, one thread everywhere (onnxruntime intra-op 1, ``torch.set_num_threads(1)``),
   ``--calls`` calls cycling through the recorded observations after 200 warm-up calls;
   median and 99th percentile in µs per call.
4. Deployment check: ``deployment_check`` scores the torch policy and the ONNX file run by
   :class:`OnnxPolicy` (no torch on the action path) on ``--episodes`` robots, same seed.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from agents.policy import MLPPolicy
from sim2real.export import deployment_check, export_policy, record_observations
from sim2real.onnx_policy import OnnxPolicy


def make_policy(folder: Path, task: str, seed: int) -> tuple[MLPPolicy, str]:
    if folder.is_dir():
        return MLPPolicy.load(folder), f"policy folder {folder}"
    from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

    env = LeggedVelocityVecEnv(task, num_envs=1, num_threads=1)
    obs_dim, joints, limit = env.single_observation_space.shape[0], env.num_joints, env.cfg.action_limit
    env.close()
    torch.manual_seed(seed)
    policy = MLPPolicy(obs_dim, joints, [-limit] * joints, [limit] * joints, hidden=(128, 128, 128), activation="elu",
                       source="random")
    return policy.eval(), f"random MLPPolicy {obs_dim} -> [128, 128, 128] elu -> {joints} ({folder} absent)"


def latency_us(call: Callable[[int], object], calls: int) -> tuple[float, float]:
    """Median and 99th percentile µs of ``call(i)`` over ``calls`` calls (after 200 warm-up)."""
    for i in range(200):
        call(i)
    times = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter_ns()
        call(i)
        times[i] = time.perf_counter_ns() - t
    return float(np.median(times)) / 1e3, float(np.percentile(times, 99)) / 1e3


def run(args: argparse.Namespace, out: Path) -> None:
    policy, what = make_policy(args.policy, args.task, args.seed)
    print(f"policy: {what}\n")
    obs = record_observations(policy, args.task, args.steps, args.seed)
    result = export_policy(policy, out, args.task, formats=("onnx", "torchscript", "torch_export"), check_obs=obs)
    print(f"### Parity on {len(obs)} recorded {args.task} observations (max |exported - MLPPolicy.act|)\n")
    print("| format | max abs diff |\n|---|---:|")
    for fmt, diff in result["parity"].items():
        print(f"| {fmt} | {diff:.2e} |")

    rows = [obs[i : i + 1] for i in range(len(obs))]
    tensors = [torch.from_numpy(r) for r in rows]
    n = len(rows)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(out / "policy.onnx"), options, providers=["CPUExecutionProvider"])
    onnx_policy = OnnxPolicy(out)
    scripted = torch.jit.load(str(out / "policy.pt"))
    program = torch.export.load(str(out / "policy.pt2")).module()
    runs: dict[str, Callable[[int], object]] = {
        "onnxruntime `session.run` (numpy in / out)": lambda i: session.run(["actions"], {"obs": rows[i % n]}),
        "`OnnxPolicy.__call__` (shape check + session.run)": lambda i: onnx_policy(rows[i % n]),
        "TorchScript `policy.pt` (tensor in / out)": lambda i: scripted(tensors[i % n]),
        "torch.export `policy.pt2` (tensor in / out)": lambda i: program(tensors[i % n]),
        "plain torch `MLPPolicy.forward` (tensor in / out)": lambda i: policy(tensors[i % n]),
        "plain torch `MLPPolicy.act` (numpy in / out)": lambda i: policy.act(rows[i % n]),
    }
    print(f"\n### CPU latency per step, batch 1, 1 thread ({args.calls} calls)\n")
    print("| runtime | median µs | p99 µs |\n|---|---:|---:|")
    with torch.inference_mode():
        for name, call in runs.items():
            median, p99 = latency_us(call, args.calls)
            print(f"| {name} | {median:.1f} | {p99:.1f} |")

    if args.episodes < 1:
        return
    start = time.perf_counter()
    scores = deployment_check(policy, out, args.task, episodes=args.episodes, seed=args.seed)
    print(f"\n### Deployment check: {args.episodes} MuJoCo robots, seed {args.seed}, one command vx ~ U(0.5, 1.0) m/s each "
          f"({time.perf_counter() - start:.0f} s)\n")
    print("| metric | torch MLPPolicy | ONNX via OnnxPolicy | abs diff |\n|---|---:|---:|---:|")
    for k, diff in scores["abs_diff"].items():
        print(f"| {k} | {scores['torch'][k]:.6f} | {scores['onnx'][k]:.6f} | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=Path("runs/anymal_ppo/policy"))
    parser.add_argument("--task", default="anymal_c_flat")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="wam-export-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
