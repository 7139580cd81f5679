"""``wam <command> [config=FILE.yaml] [key=value ...]``: thin shells over :mod:`wam.loop`.

Commands:
  collect        real env → dataset          (collect.steps, collect.policy, paths.data)
  train-model    dataset → world model       (model=rwm_gru|mlp_ensemble, paths.model)
  train-policy   world model → policy, trained only in imagination (agent=ppo_rsl_rl|ppo_sb3|mbpo_ppo);
                 agent=mbpo: SAC on branched model rollouts, collects its own real data
  evaluate       policy → returns on the real env (evaluate.episodes); legged tasks: tracking, falls
  play           policy → <run_dir>/play.mp4|gif rendered on MuJoCo (legged tasks; play.*)
  export         policy → ONNX + TorchScript + deploy.json, parity-checked on recorded real observations
                 (policy=FOLDER [out=FOLDER] [parity_tol=1e-5]; export.*); exit 2 if parity fails
  validate       policy → report across backends (imagined, mujoco, isaaclab) and randomized dynamics
                 (policy= task= backends= model= levels= episodes= gates.fall_rate_max= out=; validate.*);
                 exit 1 if a gate fails
  vla-posttrain  VLA policy post-trained inside a pixel world model (Push-T language variants), checked in
                 the real env (task=pusht policy=FOLDER|null model=CHECKPOINT algos=[ppo,grpo]; configs/vla.yaml)
  demo           the whole loop on Pendulum, then runs/demo/report.md with plots
  config         print the merged config
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import yaml

from agents.policy import PolicyFileError
from agents.vla.policy import VLAInputError
from sim2real.onnx_policy import ExportError
from tasks.pusht import MissingExtraError
from wam.config import ConfigError, load_config
from world_models.checkpoint import CheckpointError
from world_models.data import DatasetError

COMMANDS = ("collect", "train-model", "train-policy", "evaluate", "play", "export", "validate", "vla-posttrain", "demo",
            "config")
# short keys per command: `wam collect policy=... steps=...`, `wam evaluate policy=...`
SHORTHANDS = {
    "collect": {"policy": "collect.policy", "steps": "collect.steps", "noise": "collect.noise"},
    "evaluate": {"policy": "paths.policy"},
    "play": {"policy": "paths.policy"},
    "export": {"policy": "paths.policy", "out": "export.out", "parity_tol": "export.parity_tol", "steps": "export.steps"},
    # `model=` is the imagined backend's checkpoint here, not the model config group; `gates.x=` is validate.gates.x
    "validate": {k: f"validate.{k}" for k in ("policy", "backends", "model", "train_backend", "levels", "episodes",
                                              "episode_length_s", "sweep", "out", "gates")},
}


def _expand(arg: str, short: dict[str, str]) -> str:
    """Apply a command's short keys to ``key=value`` (the key's first dotted part is matched)."""
    key, sep, value = arg.partition("=")
    head, dot, rest = key.partition(".")
    return f"{short[head]}{dot}{rest}={value}" if sep and head in short else arg


def with_agent_default_model(args: list[str]) -> list[str]:
    """An agent file may name ``default_model`` (``agent=mbpo``: the MLP ensemble): it picks the
    model group unless ``model=`` is given."""
    from wam.config import CONFIG_DIR, read_yaml

    keys = dict(a.split("=", 1) for a in args if "=" in a)
    if "model" in keys or "agent" not in keys:
        return args
    path = CONFIG_DIR / "agents" / f"{keys['agent']}.yaml"
    default = read_yaml(path).get("default_model") if path.exists() else None
    return [f"model={default}", *args] if default else args


def _config(command: str, args: list[str]) -> dict:
    base = None
    if args and args[0].startswith("config="):
        base, args = args[0].split("=", 1)[1], args[1:]
    if command == "vla-posttrain":  # its own config file (configs/vla.yaml)
        from wam.vla import load_vla_config

        return load_vla_config(args, base)
    if command == "demo":
        args = ["run_dir=runs/demo", *args]
    short = SHORTHANDS.get(command, {})
    args = [_expand(a, short) for a in args]
    cfg = load_config(with_agent_default_model(args), base)
    if cfg["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wam", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys), e.g. model.train.max_steps=500")
    ns = parser.parse_args(argv)
    try:
        cfg = _config(ns.command, ns.overrides)
        if ns.command == "config":
            print(yaml.safe_dump(cfg, sort_keys=False))
            return 0
        from wam import loop  # heavy imports only when a command runs

        if ns.command == "collect":
            store = loop.run_collect(cfg)
            print(f"dataset {store.path}: {len(store)} transitions, {store.meta['num_episodes']} episodes")
        elif ns.command == "train-model":
            _, metrics = loop.run_train_model(cfg)
            print(json.dumps(metrics, indent=2))
        elif ns.command == "train-policy":
            _, curve = loop.run_train_policy(cfg)
            print(f"policy saved to {loop.run_path(cfg, 'policy', 'policy')} ({curve['train_seconds']:.0f} s)")
        elif ns.command == "evaluate":
            r = loop.run_evaluate(cfg)
            print(f"{r['task']}: mean return {r['mean_return']:.1f} ± {r['std_return']:.1f} over {r['episodes']} real episodes")
            if "fall_rate" in r:
                print(f"  commands vx in {r['lin_vel_x']} m/s: tracking exp {r['track_lin_vel_xy_exp']:.3f}, "
                      f"|v - cmd| {r['lin_vel_error']:.3f} m/s, fall rate {r['fall_rate']:.1%}"
                      + (f" (median fall at {statistics.median(r['fall_times_s']):.1f} s)" if r.get("fall_times_s") else ""))
        elif ns.command == "play":
            print(f"video written to {loop.run_play(cfg)}")
        elif ns.command == "export":
            from sim2real.export import run_export

            e = cfg["export"]
            r = run_export(loop.run_path(cfg, "policy", "policy"), cfg["task"], e["out"], e["steps"], int(cfg["seed"]),
                           e["formats"], e["parity_tol"])
            print(f"parity on {r['check_obs']} recorded {cfg['task']} observations (tolerance {r['parity_tol']:g}): "
                  + ", ".join(f"{k} max |diff| {v:.2e}" for k, v in r["parity"].items()))
            print("\n".join(f"  {k}: {v}" for k, v in r["files"].items()))
        elif ns.command == "validate":
            from sim2real.backends import Sim2RealError
            from sim2real.validate import run_validate

            try:
                r = run_validate(cfg)
            except Sim2RealError as e:
                print(f"wam validate: {e}", file=sys.stderr)
                return 2
            for g in r["gates"]:
                w = g["worst"]
                worst = f", worst {w['value']:.3f} ({w['backend']} / {w['randomization']})" if w else ""
                print(f"gate {g['gate']}={g['threshold']:g}: {'pass' if g['passed'] else 'FAIL'}{worst}")
            print(f"{'PASS' if r['passed'] else 'FAIL'}: report {r['files']['report']}")
            if not r["passed"]:
                return 1
        elif ns.command == "vla-posttrain":
            from wam.vla import run_vla_posttrain

            r = run_vla_posttrain(cfg)
            line = ", ".join(f"{a} {v['after']['success_rate']:.2f}" for a, v in r["algos"].items())
            print(f"real success before {r['before']['success_rate']:.2f}, after {line}; report {r['files']['report']}")
        elif ns.command == "demo":
            from wam.demo import run_demo

            run_demo(cfg)
    except ConfigError as e:
        print(f"wam {ns.command}: config error: {e}", file=sys.stderr)
        return 2
    except (DatasetError, CheckpointError, PolicyFileError, ExportError, VLAInputError, MissingExtraError) as e:
        print(f"wam {ns.command}: {e}", file=sys.stderr)
        return 2
    return 0
