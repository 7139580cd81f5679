"""Does the pixel world model rank PGPE's adapters the way the physics does? (issue 8)

    OMP_NUM_THREADS=2 python -m benchmarks.vla_wm_ranking POLICY MODEL --out runs/wm_ranking.json

PGPE (:mod:`agents.vla.pgpe`) steps by ``lr * mean(adv * eps) / sigma``, ``adv`` the group-relative
fitness of G adapters run from one (start frame, instruction). Imagination can only help if it orders
a group's adapters as the physics does. This rolls the same S x G (start, instruction, adapter)
triples, the deterministic policy under each adapter (``--sigma``), in gym-pusht's physics and in the
world model, and scores every rollout several ways (fitness = success - closest distance / 100):

- ``physics_true``: the physics, the T's true pose (the reference);
- ``physics_heads``: the physics, the learned success / progress heads (their share of the error);
- ``model_pose``: the world model, the T pose it carries (its dynamics' share);
- ``model_heads``: the world model, the learned heads (what post-training in imagination uses);
- ``model_heads_guarded``: the same under the pose guard (a success needs the model's own T in the region);
- ``*_heads_distance``: the heads' closest distance alone, no success term;
- ``physics_perturbed``: with ``--perturb P A``, the physics again from the same starts with the T's
  position moved by N(0, P) world units and its angle by N(0, A) degrees, scored with its true pose:
  how well *any* model whose start pose is off by that much could rank (the noise ceiling; the world
  model's render-and-compare pose is off by ~2 units / 1 degree); with ``--copies N`` > 1, N such
  perturbed physics runs; the mean true fitness per rollout of all but the first is a second reference, ``smoothed``: the
  expected outcome of an adapter near that start, what PGPE's step estimates on average. Every score is
  then also compared with it (``*_smoothed``), ``physics_true`` (one unperturbed rollout) included;

over the first d policy calls for every ``--horizons`` d. Per group: Spearman's rank correlation of
each score with the reference (groups whose reference is constant are skipped); over all groups:
the cosine of each score's PGPE step ``mean(adv * eps)`` with the reference's step. Also the world
model's drift: the mean distance (world units) between its T centroid and the physics' after d calls
of the same (start, instruction, adapter). The world model runs with its flow sampled from noise
(``sampled``) and integrated from the prior's mean (``mean``).

The heads are trained as ``wam vla-posttrain`` trains them: the scripted demonstrations plus the
policy's 100 evaluation episodes (seeds 20000-20099); or read from ``--heads`` (a run's ``success_heads/``). Starts are the first frames of real episodes
(seeds ``--start-seed`` on, instruction i mod 5).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.vla.grpo import closest_distance, group_advantages, grpo_outcomes
from agents.vla.language import InstructionEmbedder
from agents.vla.loop import DemoConfig, collect_demos, concat_rows, evaluate_real, guard_pose, variant_list
from agents.vla.pgpe import VLAPGPE, VLAPGPEConfig, pgpe_fitness
from agents.vla.policy import load_vla
from agents.vla.rollout import SimulatorImagination, rollout_imagined
from agents.vla.success import SuccessConfig, fit_success_heads, load_success_heads
from benchmarks.vla_rl_ceiling import MAX_STEPS, RADIUS, SEED
from tasks.pusht import PUSHT_VARIANTS, block_centroid, make_pusht_env, region_distance, variant_targets
from world_models.checkpoint import load_checkpoint


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (G, N) of every row's values, ties sharing their average rank (1-based)."""
    less = (x[:, :, None] > x[:, None, :]).sum(-1).float()
    equal = (x[:, :, None] == x[:, None, :]).sum(-1).float()
    return less + (equal + 1) / 2


def group_spearman(score: torch.Tensor, reference: torch.Tensor, group: int) -> tuple[float, int]:
    """Mean over groups of Spearman's rho between ``score`` (B,) and ``reference`` (B,) in consecutive
    groups of ``group``, and how many groups count (the reference not constant)."""
    a, b = average_ranks(score.view(-1, group)), average_ranks(reference.view(-1, group))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    ok = b.pow(2).sum(1) > 0
    rho = (a * b).sum(1) / (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt().clamp_min(1e-12)
    return float(rho[ok].mean()) if ok.any() else float("nan"), int(ok.sum())


def pgpe_direction(fitness: torch.Tensor, eps: torch.Tensor, group: int) -> torch.Tensor:
    """PGPE's step direction mean(adv * eps) (P,) of rollouts' fitness (B,) and their eps (B, P)."""
    return (group_advantages(fitness, group)[:, None] * eps).mean(0)


def step_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine between two PGPE step directions (P,)."""
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def pose_fitness(pose: torch.Tensor, targets: np.ndarray, calls: int) -> torch.Tensor:
    """Fitness (B,) from T poses (D + 1, B, 3) on the frames after each call, over the first ``calls`` calls:
    success (closest < radius) - closest distance / 100."""
    dist = torch.as_tensor(region_distance(pose[: calls + 1].double().numpy(), targets[None]))
    closest = dist.min(0).values.float()
    return pgpe_fitness((closest < RADIUS).float(), closest, VLAPGPEConfig())


def heads_fitness(roll: dict[str, torch.Tensor], calls: int, guard_targets: np.ndarray | None = None,
                  success: bool = True) -> torch.Tensor:
    """The post-training fitness (:func:`pgpe_fitness` of the heads' outcome and closest distance) over the first
    ``calls`` calls; with ``guard_targets`` (B, 2) under the pose guard (a success needs the rollout's own T pose in
    the region, :func:`agents.vla.loop.guard_pose`); ``success=False``: the closest distance alone."""
    cut = {k: roll[k][: calls + 1] for k in ("prob", "distance", "flagged")}
    cut["diverged"] = roll["diverged"][:calls]
    if guard_targets is not None:
        cut["object_pose"] = roll["object_pose"][: calls + 1]
        guard_pose(cut, guard_targets, RADIUS)
    outcome = grpo_outcomes(cut) if success else torch.zeros(cut["prob"].shape[1])
    return pgpe_fitness(outcome, closest_distance(cut), VLAPGPEConfig())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="VLA policy folder (save_vla)")
    p.add_argument("model", help="pixel world-model checkpoint folder")
    p.add_argument("--starts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--sigma", type=float, default=VLAPGPEConfig.sigma)
    p.add_argument("--shared", action="store_true",
                   help="4 adapter numbers (one gain and bias per action dimension); default: 16, one per chunk entry")
    p.add_argument("--decisions", type=int, default=38, help="policy calls per rollout (x chunk steps)")
    p.add_argument("--horizons", type=int, nargs="+", default=[8, 16, 24, 38])
    p.add_argument("--modes", nargs="*", choices=["sampled", "mean"], default=["sampled", "mean"],
                   help="world-model modes to roll (none: the physics alone, e.g. with --perturb)")
    p.add_argument("--start-seed", type=int, default=70000)
    p.add_argument("--heads-steps", type=int, default=1000)
    p.add_argument("--heads", type=Path, default=None, help="saved success heads (run_dir/success_heads) instead of training them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perturb", type=float, nargs=2, default=None, metavar=("UNITS", "DEGREES"),
                   help="also roll the physics from T poses perturbed by this std (the noise ceiling)")
    p.add_argument("--copies", type=int, default=1, help="with --perturb: perturbed physics runs; > 1 adds the smoothed reference")
    p.add_argument("--out", type=Path, default=None, help="JSON of the results")
    args = p.parse_args()
    if args.copies < 1 or (args.copies > 1 and not args.perturb):
        p.error(f"--copies must be >= 1 and needs --perturb when > 1, got {args.copies}")
    if max(args.horizons) > args.decisions:
        p.error(f"--horizons must be <= --decisions {args.decisions}")

    t0 = time.time()
    embedder = InstructionEmbedder("cpu")
    names = list(PUSHT_VARIANTS)
    table = embedder([PUSHT_VARIANTS[n].instruction for n in names])
    policy = load_vla(args.policy, embedder=embedder)
    model, _, _ = load_checkpoint(args.model)
    model.eval()
    targets = variant_targets(PUSHT_VARIANTS)

    if args.heads:
        heads, calib = load_success_heads(args.heads)
    else:
        demos = collect_demos(PUSHT_VARIANTS, DemoConfig(episodes_per_variant=8), RADIUS)
        evals = evaluate_real(policy, table, PUSHT_VARIANTS, 100, SEED, MAX_STEPS, RADIUS)
        heads, _, calib = fit_success_heads(concat_rows([demos["rows"], evals["rows"]]), targets, table, RADIUS,
                                            SuccessConfig(ensemble=3, steps=args.heads_steps, seed=args.seed), 0.25)
    print(f"heads: held-out {json.dumps({k: round(v, 3) for k, v in calib.items()})} ({time.time() - t0:.0f} s)", flush=True)

    s, g = args.starts, args.group
    vs = variant_list(PUSHT_VARIANTS, s)
    obs, info = zip(*(make_pusht_env(64).reset(seed=args.start_seed + i) for i in range(s)))
    pixels = torch.as_tensor(np.stack([o["pixels"] for o in obs]))
    agent_pos = torch.as_tensor(np.stack([o["agent_pos"] for o in obs])).float()
    block_pose = torch.as_tensor(np.stack([i["block_pose"] for i in info])).float()
    vi = torch.as_tensor([names.index(v.name) for v in vs]).repeat_interleave(g)
    lang, start = table[vi], torch.arange(s).repeat_interleave(g)
    tgt = targets[vi.numpy()]
    eps, adapter = VLAPGPE(policy, VLAPGPEConfig(sigma=args.sigma, group=g, shared=args.shared), args.seed).sample(s)

    def roll(imagination) -> dict[str, torch.Tensor]:
        t = time.time()
        out = rollout_imagined(policy, imagination, heads, start, lang, args.decisions, adapter=adapter,
                               object_pose=True)
        print(f"  {type(imagination).__name__}: {s * g} rollouts x {args.decisions} calls in {time.time() - t:.0f} s", flush=True)
        return out

    physics = roll(SimulatorImagination(agent_pos, block_pose, 64))
    if args.perturb:
        gen = torch.Generator().manual_seed(args.seed + 1)
        std = torch.tensor([args.perturb[0], args.perturb[0], np.deg2rad(args.perturb[1])])
        copies = [roll(SimulatorImagination(agent_pos, block_pose + std * torch.randn(s, 3, generator=gen), 64))
                  for _ in range(args.copies)]
    from wam_env.pixels import PixelImagination

    models = {}
    for mode in args.modes:
        imag = PixelImagination(model, {"pixels": pixels, "agent_pos": agent_pos}, sample=mode == "sampled")
        imag.seed(args.seed)
        models[mode] = roll(imag)

    drifting = {**({"physics_perturbed": copies[0]} if args.perturb else {}), **models}
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "heads_calibration": calib,
                     "horizons": {}}
    for d in args.horizons:
        ref = pose_fitness(physics["object_pose"], tgt, d)
        scores = {"physics_heads": heads_fitness(physics, d), "physics_heads_distance": heads_fitness(physics, d, success=False)}
        if args.perturb:
            scores["physics_perturbed"] = pose_fitness(copies[0]["object_pose"], tgt, d)
        for mode, r in models.items():
            scores[f"model_pose_{mode}"] = pose_fitness(r["object_pose"], tgt, d)
            scores[f"model_heads_{mode}"] = heads_fitness(r, d)
            scores[f"model_heads_guarded_{mode}"] = heads_fitness(r, d, guard_targets=tgt)
            scores[f"model_heads_distance_{mode}"] = heads_fitness(r, d, success=False)
        step = pgpe_direction(ref, eps, g)
        smoothed = smoothed_step = None
        if args.copies > 1:  # (needs --perturb)
            smoothed = torch.stack([pose_fitness(c["object_pose"], tgt, d) for c in copies[1:]]).mean(0)
            smoothed_step = pgpe_direction(smoothed, eps, g)
            scores["physics_true"] = ref
        row: dict = {"true_success": float((ref > 0).float().mean()),
                     "true_fitness_spread": float(ref.view(-1, g).std(1).mean())}
        for name, f in scores.items():
            rho, groups = group_spearman(f, ref, g)
            direction = pgpe_direction(f, eps, g)
            row[name] = {"spearman": rho, "groups": groups, "step_cosine": step_cosine(direction, step)}
            if smoothed is not None:
                row[name].update(spearman_smoothed=group_spearman(f, smoothed, g)[0],
                                 step_cosine_smoothed=step_cosine(direction, smoothed_step))
        for mode, r in drifting.items():
            gap = block_centroid(r["object_pose"][d].double().numpy()) - block_centroid(physics["object_pose"][d].double().numpy())
            row[f"drift_{mode}"] = float(np.linalg.norm(gap, axis=-1).mean())
        results["horizons"][d] = row
        print(f"d={d}: " + json.dumps(row), flush=True)
    results["seconds"] = time.time() - t0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
