"""Parameter-space exploration on a VLA's action chunk: does RL at this budget find a better policy? (issue 8)

    OMP_NUM_THREADS=1 python -m benchmarks.vla_pgpe_ceiling POLICY                  # 16 numbers: a gain and a bias per chunk entry
    OMP_NUM_THREADS=1 python -m benchmarks.vla_pgpe_ceiling POLICY --shared --lr 0.3  # 4 numbers: per action dimension

PPO and GRPO explore with action noise and move every weight (``benchmarks/vla_rl_ceiling.py``:
flat at 467 k env steps even with an oracle reward in the real physics). Here the warm start is
frozen and RL moves an *action adapter* only, ``u' = u * exp(g) + b`` on the deterministic chunk
``u`` (B, chunk * A) (g = b = 0 is the warm start), explored in parameter space (PGPE, Sehnke et al.
2010): every rollout draws its own adapter ``theta = mu + sigma * eps`` (antithetic pairs), rolls
the *deterministic* policy out with it, and ``mu`` follows ``mean(adv * eps) / sigma`` with GRPO's
group-relative advantages of the binary outcome (G rollouts per start and instruction). Rollouts
run in gym-pusht's physics and are scored by the true success (the T's centroid within the radius
of the instructed target within 150 steps), so like ``vla_rl_ceiling`` this measures the RL alone.
Prints the training curve and the deterministic real success before / after (100 episodes, seeds
20000-20099, variant i mod 5).
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.vla.language import InstructionEmbedder
from agents.vla.loop import evaluate_real
from agents.vla.policy import load_vla
from agents.vla.rollout import rollout_real
from tasks.pusht import PUSHT_VARIANTS

RADIUS, MAX_STEPS, SEED = 40.0, 150, 20000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="VLA policy folder (save_vla), e.g. a run's warm_start")
    p.add_argument("--updates", type=int, default=12)
    p.add_argument("--starts", type=int, default=16, help="starts (seed, instruction) per update")
    p.add_argument("--group", type=int, default=8, help="rollouts per start (even: antithetic pairs)")
    p.add_argument("--sigma", type=float, default=0.2, help="exploration std of the adapter's numbers")
    p.add_argument("--lr", type=float, default=0.5, help="step on mu per unit of the PGPE gradient")
    p.add_argument("--shared", action="store_true", help="one gain and bias per action dimension, shared over the chunk")
    p.add_argument("--episodes", type=int, default=100, help="real evaluation episodes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.group % 2:
        p.error("--group must be even (antithetic pairs)")
    torch.set_num_threads(1)

    embedder = InstructionEmbedder("cpu")
    names = list(PUSHT_VARIANTS)
    table = embedder([PUSHT_VARIANTS[n].instruction for n in names])
    policy = load_vla(args.policy, embedder=embedder)
    a, d = policy.cfg.action_dim, policy.cfg.chunk * policy.cfg.action_dim
    n_params = 2 * a if args.shared else 2 * d
    mu = torch.zeros(n_params)
    to_actions = policy.to_actions

    def adapter(theta: torch.Tensor) -> torch.Tensor:
        """(..., n_params) -> (..., 2 d): log-gains then biases of every chunk entry."""
        if not args.shared:
            return theta
        return torch.cat([theta[..., :a].tile(policy.cfg.chunk), theta[..., a:].tile(policy.cfg.chunk)], -1)

    def real_success() -> float:
        m = adapter(mu)
        policy.to_actions = lambda u, state: to_actions(u * m[:d].exp() + m[d:], state)
        out = evaluate_real(policy, table, PUSHT_VARIANTS, args.episodes, SEED, MAX_STEPS, RADIUS)["success_rate"]
        policy.to_actions = to_actions
        return out

    before = real_success()
    print(f"before: deterministic real success {before:.2f}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    t, steps = time.time(), 0
    for k in range(args.updates):
        half = torch.randn(args.starts, args.group // 2, n_params, generator=gen)
        eps = torch.cat([half, -half], 1)
        theta = adapter((mu + args.sigma * eps).reshape(-1, n_params))
        seeds = torch.randint(100000, 200000, (args.starts,), generator=gen).repeat_interleave(args.group).tolist()
        vi = torch.randint(0, len(names), (args.starts,), generator=gen).repeat_interleave(args.group)
        lang = table[vi]

        @torch.no_grad()
        def act(pixels, state, idx, infos):
            i = torch.as_tensor(idx)
            s = torch.as_tensor(state).float()
            u = policy.sample(policy.images(torch.as_tensor(pixels)), s, lang[i], deterministic=True)["u"]
            return to_actions(u * theta[i, :d].exp() + theta[i, d:], s).numpy()

        out = rollout_real(act, [PUSHT_VARIANTS[names[i]] for i in vi.tolist()], seeds, MAX_STEPS, RADIUS)
        steps += int(out["steps"].sum())
        r = torch.as_tensor(out["success"], dtype=torch.float32).view(args.starts, args.group)
        adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + 1e-6)
        mu += args.lr * (adv[..., None] * eps).mean((0, 1)) / args.sigma
        m = adapter(mu)
        print(f"update {k}: success {r.mean():.2f}, informative starts {(r.std(1) > 0).float().mean():.2f}, "
              f"mean gain {m[:d].exp().mean():.2f}, mean |bias| {m[d:].abs().mean() * policy.cfg.action_scale:.0f} units, "
              f"{steps} env steps, {time.time() - t:.0f} s", flush=True)
    after = real_success()
    m = adapter(mu)
    print(f"gains {m[:d].exp().numpy().round(2).tolist()}, biases (units) "
          f"{(m[d:] * policy.cfg.action_scale).numpy().round(0).tolist()}")
    print(f"deterministic real success {before:.2f} -> {after:.2f} ({args.updates} updates, {steps} env steps)", flush=True)


if __name__ == "__main__":
    main()
