"""``wam demo``: the whole loop on a small task, ending in ``<run_dir>/report.md`` + PNG plots.

1. collect real steps with a random policy;
2. train the dual-autoregressive GRU world model on them;
3. train a policy with PPO inside imagination only;
4. (later rounds: collect with that policy plus noise, retrain model and policy);
5. evaluate the policy and a random policy on the real env;
6. train the MLP-ensemble baseline on the same data and compare open-loop error vs horizon;
7. write the report: results table, imagined vs real trajectories from the same start and
   actions, error vs horizon, learning curve.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from agents.evaluate import evaluate_policy, rollout_real
from tasks.collect import make_real_vec_env, random_policy, with_noise
from wam import loop
from wam.config import load_config
from wam.report import plot_error_vs_horizon, plot_learning_curve, plot_trajectories, write_report
from world_models.data import split_episodes, to_torch
from world_models.training import open_loop_error, open_loop_rollout


def _keep_previous(run_dir: Path) -> Path | None:
    """Move an earlier run out of the way (never delete it); return where it went."""
    if not run_dir.exists():
        return None
    moved = run_dir.with_name(f"{run_dir.name}-{datetime.now():%Y%m%d-%H%M%S}")
    shutil.move(str(run_dir), moved)
    return moved


def run_demo(cfg: dict[str, Any]) -> dict[str, Any]:
    run_dir = Path(cfg["run_dir"])
    moved = _keep_previous(run_dir)
    if moved:
        print(f"earlier run moved to {moved}")
    run_dir.mkdir(parents=True)
    task = loop.task_of(cfg)
    d = cfg["demo"]
    t_start = time.perf_counter()
    seconds: dict[str, float] = {"collect": 0.0, "train_model": 0.0, "train_policy": 0.0, "evaluate": 0.0}
    rounds: list[dict[str, Any]] = []

    t0 = time.perf_counter()
    store = loop.run_collect(cfg)
    seconds["collect"] += time.perf_counter() - t0
    space = make_real_vec_env(task, 1).single_action_space
    policy = None
    for r in range(int(d["rounds"])):
        if r > 0:
            t0 = time.perf_counter()
            noisy = with_noise(policy.act, space, float(d["noise"]), seed=int(cfg["seed"]) + r)
            store = loop.run_collect(cfg, policy=noisy, steps=int(d["round_steps"]), seed_offset=r)
            seconds["collect"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        model, model_metrics = loop.run_train_model(cfg, log_name=f"world_model_round{r}")
        seconds["train_model"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        policy, curve = loop.run_train_policy(cfg, log_name=f"policy_round{r}")
        seconds["train_policy"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        real = evaluate_policy(policy.act, task, episodes=int(cfg["evaluate"]["episodes"]), seed=int(cfg["seed"]) + 10_000)
        seconds["evaluate"] += time.perf_counter() - t0
        rounds.append({"round": r, "real_steps": len(store), "model": model_metrics, "curve": curve,
                       "real_mean_return": float(real.mean()), "real_std_return": float(real.std())})
        print(f"round {r}: {len(store)} real steps, real return {real.mean():.1f} ± {real.std():.1f}")

    random_returns = evaluate_policy(random_policy(space, int(cfg["seed"])), task, episodes=int(cfg["evaluate"]["episodes"]), seed=int(cfg["seed"]) + 10_000)

    # Baseline world model on the same data: the probabilistic MLP ensemble.
    t0 = time.perf_counter()
    ens_cfg = {**cfg, "model": load_config([f"task={cfg['task']}", "model=mlp_ensemble"])["model"],
               "paths": {**cfg["paths"], "model": str(run_dir / "world_model_mlp_ensemble")}}
    ensemble, ensemble_metrics = loop.run_train_model(ens_cfg, log_name="world_model_mlp_ensemble")
    seconds["train_baseline_model"] = time.perf_counter() - t0

    data = store.load()
    _, val = split_episodes(data, float(cfg["model"]["val_fraction"]), seed=int(cfg["seed"]))
    val_t = to_torch(val, cfg["device"])
    horizon = int(d["prediction_error_horizon"])
    history = int(cfg["model"]["history"])
    errors = {
        "GRU (dual-autoregressive)": open_loop_error(model, val_t, history, horizon, num_windows=256, seed=0).cpu().numpy(),
        "MLP ensemble": open_loop_error(ensemble, val_t, history, horizon, num_windows=256, seed=0).cpu().numpy(),
    }

    # Imagined vs real from the same start and actions: a real episode of the trained policy
    # with the collection noise (so the dynamics are excited), the model warmed up on its
    # first M real steps, then open loop (no correction) for the error plot's horizon.
    noisy = with_noise(policy.act, space, float(d["noise"]), seed=int(cfg["seed"]) + 20_000)
    real_ep = rollout_real(noisy, task, seed=int(cfg["seed"]) + 20_000, steps=task.max_episode_steps)
    obs = torch.as_tensor(real_ep["obs"], dtype=torch.float32, device=cfg["device"])
    act = torch.as_tensor(real_ep["actions"], dtype=torch.float32, device=cfg["device"])
    m = min(history, len(act) - 1)
    h = min(horizon, len(act) - m)
    prev_act = torch.cat([torch.zeros_like(act[:1]), act[:m]])
    with torch.no_grad():
        imagined = open_loop_rollout(model, obs[None, : m + 1], prev_act[None], act[None, m : m + h])[0].cpu().numpy()
    real_window = real_ep["obs"][m + 1 : m + 1 + h]

    plots = {
        "trajectories": plot_trajectories(real_window, imagined, run_dir / "imagined_vs_real.png", f"{task.name} (after {m} real steps of warm-up)"),
        "error": plot_error_vs_horizon(errors, run_dir / "error_vs_horizon.png"),
        "curve": plot_learning_curve(rounds, run_dir / "learning_curve.png"),
    }
    seconds["total"] = time.perf_counter() - t_start
    summary = {
        "task": task.name,
        "env_id": task.env_id,
        "real_steps": len(store),
        "final_real_mean_return": rounds[-1]["real_mean_return"],
        "final_real_std_return": rounds[-1]["real_std_return"],
        "random_mean_return": float(random_returns.mean()),
        "eval_episodes": int(cfg["evaluate"]["episodes"]),
        "rounds": rounds,
        "gru_metrics": rounds[-1]["model"],
        "ensemble_metrics": ensemble_metrics,
        "error_vs_horizon": {k: v.tolist() for k, v in errors.items()},
        "seconds": seconds,
        "config": cfg,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    report = write_report(summary, plots, run_dir / "report.md")
    print(report.split("## Plots")[0])
    print(f"report: {run_dir / 'report.md'}")
    return summary
