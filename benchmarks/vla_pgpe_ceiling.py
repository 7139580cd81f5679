"""Parameter-space exploration on a VLA's action chunk: does RL at this budget find a better policy? (issue 8)

    OMP_NUM_THREADS=1 python -m benchmarks.vla_pgpe_ceiling POLICY                      # 16 numbers: a gain and a bias per chunk entry
    OMP_NUM_THREADS=1 python -m benchmarks.vla_pgpe_ceiling POLICY --shared --lr 0.3      # 4 numbers: per action dimension
    OMP_NUM_THREADS=1 python -m benchmarks.vla_pgpe_ceiling POLICY --fitness success --lr 0.5  # the binary outcome alone

PPO and GRPO explore with action noise and move every weight (``benchmarks/vla_rl_ceiling.py``:
flat at 467 k env steps even with an oracle reward in the real physics). Here the warm start is
kept and RL moves an *action adapter* only, ``u' = u * exp(g) + b`` on the deterministic chunk
``u`` (B, chunk * A), explored in parameter space (:class:`agents.vla.pgpe.VLAPGPE`, PGPE, Sehnke et
al. 2010): every rollout draws its own adapter ``sigma * eps`` around the current policy (antithetic
pairs), rolls the *deterministic* policy out with it, and the step ``lr * mean(adv * eps) / sigma``
with group-relative advantages of the rollouts' fitness (G rollouts per start and instruction) is
folded into the policy's output layer. Rollouts run in gym-pusht's physics and are scored by the
true success (the T's centroid within the radius of the instructed target within 150 steps) minus
the closest true distance / 100 (``--fitness progress``, the default; ``success``: the success
alone), so like ``vla_rl_ceiling`` this measures the RL alone.
Prints the training curve and the deterministic real success before / after (100 episodes, seeds
20000-20099, variant i mod 5).
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.vla.language import InstructionEmbedder
from agents.vla.loop import evaluate_real
from agents.vla.pgpe import PGPE_FITNESS, VLAPGPE, VLAPGPEConfig, pgpe_fitness
from agents.vla.policy import load_vla
from agents.vla.rollout import policy_act, rollout_real
from benchmarks.vla_rl_ceiling import MAX_STEPS, RADIUS, SEED
from tasks.pusht import PUSHT_VARIANTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="VLA policy folder (save_vla), e.g. a run's warm_start")
    p.add_argument("--updates", type=int, default=12)
    p.add_argument("--starts", type=int, default=16, help="starts (seed, instruction) per update")
    p.add_argument("--group", type=int, default=8, help="rollouts per start (even: antithetic pairs)")
    default = VLAPGPEConfig()
    p.add_argument("--sigma", type=float, default=default.sigma, help="exploration std of the adapter's numbers")
    p.add_argument("--lr", type=float, default=default.lr, help="step per unit of the PGPE gradient mean(adv * eps) / sigma")
    p.add_argument("--shared", action="store_true", help="one gain and bias per action dimension, shared over the chunk")
    p.add_argument("--fitness", choices=PGPE_FITNESS, default=default.fitness,
                   help="progress: success - closest distance / --progress-scale; success: the binary outcome")
    p.add_argument("--progress-scale", type=float, default=default.progress_scale,
                   help="world units of closest distance worth one success")
    p.add_argument("--episodes", type=int, default=100, help="real evaluation episodes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    embedder = InstructionEmbedder("cpu")
    names = list(PUSHT_VARIANTS)
    table = embedder([PUSHT_VARIANTS[n].instruction for n in names])
    policy = load_vla(args.policy, embedder=embedder)
    cfg = VLAPGPEConfig(sigma=args.sigma, lr=args.lr, group=args.group, shared=args.shared, fitness=args.fitness,
                        progress_scale=args.progress_scale)
    pgpe = VLAPGPE(policy, cfg, args.seed)

    def real_success() -> float:
        return evaluate_real(policy, table, PUSHT_VARIANTS, args.episodes, SEED, MAX_STEPS, RADIUS)["success_rate"]

    before = real_success()
    print(f"before: deterministic real success {before:.2f}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    t, steps, total = time.time(), 0, torch.zeros(2 * policy.cfg.chunk * policy.cfg.action_dim)
    for k in range(args.updates):
        eps, adapter = pgpe.sample(args.starts)
        seeds = torch.randint(100000, 200000, (args.starts,), generator=gen).repeat_interleave(args.group).tolist()
        vi = torch.randint(0, len(names), (args.starts,), generator=gen).repeat_interleave(args.group)

        out = rollout_real(policy_act(policy, table[vi], adapter=adapter), [PUSHT_VARIANTS[names[i]] for i in vi.tolist()], seeds, MAX_STEPS, RADIUS)
        steps += int(out["steps"].sum())
        success = torch.as_tensor(out["success"], dtype=torch.float32)
        stats = pgpe.update(eps, pgpe_fitness(success, torch.as_tensor(out["closest_distance"]), cfg))
        total = compose(total, pgpe.expand(pgpe.last_step))
        print(f"update {k}: success {success.mean():.2f}, informative starts {stats['informative_groups']:.2f}, "
              f"total gain {total[:len(total) // 2].exp().mean():.2f}, mean |bias| "
              f"{total[len(total) // 2:].abs().mean() * policy.cfg.action_scale:.0f} units, {steps} env steps, "
              f"{time.time() - t:.0f} s", flush=True)
    after = real_success()
    print(f"deterministic real success {before:.2f} -> {after:.2f} ({args.updates} updates, {steps} env steps)", flush=True)


def compose(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """The adapter (2 D,) equal to applying ``first``, then ``then``: gains multiply, the first bias is scaled."""
    d = len(first) // 2
    return torch.cat([first[:d] + then[:d], first[d:] * then[:d].exp() + then[d:]])


if __name__ == "__main__":
    main()
