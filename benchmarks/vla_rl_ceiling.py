"""What RL post-training can do for a VLA warm start when neither the world model nor the reward is in the way (issue 8).

    OMP_NUM_THREADS=1 python -m benchmarks.vla_rl_ceiling POLICY ppo                          # 32-step snippets from demo rows
    OMP_NUM_THREADS=1 python -m benchmarks.vla_rl_ceiling POLICY ppo --starts resets --decisions 38 --near-fraction 0
    OMP_NUM_THREADS=1 python -m benchmarks.vla_rl_ceiling POLICY grpo --starts resets --decisions 38 --near-fraction 1

Post-training (``agents.vla.loop.post_train``) runs in gym-pusht's physics
(``SimulatorImagination``) and is rewarded by an *oracle* judge instead of the learned success
heads: the T's centroid found by its colour in each frame (``tasks.pusht.centroid_from_frame``, median
error ~2 world units), success = within the region radius of the instructed target. So the only thing
left between the warm start and a better real success rate is the RL itself (algorithm, budget,
starts). Starts: rows of the 40 scripted demos (``demos``, as ``wam vla-posttrain``), or 512 episode
starts of unseen seeds (``resets``). Prints the training curve and the real success of the policy
before and after (100 episodes, seeds 20000-20099, variant i mod 5, deterministic and sampled chunks),
also on 100 episodes whose T starts 40-120 units from the instructed target (``near``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from agents.vla.grpo import VLAGRPOConfig
from agents.vla.language import InstructionEmbedder
from agents.vla.loop import DemoConfig, PostTrainConfig, StartPool, collect_demos, evaluate_real, post_train, variant_list
from agents.vla.policy import load_vla
from agents.vla.ppo import VLAPPOConfig
from tasks.pusht import PUSHT_VARIANTS, centroid_from_frame, make_pusht_env, region_distance

RADIUS, MAX_STEPS, SEED = 40.0, 150, 20000


class ColourJudge:
    """The success heads' ``judge`` interface from the frame's T pixels: ``distance`` (B,) of the T's
    centroid to the instructed target (world units), ``prob`` 1 inside the radius; never flagged."""

    def __init__(self, lang_table: torch.Tensor, targets: torch.Tensor, radius: float):
        self.lang_table, self.targets, self.radius = lang_table, targets, radius

    def judge(self, pixels: torch.Tensor, lang: torch.Tensor) -> dict[str, torch.Tensor]:
        variant = torch.cdist(lang, self.lang_table).argmin(1)
        centre = [centroid_from_frame(p) for p in pixels.cpu().numpy()]
        xy = torch.tensor(np.array([c if c is not None else (256.0, 256.0) for c in centre]), dtype=torch.float32)
        distance = (xy - self.targets[variant]).norm(dim=-1)
        prob = (distance < self.radius).float()
        return {"prob": prob, "std": torch.zeros_like(prob), "distance": distance, "success": prob > 0.5,
                "flagged": torch.zeros_like(prob, dtype=torch.bool)}


def reset_rows(seeds: range) -> dict[str, np.ndarray]:
    """Episode-start rows (``pixels``, ``agent_pos``, ``block_pose``) of gym-pusht resets with ``seeds``."""
    env = make_pusht_env(64)
    rows: dict[str, list] = {"pixels": [], "agent_pos": [], "block_pose": []}
    for s in seeds:
        obs, info = env.reset(seed=s)
        rows["pixels"].append(obs["pixels"])
        rows["agent_pos"].append(obs["agent_pos"])
        rows["block_pose"].append(info["block_pose"])
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


def near_seeds(n: int, lo: float, hi: float, start: int) -> list[int]:
    """Seeds >= ``start`` whose reset puts the T ``lo``..``hi`` units from variant (i mod 5)'s target, for i < n."""
    env = make_pusht_env(64)
    targets = [np.array(v.target) for v in variant_list(PUSHT_VARIANTS, n)]
    seeds, s = [], start
    for target in targets:
        while not lo < region_distance(env.reset(seed=s)[1]["block_pose"], target) < hi:
            s += 1
        seeds.append(s)
        s += 1
    env.close()
    return seeds


def real_success(policy, lang_table: torch.Tensor, near: list[int]) -> dict[str, float]:
    """Real success on the standard seeds and on the near-start seeds, deterministic and sampled chunks."""
    out = {}
    for det in (True, False):
        tag = "det" if det else "sampled"
        for starts, seeds in (("uniform", None), ("near", near)):
            out[f"{starts}_{tag}"] = evaluate_real(policy, lang_table, PUSHT_VARIANTS, len(near), SEED, MAX_STEPS, RADIUS,
                                                   deterministic=det, seeds=seeds)["success_rate"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="VLA policy folder (save_vla), e.g. a run's warm_start")
    p.add_argument("algo", choices=["ppo", "grpo"])
    p.add_argument("--starts", choices=["demos", "resets"], default="demos")
    p.add_argument("--iterations", type=int, default=24)
    p.add_argument("--envs", type=int, default=64)
    p.add_argument("--decisions", type=int, default=8, help="policy calls per rollout (x4 steps); 38 = a whole episode")
    p.add_argument("--near-fraction", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--episodes", type=int, default=100, help="real evaluation episodes per figure")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    embedder = InstructionEmbedder("cpu")
    names = list(PUSHT_VARIANTS)
    lang_table = embedder([PUSHT_VARIANTS[n].instruction for n in names])
    targets = torch.tensor([PUSHT_VARIANTS[n].target for n in names], dtype=torch.float32)
    policy = load_vla(args.policy, embedder=embedder)
    near = near_seeds(args.episodes, RADIUS, 120.0, SEED)
    before = real_success(policy, lang_table, near)
    print("before", before, flush=True)

    demos = collect_demos(PUSHT_VARIANTS, DemoConfig(episodes_per_variant=8), RADIUS)
    rows = demos["rows"] if args.starts == "demos" else reset_rows(range(100000, 100512))
    pool = StartPool(rows, targets.numpy())
    cfg = PostTrainConfig(iterations=args.iterations, rounds=1, envs=args.envs, decisions=args.decisions,
                          near_fraction=args.near_fraction, imagination="simulator", real_check_every=10**9,
                          dynamics_steps=0, video_envs=0)
    t = time.time()
    out = post_train(policy, args.algo, None, ColourJudge(lang_table, targets, RADIUS), lang_table, PUSHT_VARIANTS, pool,
                     demos["rows"], cfg, VLAPPOConfig(lr=args.lr), VLAGRPOConfig(lr=args.lr), MAX_STEPS, RADIUS)
    hist = out["history"]
    success = [h["imagined_success"] for h in hist]
    reward = [h.get("mean_reward", h.get("mean_outcome")) for h in hist]
    print(f"training ({time.time() - t:.0f} s, {args.iterations * args.envs * args.decisions * 4} env steps): "
          f"success per update {np.round(success, 2).tolist()}; mean reward {np.round(reward, 2).tolist()}", flush=True)
    after = real_success(policy, lang_table, near)
    print("after", after, flush=True)
    print("before -> after: " + ", ".join(f"{k} {before[k]:.2f} -> {after[k]:.2f}" for k in before), flush=True)


if __name__ == "__main__":
    main()
