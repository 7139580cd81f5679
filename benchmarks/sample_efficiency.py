"""Sample efficiency: MBPO vs stable-baselines3 SAC, real return vs real env steps, same seeds.

    python benchmarks/sample_efficiency.py task=inverted_pendulum seeds=3 sac_steps=20000
    python benchmarks/sample_efficiency.py task=hopper seeds=1 agent.params.total_steps=20000 agent.params.utd=5 agents=mbpo

Keys of the benchmark itself: ``seeds`` (count, from 0), ``agents`` (``mbpo,sac``),
``sac_steps`` (real steps of the SAC baseline; default: MBPO's ``total_steps``),
``threshold`` (return that counts as solved; default per task), ``out`` (folder; default
``runs/sample_efficiency/<task>[_<model>]``). Every other ``key=value`` is a config override
as in the CLI (``model=rwm_gru``, ``agent.params.utd=10``, ...).

The SAC baseline is SB3's SAC with MBPO's SAC settings (learning rate, batch, network,
gamma, tau, random warm-up ``init_steps``), one gradient step per real step, SB3's automatic
entropy target (-A) and only real data. Both evaluate the deterministic policy on the real env
every ``agent.params.eval_every`` steps (``eval_episodes`` episodes) and log
``Eval/real_return`` into ``<out>/tb/<agent>_seed<k>``: ``tensorboard --logdir <out>/tb``
draws MBPO and SAC on one chart. Results: ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents import mbpo  # noqa: E402
from wam import loop  # noqa: E402
from wam.cli import _config  # noqa: E402

THRESHOLDS = {"inverted_pendulum": 950.0, "hopper": 2500.0, "halfcheetah": 5000.0}
BENCH_KEYS = ("seeds", "agents", "sac_steps", "threshold", "out")


def steps_to(curve: dict[str, list[float]], threshold: float) -> int | None:
    """First evaluated real step whose mean return reaches ``threshold`` (None: never)."""
    for s, r in zip(curve["steps"], curve["mean_return"]):
        if r >= threshold:
            return int(s)
    return None


def main(argv: list[str]) -> int:
    bench = {k: v for k, v in (a.split("=", 1) for a in argv if "=" in a) if k in BENCH_KEYS}
    overrides = [a for a in argv if a.split("=", 1)[0] not in BENCH_KEYS]
    cfg = _config("train-policy", ["agent=mbpo", "progress=false", *overrides])
    task = loop.task_of(cfg)
    seeds = int(bench.get("seeds", 3))
    agents = bench.get("agents", "mbpo,sac").split(",")
    base_cfg = loop.mbpo_config(cfg)
    sac_steps = int(bench.get("sac_steps", base_cfg.total_steps))
    threshold = float(bench.get("threshold", THRESHOLDS.get(task.name, float("inf"))))
    suffix = "" if cfg["model"]["name"] == "mlp_ensemble" else f"_{cfg['model']['name']}"
    out = Path(bench.get("out", f"runs/sample_efficiency/{task.name}{suffix}"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results: list[dict] = []
    for seed in range(seeds):
        for agent in agents:
            steps = base_cfg.total_steps if agent == "mbpo" else sac_steps
            agent_cfg = dataclasses.replace(base_cfg, seed=seed, total_steps=steps, buffer_size=max(base_cfg.buffer_size, steps + 1))
            kwargs = loop.mbpo_model_kwargs({**cfg, "seed": seed}, str(out / "tb" / f"{agent}_seed{seed}"))
            t0 = time.perf_counter()
            result = mbpo.train(task, agent_cfg, model_based=agent == "mbpo", **kwargs)
            h = result.history
            row = {"agent": agent, "seed": seed, "model": cfg["model"]["name"] if agent == "mbpo" else None,
                   "real_steps": steps, "utd": agent_cfg.utd if agent == "mbpo" else 1,
                   "wall_seconds": time.perf_counter() - t0, "curve": h["curve"],
                   "final_return": h["curve"]["mean_return"][-1], "best_return": max(h["curve"]["mean_return"]),
                   "steps_to_threshold": steps_to(h["curve"], threshold),
                   "model_seconds": float(np.sum(h.get("model_seconds", []))),
                   "rollout_seconds": float(np.sum(h.get("rollout_seconds", [])))}
            results.append(row)
            print(f"{task.name} {agent} seed {seed}: final {row['final_return']:.1f}, best {row['best_return']:.1f}, "
                  f"steps to {threshold:g}: {row['steps_to_threshold']}, {row['wall_seconds']:.0f} s", flush=True)
            (out / "results.json").write_text(json.dumps({
                "task": task.name, "threshold": threshold, "machine": f"{platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
                "config": {"agent": dataclasses.asdict(base_cfg), "model": cfg["model"]}, "runs": results,
            }, indent=1).replace("NaN", "null"))
    write_table(out, task.name, threshold, results)
    return 0


def write_table(out: Path, task: str, threshold: float, results: list[dict]) -> None:
    """``results.md``: per agent and seed, return at shared step marks, steps to threshold, wall-clock."""
    marks = sorted({s for r in results for s in r["curve"]["steps"]})
    marks = [m for m in marks if all(m <= r["real_steps"] for r in results if r["agent"] == "mbpo")] or marks
    marks = marks[:: max(1, len(marks) // 8)]
    lines = [f"| {task} | seed | " + " | ".join(f"{m // 1000 if m >= 1000 and m % 1000 == 0 else m}{'k' if m >= 1000 and m % 1000 == 0 else ''}" for m in marks)
             + f" | steps to {threshold:g} | wall-clock |", "|" + "---|" * (len(marks) + 4)]
    for r in results:
        by_step = dict(zip(r["curve"]["steps"], r["curve"]["mean_return"]))
        cells = " | ".join(f"{by_step[m]:.0f}" if m in by_step else "" for m in marks)
        lines.append(f"| {r['agent']}{' (' + r['model'] + ')' if r['model'] else ''} | {r['seed']} | {cells} | "
                     f"{r['steps_to_threshold'] or '—'} | {r['wall_seconds'] / 60:.1f} min |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
