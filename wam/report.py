"""Plots (PNG, matplotlib Agg) and the Markdown report of a ``wam demo`` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_trajectories(real: np.ndarray, imagined: np.ndarray, out: Path, title: str) -> Path:
    """Real vs imagined observations (T, D) from the same start and actions, one panel per dim."""
    t = np.arange(1, len(real) + 1)
    dims = real.shape[1]
    fig, axes = plt.subplots(dims, 1, figsize=(8, 1.8 * dims + 0.6), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, real[:, i], label="real", color="black", lw=1.5)
        ax.plot(t, imagined[: len(t), i], label="imagined (open loop)", color="tab:orange", lw=1.2, ls="--")
        ax.set_ylabel(f"obs[{i}]")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[0, 0].set_title(f"{title}: imagined vs real, same start and actions", fontsize=10)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_error_vs_horizon(errors: dict[str, np.ndarray], out: Path) -> Path:
    """Open-loop RMSE (normalized units) vs horizon for each model, log-log."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, err in errors.items():
        ax.plot(np.arange(1, len(err) + 1), err, label=name, lw=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("horizon (steps)")
    ax.set_ylabel("open-loop RMSE (normalized)")
    ax.set_title("Prediction error vs horizon (held-out episodes)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_learning_curve(rounds: list[dict[str, Any]], out: Path) -> Path:
    """Imagined episode return vs imagined env steps (each round's PPO run, end to end) and the
    real return after each round."""
    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for r in rounds:
        curve = r["curve"]
        x = offset + np.asarray(curve["timesteps"], dtype=float)
        ax.plot(x, curve["mean_return"], color="tab:blue", lw=1.2,
                label="imagined return (PPO inside the world model)" if r["round"] == 0 else None)
        offset = x[-1] if len(x) else offset
        ax.errorbar([offset], [r["real_mean_return"]], yerr=[r["real_std_return"]], fmt="o", color="tab:red",
                    label="real return of the policy (real env)" if r["round"] == 0 else None)
    ax.set_xlabel("imagined env steps")
    ax.set_ylabel("episode return")
    ax.set_title("Policy trained only in imagination")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(summary: dict[str, Any], plots: dict[str, Path], out: Path) -> str:
    """Write the Markdown report; return its text."""
    s = summary
    errs = s["error_vs_horizon"]
    hs = [h for h in (1, 8, 16, 32, 64) if h <= len(next(iter(errs.values())))]
    lines = [
        f"# wam demo: {s['task']} ({s['env_id']})",
        "",
        "The whole loop: real env → dataset → world model → PPO in imagination only → real evaluation.",
        "",
        "## Results",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| real env steps used (all rounds) | {s['real_steps']:,} |",
        f"| policy trained in imagination, real return | **{s['final_real_mean_return']:.1f} ± {s['final_real_std_return']:.1f}** ({s['eval_episodes']} real episodes) |",
        f"| random policy, real return | {s['random_mean_return']:.1f} |",
    ]
    for r in s["rounds"]:
        lines.append(f"| round {r['round']}: real steps / real return | {r['real_steps']:,} / {r['real_mean_return']:.1f} ± {r['real_std_return']:.1f} |")
    g = s["gru_metrics"]
    for key in sorted(k for k in g if isinstance(g[k], (int, float)) and k.startswith("val")):
        lines.append(f"| GRU world model {key} | {g[key]:.4g} |")
    for name, secs in s["seconds"].items():
        lines.append(f"| wall-clock {name} | {secs:.0f} s |")
    lines += [
        "",
        "Open-loop prediction error (RMSE in normalized units, held-out episodes):",
        "",
        "| model | " + " | ".join(f"H={h}" for h in hs) + " |",
        "|---|" + "---:|" * len(hs),
    ]
    for name, err in errs.items():
        lines.append(f"| {name} | " + " | ".join(f"{err[h - 1]:.4f}" for h in hs) + " |")
    lines += ["", "## Plots", ""]
    captions = {"trajectories": "Imagined vs real trajectory", "error": "Error vs horizon", "curve": "Learning curve"}
    for key, path in plots.items():
        lines += [f"### {captions.get(key, key)}", "", f"![{key}]({Path(path).name})", ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text
