"""Batched rollouts of instruction-following policies: in the real Push-T env and in imagination.

Real: N ``gym_pusht`` envs stepped in lockstep (env i seeded ``seeds[i]``, instructed with
``variants[i]``); the policy is called once per chunk for all running envs. An episode ends
when the T's centroid enters the variant's region (success) or after ``max_steps`` actions.
Rows come back in the frame-store layout (see :mod:`world_models.pixel.frames`, with
``block_pose``), so they feed the world model and the success heads.

Imagination: a :class:`~wam_env.pixels.PixelImagination` started from given real frames;
each policy call's chunk is imagined step by step, the success heads judge the frame after
every chunk. :class:`SimulatorImagination` puts the Push-T physics itself behind the same
``start`` / ``step`` interface: the same post-training with a perfect world model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from agents.vla.pgpe import apply_adapter
from agents.vla.policy import VLAPolicy
from agents.vla.success import SuccessEnsemble
from tasks.pusht import WORLD, PushTVariant, make_pusht_env, region_distance

ROW_FIELDS = ("pixels", "agent_pos", "action", "coverage", "success", "last", "episode", "step", "block_pose")

# act(pixels (n, H, W, 3) uint8, state (n, 2), env indices (n,), infos) -> chunk (n, k, 2) float32
ActFn = Callable[[np.ndarray, np.ndarray, np.ndarray, list], np.ndarray]


def policy_act(policy: VLAPolicy, lang: torch.Tensor, deterministic: bool = True,
               adapter: torch.Tensor | None = None) -> ActFn:
    """An :data:`ActFn` of a VLA policy; ``lang`` (N, L) holds env i's instruction embedding and
    ``adapter`` (N, 2 * chunk * A), when given, env i's action adapter (see :func:`adapted_sample`)."""
    dev = policy.log_std.device

    @torch.no_grad()
    def act(pixels: np.ndarray, state: np.ndarray, idx: np.ndarray, infos: list) -> np.ndarray:
        i = torch.as_tensor(idx, device=dev)
        out = adapted_sample(policy, policy.images(torch.as_tensor(pixels, device=dev)),
                             torch.as_tensor(state, device=dev).float(), lang[i], deterministic,
                             None if adapter is None else adapter[i])
        return out["actions"].cpu().numpy()

    return act


def adapted_sample(policy: VLAPolicy, img: torch.Tensor, state: torch.Tensor, lang: torch.Tensor, deterministic: bool,
                   adapter: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:meth:`VLAPolicy.sample`, or with per-row ``adapter`` (B, 2 * chunk * A) the deterministic chunk
    under it (PGPE's exploration, :func:`agents.vla.pgpe.apply_adapter`): then ``u`` is the adapted
    chunk and ``log_prob`` that of the unadapted one."""
    out = policy.sample(img, state, lang, deterministic=deterministic or adapter is not None)
    if adapter is None:
        return out
    u = apply_adapter(out["u"], adapter)
    return {**out, "u": u, "actions": policy.to_actions(u, state)}


def batch_dict_act(policy, instructions: list[str]) -> ActFn:
    """An :data:`ActFn` of any policy with LeRobot's ``predict_action_chunk(batch)`` -> (B, chunk, A)
    (a LeRobot policy, a :class:`VLAPolicy`): the batch dict carries ``observation.image`` (B, 3, H, W)
    float in [0, 1], ``observation.state`` (B, 2) and ``task`` (env i's instruction ``instructions[i]``)."""

    @torch.no_grad()
    def act(pixels: np.ndarray, state: np.ndarray, idx: np.ndarray, infos: list) -> np.ndarray:
        batch = {"observation.image": torch.as_tensor(pixels).permute(0, 3, 1, 2).float() / 255.0,
                 "observation.state": torch.as_tensor(state).float(), "task": [instructions[i] for i in idx]}
        return np.asarray(policy.predict_action_chunk(batch).cpu(), np.float32)

    return act


def rollout_real(act: ActFn, variants: list[PushTVariant], seeds: list[int], max_steps: int, radius: float,
                 size: int = 64, frames_of: int = 0, stop_on_success: bool = True, progress: bool = False) -> dict:
    """Run ``len(seeds)`` real episodes in lockstep (each ends at its first success unless
    ``stop_on_success`` is False, then after ``max_steps``). Returns ``success`` (N,) bool (the
    region was reached), ``steps`` (N,) actions taken until the first success (or all of them),
    ``final_distance`` and ``closest_distance`` (N,) world units (the T's centroid to the instructed
    target at the end, and the closest it came), ``rows`` (frame-store rows, episode i = env i) and
    ``frames`` (frames_of, T, H, W, 3) uint8 of the first ``frames_of`` envs (padded with their last frame)."""
    from tqdm import tqdm

    n = len(seeds)
    if len(variants) != n:
        raise ValueError(f"{len(variants)} variants for {n} seeds")
    envs = [make_pusht_env(size) for _ in range(n)]
    targets = np.array([v.target for v in variants], dtype=np.float64)
    obs, infos = map(list, zip(*(e.reset(seed=int(s)) for e, s in zip(envs, seeds))))
    cov = [float(e.unwrapped._get_coverage()) for e in envs]
    rows: list[dict[str, list]] = [{k: [] for k in ROW_FIELDS} for _ in range(n)]
    done = np.zeros(n, bool)
    success = np.zeros(n, bool)
    steps = np.zeros(n, int)
    closest = region_distance(np.stack([info["block_pose"] for info in infos]), targets)
    t = np.zeros(n, int)
    queue: list[list[np.ndarray]] = [[] for _ in range(n)]
    frames: list[list[np.ndarray]] = [[o["pixels"]] for o in obs[:frames_of]]

    def record(i: int, action: np.ndarray, last: bool) -> None:
        r = rows[i]
        inside = bool(region_distance(infos[i]["block_pose"], targets[i]) < radius)  # this frame's T in the region
        for k, v in (("pixels", obs[i]["pixels"]), ("agent_pos", obs[i]["agent_pos"]), ("action", action),
                     ("coverage", cov[i]), ("success", inside), ("last", last), ("episode", i), ("step", t[i]),
                     ("block_pose", infos[i]["block_pose"])):
            r[k].append(v)

    bar = tqdm(total=max_steps, desc="real rollouts", disable=not progress)
    while not done.all():
        need = np.array([i for i in range(n) if not done[i] and not queue[i]], dtype=int)
        if len(need):
            chunk = act(np.stack([obs[i]["pixels"] for i in need]), np.stack([obs[i]["agent_pos"] for i in need]), need,
                        [infos[i] for i in need])
            for j, i in enumerate(need):
                queue[i] = list(chunk[j])
        for i in np.flatnonzero(~done):
            a = np.clip(np.asarray(queue[i].pop(0), np.float32), 0.0, 512.0)
            record(i, a, False)
            obs[i], _, _, _, infos[i] = envs[i].step(a)
            cov[i] = float(infos[i]["coverage"])
            t[i] += 1
            if not success[i]:
                steps[i] = t[i]
            dist = region_distance(infos[i]["block_pose"], targets[i])
            closest[i] = min(closest[i], dist)
            success[i] |= bool(dist < radius)
            if i < frames_of:
                frames[i].append(obs[i]["pixels"])
            if (success[i] and stop_on_success) or t[i] >= max_steps:
                done[i] = True
                record(i, np.zeros(2, np.float32), True)
        bar.update(1)
    bar.close()
    for e in envs:
        e.close()
    flat = {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in ROW_FIELDS}
    flat["pixels"] = flat["pixels"].astype(np.uint8)
    for k in ("agent_pos", "action", "coverage", "block_pose"):
        flat[k] = flat[k].astype(np.float32)
    final = np.array([region_distance(infos[i]["block_pose"], targets[i]) for i in range(n)])
    t_max = max((len(f) for f in frames), default=0)
    vid = np.stack([np.stack(f + [f[-1]] * (t_max - len(f))) for f in frames]) if frames else np.zeros((0,), np.uint8)
    return {"success": success, "steps": steps, "final_distance": final, "closest_distance": closest, "rows": flat,
            "frames": vid}


class SimulatorImagination:
    """The real Push-T physics behind :class:`~wam_env.pixels.PixelImagination`'s ``start`` / ``step``.

    The ablation that separates the world model's share of a post-training result from the
    RL's and the reward heads': episodes start from the full states of stored real rows (pusher
    position and T pose; the pusher at rest) and are stepped by ``gym_pusht``.

    Args:
        agent_pos: (S, 2) pusher positions of the start rows (world units).
        block_pose: (S, 3) T poses (x, y, angle) of the same rows.
        size: frame size.
        device: where the returned frames and states live.
    """

    def __init__(self, agent_pos: torch.Tensor, block_pose: torch.Tensor, size: int, device: str | torch.device = "cpu"):
        if agent_pos.ndim != 2 or agent_pos.shape[1] != 2 or block_pose.shape != (agent_pos.shape[0], 3):
            raise ValueError(f"agent_pos must be (S, 2) and block_pose (S, 3), got {tuple(agent_pos.shape)} and {tuple(block_pose.shape)}")
        self.states = torch.cat([agent_pos, block_pose], 1).double().cpu().numpy()  # (S, 5): pusher x, y; T x, y, angle
        self.size, self.device = size, torch.device(device)
        self.envs: list = []

    def seed(self, seed: int) -> None:
        """The physics is deterministic; kept for the interface."""

    def _frames(self, obs: list[dict]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.as_tensor(np.stack([o["pixels"] for o in obs]), device=self.device),
                "obs": torch.as_tensor(np.stack([o["agent_pos"] for o in obs]), device=self.device).float()}

    def start(self, n: int, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``n`` episodes from the start rows ``index`` (n,): carry ``pixels`` (n, H, W, 3) uint8, ``obs`` (n, 2)."""
        pick = torch.as_tensor(index).cpu().numpy()
        if pick.shape != (n,) or (pick < 0).any() or (pick >= len(self.states)).any():
            raise ValueError(f"start index must be ({n},) in [0, {len(self.states)}), got {pick.shape}")
        for _ in range(n - len(self.envs)):
            self.envs.append(make_pusht_env(self.size))
            self.envs[-1].reset(seed=0)  # builds the bodies
        # gym_pusht's reset_to_state sets the T's position before its angle, and the angle turns the
        # body about its centre of gravity g: ask for p - (g - R(angle) g) to get the stored pose p
        g = np.asarray(self.envs[0].unwrapped.block.center_of_gravity, np.float64)
        states = self.states[pick].copy()
        c, s = np.cos(states[:, 4]), np.sin(states[:, 4])
        states[:, 2] -= g[0] - (c * g[0] - s * g[1])
        states[:, 3] -= g[1] - (s * g[0] + c * g[1])
        obs = [e.reset(options={"reset_to_state": st})[0] for e, st in zip(self.envs, states)]
        return self._frames(obs)

    def object_pose(self, carry: dict[str, torch.Tensor]) -> torch.Tensor:
        """The T's true pose (n, 3) (x, y, angle rad) in every episode of ``carry``."""
        bodies = [e.unwrapped.block for e in self.envs[:len(carry["obs"])]]
        return torch.tensor([[*b.position, b.angle] for b in bodies], dtype=torch.float32, device=self.device)

    def step(self, carry: dict[str, torch.Tensor], action: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One physics step of every episode with ``action`` (n, 2) pusher targets (clipped to the table)."""
        a = np.clip(action.detach().cpu().numpy().astype(np.float64), 0.0, WORLD)
        obs = [e.step(ai)[0] for e, ai in zip(self.envs, a)]
        new = self._frames(obs)
        none = torch.zeros(len(a), dtype=torch.bool, device=self.device)
        return new, {**new, "diverged": none, "uncertain": none, "uncertainty": torch.zeros(len(a), device=self.device)}


@torch.no_grad()
def rollout_imagined(policy: VLAPolicy, imagination, success: SuccessEnsemble, start: torch.Tensor, lang: torch.Tensor,
                     decisions: int, deterministic: bool = False, keep_frames: int = 0,
                     adapter: torch.Tensor | None = None, object_pose: bool = False) -> dict[str, torch.Tensor]:
    """Imagine ``decisions`` policy calls (each a chunk of ``policy.cfg.chunk`` steps) from real
    start frames ``start`` (B,) (indices into ``imagination.start_pixels``) under instructions
    ``lang`` (B, L). ``adapter`` (B, 2 * chunk * A): each rollout's action adapter on the deterministic
    chunk (PGPE's exploration, :func:`agents.vla.pgpe.apply_adapter`); then ``u`` is the adapted chunk and
    ``log_prob`` that of the unadapted one.

    Returns (time first, D = decisions): ``pixels`` (D + 1, B, H, W, 3) uint8 and ``state``
    (D + 1, B, 2) the frames the policy saw (and the last one), ``u`` (D, B, chunk * A),
    ``log_prob`` (D, B), ``prob`` / ``std`` / ``distance`` / ``flagged`` (D + 1, B) the success
    heads' verdicts on each of those frames, ``diverged`` (D, B) bool (the model broke down, or was uncertain,
    during the chunk or before), ``uncertainty`` (D, B) the largest ``uncertainty`` of the imagination's steps
    during the chunk (world units: the object-dynamics members' spread; zeros for one member or the physics),
    ``uncertain`` (D, B) bool (the imagination's ``uncertain``: the model's dynamics members disagreed beyond
    its limit, during the chunk or before),
    ``video`` (keep_frames, D * chunk + 1, H, W, 3) every imagined frame of the first envs, and, asked
    for with ``object_pose`` and when the imagination carries the T's pose (the physics; a world model with an
    object head), ``object_pose`` (D + 1, B, 3) (x, y, angle rad) on those frames.
    """
    b = len(start)
    carry = imagination.start(b, index=start)
    pix, st, us, lps, divs, unsure, spread = [carry["pixels"]], [carry["obs"].float()], [], [], [], [], []
    video = [carry["pixels"][:keep_frames]]
    broken = torch.zeros(b, dtype=torch.bool, device=lang.device)
    uncertain = torch.zeros_like(broken)
    poses = [imagination.object_pose(carry) if object_pose else None]
    for _ in range(decisions):
        img = policy.images(carry["pixels"])
        out = adapted_sample(policy, img, carry["obs"].float(), lang, deterministic, adapter)
        chunk_spread = torch.zeros(b, device=lang.device)
        for k in range(policy.cfg.chunk):
            carry, step = imagination.step(carry, out["actions"][:, k].contiguous())
            chunk_spread = torch.maximum(chunk_spread, step["uncertainty"].float())
            uncertain = uncertain | step["uncertain"]
            broken = broken | step["diverged"] | uncertain
            video.append(carry["pixels"][:keep_frames])
        pix.append(carry["pixels"])
        if poses[0] is not None:
            poses.append(imagination.object_pose(carry))
        st.append(carry["obs"].float())
        us.append(out["u"])
        lps.append(out["log_prob"])
        divs.append(broken.clone())
        unsure.append(uncertain.clone())
        spread.append(chunk_spread)
    pixels = torch.stack(pix)
    judged = success.judge(pixels.flatten(0, 1), lang.repeat(decisions + 1, 1))
    shape = (decisions + 1, b)
    out = {"pixels": pixels, "state": torch.stack(st), "u": torch.stack(us), "log_prob": torch.stack(lps),
           "prob": judged["prob"].view(shape), "std": judged["std"].view(shape), "distance": judged["distance"].view(shape),
           "flagged": judged["flagged"].view(shape), "diverged": torch.stack(divs),
           "uncertainty": torch.stack(spread), "uncertain": torch.stack(unsure), "video": torch.stack(video, dim=1)}
    if poses[0] is not None:
        out["object_pose"] = torch.stack(poses)
    return out
