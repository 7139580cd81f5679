"""Open-loop prediction error of the state world models on real Pendulum data.

Trains, with the same number of gradient steps and batch size, the dual-autoregressive GRU
(RWM, N = 8 forecast steps), the same GRU teacher-forced (N = 1) and the PETS / MBPO MLP
ensemble on random-policy Pendulum transitions, then measures the RMSE of open-loop
predictions (warm-up on real history, then imagination with the real actions, mean
prediction) against held-out episodes, per horizon step, in the obs-normalizer's units.
A zero-delta baseline (observation held constant) gives the scale.

    python benchmarks/prediction_error.py --steps 800 --out runs/benchmarks/prediction_error

writes ``prediction_error.json`` and ``prediction_error.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from tasks import get_task
from tasks.collect import collect
from world_models import ModelSpec, Prediction, WorldModel, WorldModelTrainConfig, build_model
from world_models import open_loop_error, train_world_model
from world_models.data import split_episodes, to_torch

TABLE_HORIZONS = (1, 2, 4, 8, 16, 32, 64)


class ZeroDelta(WorldModel):
    """Baseline that predicts no change; errors in ``model``'s obs-normalizer units."""

    def __init__(self, model: WorldModel):
        super().__init__()
        self.spec, self.obs_normalizer = model.spec, model.obs_normalizer
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def initial(self, batch: int) -> dict[str, torch.Tensor]:
        return {"obs": torch.zeros(batch, self.spec.obs_dim)}

    def observe(self, carry, obs, prev_action, is_first):
        return {"obs": obs}

    def imagine(self, carry, action, *, sample=True):
        return carry, Prediction(obs=carry["obs"], uncertainty=torch.zeros(action.shape[0]))


def run(
    steps: int = 800,
    train_transitions: int = 10_000,
    test_transitions: int = 4_000,
    history: int = 8,
    forecast: int = 8,
    horizon: int = 64,
    num_windows: int = 512,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect data, train the three models with equal budgets, measure open-loop RMSE.

    Returns ``{"config": ..., "models": {label: {"rmse": [horizon floats], "train_seconds",
    "steps", "best_step", "val_*", ...}}, "zero_delta_rmse": [...], "table_horizons": [...]}``.
    """
    task = get_task("pendulum")
    data = collect(task, None, train_transitions, num_envs=8, seed=seed, progress=progress)
    test = to_torch(collect(task, None, test_transitions, num_envs=20, seed=seed + 1000, progress=progress))
    train, val = (to_torch(d) for d in split_episodes(data, 0.1, seed=seed))
    bounds = {"obs_dim": 3, "action_dim": 1, "action_low": (-2.0,), "action_high": (2.0,), "dt": 0.05}
    runs = {
        f"rwm_gru_N{forecast}": ("rwm_gru", ModelSpec(**bounds, history=history, forecast=forecast)),
        "rwm_gru_N1 (teacher forced)": ("rwm_gru", ModelSpec(**bounds, history=history, forecast=1)),
        "mlp_ensemble": ("mlp_ensemble", ModelSpec(**bounds, history=0, forecast=1)),
    }
    cfg = WorldModelTrainConfig(batch_size=batch_size, max_steps=steps, seed=seed)
    results: dict[str, Any] = {"models": {}}
    model = None
    for label, (name, spec) in runs.items():
        torch.manual_seed(seed)
        model = build_model(name, spec)
        metrics = train_world_model(model, train, val, cfg, progress=progress)
        rmse = open_loop_error(model, test, history=history, horizon=horizon, num_windows=num_windows, seed=seed)
        results["models"][label] = {"model": name, "config": model.config(), **metrics, "rmse": rmse.tolist()}
    base = open_loop_error(ZeroDelta(model), test, history=history, horizon=horizon, num_windows=num_windows, seed=seed)
    results["zero_delta_rmse"] = base.tolist()
    results["table_horizons"] = [h for h in TABLE_HORIZONS if h <= horizon]
    results["config"] = {
        "steps": steps, "batch_size": batch_size, "train_transitions": len(train["reward"]),
        "val_transitions": len(val["reward"]), "test_transitions": len(test["reward"]), "history": history,
        "forecast": forecast, "horizon": horizon, "num_windows": num_windows, "seed": seed,
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    return results


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: RMSE at the table horizons and training time per model."""
    hs = results["table_horizons"]
    lines = ["| model | " + " | ".join(f"h={h}" for h in hs) + " | train s | steps |", "|---" * (len(hs) + 3) + "|"]
    rows = [(label, r["rmse"], f"{r['train_seconds']:.0f}", f"{r['steps']:.0f}") for label, r in results["models"].items()]
    rows.append(("zero-delta baseline", results["zero_delta_rmse"], "-", "-"))
    for label, rmse, secs, steps in rows:
        lines.append(f"| {label} | " + " | ".join(f"{rmse[h - 1]:.4f}" for h in hs) + f" | {secs} | {steps} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = {label: r["rmse"] for label, r in results["models"].items()} | {"zero-delta": results["zero_delta_rmse"]}
    for label, rmse in curves.items():
        ax.plot(range(1, len(rmse) + 1), rmse, label=label, linestyle=":" if label == "zero-delta" else "-")
    ax.set(xscale="log", yscale="log", xlabel="horizon (steps of 0.05 s)", ylabel="RMSE (normalized obs units)")
    ax.set_title("Pendulum open-loop prediction error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="gradient steps per model")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/prediction_error"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(steps=args.steps, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prediction_error.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "prediction_error.png")
    print(format_table(results))
    print(f"wrote {args.out / 'prediction_error.json'} and {args.out / 'prediction_error.png'}")


if __name__ == "__main__":
    main()
