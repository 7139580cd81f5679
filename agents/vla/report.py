"""Report of a VLA post-training run: report.md, PNG plots and GIFs (written into the run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_gif(path: Path, video: np.ndarray, fps: int = 10, scale: int = 2) -> Path:
    """A (N, T, H, W, 3) uint8 batch of videos side by side as one GIF (frames upscaled by ``scale``)."""
    import imageio.v2 as imageio

    frames = np.concatenate(list(video), axis=2)  # (T, H, N * W, 3)
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    return path


def write_report(run: Path, results: dict[str, Any], videos: dict[str, np.ndarray | None]) -> dict[str, str]:
    """Plots (success before / after, imagined vs real success per iteration), GIFs and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    algos = results["algos"]
    before = results["before"]
    names = list(before["per_variant"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / (1 + len(algos))
    x = np.arange(len(names) + 1)
    bars = [("before (warm start)", before)] + [(f"after {a}", r["after"]) for a, r in algos.items()]
    for k, (label, s) in enumerate(bars):
        vals = [s["per_variant"][n] for n in names] + [s["success_rate"]]
        ax.bar(x + k * width, vals, width, label=label)
    ax.set_xticks(x + width * len(algos) / 2, names + ["all"], rotation=20)
    ax.set_ylabel("real success rate")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "success_before_after.png", dpi=100)
    plt.close(fig)
    files["success_before_after"] = str(run / "success_before_after.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for a, r in algos.items():
        h = r["history"]
        line, = ax.plot([e["iteration"] for e in h], [e["imagined_success"] for e in h], label=f"{a}: imagined (training rollouts)")
        checks = [e for e in h if "real_success" in e]
        ax.plot([e["iteration"] for e in checks], [e["real_success"] for e in checks], "o-", color=line.get_color(),
                label=f"{a}: real (checks)")
        ax.plot([e["iteration"] for e in checks], [e["paired_imagined_success"] for e in checks], "x--",
                color=line.get_color(), label=f"{a}: imagined, same starts")
    ax.axhline(before["success_rate"], color="gray", ls=":", label="warm start, real")
    ax.set_xlabel("post-training iteration")
    ax.set_ylabel("success rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "imagined_vs_real.png", dpi=100)
    plt.close(fig)
    files["imagined_vs_real"] = str(run / "imagined_vs_real.png")

    for key, video in videos.items():
        if video is not None and len(video):
            files[key] = str(write_gif(run / f"{key}.gif", np.asarray(video)))

    c = results["success_calibration"]
    t = results["timing"]
    lines = ["# VLA post-training in the pixel world model (Push-T, language variants)", "",
             f"World model: `{results['config']['model']}`; torch threads: {results['torch_threads']}.", "",
             "| policy | real success (deterministic chunk) | " + " | ".join(names) + " | mean steps | sampled chunks |",
             "|---" * (len(names) + 4) + "|"]
    for label, s in bars:
        lines.append(f"| {label} | {s['success_rate']:.2f} ({s['episodes']} ep.) | "
                     + " | ".join(f"{s['per_variant'][n]:.2f}" for n in names)
                     + f" | {s['mean_steps']:.0f} | {s['sampled_success_rate']:.2f} |")
    lines += ["", f"Success heads on held-out real episodes ({int(c['pairs'])} frame x instruction pairs, "
              f"{int(c['positives'])} positive): precision {c['precision']:.3f}, recall {c['recall']:.3f}, "
              f"accuracy {c['accuracy']:.3f}, flagged {c['flagged_rate']:.3f}, distance MAE {c['distance_mae']:.1f}.", ""]
    for a, r in algos.items():
        rate = r["imagined_false_success_rate"]
        lines.append(f"- {a}: imagined successes at the real checks {r['imagined_successes_checked']}, of which real "
                     f"failures {r['imagined_false_successes']} (rate {'n/a' if rate != rate else f'{rate:.2f}'}); "
                     f"post-training {r['post_train_s']:.0f} s; world-model refinements {len(r['refinements'])}"
                     + (f"; kept the policy after {r['kept']['updates']} updates (real check {r['kept']['real_success']:.2f})."
                        if r.get("kept") else "."))
    paired = [(label, s["paired"]) for label, s in bars if s.get("paired")]
    if paired:
        lines += ["", "The evaluation episodes imagined again (same first frames, instructions and policy; "
                  f"{results['config']['post_train']['decisions']} calls):", "",
                  "| policy | imagined success | real success within the horizon | imagined successes | of them real failures "
                  "| the model's T in the region too | of them real failures |", "|---" * 7 + "|"]
        for label, p in paired:
            lines.append(f"| {label} | {p['paired_imagined_success']:.2f} | {p['real_success_within_horizon']:.2f} | "
                         f"{p['imagined_successes']} | {p['imagined_false_success']} | "
                         f"{p.get('imagined_successes_pose_agrees', '–')} | {p.get('imagined_false_success_pose_agrees', '–')} |")
    lines += ["", "Wall-clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()), "",
              "![](success_before_after.png)", "", "![](imagined_vs_real.png)", ""]
    lines += [f"- `{Path(v).name}`" for k, v in files.items() if v.endswith(".gif")]
    (run / "report.md").write_text("\n".join(lines) + "\n")
    files["report"] = str(run / "report.md")
    return files
