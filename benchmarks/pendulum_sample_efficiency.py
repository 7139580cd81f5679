"""Real-env sample efficiency on Pendulum-v1: PPO in imagination vs model-free SB3 PPO and SAC.

    .venv/bin/python benchmarks/pendulum_sample_efficiency.py [--seeds 0] [--out runs/benchmarks/sample_efficiency]

1. ``wam demo`` (the loop with its default config: GRU world model, SB3 PPO trained only in
   imagination) → real steps used, real return of the final policy (20 real episodes).
2. Model-free SB3 PPO (rl-zoo Pendulum settings) and SAC on the real env, evaluated every
   ``--eval-every`` real steps with the same evaluation (20 deterministic real episodes,
   same seeds): the first real-step count at which each reaches -250 (the acceptance
   return) and the imagination policy's own return.
All in one run, on one machine; wall-clock is reported for each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from agents.evaluate import evaluate_policy
from agents.policy import MLPPolicy
from tasks import get_task
from wam.config import load_config
from wam.demo import run_demo

ACCEPTANCE = -250.0


class RealEvaluation(BaseCallback):
    """Every ``every`` real steps: mean return of the deterministic policy over 20 real episodes."""

    def __init__(self, every: int, episodes: int, seed: int):
        super().__init__()
        self.every, self.episodes, self.seed = every, episodes, seed
        self.points: list[tuple[int, float]] = []
        self._next = every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            policy = MLPPolicy.from_sb3(self.model)
            returns = evaluate_policy(policy.act, get_task("pendulum"), episodes=self.episodes, seed=self.seed)
            self.points.append((self.num_timesteps, float(returns.mean())))
        return True


def first_reaching(points: list[tuple[int, float]], threshold: float) -> int | None:
    return next((steps for steps, ret in points if ret >= threshold), None)


def model_free(algo: str, steps: int, every: int, seed: int) -> dict:
    env = make_vec_env("Pendulum-v1", n_envs=4 if algo == "ppo" else 1, seed=seed)
    if algo == "ppo":  # rl-zoo hyperparameters for Pendulum-v1
        model = PPO("MlpPolicy", env, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                    learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4, seed=seed, device="cpu")
    else:  # rl-zoo hyperparameters for Pendulum-v1
        model = SAC("MlpPolicy", env, learning_rate=1e-3, seed=seed, device="cpu")
    callback = RealEvaluation(every, episodes=20, seed=seed + 10_000)
    t0 = time.perf_counter()
    model.learn(steps, callback=callback)
    return {"points": callback.points, "seconds": time.perf_counter() - t0}


def run(seeds: list[int], out: Path, ppo_steps: int, sac_steps: int, every: int) -> dict:
    results: dict = {"seeds": seeds, "torch_threads": torch.get_num_threads(), "runs": []}
    for seed in seeds:
        cfg = load_config([f"run_dir={out / f'demo_seed{seed}'}", f"seed={seed}", "progress=false"])
        t0 = time.perf_counter()
        summary = run_demo(cfg)
        imagined = {"real_steps": summary["real_steps"], "real_return": summary["final_real_mean_return"],
                    "seconds": time.perf_counter() - t0}
        row = {"seed": seed, "imagination": imagined}
        for algo, steps in (("ppo", ppo_steps), ("sac", sac_steps)):
            r = model_free(algo, steps, every, seed)
            r["steps_to_acceptance"] = first_reaching(r["points"], ACCEPTANCE)
            r["steps_to_imagination_return"] = first_reaching(r["points"], imagined["real_return"])
            row[algo] = r
        results["runs"].append(row)
        print(json.dumps({k: v for k, v in row.items()}, default=str)[:2000])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ppo-steps", type=int, default=100_000)
    parser.add_argument("--sac-steps", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sample_efficiency"))
    args = parser.parse_args()
    gym.logger.min_level = 40
    results = run(args.seeds, args.out, args.ppo_steps, args.sac_steps, args.eval_every)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print("| seed | imagination: real steps / real return / wall s | SB3 PPO: steps to -250 / to same return / wall s | SB3 SAC: steps to -250 / to same return / wall s |")
    print("|---|---|---|---|")
    for row in results["runs"]:
        im, ppo, sac = row["imagination"], row["ppo"], row["sac"]
        print(f"| {row['seed']} | {im['real_steps']:,} / {im['real_return']:.1f} / {im['seconds']:.0f} | "
              f"{ppo['steps_to_acceptance']} / {ppo['steps_to_imagination_return']} / {ppo['seconds']:.0f} | "
              f"{sac['steps_to_acceptance']} / {sac['steps_to_imagination_return']} / {sac['seconds']:.0f} |")


if __name__ == "__main__":
    main()
