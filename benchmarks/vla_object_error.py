"""The object-dynamics head's open-loop error on a policy's own real episodes, and what refining it on them gives (issue 8).

    OMP_NUM_THREADS=1 python -m benchmarks.vla_object_error MODEL POLICY [POLICY ...] [--refine-on POLICY ...]

For every POLICY, ``--episodes`` real episodes (seeds 30000 on, instruction i mod 5) with the deterministic
chunk and with sampled chunks; printed per set: the pusher's and the T's mean speed (world units per 0.1 s
step), and the object-dynamics head's open-loop position error (world units; the members' mean) after 1 / 4 /
8 / 16 / 32 steps, fed the real pusher positions and actions (:func:`object_open_loop`), beside the error of
predicting no motion (how far the T really moved), and how far the prediction moved the T after 16 steps as a
share of how far it really moved (< 1: the model's T lags); the held-out scripted episodes of the model's
training run (``--run``) for reference. ``--sample``: a stochastic head (``object_dynamics_noise``) draws
each step's change, as a sampled imagination does, instead of taking its mean.

With ``--refine-on``: a copy of the model's heads on states (pusher and object dynamics) is fine-tuned, as a
World-VLA-Loop refinement would, on those policies' sampled episodes plus the run's state rows
(``run/states.npz``; ``--steps`` one-step and ``--rollout-steps`` 16-step-rollout steps), and the errors are
measured again, before and after, on fresh sampled episodes (seeds 40000 on) of every POLICY.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from agents.vla.language import InstructionEmbedder
from agents.vla.loop import concat_rows, evaluate_real
from agents.vla.policy import load_vla
from benchmarks.pixel_world_model import load_cfg, run_frames
from benchmarks.vla_rl_ceiling import MAX_STEPS, RADIUS
from tasks.pusht import PUSHT_VARIANTS
from world_models.checkpoint import load_checkpoint
from world_models.pixel.training import PixelTrainConfig, object_open_loop, train_dynamics

HORIZONS = (1, 4, 8, 16, 32)
MOTION_HORIZON = 16  # steps after which predicted and true motion are compared


def speeds(rows: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean speed of the pusher and of the T's centre over consecutive rows of an episode (world units per step)."""
    same = rows["episode"][1:] == rows["episode"][:-1]
    agent = np.linalg.norm(np.diff(rows["agent_pos"], axis=0), axis=1)[same]
    block = np.linalg.norm(np.diff(rows["block_pose"][:, :2], axis=0), axis=1)[same]
    return float(agent.mean()), float(block.mean())


def error_row(name: str, model, rows: dict[str, np.ndarray], sample: bool = False) -> str:
    o = object_open_loop(model, rows, max(HORIZONS), starts=512, seed=0, sample=sample)
    agent, block = speeds(rows)
    motion = float(o["predicted_motion"][:, MOTION_HORIZON - 1].mean() / o["still_position_error"][:, MOTION_HORIZON - 1].mean())
    return (f"| {name} | {agent:.1f} / {block:.2f} | "
            + " | ".join(f"{o['position_error'][:, h - 1].mean():.1f} ({o['still_position_error'][:, h - 1].mean():.1f})"
                         for h in HORIZONS) + f" | {motion:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="pixel world-model checkpoint folder with an object-dynamics head")
    p.add_argument("policies", nargs="+", help="VLA policy folders")
    p.add_argument("--run", type=Path, default=Path("runs/pixel_v14"),
                   help="the model's training run (held-out scripted episodes; states.npz for --refine-on)")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--sample", action="store_true",
                   help="a stochastic head (object_dynamics_noise) draws each step's change, as a sampled imagination does")
    p.add_argument("--refine-on", nargs="*", default=[], help="policies whose sampled episodes refine the heads on states")
    p.add_argument("--steps", type=int, default=2000, help="one-step steps of the heads on states (batch 256, lr 3e-4)")
    p.add_argument("--rollout-steps", type=int, default=500, help="16-step-rollout steps of the object head (batch 128, lr 1e-4)")
    args = p.parse_args()

    model, _, _ = load_checkpoint(args.model)
    model.eval()
    if model.object_head is None:
        raise SystemExit(f"{args.model} has no object-dynamics head (decoder_object_extent 0)")
    model_cfg, task_cfg = load_cfg()
    _, _, held_out, _ = run_frames(args.run, 0, model_cfg, task_cfg)
    embedder = InstructionEmbedder()
    table = embedder([v.instruction for v in PUSHT_VARIANTS.values()])
    policies = {folder: load_vla(folder, embedder=embedder) for folder in dict.fromkeys(args.policies + args.refine_on)}

    def episodes(folder: str, seed: int, deterministic: bool) -> dict[str, np.ndarray]:
        pol = policies[folder]
        real = evaluate_real(pol, table, PUSHT_VARIANTS, args.episodes, seed, MAX_STEPS, RADIUS, pol.cfg.image_size,
                             deterministic=deterministic)
        return {k: v for k, v in real["rows"].items() if k != "pixels"}

    header = ("| episodes | pusher / T speed (units per step) | "
              + " | ".join(f"error h={h} (no motion)" for h in HORIZONS)
              + " | predicted / true motion, h=16 |\n|---|---|" + "---:|" * (len(HORIZONS) + 1))
    print(header)
    print(error_row(f"scripted, held out ({args.run})", model, held_out, args.sample), flush=True)
    sampled = {}
    for folder in args.policies:
        print(error_row(f"`{folder}`, deterministic", model, episodes(folder, 30000, True), args.sample), flush=True)
        sampled[folder] = episodes(folder, 30000, False)
        print(error_row(f"`{folder}`, sampled", model, sampled[folder], args.sample), flush=True)
    if not args.refine_on:
        return

    train = concat_rows([sampled[f] if f in sampled else episodes(f, 30000, False) for f in args.refine_on])
    with np.load(args.run / "states.npz") as z:
        state_rows = dict(z)
    refined = copy.deepcopy(model)
    cfg = PixelTrainConfig(dynamics_steps=0, head_steps=0, state_head_steps=args.steps, state_head_batch=256,
                           state_head_lr=3e-4, object_rollout_steps=args.rollout_steps, object_rollout_batch=128,
                           object_rollout_lr=1e-4, seed=1)
    t0 = time.time()
    train_dynamics(refined, train, cfg, progress=False, state_rows=state_rows)
    print(f"\nrefined on {len(train['step'])} rows of {args.refine_on} + {len(state_rows['step'])} state rows "
          f"({time.time() - t0:.0f} s); fresh sampled episodes, seeds 40000 on:\n")
    print(header)
    print(error_row("scripted, held out: before", model, held_out, args.sample))
    print(error_row("scripted, held out: refined", refined, held_out, args.sample), flush=True)
    for folder in args.policies:
        fresh = episodes(folder, 40000, False)
        print(error_row(f"`{folder}`: before", model, fresh, args.sample))
        print(error_row(f"`{folder}`: refined", refined, fresh, args.sample), flush=True)


if __name__ == "__main__":
    main()
