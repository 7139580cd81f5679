"""Push-T with camera frames (``gym-pusht``, the ``pixels`` extra): the pixel world models' task.

The real env is ``gym_pusht/PushT-v0`` with ``obs_type="pixels_agent_pos"``: observations are
``{"pixels": (H, W, 3) uint8, "agent_pos": (2,) float}``, actions a target position of the
pusher in [0, 512]^2 (PD-tracked), reward clip(coverage / 0.95, 0, 1) per step, the episode
ends when coverage > 0.95. Frame pixel (u, v) shows world point ((u + 0.5) * 512 / W, (v + 0.5) * 512 / H).

Policies here act on what a camera and the pusher's encoder give (the observation dict), so
the very same code runs in the real env and in the imagined one: :class:`PushPolicy` finds
the T by its colour in the frame and pushes its centroid toward the goal's.
:func:`collect_pusht` records episodes (frames, agent state, actions, coverage) with the
scripted pusher using the true block pose plus noise.

Language variants (:data:`PUSHT_VARIANTS`): the same env, but the instruction names a target
region for the T (centre, or one of four corners); success is the T's centroid within
:data:`REGION_RADIUS` of the region's centre. The frame never shows the target (gym-pusht
draws its own goal T, the same in every variant), so a policy must read the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.base import Task

PUSHT = Task(
    name="pusht",
    env_id="gym_pusht/PushT-v0",
    max_episode_steps=300,
    env_kwargs={"obs_type": "pixels_agent_pos", "render_mode": "rgb_array", "observation_width": 64, "observation_height": 64},
)
WORLD = 512.0
SUCCESS_COVERAGE = 0.95
GOAL_POSE = (256.0, 256.0, np.pi / 4)
T_CENTROID = np.array([0.0, 40.71])  # centroid of the T in its body frame (bar 120x30 over a 30x90 stem)
BLOCK_RGB = np.array([119.0, 136.0, 153.0])  # LightSlateGray


class MissingExtraError(ImportError):
    """An optional dependency (an extra of the wam package) is not installed."""


@dataclass(frozen=True)
class PushTVariant:
    """A language-specified Push-T task: push the T's centroid to ``target`` (world units)."""

    name: str
    instruction: str
    target: tuple[float, float]


REGION_RADIUS = 40.0  # world units: the T's centroid this close to a variant's target counts as success
PUSHT_VARIANTS: dict[str, PushTVariant] = {v.name: v for v in (
    PushTVariant("center", "push the T block to the center", (256.0, 256.0)),
    PushTVariant("top_left", "push the T block to the top left corner", (150.0, 150.0)),
    PushTVariant("top_right", "push the T block to the top right corner", (362.0, 150.0)),
    PushTVariant("bottom_left", "push the T block to the bottom left corner", (150.0, 362.0)),
    PushTVariant("bottom_right", "push the T block to the bottom right corner", (362.0, 362.0)),
)}


def variant_targets(variants: dict[str, PushTVariant]) -> np.ndarray:
    """The variants' targets (V, 2), world units, in the dict's order (variant index k = k-th entry)."""
    return np.array([v.target for v in variants.values()], dtype=np.float64)


def region_distance(block_pose: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Distance (world units) of the T's centroid at poses (..., 3) to targets (..., 2)."""
    return np.linalg.norm(block_centroid(block_pose) - np.asarray(target, dtype=np.float64), axis=-1)


def make_pusht_env(size: int = 64, **kwargs):
    """The real Push-T env with (size, size) frames (needs ``pip install wam[pixels]``)."""
    try:
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    except ImportError as e:
        raise MissingExtraError("Push-T needs gym-pusht: pip install 'wam[pixels]'") from e
    import gymnasium as gym

    kw = {**PUSHT.env_kwargs, "observation_width": size, "observation_height": size, **kwargs}
    return gym.make(PUSHT.env_id, max_episode_steps=PUSHT.max_episode_steps, **kw)


def block_centroid(pose: np.ndarray) -> np.ndarray:
    """World centroid (..., 2) of the T at body poses (..., 3) (x, y, angle)."""
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    tx, ty = T_CENTROID
    return np.stack([pose[..., 0] + c * tx - s * ty, pose[..., 1] + s * tx + c * ty], axis=-1)


GOAL_CENTROID = block_centroid(np.array(GOAL_POSE))


def centroid_from_frame(pixels: np.ndarray, tolerance: float = 50.0) -> np.ndarray | None:
    """World position (2,) of the T's centroid seen in a frame (H, W, 3) uint8: the mean of pixels
    near the T's colour, weighted by closeness; None when the T is not visible."""
    h, w = pixels.shape[:2]
    dist = np.abs(pixels.astype(np.float32) - BLOCK_RGB).max(-1)
    weight = np.clip(1.0 - dist / tolerance, 0.0, None)
    total = weight.sum()
    if total < 1.0:
        return None
    v, u = np.mgrid[0:h, 0:w]
    return np.array([((u + 0.5) * weight).sum() / total * WORLD / w, ((v + 0.5) * weight).sum() / total * WORLD / h])


@dataclass
class PushPolicy:
    """Scripted pusher: walk around to behind the T's centroid (seen from the goal), then push
    through it toward the goal centroid.

    Args:
        noise: std (world units) of Gaussian noise added to every action.
        random_prob: probability of a uniformly random action instead.
        push_depth: how far past the centroid the pusher aims while pushing (speed of pushing).
        standoff: distance behind the centroid where a push starts.
        goal: where to push the centroid (default: the goal's centroid).
        seed: noise seed.
    Call ``act(obs, block_xy=None)`` with the observation dict; ``block_xy`` overrides the
    frame-based estimate (data collection uses the true pose).
    """

    noise: float = 0.0
    random_prob: float = 0.0
    push_depth: float = 40.0
    standoff: float = 75.0
    goal: tuple[float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.last_block: np.ndarray | None = None

    def reset(self) -> None:
        self.last_block = None

    def act(self, obs: dict[str, np.ndarray], block_xy: np.ndarray | None = None) -> np.ndarray:
        """Action (2,) float32 in [0, 512]^2 for the observation ``{"pixels", "agent_pos"}``."""
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        block = block_xy if block_xy is not None else centroid_from_frame(np.asarray(obs["pixels"]))
        block = self.last_block if block is None else block
        self.last_block = block
        if self.rng.random() < self.random_prob:
            return self.rng.uniform(0, WORLD, 2).astype(np.float32)
        target = agent if block is None else self._target(agent, np.asarray(block, dtype=np.float64))
        if self.noise > 0:
            target = target + self.rng.normal(0.0, self.noise, 2)
        return np.clip(target, 0.0, WORLD).astype(np.float32)

    def _target(self, agent: np.ndarray, block: np.ndarray) -> np.ndarray:
        goal = GOAL_CENTROID if self.goal is None else np.asarray(self.goal, dtype=np.float64)
        d = goal - block
        dist = np.linalg.norm(d)
        if dist < 5.0:
            return agent
        u = d / dist
        behind = block - u * self.standoff
        rel = agent - block
        if np.dot(rel, u) > -0.5 * self.standoff:  # not behind the block: go around it, sideways first
            perp = np.array([-u[1], u[0]])
            side = 1.0 if np.dot(rel, perp) >= 0 else -1.0
            around = block + side * perp * self.standoff * 1.2 - u * 0.3 * self.standoff
            return around if np.linalg.norm(agent - around) > 25.0 else behind
        if np.linalg.norm(agent - behind) > 30.0 and abs(np.dot(rel, np.array([-u[1], u[0]]))) > 20.0:
            return behind
        return block + u * min(self.push_depth, dist)


def frame_dataset_meta(size: int = 64) -> dict:
    """Meta of a Push-T frame dataset (see :class:`world_models.pixel.frames.FrameStore`)."""
    return {"task": PUSHT.name, "env_id": PUSHT.env_id, "frame_shape": [size, size, 3], "state_dim": 2, "action_dim": 2,
            "action_low": [0.0, 0.0], "action_high": [WORLD, WORLD], "state_low": [0.0, 0.0], "state_high": [WORLD, WORLD],
            "optional_fields": ["block_pose"]}


def random_policy(seed: int = 0) -> PushPolicy:
    """Uniform random target positions."""
    return PushPolicy(random_prob=1.0, seed=seed)


def collect_pusht(episodes: int, max_steps: int = 150, size: int = 64, seed: int = 0,
                  progress: bool = True, pixels: bool = True) -> dict[str, np.ndarray]:
    """Record ``episodes`` real Push-T episodes (at most ``max_steps`` actions each) as frame rows
    (see :mod:`world_models.pixel.frames`): ``pixels`` (N, size, size, 3) uint8, ``agent_pos``
    (N, 2), ``action`` (N, 2), ``coverage`` (N,), ``success`` (N,), ``last``, ``episode``, ``step``.
    ``pixels=False`` renders nothing and leaves ``pixels`` out (state rows, several times faster: what
    the world model's heads on states learn from).

    Each episode draws a behaviour: the scripted pusher on the true block pose with noise std
    in {0, 5, 20, 50, 100} and random-action probability in {0, 0.3}, pushing toward the
    goal's centroid or one of the :data:`PUSHT_VARIANTS` targets (85 %), or random actions
    (15 %), so the data hold successes, near-successes and failures for every variant.
    Rows also carry ``block_pose`` (N, 3) (x, y, angle), from which any variant's success is computed.
    """
    from tqdm import tqdm

    env = make_pusht_env(size) if pixels else make_pusht_env(size, obs_type="state", render_mode=None)
    rng = np.random.default_rng(seed)
    fields = ("pixels",) * pixels + ("agent_pos", "action", "coverage", "success", "last", "episode", "step", "block_pose")
    rows: dict[str, list] = {k: [] for k in fields}
    goals = [GOAL_CENTROID] + [np.array(v.target) for v in PUSHT_VARIANTS.values()]
    for ep in tqdm(range(episodes), desc="collect pusht", disable=not progress):
        if rng.random() < 0.15:
            policy = random_policy(int(rng.integers(1 << 31)))
        else:
            goal = goals[int(rng.integers(len(goals)))]
            policy = PushPolicy(noise=float(rng.choice([0, 5, 20, 50, 100])), random_prob=float(rng.choice([0.0, 0.3])),
                                push_depth=float(rng.uniform(20, 60)), goal=(float(goal[0]), float(goal[1])),
                                seed=int(rng.integers(1 << 31)))
        obs, info = env.reset(seed=int(rng.integers(1 << 31)))
        coverage, t, finished = float(env.unwrapped._get_coverage()), 0, False
        while True:
            ended = finished or t == max_steps
            if not pixels:  # state observation: (agent x, y, T x, y, angle)
                obs = {"agent_pos": np.asarray(obs[:2], np.float32)}
            action = np.zeros(2, np.float32) if ended else policy.act(obs, block_centroid(info["block_pose"]))
            for k, v in (("agent_pos", obs["agent_pos"]), ("action", action), ("coverage", coverage),
                         ("success", coverage > SUCCESS_COVERAGE), ("last", ended), ("episode", ep), ("step", t),
                         ("block_pose", info["block_pose"])) + ((("pixels", obs["pixels"]),) if pixels else ()):
                rows[k].append(v)
            if ended:
                break
            obs, _, terminated, truncated, info = env.step(action)
            coverage, t, finished = float(info["coverage"]), t + 1, terminated or truncated
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}
