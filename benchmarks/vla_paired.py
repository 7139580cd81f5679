"""Imagined vs real success, episode by episode, for VLA policies (issue 8).

    OMP_NUM_THREADS=2 python -m benchmarks.vla_paired MODEL HEADS POLICY [POLICY ...] --out runs/vla_paired.json
    OMP_NUM_THREADS=1 python -m benchmarks.vla_paired MODEL HEADS POLICY --precision bfloat16 --gains 1 1.25 1.5 2
    OMP_NUM_THREADS=1 python -m benchmarks.vla_paired - - POLICY --real-only --eval-seed 30000 --episodes 200 --gains 1 2

Every POLICY runs the standard real evaluation (``--episodes`` episodes, seeds 20000 on, instruction
i mod 5, the deterministic chunk, at most 150 actions); the very same episodes are imagined again in
the pixel world model MODEL from their first frames (``--decisions`` policy calls) and judged by the
success heads HEADS (a ``wam vla-posttrain`` run's ``success_heads/`` folder), as
:func:`agents.vla.loop.paired_imagination` does at the end of ``wam vla-posttrain``. Printed per policy:
the real and the imagined success, the imagined successes, how many of them were real failures, and
the same for the imagined successes where the model's own T pose was in the region at a frame the
heads called a success (a false one of those is the dynamics' error; the rest are the heads' errors
on imagined frames). Comparing a warm start with its post-trained policy shows whether post-training
learned to fool the model or the heads (reward hacking).

``--gains G [G ...]``: every policy also with its deterministic chunk scaled by each gain G (a uniform PGPE
adapter, log-gain log G, folded into a copy): does imagination reward pushing harder as the physics does (the
direction PGPE takes in the physics, BENCHMARKS issue 8)? Also printed: the mean closest distance of the T to
the target, real and as the progress head saw it in imagination (PGPE's progress term).

``--real-only``: the real evaluation alone (MODEL and HEADS are not read: pass ``- -``; about 30 s per 100 episodes on one
thread), e.g. on held-out seeds (``--eval-seed 30000``: seeds the post-training runs never evaluate on) to tell
a policy's true success from the luck of the 100 standard episodes, or with ``--sampled`` chunks.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from agents.vla.language import InstructionEmbedder
from agents.vla.loop import evaluate_real, paired_imagination
from agents.vla.pgpe import fold_adapter
from agents.vla.policy import load_vla
from agents.vla.success import load_success_heads
from benchmarks.vla_rl_ceiling import MAX_STEPS, RADIUS, SEED
from tasks.pusht import PUSHT_VARIANTS, variant_targets
from world_models.checkpoint import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="pixel world-model checkpoint folder")
    p.add_argument("heads", type=Path, help="success-heads folder (run_dir/success_heads of wam vla-posttrain)")
    p.add_argument("policies", type=Path, nargs="+", help="VLA policy folders")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--decisions", type=int, default=38, help="policy calls imagined (x chunk steps)")
    p.add_argument("--seed", type=int, default=0, help="the world model's sampling seed")
    p.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="the imagination's precision(s); each policy's real episodes are imagined in each")
    p.add_argument("--max-spread", type=float, default=None,
                   help="world units: frames after the object-dynamics members disagree by more are untrusted (an ensemble model)")
    p.add_argument("--gains", type=float, nargs="+", default=[1.0],
                   help="each policy also with its deterministic chunk scaled by these gains (1: as it is)")
    p.add_argument("--real-only", action="store_true", help="the real evaluation alone, no imagination")
    p.add_argument("--eval-seed", type=int, default=SEED, help="the real episodes' first seed (standard: the evaluation's)")
    p.add_argument("--sampled", action="store_true", help="sampled chunks in the real episodes (needs --real-only)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if any(not g > 0 for g in args.gains):
        raise SystemExit(f"--gains must be > 0, got {args.gains}")
    if args.sampled and not args.real_only:
        raise SystemExit("--sampled needs --real-only (imagination replays the deterministic chunk)")

    torch.manual_seed(args.seed)
    embedder = InstructionEmbedder()
    table = embedder([v.instruction for v in PUSHT_VARIANTS.values()])
    results: dict = {"args": json.loads(json.dumps(vars(args), default=str)), "policies": {}}
    if args.real_only:
        real_only(args, embedder, table, results)
        return
    model, _, _ = load_checkpoint(args.model)
    model.eval()
    heads, calib = load_success_heads(args.heads)
    targets = variant_targets(PUSHT_VARIANTS)
    print(f"heads: stored held-out calibration {json.dumps({k: round(v, 3) for k, v in calib.items()})}", flush=True)
    results["heads_calibration"] = calib
    print("| policy | real success | imagined success | imagined successes | of them real failures | "
          "with the model's T in the region | of them real failures | closest distance real / imagined | uncertain rollouts | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, policy, real, seconds in real_runs(args, embedder, table):
        for precision in args.precision:
            t0 = time.time()
            out = paired_imagination(policy, model, heads, table, real, args.decisions, RADIUS, targets, "cpu", seed=args.seed,
                                     precision=precision, max_spread=args.max_spread)
            seconds += time.time() - t0
            out = {"real_success": real["success_rate"], "real_closest_distance": float(real["closest_distance"].mean()),
                   **out, "seconds": seconds}
            seconds = 0.0
            key = name + ("" if len(args.precision) == 1 else f" ({precision})")
            results["policies"][key] = out
            print(f"| `{key}` | {out['real_success']:.2f} | {out['paired_imagined_success']:.2f} | {out['imagined_successes']} | "
                  f"{out['imagined_false_success']} | {out.get('imagined_successes_pose_agrees', '–')} | "
                  f"{out.get('imagined_false_success_pose_agrees', '–')} | {out['real_closest_distance']:.0f} / "
                  f"{out['imagined_closest_distance']:.0f} | {out['uncertain_rollouts']:.2f} | {out['seconds']:.0f} |",
                  flush=True)
    save(args, results)


def scaled(policy, gain: float):
    """``policy`` itself (gain 1), or a copy with its deterministic chunk scaled by ``gain`` (a uniform PGPE adapter)."""
    if gain == 1.0:
        return policy
    policy = copy.deepcopy(policy)
    d = policy.cfg.chunk * policy.cfg.action_dim
    fold_adapter(policy, torch.cat([torch.full((d,), math.log(gain)), torch.zeros(d)]))
    return policy


def real_runs(args: argparse.Namespace, embedder: InstructionEmbedder, table: torch.Tensor):
    """Every policy x every gain on the real episodes from ``--eval-seed`` (sampled chunks with ``--sampled``):
    yields (name, policy, :func:`evaluate_real`'s dict, seconds)."""
    for folder in args.policies:
        loaded = load_vla(folder, embedder=embedder)
        for gain in args.gains:
            t0 = time.time()
            policy = scaled(loaded, gain)
            real = evaluate_real(policy, table, PUSHT_VARIANTS, args.episodes, args.eval_seed, MAX_STEPS, RADIUS,
                                 policy.cfg.image_size, deterministic=not args.sampled)
            yield str(folder) + ("" if gain == 1.0 else f" x{gain:g}"), policy, real, time.time() - t0


def real_only(args: argparse.Namespace, embedder: InstructionEmbedder, table: torch.Tensor, results: dict) -> None:
    """``--real-only``: every policy (x every gain) on the real episodes from ``--eval-seed``: success, per variant, closest distance."""
    print("| policy | real success | per variant | closest distance | s |")
    print("|---|---:|---|---:|---:|")
    for name, _, real, seconds in real_runs(args, embedder, table):
        out = {"real_success": real["success_rate"], "per_variant": real["per_variant"],
               "real_closest_distance": float(real["closest_distance"].mean()), "seconds": seconds}
        results["policies"][name] = out
        print(f"| `{name}` | {out['real_success']:.3f} | {' / '.join(f'{v:.2f}' for v in real['per_variant'].values())} | "
              f"{out['real_closest_distance']:.0f} | {out['seconds']:.0f} |", flush=True)
    save(args, results)


def save(args: argparse.Namespace, results: dict) -> None:
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
