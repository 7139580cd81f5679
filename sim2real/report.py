"""The validation report: ``results.json``, ``report.md`` and PNG plots in one folder.

- ``backends.png``: bar charts of tracking and fall rate per backend, one bar per level;
- ``robustness_<backend>.png``: robustness curves, tracking and fall rate vs magnitude of
  each randomization factor alone (when the sweep ran).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from world_models.data import atomic_write_json

COLUMNS = (  # (result key, header, format)
    ("track_lin_vel_xy_exp", "tracking exp", "{:.3f}"),
    ("tracking_gap", "gap", "{:+.3f}"),
    ("lin_vel_error", "\\|v − cmd\\| m/s", "{:.3f}"),
    ("track_ang_vel_z_exp", "yaw tracking", "{:.3f}"),
    ("fall_rate", "fall rate", "{:.3f}"),
    ("fall_rate_gap", "fall gap", "{:+.3f}"),
    ("mean_return", "return", "{:.2f}"),
    ("torque_limit_violation", "torque ≥ 99% limit", "{:.4f}"),
    ("joint_vel_limit_violation", "\\|qdot\\| > limit", "{:.4f}"),
    ("foot_slip", "foot slip m/s", "{:.3f}"),
)
PLOTTED = (("track_lin_vel_xy_exp", "tracking exp (1 = perfect)"), ("fall_rate", "fall rate"))


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, str]:
    """Write ``results.json``, ``report.md`` and the plots of a :func:`sim2real.validate.validate`
    result into ``out`` (created); returns {name: path} of the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "report": out / "report.md", "backends_plot": out / "backends.png"}
    _bar_chart(report, files["backends_plot"])
    for name in dict.fromkeys(r["backend"] for r in report["sweep"]):
        files[f"robustness_{name}"] = out / f"robustness_{name}.png"
        _robustness(report, name, files[f"robustness_{name}"])
    paths = {k: str(v) for k, v in files.items()}
    atomic_write_json(files["results"], _jsonable({**report, "files": paths}))
    files["report"].write_text(markdown(report, {k: Path(v).name for k, v in paths.items()}))
    return paths


def _fmt(value: Any, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def markdown(report: dict[str, Any], files: dict[str, str] | None = None) -> str:
    """The report as Markdown: verdict, gates, the backend x level table, sweep tables, notes."""
    passed = report["passed"]
    lines = [
        f"# Validation: {report['task']}",
        "",
        f"Policy `{report['policy']}`, trained on **{report['train_backend']}**; {report['episodes']} robots per run "
        f"(one episode each, {report['episode_length_s']:g} s, commands vx ~ U(0.5, 1.0) m/s), seed {report['seed']}.",
        "",
        f"**Verdict: {'PASS' if passed else 'FAIL'}**" + ("" if report["gates"] else " (no gates set)"),
        "",
    ]
    if report["gates"]:
        lines += ["| gate | threshold | worst (backend / level) | value | result |", "|---|---:|---|---:|---|"]
        for g in report["gates"]:
            w = g["worst"]
            where = f"{w['backend']} / {w['randomization']}" if w else "n/a"
            lines.append(f"| `{g['gate']}` | {g['threshold']:g} | {where} | {_fmt(w and w['value'], '{:.3f}')} | "
                         f"{'pass' if g['passed'] else 'FAIL: ' + ', '.join(g['failing'])} |")
        lines.append("")
    lines += ["## Backends × randomization levels", "",
              f"Gaps against {report['train_backend']} at level none (tracking: its score minus this one, fall rate: "
              "this one minus its; positive = worse).", "",
              "| backend | level | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
              "|---|---|" + "---:|" * len(COLUMNS)]
    for r in report["results"]:
        lines.append(f"| {r['backend']} | {r['randomization']} ({r['magnitude']:g}) | "
                     + " | ".join(_fmt(r.get(k), f) for k, _, f in COLUMNS) + " |")
    lines += ["", "Levels scale every factor's range at once (`configs/sim2real/randomization.yaml`):", ""]
    for level, cfg in report["randomization"].items():
        active = {k: v for k, v in cfg.items() if v not in (None, False, 0)
                  and not (k == "push_velocity" and cfg.get("push_interval") is None)}
        lines.append(f"- **{level}** ({report['levels'][level]:g}): " + (", ".join(f"{k} {v}" for k, v in active.items()) or "nominal robot"))
    if files:
        lines += ["", f"![tracking and falls per backend]({files['backends_plot']})"]
    if report["sweep"]:
        lines += ["", "## Robustness: one factor at a time", ""]
        for name in dict.fromkeys(r["backend"] for r in report["sweep"]):
            rows = [r for r in report["sweep"] if r["backend"] == name]
            mags = sorted({r["magnitude"] for r in rows})
            lines += [f"### {name}: tracking exp / fall rate", "",
                      "| factor | " + " | ".join(f"×{m:g}" for m in mags) + " |", "|---|" + "---:|" * len(mags)]
            for factor in dict.fromkeys(r["factor"] for r in rows):
                by = {r["magnitude"]: r for r in rows if r["factor"] == factor}
                lines.append(f"| {factor} | " + " | ".join(
                    f"{by[m]['track_lin_vel_xy_exp']:.3f} / {by[m]['fall_rate']:.2f}" if m in by else "" for m in mags) + " |")
            if files and f"robustness_{name}" in files:
                lines += ["", f"![robustness curves on {name}]({files[f'robustness_{name}']})"]
            lines.append("")
    notes = [(r["backend"], r["randomization"], n) for r in report["results"] for n in r.get("notes", [])]
    if notes or report["skipped"]:
        lines += ["", "## Notes", ""]
        seen = set()
        for backend, level, note in notes:
            if (backend, note) not in seen:
                seen.add((backend, note))
                lines.append(f"- {backend}: {note}")
        lines += [f"- {s['backend']} skipped: {s['reason']}" for s in report["skipped"]]
    lines += ["", f"{report['runs']} distinct runs, {report['wall_s']:.0f} s wall-clock in all.", ""]
    return "\n".join(lines)


def _bar_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in report["results"]))
    levels = list(dict.fromkeys(r["randomization"] for r in report["results"]))
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 3.8))
    width = 0.8 / max(len(levels), 1)
    colors = {lv: f"C{j}" for j, lv in enumerate(levels)}
    for ax, (key, label) in zip(axes, PLOTTED):
        for i, b in enumerate(backends):  # each backend's bars centred on its tick (the world model has one level)
            rows = [r for r in report["results"] if r["backend"] == b]
            for j, r in enumerate(rows):
                ax.bar(i + (j - (len(rows) - 1) / 2) * width, r[key], width, color=colors[r["randomization"]])
        ax.set_xticks(np.arange(len(backends)), backends)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], list(colors), title="randomization", fontsize=8)
    fig.suptitle(f"{report['task']}: per backend and randomization level ({report['episodes']} robots each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _robustness(report: dict[str, Any], backend: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["sweep"] if r["backend"] == backend]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 3.8))
    for ax, (key, label) in zip(axes, PLOTTED):
        for factor in dict.fromkeys(r["factor"] for r in rows):
            pts = sorted((r["magnitude"], r[key]) for r in rows if r["factor"] == factor)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=factor)
        ax.set_xlabel("factor magnitude (1 = the `full` range)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report['task']} on {backend}: one randomization factor at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(x: Any) -> Any:
    """Plain JSON: nan -> null, tuples -> lists, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x

