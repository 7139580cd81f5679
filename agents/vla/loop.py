"""The World-VLA-Loop on Push-T: warm start, post-training in imagination, real checks, model refinement.

1. demonstrations: the scripted pusher per language variant in the real env (noisy, few);
2. behaviour cloning -> the warm-start policy;
3. success heads on real frames (demos + the warm start's real episodes), calibrated on
   held-out real episodes;
4. post-training (PPO, GRPO or PGPE) on imagined rollouts from real start frames, rewarded by the
   success heads; every ``real_check_every`` iterations the policy runs in the real env, the
   imagined outcome from the very same start frames is logged beside the real one, and those
   real episodes join the frame store;
5. after each round but the last, the world model's dynamics is fine-tuned on the stored real
   rows (tokenizer frozen) and post-training resumes.

The policy's gradient only ever sees imagined rollouts; real episodes serve the checks, the
success heads and the world model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from agents.vla.grpo import VLAGRPO, VLAGRPOConfig, closest_distance, grpo_outcomes, judged_success
from agents.vla.pgpe import VLAPGPE, VLAPGPEConfig, pgpe_fitness
from agents.vla.policy import VLAPolicy
from agents.vla.ppo import VLAPPO, VLAPPOConfig
from agents.vla.rollout import SimulatorImagination, policy_act, rollout_imagined, rollout_real
from agents.vla.success import SuccessEnsemble
from tasks.pusht import PushPolicy, PushTVariant, block_centroid, region_distance, variant_targets


@dataclass
class DemoConfig:
    """Scripted demonstrations per variant (deliberately imperfect)."""

    episodes_per_variant: int = 40
    noise: float = 20.0          # std (world units) of the pusher's action noise
    random_prob: float = 0.1     # share of uniformly random actions
    max_steps: int = 150
    seed: int = 1000


POST_TRAINING_ALGOS = ("ppo", "grpo", "pgpe")  # post_train's algo
IMAGINATION_BACKENDS = ("world_model", "simulator")  # what post-training rolls out in (PostTrainConfig.imagination)


@dataclass
class PostTrainConfig:
    """Post-training in imagination and the loop around it."""

    iterations: int = 8             # updates per round
    rounds: int = 2                 # rounds; the world model is refined between rounds
    envs: int = 128                 # imagined rollouts per update (PPO; GRPO: starts x group)
    decisions: int = 8              # policy calls per imagined rollout (x chunk env steps)
    real_check_every: int = 4       # iterations between real checks
    real_check_episodes: int = 20   # real episodes per check (spread over the variants)
    real_check_seed: int = 50000
    keep_best: bool = False         # end with the policy of the best real check (the starting policy is checked too; ties: the later)
    dynamics_steps: int = 150       # world-model fine-tuning steps per refinement, DiT and each group of heads (0: no refinement)
    dynamics_batch: int = 16
    dynamics_lr: float = 2e-4
    near_fraction: float = 0.5      # share of imagined starts with the T within near_distance of the instructed target
    near_distance: float = 120.0    # world units
    video_envs: int = 4             # imagined rollouts kept as GIF frames at the last iteration
    imagination: str = "world_model"  # "world_model", or "simulator": the Push-T physics in its place (ablation)
    precision: str = "float32"      # or "bfloat16": the world model's DiT and tokenizer while imagining (PixelImagination)
    max_spread: float | None = None  # world units: an imagined frame after the object-dynamics members disagree by more is untrusted
    common_noise: bool = False      # rollouts from the same start frame (a PGPE / GRPO group) meet the same model draws
    explore_std: float | None = None  # exploration std (world units) the post-trained policy starts from; None: the warm start's
    pose_guard: bool = False        # an imagined success also needs the model's own T pose in the region (an object head)
    seed: int = 0

    def imagination_options(self) -> dict:
        """Keyword arguments of :class:`~wam_env.pixels.PixelImagination` this config sets."""
        return {"precision": self.precision, "max_spread": self.max_spread, "common_noise": self.common_noise}


def variant_list(variants: dict[str, PushTVariant], n: int) -> list[PushTVariant]:
    """Episode i gets variant i mod V: evaluations spread evenly over the variants."""
    vs = list(variants.values())
    return [vs[i % len(vs)] for i in range(n)]


def collect_demos(variants: dict[str, PushTVariant], cfg: DemoConfig, radius: float, size: int = 64,
                  progress: bool = False) -> dict:
    """Real episodes of the scripted pusher (true block pose, noise) toward each variant's target;
    returns :func:`rollout_real`'s dict plus ``variant`` (N,) the variant index of every row."""
    vs = variant_list(variants, cfg.episodes_per_variant * len(variants))
    seeds = [cfg.seed + i for i in range(len(vs))]
    pushers = [PushPolicy(noise=cfg.noise, random_prob=cfg.random_prob, goal=v.target, seed=s) for v, s in zip(vs, seeds)]

    def act(pixels, state, idx, infos):
        return np.stack([pushers[i].act({"pixels": p, "agent_pos": s}, block_centroid(info["block_pose"]))[None]
                         for p, s, i, info in zip(pixels, state, idx, infos)])

    out = rollout_real(act, vs, seeds, cfg.max_steps, radius, size, stop_on_success=False, progress=progress)
    names = list(variants)
    out["variant"] = np.array([names.index(vs[e].name) for e in out["rows"]["episode"]])
    return out


def evaluate_real(policy: VLAPolicy, lang_table: torch.Tensor, variants: dict[str, PushTVariant], episodes: int,
                  seed: int, max_steps: int, radius: float, size: int = 64, frames_of: int = 0,
                  deterministic: bool = True, progress: bool = False, seeds: list[int] | None = None) -> dict:
    """Real episodes, seeds ``seed .. seed + episodes - 1`` (or the given ``seeds``, one per episode),
    variant i mod V, with the deterministic chunk or (``deterministic=False``) sampled chunks (torch's
    generator seeded with ``seed``); adds ``success_rate``, ``per_variant`` success rates (of the variants
    that had an episode) and ``variant`` (episodes,)."""
    seeds = [seed + i for i in range(episodes)] if seeds is None else list(seeds)
    if len(seeds) != episodes:
        raise ValueError(f"{len(seeds)} seeds for {episodes} episodes")
    vs = variant_list(variants, episodes)
    names = list(variants)
    vi = np.array([names.index(v.name) for v in vs])
    with torch.random.fork_rng():  # sampled chunks are reproducible and leave the caller's generator alone
        torch.manual_seed(seed)
        out = rollout_real(policy_act(policy, lang_table[torch.as_tensor(vi)], deterministic=deterministic), vs, seeds,
                           max_steps, radius, size, frames_of=frames_of, progress=progress)
    out["variant"] = vi
    out["success_rate"] = float(out["success"].mean())
    out["per_variant"] = {n: float(out["success"][vi == k].mean()) for k, n in enumerate(names) if (vi == k).any()}
    return out


class StartPool:
    """Real frames imagined episodes start from: ``pixels`` (S, H, W, 3) uint8, ``agent_pos`` (S, 2)
    and, when the rows carry ``block_pose``, ``block_pose`` (S, 3) and ``distance`` (S, V) of the T
    to every variant's target."""

    def __init__(self, rows: dict[str, np.ndarray], targets: np.ndarray | None = None):
        self.targets = targets
        self.pixels = torch.as_tensor(rows["pixels"])
        self.agent_pos = torch.as_tensor(rows["agent_pos"]).float()
        self.block_pose = torch.as_tensor(rows["block_pose"]).float() if "block_pose" in rows else None
        self.distance = self._distance(rows)

    @classmethod
    def first_frames(cls, rows: dict[str, np.ndarray]) -> StartPool:
        """The first frame of every episode in ``rows`` (e.g. :func:`evaluate_real`'s), start i = the i-th
        episode: to imagine those episodes again from where they began."""
        first = rows["step"] == 0
        return cls({k: rows[k][first] for k in ("pixels", "agent_pos", "block_pose")})

    def _distance(self, rows: dict[str, np.ndarray]) -> torch.Tensor | None:
        if self.targets is None or "block_pose" not in rows:
            return None
        from agents.vla.success import variant_distances

        return variant_distances(rows["block_pose"], self.targets)

    def add(self, rows: dict[str, np.ndarray]) -> None:
        self.pixels = torch.cat([self.pixels, torch.as_tensor(rows["pixels"])])
        self.agent_pos = torch.cat([self.agent_pos, torch.as_tensor(rows["agent_pos"]).float()])
        if self.block_pose is not None:
            self.block_pose = torch.cat([self.block_pose, torch.as_tensor(rows["block_pose"]).float()])
        if self.distance is not None:
            self.distance = torch.cat([self.distance, self._distance(rows)])

    def sample(self, n: int, variants: int, gen: torch.Generator, near_fraction: float = 0.0, near: tuple[float, float] = (0.0, 0.0),
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (start index, variant index) pairs: a share ``near_fraction`` of them with the T
        between ``near[0]`` and ``near[1]`` world units of the instructed target (a curriculum of
        reachable goals), the rest uniform."""
        start = torch.randint(0, len(self.pixels), (n,), generator=gen)
        vi = torch.randint(0, variants, (n,), generator=gen)
        k = int(round(n * near_fraction))
        if k and self.distance is not None:
            ok = ((self.distance > near[0]) & (self.distance < near[1])).nonzero()
            if len(ok):
                pick = ok[torch.randint(0, len(ok), (k,), generator=gen)]
                start[:k], vi[:k] = pick[:, 0], pick[:, 1]
        return start, vi

    def imagination(self, model, device: str | torch.device, backend: str = "world_model", **options):
        """Episodes from these starts: inside ``model`` (a :class:`PixelWorldModel`; backend "world_model",
        ``options`` are :class:`~wam_env.pixels.PixelImagination`'s: ``precision``, ``max_spread``,
        ``common_noise``) or in the Push-T physics (backend "simulator", needs ``block_pose``; no options)."""
        if backend not in IMAGINATION_BACKENDS:
            raise ValueError(f"post_train.imagination must be {' or '.join(map(repr, IMAGINATION_BACKENDS))}, got {backend!r}")
        if backend == "simulator":
            if self.block_pose is None:
                raise ValueError("the simulator backend needs start rows with 'block_pose'")
            return SimulatorImagination(self.agent_pos, self.block_pose, self.pixels.shape[1], device)
        from wam_env.pixels import PixelImagination

        return PixelImagination(model, {"pixels": self.pixels, "agent_pos": self.agent_pos}, device, **options)


def post_train(policy: VLAPolicy, algo: str, model, success: SuccessEnsemble, lang_table: torch.Tensor,
               variants: dict[str, PushTVariant], pool: StartPool, base_rows: dict[str, np.ndarray], cfg: PostTrainConfig,
               ppo: VLAPPOConfig, grpo: VLAGRPOConfig, max_steps: int, radius: float, frame_store=None,
               device: str | torch.device = "cpu", progress: bool = False, pgpe: VLAPGPEConfig | None = None) -> dict:
    """Post-train ``policy`` in place with ``algo`` ("ppo" | "grpo" | "pgpe", the last with ``pgpe``'s
    config, default :class:`VLAPGPEConfig`) inside ``model`` (a
    :class:`PixelWorldModel`, fine-tuned in place between rounds on ``base_rows`` plus the real
    checks' rows, which are also appended to ``frame_store`` when given). Returns ``history``
    (one dict per iteration: imagined success / flagged / diverged / uncertain rates, losses, and at real
    checks the real success, the paired imagined success and the imagined-success-but-real-failure
    count), ``refinements`` (world-model fine-tuning metrics), ``video`` (imagined frames),
    ``kept`` (with ``cfg.keep_best``: ``updates`` and ``real_success`` of the real check whose policy
    ``policy`` ends with; updates 0 is the starting policy, checked first) and ``seconds``."""
    from world_models.pixel.training import PixelTrainConfig, train_dynamics

    if algo not in POST_TRAINING_ALGOS:
        raise ValueError(f"algo must be one of {POST_TRAINING_ALGOS}, got {algo!r}")
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.explore_std is not None:  # behaviour cloning fits the demos' noise, often far wider than useful exploration
        with torch.no_grad():
            policy.log_std.fill_(math.log(cfg.explore_std / policy.cfg.action_scale))
    pgpe = pgpe or VLAPGPEConfig()
    if algo == "ppo":
        trainer, group = VLAPPO(policy, ppo, cfg.seed), 1
    elif algo == "grpo":
        trainer, group = VLAGRPO(policy, grpo, cfg.seed), grpo.group
    else:
        trainer, group = VLAPGPE(policy, pgpe, cfg.seed), pgpe.group
    if cfg.envs % group:
        raise ValueError(f"post_train.envs {cfg.envs} must be a multiple of {algo}.group {group}")
    v = len(variants)
    targets = variant_targets(variants)
    history, refinements, new_rows, video = [], [], [], None
    imagination = pool.imagination(model, device, cfg.imagination, **cfg.imagination_options())
    imagination.seed(cfg.seed)
    if cfg.pose_guard and imagination.object_pose(imagination.start(1, torch.zeros(1, dtype=torch.long))) is None:
        raise ValueError("post_train.pose_guard needs a world model that carries the T's pose (an object head)")
    it_total, kept = 0, None

    def snapshot(updates: int, real_success: float) -> dict:  # keep_best's candidate: the policy as it is now
        return {"updates": updates, "real_success": real_success, "state": copy.deepcopy(policy.state_dict())}

    if cfg.keep_best:
        check = real_check(policy, model, success, lang_table, variants, cfg, max_steps, radius, device)
        new_rows.append(check.pop("rows"))
        kept = snapshot(0, check["real_success"])
        if progress:
            print(f"[{algo}] real check of the starting policy: {check['real_success']:.3g}", flush=True)
    for rnd in range(cfg.rounds):
        for it in range(cfg.iterations):
            starts, vi = pool.sample(cfg.envs // group, v, gen, cfg.near_fraction, (radius, cfg.near_distance))
            starts, vi = starts.repeat_interleave(group), vi.repeat_interleave(group)
            lang = lang_table[vi].to(device)
            last = it == cfg.iterations - 1 and rnd == cfg.rounds - 1
            eps, adapter = trainer.sample(len(starts) // group) if algo == "pgpe" else (None, None)
            roll = rollout_imagined(policy, imagination, success, starts.to(device), lang, cfg.decisions,
                                    keep_frames=cfg.video_envs if last else 0,
                                    adapter=None if adapter is None else adapter.to(device), object_pose=cfg.pose_guard)
            if cfg.pose_guard:
                guard_pose(roll, targets[vi.numpy()], radius)
            if last:
                video = roll["video"].cpu().numpy()
            outcome = grpo_outcomes(roll)
            if algo == "pgpe":
                stats = trainer.update(eps, pgpe_fitness(outcome, closest_distance(roll), pgpe))
            else:
                stats = trainer.update(roll, lang)
            rec = {"iteration": it_total, "round": rnd, "imagined_success": float(outcome.mean()),
                   "flagged_rate": float(roll["flagged"][1:].any(0).float().mean()),
                   "diverged_rate": float(roll["diverged"][-1].float().mean()),
                   "uncertain_rate": float(roll["uncertain"][-1].float().mean()), **stats}
            it_total += 1
            if it_total % cfg.real_check_every == 0:
                check = real_check(policy, model, success, lang_table, variants, cfg, max_steps, radius, device)
                new_rows.append(check.pop("rows"))
                rec.update(check)
                if kept is not None and check["real_success"] >= kept["real_success"]:
                    kept = snapshot(it_total, check["real_success"])
            history.append(rec)
            if progress:
                print(f"[{algo}] round {rnd} it {it}: " + ", ".join(f"{k} {x:.3g}" for k, x in rec.items()
                                                                    if isinstance(x, float)), flush=True)
        if rnd < cfg.rounds - 1 and cfg.dynamics_steps > 0 and new_rows and cfg.imagination == "world_model":
            loop_rows = concat_rows(new_rows)
            if frame_store is not None:
                frame_store.append({k: loop_rows[k] for k in frame_store.fields})
            pool.add(loop_rows)
            train = concat_rows([base_rows, loop_rows])
            tcfg = PixelTrainConfig(dynamics_steps=cfg.dynamics_steps, dynamics_batch=cfg.dynamics_batch,
                                    dynamics_lr=cfg.dynamics_lr, head_steps=cfg.dynamics_steps,
                                    head_batch=cfg.dynamics_batch, head_lr=cfg.dynamics_lr,
                                    state_head_steps=cfg.dynamics_steps, state_head_batch=cfg.dynamics_batch,
                                    state_head_lr=cfg.dynamics_lr, seed=cfg.seed + rnd)
            metrics = train_dynamics(model, train, tcfg, progress=progress)
            model.eval()
            refinements.append({"round": rnd, "rows": int(len(loop_rows["step"])), **metrics})
            new_rows = []
            imagination = pool.imagination(model, device, **cfg.imagination_options())
            imagination.seed(cfg.seed + rnd + 1)
    if kept is not None:
        policy.load_state_dict(kept.pop("state"))
        if progress:
            print(f"[{algo}] kept the policy after {kept['updates']} updates (real check {kept['real_success']:.3g})", flush=True)
    return {"history": history, "refinements": refinements, "video": video, "kept": kept, "seconds": time.time() - t0}


def guard_pose(roll: dict[str, torch.Tensor], targets: np.ndarray, radius: float) -> None:
    """The pose guard: add ``pose_inside`` (D + 1, B) to an imagined rollout carrying ``object_pose`` (D + 1, B, 3),
    True where the imagination's own T is within ``radius`` of the rollout's target (``targets`` (B, 2), world
    units); :func:`agents.vla.grpo.judged_success` then counts a success only there."""
    dist = region_distance(roll["object_pose"].cpu().numpy(), targets)
    roll["pose_inside"] = torch.as_tensor(dist < radius, device=roll["prob"].device)


def real_check(policy: VLAPolicy, model, success: SuccessEnsemble, lang_table: torch.Tensor,
               variants: dict[str, PushTVariant], cfg: PostTrainConfig, max_steps: int, radius: float,
               device: str | torch.device) -> dict:
    """Real success of the current policy (deterministic, fixed seeds) and, from the same first
    frames and instructions, the imagined outcome (:func:`paired_imagination`); ``rows`` the real rows."""
    real = evaluate_real(policy, lang_table, variants, cfg.real_check_episodes, cfg.real_check_seed, max_steps, radius,
                         policy.cfg.image_size)
    paired = paired_imagination(policy, model, success, lang_table, real, cfg.decisions, radius, variant_targets(variants), device,
                                cfg.imagination, cfg.seed, **cfg.imagination_options())
    return {"real_success": real["success_rate"], **paired, "rows": real["rows"]}


def paired_imagination(policy: VLAPolicy, model, success: SuccessEnsemble, lang_table: torch.Tensor, real: dict,
                       decisions: int, radius: float, targets: np.ndarray, device: str | torch.device,
                       backend: str = "world_model", seed: int = 0, **options) -> dict:
    """Imagine the real episodes ``real`` (:func:`evaluate_real`'s output) again: from their first frames, under
    their instructions, the deterministic chunk for ``decisions`` calls (``horizon`` = decisions x chunk steps),
    and compare the outcomes episode by episode.

    Returns ``real_success_within_horizon``, ``paired_imagined_success`` (rates), ``imagined_successes`` and
    ``imagined_false_success`` (imagined successes whose real episode did not succeed within the horizon),
    ``imagined_closest_distance`` (the mean over episodes of the closest the progress head saw the T come to the
    target, world units: PGPE's progress term), ``uncertain_rollouts`` (the share that became uncertain: the
    imagination's ``max_spread``); when the imagination carries the T's pose (``targets`` (V, 2) the variants'
    targets, world units), also ``imagined_successes_pose_agrees`` / ``imagined_false_success_pose_agrees``: those
    imagined successes where the imagination's own T was in the region at a frame the heads called a success (a
    false one of these is the dynamics' error; one without is the heads' error on an imagined frame)."""
    imag = StartPool.first_frames(real["rows"]).imagination(model, device, backend, **options)
    imag.seed(seed)
    n = len(real["success"])
    vi = torch.as_tensor(real["variant"])
    roll = rollout_imagined(policy, imag, success, torch.arange(n, device=device), lang_table[vi].to(device), decisions,
                            deterministic=True, object_pose=True)
    imagined = judged_success(roll).any(0).cpu().numpy()  # the heads' verdict alone
    real_h = real["success"] & (real["steps"] <= decisions * policy.cfg.chunk)
    out = {"real_success_within_horizon": float(real_h.mean()), "paired_imagined_success": float(imagined.mean()),
           "imagined_successes": int(imagined.sum()), "imagined_false_success": int((imagined & ~real_h).sum()),
           "imagined_closest_distance": float(closest_distance(roll).mean()),
           "uncertain_rollouts": float(roll["uncertain"][-1].float().mean())}
    if "object_pose" in roll:
        guard_pose(roll, targets[real["variant"]], radius)
        agrees = judged_success(roll).any(0).cpu().numpy()
        out.update(imagined_successes_pose_agrees=int(agrees.sum()),
                   imagined_false_success_pose_agrees=int((agrees & ~real_h).sum()))
    return out


def concat_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate frame rows, renumbering episodes so they stay distinct."""
    out: dict[str, list] = {}
    offset = 0
    for p in parts:
        for k, x in p.items():
            out.setdefault(k, []).append(x + offset if k == "episode" else x)
        offset += int(p["episode"].max()) + 1 if len(p["episode"]) else 0
    return {k: np.concatenate(x) for k, x in out.items()}
