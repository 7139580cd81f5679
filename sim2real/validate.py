"""Will a policy survive another simulator and a real robot's dynamics spread? One call says.

``sim2real.validate(policy, task, backends=[...])`` (this module is callable) or
``wam validate policy=... task=anymal_c_flat``:

1. runs the policy on every backend (``imagined`` / ``mujoco`` / ``isaaclab``, see
   :mod:`sim2real.backends`) at every named randomization level (``none`` / ``low`` /
   ``medium`` / ``high``: one magnitude scaling every factor's range, data in
   ``configs/sim2real/randomization.yaml``); backends that cannot randomize (the world model)
   run at ``none`` only;
2. optionally sweeps each factor alone over increasing magnitudes (robustness curves);
3. measures the gap of every result to the training backend at level ``none``
   (``tracking_gap`` = its tracking minus this one's; ``fall_rate_gap`` = this fall rate minus its);
4. checks the gates (``fall_rate_max``, ``tracking_min``, ``gap_max``, ...: :data:`GATES`)
   on every backend x level result and writes ``results.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import math
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from sim2real.backends import BACKENDS, Backend, BackendUnavailable, PolicyFn, Sim2RealError, make_backend, validation_cfg
from tasks.locomotion.config import RandomizationCfg

RANDOMIZATION_FILE = Path(__file__).resolve().parents[1] / "configs" / "sim2real" / "randomization.yaml"
RANGE_FACTORS = ("friction", "added_base_mass", "motor_strength", "stiffness_scale", "damping_scale")
FACTORS = (*RANGE_FACTORS, "action_latency", "push_velocity", "observation_noise")
NOMINAL = {"friction": 1.0, "added_base_mass": 0.0, "motor_strength": 1.0, "stiffness_scale": 1.0, "damping_scale": 1.0}
# gate key -> (result key, "max": the value must stay at or below, "min": at or above)
GATES: dict[str, tuple[str, str]] = {
    "fall_rate_max": ("fall_rate", "max"),
    "tracking_min": ("track_lin_vel_xy_exp", "min"),
    "gap_max": ("tracking_gap", "max"),
    "torque_limit_violation_max": ("torque_limit_violation", "max"),
    "joint_vel_limit_violation_max": ("joint_vel_limit_violation", "max"),
    "foot_slip_max": ("foot_slip", "max"),
}
FORMAT, VERSION = "wam.validation", 1


@dataclass(frozen=True)
class RandomizationSpec:
    """``configs/sim2real/randomization.yaml``: factor ranges at magnitude 1, named levels
    (magnitudes), and the per-factor sweep (factors, magnitudes > 0)."""

    full: dict[str, Any]
    levels: dict[str, float]
    sweep_factors: tuple[str, ...]
    sweep_magnitudes: tuple[float, ...]

    def at(self, magnitude: float, factors: Iterable[str] = FACTORS) -> RandomizationCfg:
        """The :class:`RandomizationCfg` with ``factors`` at ``magnitude`` (others nominal):
        ranges ``nominal + magnitude x (full - nominal)``, latency ``round(magnitude x full)``
        steps, push velocity ``magnitude x full`` m/s, observation noise on for magnitude > 0."""
        s, f, kw = float(magnitude), self.full, {}
        if s <= 0:
            return RandomizationCfg()
        for name in factors:
            if name in RANGE_FACTORS:
                n = NOMINAL[name]
                kw[name] = (n + s * (f[name][0] - n), n + s * (f[name][1] - n))
            elif name == "action_latency":
                kw[name] = int(math.floor(s * f[name] + 0.5))
            elif name == "push_velocity":
                kw.update(push_velocity=s * float(f[name]), push_interval=tuple(f["push_interval"]))
            elif name == "observation_noise":
                kw[name] = bool(f[name])
        return RandomizationCfg(**kw)


def load_randomization(path: str | Path | None = None) -> RandomizationSpec:
    """Read the randomization file (default ``configs/sim2real/randomization.yaml``)."""
    path = Path(path or RANDOMIZATION_FILE)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise Sim2RealError(f"cannot read randomization file {path}: {e}") from e
    missing = [k for k in ("full", "levels", "sweep") if k not in (data or {})]
    if missing:
        raise Sim2RealError(f"{path}: missing sections {missing}")
    need = {*FACTORS, "push_interval"} - set(data["full"])
    if need:
        raise Sim2RealError(f"{path}: full lacks factors {sorted(need)}")
    bad = [f for f in data["sweep"]["factors"] if f not in FACTORS]
    if bad:
        raise Sim2RealError(f"{path}: unknown sweep factors {bad}; known: {list(FACTORS)}")
    return RandomizationSpec(data["full"], {str(k): float(v) for k, v in data["levels"].items()},
                             tuple(data["sweep"]["factors"]), tuple(float(m) for m in data["sweep"]["magnitudes"]))


def load_policy_fn(policy: Any) -> PolicyFn:
    """A policy callable obs (N, D) float32 -> actions (N, A) from a ``wam.policy`` folder
    (``policy.json``), an exported folder (``policy.onnx`` + ``deploy.json``), an
    :class:`~agents.policy.MLPPolicy` or any callable."""
    from agents.policy import MLPPolicy

    if isinstance(policy, MLPPolicy):
        return policy.act
    if isinstance(policy, (str, Path)):
        p = Path(policy)
        if (p / "policy.json").is_file():
            return MLPPolicy.load(p).act
        if (p / "policy.onnx").is_file() or p.suffix == ".onnx":
            from sim2real.onnx_policy import OnnxPolicy

            return OnnxPolicy(p)
        raise Sim2RealError(f"policy {p}: not a policy folder (no policy.json of `wam train-policy`, no policy.onnx of `wam export`)")
    if callable(policy):
        return policy
    raise Sim2RealError(f"policy must be a folder, an MLPPolicy or a callable, got {type(policy).__name__}")


def _exported_folder(policy: Any, task: str, out: Path | None) -> Path:
    """The exported (ONNX) folder a file-based backend needs: the policy's own, or one written now."""
    if isinstance(policy, (str, Path)) and (Path(policy) / "policy.onnx").is_file():
        return Path(policy)
    if isinstance(policy, (str, Path)) or hasattr(policy, "obs_dim"):
        from sim2real.export import export_policy

        if out is None:
            raise Sim2RealError("an exported-policy backend (isaaclab) needs out=<folder> to write the exported policy into")
        return Path(export_policy(policy, out / "exported_policy", task=task)["out_dir"])
    raise Sim2RealError("the isaaclab backend needs a policy folder or an MLPPolicy (it runs the exported ONNX file)")


def _names(value: str | Sequence[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [str(v) for v in value]


def check_gates(gates: dict[str, float] | None) -> dict[str, float]:
    """Gates as {key: threshold}; ``None`` thresholds are dropped, unknown keys are an error."""
    gates = dict(gates or {})
    unknown = sorted(set(gates) - set(GATES))
    if unknown:
        raise Sim2RealError(f"unknown gate keys {unknown}; valid: {sorted(GATES)}")
    try:
        return {k: float(v) for k, v in gates.items() if v is not None}
    except (TypeError, ValueError) as e:
        raise Sim2RealError(f"gate thresholds must be numbers, got {gates}") from e


def evaluate_gates(results: list[dict[str, Any]], gates: dict[str, float]) -> list[dict[str, Any]]:
    """Each gate against every result (backend x level): passed, the worst result, and the
    results where the metric is nan (not measured there: they neither pass nor fail)."""
    out = []
    for key, threshold in gates.items():
        metric, kind = GATES[key]
        measured = [r for r in results if not math.isnan(r.get(metric, math.nan))]
        sign = 1.0 if kind == "max" else -1.0
        worst = max(measured, key=lambda r: sign * r[metric], default=None)
        failing = [r for r in measured if sign * (r[metric] - threshold) > 0]
        out.append({
            "gate": key, "metric": metric, "threshold": threshold, "passed": not failing,
            "failing": [f"{r['backend']}/{r['randomization']}" for r in failing],
            "worst": None if worst is None else {"backend": worst["backend"], "randomization": worst["randomization"], "value": worst[metric]},
            "not_measured": [f"{r['backend']}/{r['randomization']}" for r in results if r not in measured],
        })
    return out


def validate(
    policy: Any,
    task: str,
    backends: str | Sequence[str] = ("mujoco",),
    levels: str | Sequence[str] = ("none", "low", "medium", "high"),
    episodes: int = 64,
    seed: int = 0,
    train_backend: str = "mujoco",
    gates: dict[str, float] | None = None,
    sweep: bool = True,
    model: str | Path | None = None,
    out: str | Path | None = None,
    episode_length_s: float | None = None,
    device: str = "cpu",
    randomization_file: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Validate ``policy`` on ``task`` across backends and randomized dynamics.

    Args:
        policy: a policy folder (``wam.policy`` or exported), an ``MLPPolicy`` or a callable
            obs (N, D) float32 -> actions (N, A) (callables cannot go to ``isaaclab``).
        task: ``anymal_c_flat`` or ``g1_flat``.
        backends: names (list or comma string); a trailing ``?`` (``isaaclab?``) skips that
            backend with a note when it is unavailable (:class:`BackendUnavailable` when built
            or while running) instead of failing.
        levels: named randomization levels of the randomization file.
        episodes: robots per run (one episode each, 20 s unless ``episode_length_s``).
        seed: seeds resets, commands and randomization (the same for every run).
        train_backend: where the policy was trained; gaps are measured against it at level none
            (run there too if it is not among ``backends``).
        gates: thresholds by :data:`GATES` key (e.g. ``{"fall_rate_max": 0.1}``).
        sweep: also run each factor alone at the sweep magnitudes on randomizable backends.
        model: world-model checkpoint folder for ``imagined``.
        out: folder for ``results.json``, ``report.md`` and plots (None: write nothing).
        log: called with one line per run (progress).

    Returns:
        The results dict written to ``results.json``: ``results`` (one dict per backend x level:
        metrics, ``tracking_gap``, ``fall_rate_gap``, ``notes``), ``sweep`` (per backend,
        factor and magnitude), ``gates`` (see :func:`evaluate_gates`), ``passed`` (all gates),
        ``skipped`` (optional backends that were unavailable, with the reason).

    Raises:
        Sim2RealError: unknown backend, level, gate or task; a bad policy; BackendUnavailable
            (a subclass) for a required backend that cannot run here.
    """
    start = time.perf_counter()
    gates = check_gates(gates)
    length = validation_cfg(task, None, episode_length_s).episode_length_s  # also checks the task
    spec = load_randomization(randomization_file)
    level_names = _names(levels)
    unknown = [lv for lv in level_names if lv not in spec.levels]
    if unknown or not level_names:
        raise Sim2RealError(f"unknown randomization levels {unknown or level_names}; available: {list(spec.levels)}")
    if episodes < 1:
        raise Sim2RealError(f"episodes must be >= 1, got {episodes}")
    requested = _names(backends)
    optional = {b.rstrip("?") for b in requested if b.endswith("?")}
    names = list(dict.fromkeys(b.rstrip("?") for b in requested))
    for name in [*names, train_backend]:
        if name not in BACKENDS:
            raise Sim2RealError(f"unknown backend {name!r}; available: {list(BACKENDS)}")
    if train_backend not in names:
        names.append(train_backend)
    out = Path(out) if out is not None else None
    log = log or (lambda line: None)

    built: dict[str, Backend] = {}
    skipped = []
    for name in names:
        kwargs: dict[str, Any] = {"episode_length_s": episode_length_s} if episode_length_s else {}
        if name in ("mujoco", "imagined"):
            kwargs["device"] = device
        if name == "imagined":
            kwargs["model"] = model
        try:
            built[name] = make_backend(name, **kwargs)
        except BackendUnavailable as e:
            if name not in optional or name == train_backend:
                raise
            skipped.append({"backend": name, "reason": str(e)})
            log(f"skipped {name}: {e}")
    fn = load_policy_fn(policy)
    exported = None
    if any(getattr(b, "policy_input", "callable") == "exported" for b in built.values()):
        exported = _exported_folder(policy, task, out)

    cache: dict[tuple[str, RandomizationCfg], dict[str, Any]] = {}

    def run(name: str, rand: RandomizationCfg, label: str) -> dict[str, Any]:
        key = (name, rand)
        if key not in cache:
            b = built[name]
            arg = exported if getattr(b, "policy_input", "callable") == "exported" else fn
            r = cache[key] = {"backend": name, "notes": [], **b.run(arg, task, episodes, seed, rand)}
            log(f"{name:9s} {label:28s} tracking {r['track_lin_vel_xy_exp']:.3f}  fall rate {r['fall_rate']:.3f}  ({r['wall_s']:.1f} s)")
        return dict(cache[key])

    def skip(name: str, e: BackendUnavailable) -> None:
        """An optional backend that turned out unusable while running (e.g. missing assets)."""
        if name not in optional or name == train_backend:
            raise e
        skipped.append({"backend": name, "reason": str(e)})
        log(f"skipped {name}: {e}")
        del built[name]

    results = []
    ref = run(train_backend, RandomizationCfg(), "none")
    for name in list(built):
        rows = []
        try:
            for level in level_names:
                magnitude = spec.levels[level]
                if magnitude > 0 and not getattr(built[name], "randomizable", True):
                    continue
                r = run(name, spec.at(magnitude), f"level {level}")
                r.update(randomization=level, magnitude=magnitude,
                         tracking_gap=ref["track_lin_vel_xy_exp"] - r["track_lin_vel_xy_exp"],
                         fall_rate_gap=r["fall_rate"] - ref["fall_rate"])
                rows.append(r)
        except BackendUnavailable as e:
            skip(name, e)
            continue
        results += rows
    if not any(r["backend"] == train_backend and r["randomization"] == "none" for r in results):
        results.insert(0, {**ref, "randomization": "none", "magnitude": 0.0, "tracking_gap": 0.0, "fall_rate_gap": 0.0,
                           "notes": [*ref["notes"], "training backend at level none: the reference for the gaps"]})

    sweep_rows = []
    for name in list(built) if sweep else []:
        if not getattr(built[name], "randomizable", True):
            continue
        rows = []
        try:
            base = run(name, RandomizationCfg(), "none")
            for factor in spec.sweep_factors:
                rows.append({**base, "factor": factor, "magnitude": 0.0})
                for m in spec.sweep_magnitudes:
                    rows.append({**run(name, spec.at(m, [factor]), f"sweep {factor} x{m:g}"), "factor": factor, "magnitude": m})
        except BackendUnavailable as e:
            skip(name, e)
            results = [r for r in results if r["backend"] != name]
            continue
        sweep_rows += rows

    gate_results = evaluate_gates(results, gates)
    report = {
        "format": FORMAT, "version": VERSION, "task": task, "policy": _describe(policy), "train_backend": train_backend,
        "backends": list(built), "episodes": episodes, "seed": seed,
        "episode_length_s": length,
        "levels": {lv: spec.levels[lv] for lv in level_names},
        "randomization": {lv: _cfg_dict(spec.at(spec.levels[lv])) for lv in level_names},
        "sweep_magnitudes": list(spec.sweep_magnitudes), "results": results, "sweep": sweep_rows,
        "gates": gate_results, "passed": all(g["passed"] for g in gate_results), "skipped": skipped,
        "exported_policy": None if exported is None else str(exported),
        "runs": len(cache), "wall_s": time.perf_counter() - start,
    }
    if out is not None:
        from sim2real.report import write_report

        report["files"] = write_report(report, out)
    return report


def run_validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """``wam validate``: :func:`validate` with the experiment config's ``validate`` section
    (policy default ``paths.policy`` or ``<run_dir>/policy``, model ``paths.model`` or
    ``<run_dir>/world_model``, out ``<run_dir>/validation``)."""
    v, run_dir = cfg["validate"], Path(cfg["run_dir"])
    paths = cfg.get("paths") or {}
    return validate(
        policy=v["policy"] or paths.get("policy") or run_dir / "policy",
        task=cfg["task"],
        backends=v["backends"],
        levels=v["levels"],
        episodes=int(v["episodes"]),
        seed=int(cfg["seed"]),
        train_backend=v["train_backend"],
        gates=v["gates"],
        sweep=bool(v["sweep"]),
        model=v["model"] or paths.get("model") or run_dir / "world_model",
        out=v["out"] or run_dir / "validation",
        episode_length_s=v["episode_length_s"],
        device=cfg["device"],
        log=print if cfg.get("progress", True) else None,
    )


def _describe(policy: Any) -> str:
    return str(policy) if isinstance(policy, (str, Path)) else type(policy).__name__


def _cfg_dict(cfg: RandomizationCfg) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


class _CallableModule(types.ModuleType):
    """``sim2real.validate`` is both this module and its function: ``sim2real.validate(policy, task)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
