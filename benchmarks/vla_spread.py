"""How far the object-dynamics members' spread grows along a policy's imagined episodes (issue 8).

    OMP_NUM_THREADS=1 python -m benchmarks.vla_spread MODEL HEADS POLICY [--episodes 64] [--limits 20 30 40 60 80]

MODEL is a pixel world model with ``object_dynamics_members`` > 1, HEADS a ``wam vla-posttrain`` run's
``success_heads/`` folder. POLICY's real evaluation episodes (seeds 20000 on, instruction i mod 5) are
imagined again from their first frames (:func:`rollout_imagined`: deterministic chunk, 38 calls, bfloat16);
printed: quantiles of the largest spread so far (world units) after 4 / 8 / 16 / 24 / 38 calls, and for
each candidate ``post_train.max_spread`` the share of episodes that become uncertain and the median call at
which they do (38: never). The figures ``max_spread`` is chosen from.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from agents.vla.language import InstructionEmbedder
from agents.vla.loop import StartPool, evaluate_real
from agents.vla.policy import load_vla
from agents.vla.rollout import rollout_imagined
from agents.vla.success import load_success_heads
from benchmarks.vla_rl_ceiling import MAX_STEPS, RADIUS, SEED
from tasks.pusht import PUSHT_VARIANTS
from world_models.checkpoint import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="pixel world-model checkpoint folder")
    p.add_argument("heads", help="success-heads folder (run_dir/success_heads of wam vla-posttrain)")
    p.add_argument("policy", help="VLA policy folder")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--decisions", type=int, default=38)
    p.add_argument("--limits", type=float, nargs="+", default=[20, 30, 40, 60, 80])
    args = p.parse_args()
    embedder = InstructionEmbedder()
    table = embedder([v.instruction for v in PUSHT_VARIANTS.values()])
    policy = load_vla(args.policy, embedder=embedder)
    real = evaluate_real(policy, table, PUSHT_VARIANTS, args.episodes, SEED, MAX_STEPS, RADIUS, policy.cfg.image_size)
    model, _, _ = load_checkpoint(args.model)
    model.eval()
    heads, _ = load_success_heads(args.heads)
    imagination = StartPool.first_frames(real["rows"]).imagination(model, "cpu", precision="bfloat16")
    imagination.seed(0)
    with torch.no_grad():
        roll = rollout_imagined(policy, imagination, heads, torch.arange(args.episodes),
                                table[torch.as_tensor(real["variant"])], args.decisions, deterministic=True)
    so_far = roll["uncertainty"].cummax(0).values  # (D, N)
    print("| calls | largest spread so far, world units: 10 / 25 / 50 / 75 / 90 % |\n|---:|---|")
    for d in (4, 8, 16, 24, args.decisions):
        if d <= args.decisions:
            q = np.quantile(so_far[d - 1].numpy(), [0.1, 0.25, 0.5, 0.75, 0.9])
            print(f"| {d} | " + " / ".join(f"{x:.1f}" for x in q) + " |")
    print("\n| max_spread | episodes that become uncertain | median call they do |\n|---:|---:|---:|")
    for limit in args.limits:
        over = so_far > limit
        at = torch.where(over.any(0), over.float().argmax(0), torch.full_like(over[0], args.decisions, dtype=torch.long))
        print(f"| {limit:g} | {float(over.any(0).float().mean()):.2f} | {float(at.float().median()):.0f} |")


if __name__ == "__main__":
    main()
