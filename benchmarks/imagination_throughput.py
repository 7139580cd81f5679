"""Imagination throughput: imagined env-steps/s vs the real env, latency, FLOP utilisation.

    .venv/bin/python benchmarks/imagination_throughput.py [--model runs/demo/world_model] [--seconds 3]

Measured in one run, on this machine:
- imagined env-steps/s of ``ImaginedVecEnv`` at 1, 256, 4096 envs (RWM GRU 2x256, 5 heads,
  Pendulum task reward) vs Pendulum-v1 in a gymnasium sync vector env (8 envs);
- single-env ``gym.make`` step latency p50 / p99;
- utilisation: model FLOPs per step x steps/s / the fp32 matmul FLOP/s of a 2048^2 matmul;
- bookkeeping: env step time over the bare ``model.imagine`` time at the same batch.
Without ``--model`` it trains a small GRU on freshly collected random Pendulum data first
(speed does not depend on how well the model is trained, divergence resets aside).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from tasks import get_task
from tasks.collect import collect, dataset_meta, make_real_vec_env
from wam_env import ImaginedVecEnv
from world_models import build_model, save_checkpoint
from world_models.data import model_spec_from_data, split_episodes, to_torch
from world_models.training import WorldModelTrainConfig, train_world_model


def timed_rate(fn, seconds: float, per_call: int) -> float:
    """Calls/s of ``fn`` × ``per_call`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * per_call / (time.perf_counter() - t0)


def matmul_flops(seconds: float) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return timed_rate(lambda: torch.mm(a, b), seconds, 2 * 2048**3)


def quick_model(out: Path) -> Path:
    task = get_task("pendulum")
    meta = dataset_meta(task)
    data = collect(task, None, 4000, num_envs=8, progress=False)
    train, val = split_episodes(data, 0.1)
    spec = model_spec_from_data(meta, train, history=32, forecast=8)
    model = build_model("rwm_gru", spec)
    train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=300), progress=False)
    tensors = {f"start/{k}": torch.as_tensor(data[k]) for k in ("obs", "action", "episode")}
    save_checkpoint(model, out, extra={"task": "pendulum"}, tensors=tensors)
    return out


def real_rate(seconds: float, num_envs: int = 8) -> float:
    env = make_real_vec_env(get_task("pendulum"), num_envs, seed=0)
    env.reset(seed=0)
    actions = np.zeros((num_envs, 1), np.float32)
    rate = timed_rate(lambda: env.step(actions), seconds, num_envs)
    env.close()
    return rate


def imagined_rate(model_path: Path, num_envs: int, seconds: float) -> tuple[float, float, float]:
    """(env steps/s, bare model.imagine steps/s, model FLOPs per step) at ``num_envs``."""
    env = ImaginedVecEnv(num_envs, model=str(model_path), device="cpu")
    env.reset(seed=0)
    low, high = env.single_action_space.low, env.single_action_space.high
    actions = torch.as_tensor(np.random.default_rng(0).uniform(low, high, (num_envs, len(low))), dtype=torch.float32)
    env_rate = timed_rate(lambda: env.step(actions), seconds, num_envs)
    model = env.imagination.model
    carry = env.imagination.start(num_envs)

    @torch.no_grad()
    def bare() -> None:
        model.imagine(carry, actions, sample=True, generator=env.imagination.generator)

    bare_rate = timed_rate(bare, seconds, num_envs)
    return env_rate, bare_rate, float(model.flops_per_step())


def single_latency(model_path: Path, steps: int = 3000) -> tuple[float, float]:
    env = gym.make("wam/Pendulum-Imagined-v0", model=str(model_path))
    env.reset(seed=0)
    action = np.zeros(1, np.float32)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, _, term, trunc, _ = env.step(action)
        times.append(time.perf_counter() - t0)
        if term or trunc:
            env.reset()
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run(model_path: Path | None, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = model_path or quick_model(Path(tmp) / "world_model")
        result = {"threads": torch.get_num_threads(), "matmul_gflops": matmul_flops(seconds) / 1e9}
        result["real_steps_per_s"] = real_rate(seconds)
        for n in (1, 256, 4096):
            env_rate, bare_rate, flops = imagined_rate(path, n, seconds)
            result[f"imagined_{n}"] = {
                "env_steps_per_s": env_rate,
                "bare_model_steps_per_s": bare_rate,
                "speedup_vs_real": env_rate / result["real_steps_per_s"],
                "bookkeeping_overhead": bare_rate / env_rate - 1.0,
                "model_gflops_per_s": flops * env_rate / 1e9,
                "utilisation_env": flops * env_rate / (result["matmul_gflops"] * 1e9),
                "utilisation_bare_model": flops * bare_rate / (result["matmul_gflops"] * 1e9),
            }
        result["flops_per_step"] = flops
        result["single_env_latency_ms_p50"], result["single_env_latency_ms_p99"] = single_latency(path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="world-model checkpoint folder (default: train a quick one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/imagination_throughput.json"))
    args = parser.parse_args()
    result = run(args.model, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"machine: {torch.get_num_threads()} torch threads, fp32 2048^2 matmul {result['matmul_gflops']:.1f} GFLOP/s")
    print(f"real Pendulum-v1 (gymnasium sync vector, 8 envs): {result['real_steps_per_s']:,.0f} env-steps/s")
    print(f"model FLOPs per env-step: {result['flops_per_step'] / 1e6:.2f} MFLOP")
    print("| envs | imagined env-steps/s | x real | bare model steps/s | bookkeeping | utilisation (env / bare) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (1, 256, 4096):
        r = result[f"imagined_{n}"]
        print(f"| {n} | {r['env_steps_per_s']:,.0f} | {r['speedup_vs_real']:.1f} | {r['bare_model_steps_per_s']:,.0f} | "
              f"{100 * r['bookkeeping_overhead']:.1f}% | {100 * r['utilisation_env']:.0f}% / {100 * r['utilisation_bare_model']:.0f}% |")
    print(f"single env (gym.make) step latency: p50 {result['single_env_latency_ms_p50']:.3f} ms, p99 {result['single_env_latency_ms_p99']:.3f} ms")


if __name__ == "__main__":
    main()
