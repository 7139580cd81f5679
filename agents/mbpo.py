"""MBPO: SAC on k-step branched rollouts of a learned model (Janner et al. 2019, arXiv 1906.08253).

One real step at a time, top to bottom (:func:`train`):

1. ``init_steps`` real steps with uniform random actions (SB3 SAC's ``learning_starts``).
2. Every ``model_train_freq`` (F) real steps: the world model (by default the project's
   :class:`~world_models.mlp_ensemble.ProbabilisticEnsemble`, 7 members, 5 elites) is
   trained on all real data so far with :func:`~world_models.training.train_world_model`
   (held-out episodes for early stopping and elite selection). The first fit sets the
   normalizers; later fits warm-start (``refit_normalizers`` keeps the trained function on
   the grown data), as MBPO keeps training one model.
3. Right after, ``rollout_batch_size`` states are drawn uniformly from the real data and the
   current SAC actor is rolled out from them for k steps in the model (batched torch, one
   model call per step for the whole chunk; terminated and non-finite rows drop out). k
   follows the paper's schedule ``[min_epoch, max_epoch, min_k, max_k]``: linear in the
   epoch (``epoch_length`` real steps) between the two epochs, clipped outside. Rewards are
   the task's analytic reward where it is exact (InvertedPendulum) or the model's learned
   reward head (Hopper, HalfCheetah, any Gymnasium env); terminations the task's function
   (MBPO's ``static_fns``) or the learned termination head.
4. The model transitions go into a model buffer that keeps the last
   ``model_retain_epochs`` epochs' worth of rollouts (its capacity is resized as k grows,
   newest rows kept, as MBPO's ``_set_rollout_length`` / ``_reallocate_model_pool``).
5. Every real step, SB3's SAC does ``utd`` (MBPO's ``n_train_repeat``) gradient steps on
   batches drawn ``real_ratio`` (0.05) from real data and the rest from the model buffer.

How SB3's SAC is reused unchanged: SAC is built with ``replay_buffer_class=MixedReplayBuffer``,
an SB3 ``ReplayBuffer`` that stores the *real* transitions exactly as SB3 does (SAC's own
collection, timeouts, terminal observations) and whose ``sample()`` draws
``int(batch_size * real_ratio)`` rows from them and the rest from the attached
:class:`ModelBuffer` (torch tensors, written in bulk). ``sac.learn()`` then runs SB3's own
loop (``train_freq=1``, ``gradient_steps=utd``); a callback does steps 2-4 every F steps and
evaluates the deterministic policy on the real env. Actions in both buffers are SB3's
squashed [-1, 1] actions; the world model sees env units.

With a recurrent model (``rwm_gru``) the same code runs: each branch starts from a real
state whose real history (``model.spec.history`` steps of its episode) warms the GRU up.

Offline (:func:`train_offline`, MOPO, arXiv 2005.13239): no env steps; the real buffer is a
saved dataset (a wam dataset folder, or a Minari dataset via :func:`load_minari`), the model
is trained once, and rollouts are scored ``r - penalty * u`` with ``u`` the ensemble's
disagreement (std of the elite means in normalized delta units, averaged over dimensions:
``Prediction.uncertainty``; MOPO uses the largest predicted std, a close cousin).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from tqdm import tqdm

from agents.evaluate import evaluate_policy
from agents.policy import MLPPolicy
from tasks.base import Task
from world_models import build_model
from world_models.base import WorldModel
from world_models.data import DatasetError, WindowSampler, model_spec_from_data, split_episodes, to_torch
from world_models.training import WorldModelTrainConfig, train_world_model


@dataclass
class MbpoConfig:
    """Every MBPO hyperparameter (names as the MBPO repository where it has one).

    Attributes:
        total_steps: real env steps in all (init_steps included).
        init_steps: real steps with uniform random actions before the first model.
        epoch_length: real steps per epoch (the unit of the rollout schedule).
        model_train_freq: F, real steps between model fits (and rollout batches).
        rollout_batch_size: branched rollouts started every F steps.
        rollout_chunk: rollouts imagined together (bounds memory; (elites, chunk, hidden) floats).
        rollout_schedule: ``[min_epoch, max_epoch, min_length, max_length]`` of k.
        model_retain_epochs: epochs of model rollouts the model buffer keeps.
        real_ratio: share of real transitions in each SAC batch.
        utd: SAC gradient steps per real step (MBPO's ``n_train_repeat``).
        termination_threshold: a learned termination ends a rollout where sigmoid(logit) > this.
        uncertainty_penalty: MOPO's lambda (reward - lambda * uncertainty); 0 online.
        offline_steps: SAC gradient-step rounds of :func:`train_offline` (each ``utd`` steps), model rollouts every ``model_train_freq`` rounds.
        batch_size / learning_rate / gamma / tau / ent_coef / target_entropy / net_arch: SAC.
        buffer_size: real replay capacity (> total_steps).
        eval_every / eval_episodes: real evaluation of the deterministic policy (steps, episodes).
        offline: train from a saved dataset alone (:func:`train_offline`; ``wam train-policy`` reads
            ``paths.data``, or ``dataset``).
        dataset: a local Minari dataset folder for offline training (needs the ``data`` extra).
        seed / device.
    """

    total_steps: int = 10_000
    init_steps: int = 5000
    epoch_length: int = 1000
    model_train_freq: int = 250
    rollout_batch_size: int = 100_000
    rollout_chunk: int = 25_000
    rollout_schedule: tuple[int, int, int, int] = (20, 100, 1, 15)
    model_retain_epochs: int = 1
    real_ratio: float = 0.05
    utd: int = 20
    termination_threshold: float = 0.5
    uncertainty_penalty: float = 0.0
    offline_steps: int = 10_000
    batch_size: int = 256
    learning_rate: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    ent_coef: str | float = "auto"
    target_entropy: str | float = "auto"
    net_arch: tuple[int, ...] = (256, 256)
    buffer_size: int = 1_000_000
    eval_every: int = 1000
    eval_episodes: int = 5
    offline: bool = False
    dataset: str | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if len(self.rollout_schedule) != 4:
            raise ValueError(f"rollout_schedule must be [min_epoch, max_epoch, min_length, max_length], got {self.rollout_schedule}")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ValueError(f"real_ratio must be in [0, 1], got {self.real_ratio}")
        for name in ("model_train_freq", "epoch_length", "rollout_batch_size", "rollout_chunk", "utd", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init_steps < 1 or self.total_steps < self.init_steps:
            raise ValueError(f"need 1 <= init_steps <= total_steps, got {self.init_steps} and {self.total_steps}")
        if self.buffer_size <= self.total_steps:
            raise ValueError(f"buffer_size ({self.buffer_size}) must exceed total_steps ({self.total_steps}): all real steps are kept")


def rollout_length(cfg: MbpoConfig, real_steps: int) -> int:
    """k for the epoch ``real_steps // epoch_length`` (MBPO's linear schedule, clipped)."""
    min_epoch, max_epoch, min_k, max_k = cfg.rollout_schedule
    epoch = real_steps // cfg.epoch_length
    if epoch <= min_epoch or max_epoch <= min_epoch:
        return int(min_k)
    frac = min(1.0, (epoch - min_epoch) / (max_epoch - min_epoch))
    return int(min_k + frac * (max_k - min_k))


def model_buffer_capacity(cfg: MbpoConfig, k: int) -> int:
    """Model transitions kept: ``retain_epochs * k * rollout_batch_size * epoch_length / F``."""
    per_epoch = cfg.rollout_batch_size * cfg.epoch_length / cfg.model_train_freq
    return max(1, int(cfg.model_retain_epochs * k * per_epoch))


# --------------------------------------------------------------------------------- buffers


class ModelBuffer:
    """Ring buffer of model transitions, torch tensors on one device, written in bulk.

    Rows: ``obs`` / ``next_obs`` (N, D), ``action`` (N, A) SB3-scaled to [-1, 1],
    ``reward`` (N,), ``done`` (N,) float (1 where the model's transition terminated).
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: str | torch.device = "cpu"):
        self.obs_dim, self.action_dim, self.device = obs_dim, action_dim, torch.device(device)
        self.capacity, self.pos, self.size = 0, 0, 0
        self.data: dict[str, torch.Tensor] = {}
        self.resize(capacity)

    def _empty(self, capacity: int) -> dict[str, torch.Tensor]:
        D, A = self.obs_dim, self.action_dim
        z = lambda *s: torch.zeros(capacity, *s, device=self.device)  # noqa: E731
        return {"obs": z(D), "action": z(A), "next_obs": z(D), "reward": z(), "done": z()}

    def _ordered(self) -> dict[str, torch.Tensor]:
        """Stored rows, oldest first."""
        if self.size < self.capacity:
            return {k: v[: self.size] for k, v in self.data.items()}
        return {k: torch.cat([v[self.pos :], v[: self.pos]]) for k, v in self.data.items()}

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping the newest rows (MBPO reallocates its pool when k changes)."""
        if capacity == self.capacity:
            return
        old = self._ordered() if self.size else None
        self.data, self.capacity, self.pos, self.size = self._empty(capacity), capacity, 0, 0
        if old is not None:
            self.add({k: v[-capacity:] for k, v in old.items()})

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        """Append rows (fields as the class doc, leading dim n); the oldest are overwritten."""
        n = rows["obs"].shape[0]
        if n == 0:
            return
        if n >= self.capacity:
            rows, n = {k: v[-self.capacity :] for k, v in rows.items()}, self.capacity
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        for k, v in self.data.items():
            v[idx] = rows[k].to(self.device, v.dtype).reshape(v[idx].shape)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int) -> ReplayBufferSamples:
        """Uniform rows (with replacement) as SB3 samples; rewards / dones (batch, 1)."""
        i = torch.randint(0, self.size, (batch_size,), device=self.device)
        d = self.data
        return ReplayBufferSamples(d["obs"][i], d["action"][i], d["next_obs"][i], d["done"][i, None], d["reward"][i, None])


class MixedReplayBuffer(ReplayBuffer):
    """SB3's ``ReplayBuffer`` holding the real transitions; ``sample`` mixes in model data.

    ``sample(n)`` returns ``int(n * real_ratio)`` real rows (SB3's own sampling: timeouts
    are not terminal) and ``n - that`` rows of :attr:`model_buffer`, or only real rows while
    no model buffer is attached or it is empty.
    """

    def __init__(self, *args: Any, real_ratio: float = 0.05, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.real_ratio = real_ratio
        self.model_buffer: ModelBuffer | None = None

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        if self.model_buffer is None or len(self.model_buffer) == 0 or self.real_ratio >= 1.0:
            return super().sample(batch_size, env=env)
        n_real = int(batch_size * self.real_ratio)
        fake = self.model_buffer.sample(batch_size - n_real)
        if n_real == 0 or self.size() == 0:
            return fake
        real = super().sample(n_real, env=env)
        return ReplayBufferSamples(*(torch.cat([r, f.to(r.device)]) for r, f in zip(real[:5], fake[:5])))

    def fill(self, data: dict[str, np.ndarray], low: np.ndarray, high: np.ndarray) -> None:
        """Write flat transitions (a dataset: env-unit actions) in bulk, for offline training."""
        n = len(data["reward"])
        if n > self.buffer_size:
            raise ValueError(f"dataset of {n} transitions exceeds the replay capacity {self.buffer_size}")
        self.observations[:n, 0] = data["obs"]
        self.next_observations[:n, 0] = data["next_obs"]
        self.actions[:n, 0] = scale_action(np.asarray(data["action"], dtype=np.float32), low, high)
        self.rewards[:n, 0] = data["reward"]
        self.dones[:n, 0] = np.asarray(data["terminated"], dtype=np.float32)
        self.timeouts[:n, 0] = 0.0
        self.pos, self.full = n % self.buffer_size, n == self.buffer_size


def scale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Env units -> SB3's [-1, 1]."""
    return (2.0 * (action - low) / (high - low) - 1.0).astype(np.float32)


def real_transitions(buffer: ReplayBuffer, low: np.ndarray, high: np.ndarray) -> dict[str, np.ndarray]:
    """The real transitions of SB3's single-env replay buffer as flat dataset fields (env-unit
    actions; ``episode`` ids from the done flags, ``terminated`` without time-outs)."""
    if buffer.full:
        raise ValueError("the real replay buffer wrapped around; raise buffer_size above total_steps")
    n = buffer.pos
    done = buffer.dones[:n, 0] > 0
    timeout = buffer.timeouts[:n, 0] > 0
    episode = np.concatenate([[0], np.cumsum(done[:-1])]).astype(np.int64)
    first = np.concatenate([[True], done[:-1]])
    start_of = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    action = low + 0.5 * (buffer.actions[:n, 0] + 1.0) * (high - low)
    return {
        "obs": buffer.observations[:n, 0].astype(np.float32),
        "action": action.astype(np.float32),
        "reward": buffer.rewards[:n, 0].astype(np.float32),
        "next_obs": buffer.next_observations[:n, 0].astype(np.float32),
        "terminated": done & ~timeout,
        "truncated": timeout,
        "episode": episode,
        "step": (np.arange(n) - start_of).astype(np.int64),
    }


class MbpoResult(NamedTuple):
    """What an MBPO run leaves: the deterministic policy, its history (JSON-able: ``curve`` of
    real return vs real steps, per-fit model losses, rollout stats), the world model (None for
    the SAC baseline) and the real transitions it used (flat dataset fields)."""

    policy: MLPPolicy
    history: dict[str, Any]
    model: WorldModel | None
    real_data: dict[str, np.ndarray]


# --------------------------------------------------------------------------------- model


class ModelTrainer:
    """Fits the world model on the real data; the first fit builds it and its normalizers.

    Args:
        model_name / model_params: ``world_models.build_model(name, spec, **params)``.
        history / forecast / dt: the model's windows (``ModelSpec``).
        meta: dataset meta (``action_space``, dims) for the spec.
        train_cfg: the training loop's config (``max_steps``: gradient steps per fit at most).
        val_fraction: episodes held out for early stopping and elite selection.
    """

    def __init__(self, model_name: str, model_params: dict[str, Any], history: int, forecast: int, dt: float,
                 meta: dict[str, Any], train_cfg: WorldModelTrainConfig, val_fraction: float,
                 log_dir: str | None = None):
        self.model_name, self.model_params = model_name, dict(model_params)
        self.history, self.forecast, self.dt, self.meta = history, forecast, dt, meta
        self.train_cfg = train_cfg
        self.val_fraction, self.log_dir = val_fraction, log_dir
        self.model: WorldModel | None = None
        self.fits = 0
        self.history_metrics: list[dict[str, float]] = []

    def fit(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        """Train on flat real transitions; returns the training loop's final metrics plus
        ``val_loss_before`` (held-out loss of the model before this fit; NaN on the first)."""
        seed = self.train_cfg.seed + self.fits
        train, val = split_episodes(data, self.val_fraction, seed=seed)
        device = self.train_cfg.device
        before = math.nan
        if self.model is None:
            spec = model_spec_from_data(self.meta, train, self.history, self.forecast, self.dt)
            self.model = build_model(self.model_name, spec, **self.model_params)
            fresh = True
        else:
            fresh = False
            self.model.refit_normalizers(to_torch(train, device))
            before = _val_loss(self.model, to_torch(val, device), seed)
        cfg = WorldModelTrainConfig(**{**self.train_cfg.__dict__, "seed": seed})
        log_dir = None if self.log_dir is None else f"{self.log_dir}/fit_{self.fits:03d}"
        metrics = train_world_model(self.model, to_torch(train, device), to_torch(val, device), cfg,
                                    log_dir=log_dir, progress=False, fit_normalizers=fresh)
        metrics["val_loss_before"] = before
        self.fits += 1
        self.history_metrics.append(metrics)
        return metrics


@torch.no_grad()
def _val_loss(model: WorldModel, val: dict[str, torch.Tensor], seed: int) -> float:
    spec = model.spec
    batch = WindowSampler(val, spec.history, spec.forecast, seed=seed + 1).sample(1024)
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(model.loss(batch)["loss"])


# --------------------------------------------------------------------------------- rollouts


@torch.no_grad()
def branched_rollouts(
    model: WorldModel,
    actor: Callable[[torch.Tensor], torch.Tensor],
    real: dict[str, torch.Tensor],
    num: int,
    length: int,
    low: torch.Tensor,
    high: torch.Tensor,
    task: Task | None = None,
    uncertainty_penalty: float = 0.0,
    termination_threshold: float = 0.5,
    chunk: int = 25_000,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """k-step rollouts of ``actor`` in ``model`` from ``num`` real states drawn uniformly.

    Args:
        actor: obs (B, D) -> SB3-scaled stochastic actions (B, A) in [-1, 1].
        real: flat real transitions (``obs``, ``action``, ``next_obs``, ``reward``,
            ``terminated``, ``episode``) on the model's device; a recurrent model is warmed up
            on the ``model.spec.history`` real steps before each start state.
        low / high: (A,) action box (env units).
        task: its ``reward_fn`` / ``termination_fn`` are used where present, else the model's heads.

    Returns the model transitions (``obs``, ``action`` scaled, ``next_obs``, ``reward``,
    ``done``) and stats: ``transitions``, ``mean_length``, ``terminated`` share, ``dropped``
    (non-finite predictions), ``uncertainty``.
    """
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "action", "next_obs", "reward", "done")}
    stats = {"terminated": 0.0, "dropped": 0.0, "uncertainty": 0.0}
    M = model.spec.history
    sampler = WindowSampler(real, M, 1)
    n_real = real["obs"].shape[0]
    steps = 0
    for first in range(0, num, chunk):
        B = min(chunk, num - first)
        start = torch.randint(0, n_real, (B,), device=low.device, generator=generator)
        w = sampler.window(start)  # positions 0..M: M history steps, then the start state
        prev_action = torch.cat([torch.zeros_like(w["action"][:, :1]), w["action"][:, :M]], dim=1)
        carry = model.observe_sequence(model.initial(B), w["obs"][:, : M + 1], prev_action, w["is_first"][:, : M + 1])
        obs = carry["obs"]
        for _ in range(length):
            a = actor(obs).clamp(-1.0, 1.0)
            a_env = low + 0.5 * (a + 1.0) * (high - low)
            carry, pred = model.imagine(carry, a_env, sample=True, generator=generator)
            nxt = pred.obs
            if task is not None and task.reward_fn is not None:
                reward = task.reward_fn(obs, a_env, nxt)
            elif pred.reward is not None:
                reward = pred.reward
            else:
                raise ValueError("the task has no reward function and the world model no reward head (learn_reward: true)")
            if task is not None and task.termination_fn is not None:
                done = task.termination_fn(nxt)
            elif pred.termination_logit is not None:
                done = torch.sigmoid(pred.termination_logit) > termination_threshold
            else:
                done = torch.zeros(B, dtype=torch.bool, device=nxt.device)
            if uncertainty_penalty:
                reward = reward - uncertainty_penalty * pred.uncertainty
            ok = torch.isfinite(nxt).all(-1) & torch.isfinite(reward)
            stats["dropped"] += float((~ok).sum())
            stats["terminated"] += float((done & ok).sum())
            stats["uncertainty"] += float(pred.uncertainty[ok].sum())
            for k, v in (("obs", obs), ("action", a), ("next_obs", nxt), ("reward", reward), ("done", done.float())):
                out[k].append(v[ok])
            steps += int(ok.sum())
            keep = ok & ~done
            if not keep.any():
                break
            carry = {k: v[keep] for k, v in carry.items()}
            obs, B = carry["obs"], int(keep.sum())
    rows = {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}
    stats = {"transitions": float(steps), "mean_length": steps / max(num, 1),
             "terminated": stats["terminated"] / max(steps, 1), "dropped": stats["dropped"],
             "uncertainty": stats["uncertainty"] / max(steps, 1)}
    return rows, stats


def sac_actor(sac: SAC) -> Callable[[torch.Tensor], torch.Tensor]:
    """The SAC actor's stochastic squashed action, obs (B, D) -> (B, A) in [-1, 1]."""
    return lambda obs: sac.actor(obs.to(sac.device), deterministic=False).to(obs.device)


# --------------------------------------------------------------------------------- SAC


def make_sac(env: gym.Env | Any, cfg: MbpoConfig, utd: int, learning_starts: int, mixed: bool, real_ratio: float) -> SAC:
    """SB3 SAC with MBPO's settings; ``mixed``: its replay buffer is a :class:`MixedReplayBuffer`."""
    kwargs: dict[str, Any] = {}
    if mixed:
        kwargs = {"replay_buffer_class": MixedReplayBuffer, "replay_buffer_kwargs": {"real_ratio": real_ratio}}
    return SAC(
        "MlpPolicy", env,
        learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size, learning_starts=learning_starts,
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma, train_freq=1, gradient_steps=utd,
        ent_coef=cfg.ent_coef, target_entropy=cfg.target_entropy,
        policy_kwargs={"net_arch": list(cfg.net_arch)}, seed=cfg.seed, device=cfg.device, verbose=0, **kwargs,
    )


class RealEval:
    """Scores the deterministic policy on the real env and logs ``Eval/real_return`` against
    real steps (same tag for MBPO and SAC runs: TensorBoard draws them on one chart)."""

    def __init__(self, task: Task, episodes: int, seed: int, writer: Any | None):
        self.task, self.episodes, self.seed, self.writer = task, episodes, seed, writer
        self.curve: dict[str, list[float]] = {"steps": [], "mean_return": [], "std_return": [], "wall_time": []}
        self.start = time.perf_counter()

    def __call__(self, sac: SAC, steps: int) -> float:
        returns = evaluate_policy(MLPPolicy.from_sb3(sac), self.task, episodes=self.episodes, seed=self.seed + 10_000,
                                  num_envs=min(self.episodes, 5))
        c = self.curve
        c["steps"].append(steps)
        c["mean_return"].append(float(returns.mean()))
        c["std_return"].append(float(returns.std()))
        c["wall_time"].append(time.perf_counter() - self.start)
        if self.writer is not None:
            self.writer.add_scalar("Eval/real_return", float(returns.mean()), steps)
            self.writer.flush()
        return float(returns.mean())


class _MbpoCallback(BaseCallback):
    """Steps 2-4 of the module doc every F real steps (after init), plus evaluation."""

    def __init__(self, run: "_Mbpo", progress: bool):
        super().__init__()
        self.run = run
        self.bar = tqdm(total=run.cfg.total_steps, desc="mbpo", unit="step", disable=not progress)

    def _on_step(self) -> bool:
        t, cfg = self.num_timesteps, self.run.cfg
        self.bar.update(1)
        if self.run.model_based and t >= cfg.init_steps and (t - cfg.init_steps) % cfg.model_train_freq == 0:
            self.run.model_step(t)
        if t % cfg.eval_every == 0 or t == cfg.total_steps:
            r = self.run.evaluate(t)
            self.bar.set_postfix(real_return=f"{r:.1f}")
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class _Mbpo:
    """State of one MBPO run: SAC, model trainer, model buffer, logs."""

    def __init__(self, sac: SAC, task: Task, cfg: MbpoConfig, trainer: ModelTrainer | None, writer: Any | None,
                 evaluator: RealEval | None, dataset: dict[str, np.ndarray] | None = None):
        self.sac, self.task, self.cfg, self.trainer, self.writer, self.evaluator = sac, task, cfg, trainer, writer, evaluator
        self.model_based = trainer is not None
        space = sac.action_space
        self.low_np, self.high_np = space.low.astype(np.float32), space.high.astype(np.float32)
        dev = torch.device(cfg.device)
        self.low, self.high = torch.as_tensor(self.low_np, device=dev), torch.as_tensor(self.high_np, device=dev)
        self.dataset = dataset
        self.generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.history: dict[str, list[float]] = {"model_steps": [], "model_val_loss": [], "model_val_loss_before": [],
                                                "model_val_mse": [], "rollout_length": [], "model_transitions": [],
                                                "model_buffer": [], "rollout_seconds": [], "model_seconds": []}
        if self.model_based:
            buf = sac.replay_buffer
            assert isinstance(buf, MixedReplayBuffer)
            k = rollout_length(cfg, 0)
            buf.model_buffer = ModelBuffer(model_buffer_capacity(cfg, k), sac.observation_space.shape[0], space.shape[0], dev)
            self.model_buffer = buf.model_buffer

    def real_data(self) -> dict[str, np.ndarray]:
        return self.dataset if self.dataset is not None else real_transitions(self.sac.replay_buffer, self.low_np, self.high_np)

    def model_step(self, t: int, fit: bool = True) -> None:
        """Fit the model on the real data (if ``fit``), then fill the model buffer with branched rollouts."""
        cfg, h = self.cfg, self.history
        data = self.real_data()
        t0 = time.perf_counter()
        if fit:
            m = self.trainer.fit(data)
            h["model_steps"].append(t)
            h["model_val_loss"].append(m["val_loss"])
            h["model_val_loss_before"].append(m["val_loss_before"])
            h["model_val_mse"].append(m.get("val_dynamics_mse", math.nan))
            h["model_seconds"].append(time.perf_counter() - t0)
            if self.writer is not None:
                for key in ("val_loss", "val_dynamics_mse", "val_reward_mse", "val_termination_bce", "val_loss_before"):
                    if key in m and math.isfinite(m[key]):
                        self.writer.add_scalar(f"WorldModel/{key}", m[key], t)
        k = rollout_length(cfg, t)
        self.model_buffer.resize(model_buffer_capacity(cfg, k))
        t1 = time.perf_counter()
        model = self.trainer.model
        model.eval()
        rows, stats = branched_rollouts(
            model, sac_actor(self.sac), to_torch({k_: data[k_] for k_ in ("obs", "action", "next_obs", "reward", "terminated", "episode")},
                                                 cfg.device),
            cfg.rollout_batch_size, k, self.low, self.high, self.task, cfg.uncertainty_penalty, cfg.termination_threshold,
            cfg.rollout_chunk, self.generator,
        )
        self.model_buffer.add(rows)
        h["rollout_length"].append(k)
        h["model_transitions"].append(stats["transitions"])
        h["model_buffer"].append(len(self.model_buffer))
        h["rollout_seconds"].append(time.perf_counter() - t1)
        if self.writer is not None:
            self.writer.add_scalar("Imagination/rollout_length", k, t)
            self.writer.add_scalar("Imagination/mean_length", stats["mean_length"], t)
            self.writer.add_scalar("Imagination/uncertainty", stats["uncertainty"], t)
            self.writer.add_scalar("Imagination/dropped", stats["dropped"], t)
            self.writer.add_scalar("Imagination/model_buffer", len(self.model_buffer), t)

    def evaluate(self, t: int) -> float:
        return self.evaluator(self.sac, t) if self.evaluator is not None else math.nan


def _writer(log_dir: str | None):
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir)


def train(
    task: Task,
    cfg: MbpoConfig,
    model_name: str = "mlp_ensemble",
    model_params: dict[str, Any] | None = None,
    history: int = 0,
    forecast: int = 1,
    dt: float = 0.05,
    train_cfg: WorldModelTrainConfig | None = None,
    val_fraction: float = 0.1,
    log_dir: str | None = None,
    progress: bool = True,
    model_based: bool = True,
) -> MbpoResult:
    """Run MBPO on the task's real env for ``cfg.total_steps`` real steps.

    ``model_based=False`` is the SAC baseline with the same SAC settings except
    ``utd`` (then SB3's 1 gradient step per real step, data all real).

    Returns the deterministic policy, the history (``curve``: real return vs real steps and
    wall-clock; per model fit: held-out loss before / after, rollout length, model
    transitions, seconds), the world model (None for SAC) and the real transitions.
    """
    from tasks.collect import dataset_meta

    env = gym.make(task.env_id, **task.env_kwargs)
    if not isinstance(env.action_space, gym.spaces.Box) or not isinstance(env.observation_space, gym.spaces.Box):
        raise TypeError(f"MBPO needs Box observation and action spaces, got {env.observation_space} and {env.action_space}")
    env.reset(seed=cfg.seed)
    env.action_space.seed(cfg.seed)
    writer = _writer(log_dir)
    utd = cfg.utd if model_based else 1
    sac = make_sac(env, cfg, utd, cfg.init_steps, mixed=model_based, real_ratio=cfg.real_ratio)
    if log_dir is not None:
        sac.set_logger(configure(str(Path(log_dir) / "sb3"), ["tensorboard"]))
    trainer = None
    if model_based:
        train_cfg = train_cfg or WorldModelTrainConfig(seed=cfg.seed, device=cfg.device)
        trainer = ModelTrainer(model_name, model_params or {}, history, forecast, dt, dataset_meta(task), train_cfg, val_fraction,
                               log_dir=None if log_dir is None else str(Path(log_dir) / "world_model"))
    run = _Mbpo(sac, task, cfg, trainer, writer, RealEval(task, cfg.eval_episodes, cfg.seed, writer))
    t0 = time.perf_counter()
    sac.learn(cfg.total_steps, callback=_MbpoCallback(run, progress))
    out: dict[str, Any] = {**run.history, "curve": run.evaluator.curve, "train_seconds": time.perf_counter() - t0,
                           "agent": "mbpo" if model_based else "sac", "model": model_name if model_based else None}
    if writer is not None:
        writer.close()
    env.close()
    real = real_transitions(sac.replay_buffer, run.low_np, run.high_np)
    return MbpoResult(MLPPolicy.from_sb3(sac).cpu(), out, trainer.model if trainer else None, real)


# --------------------------------------------------------------------------------- offline


class _SpacesEnv(gym.Env):
    """An env that only carries spaces: SAC needs them at construction; offline, nothing steps."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # pragma: no cover - never called
        raise RuntimeError("offline MBPO never steps an env")

    def step(self, action):  # pragma: no cover - never called
        raise RuntimeError("offline MBPO never steps an env")


def _box(space: dict[str, Any]) -> gym.spaces.Box:
    return gym.spaces.Box(np.asarray(space["low"], np.float32).reshape(space["shape"]),
                          np.asarray(space["high"], np.float32).reshape(space["shape"]), dtype=np.float32)


def train_offline(
    data: dict[str, np.ndarray],
    meta: dict[str, Any],
    cfg: MbpoConfig,
    task: Task | None = None,
    model_name: str = "mlp_ensemble",
    model_params: dict[str, Any] | None = None,
    history: int = 0,
    forecast: int = 1,
    dt: float = 0.05,
    train_cfg: WorldModelTrainConfig | None = None,
    val_fraction: float = 0.1,
    log_dir: str | None = None,
    progress: bool = True,
) -> MbpoResult:
    """MOPO-style offline MBPO: model and policy from ``data`` (flat transitions) alone.

    The model is fitted once; then ``cfg.offline_steps`` rounds of ``cfg.utd`` SAC gradient
    steps, with a fresh batch of branched rollouts every ``cfg.model_train_freq`` rounds
    (reward - ``cfg.uncertainty_penalty`` x uncertainty). ``task`` (optional) supplies
    analytic reward / termination and, when its env exists, a real evaluation every
    ``cfg.eval_every`` rounds (``curve``).
    """
    obs_space, act_space = _box(meta["observation_space"]), _box(meta["action_space"])
    n = len(data["reward"])
    cfg_sac = MbpoConfig(**{**cfg.__dict__, "buffer_size": n + 1, "total_steps": 1, "init_steps": 1})
    sac = make_sac(_SpacesEnv(obs_space, act_space), cfg_sac, cfg.utd, 0, mixed=True, real_ratio=cfg.real_ratio)
    sac.set_logger(configure(None if log_dir is None else str(Path(log_dir) / "sb3"), ["tensorboard"] if log_dir else []))
    sac.replay_buffer.fill(data, act_space.low, act_space.high)
    writer = _writer(log_dir)
    train_cfg = train_cfg or WorldModelTrainConfig(seed=cfg.seed, device=cfg.device)
    trainer = ModelTrainer(model_name, model_params or {}, history, forecast, dt, meta, train_cfg, val_fraction,
                           log_dir=None if log_dir is None else str(Path(log_dir) / "world_model"))
    evaluator = RealEval(task, cfg.eval_episodes, cfg.seed, writer) if task is not None and task.env_id in gym.registry else None
    run = _Mbpo(sac, task, cfg, trainer, writer, evaluator, dataset=data)
    t0 = time.perf_counter()
    for i in tqdm(range(cfg.offline_steps), desc="mbpo offline", unit="round", disable=not progress):
        if i % cfg.model_train_freq == 0:
            run.model_step(i, fit=i == 0)
        sac.train(gradient_steps=cfg.utd, batch_size=cfg.batch_size)
        if evaluator is not None and ((i + 1) % cfg.eval_every == 0 or i + 1 == cfg.offline_steps):
            run.evaluate(i + 1)
    out = {**run.history, "curve": evaluator.curve if evaluator else {}, "train_seconds": time.perf_counter() - t0,
           "agent": "mbpo_offline", "model": model_name}
    if writer is not None:
        writer.close()
    return MbpoResult(MLPPolicy.from_sb3(sac).cpu(), out, trainer.model, data)


def load_minari(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A Minari dataset from a local folder (the dataset's folder or its ``data/`` folder) as
    flat wam transitions and dataset meta. Needs the ``data`` extra (``pip install 'wam[data]'``).

    Raises DatasetError when the path does not exist or holds no Minari dataset, ImportError
    naming the extra when ``minari`` is not installed.
    """
    from tasks.collect import space_to_json

    p = Path(path)
    if not p.exists():
        raise DatasetError(f"Minari dataset path {p} does not exist")
    try:
        import minari
    except ImportError as e:
        raise ImportError("importing a Minari dataset needs the minari package: pip install 'wam[data]'") from e
    data_dir = p / "data" if (p / "data").is_dir() else p
    try:
        dataset = minari.MinariDataset(data_dir)
    except ImportError as e:  # minari without a storage backend (h5py)
        raise ImportError(f"reading Minari dataset {p} needs minari[hdf5]: pip install 'wam[data]' ({e})") from e
    except Exception as e:  # minari raises several types for a folder that is not a dataset
        raise DatasetError(f"{p} is not a Minari dataset: {e}") from e
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode", "step")}
    for i, ep in enumerate(dataset.iterate_episodes()):
        obs = np.asarray(ep.observations, dtype=np.float32)
        if obs.ndim != 2:
            raise DatasetError(f"Minari dataset {p}: wam needs flat Box observations, got shape {obs.shape[1:]}")
        T = len(ep.rewards)
        rows["obs"].append(obs[:T])
        rows["next_obs"].append(obs[1 : T + 1])
        rows["action"].append(np.asarray(ep.actions, dtype=np.float32).reshape(T, -1))
        rows["reward"].append(np.asarray(ep.rewards, dtype=np.float32))
        rows["terminated"].append(np.asarray(ep.terminations, dtype=bool))
        rows["truncated"].append(np.asarray(ep.truncations, dtype=bool))
        rows["episode"].append(np.full(T, i, dtype=np.int64))
        rows["step"].append(np.arange(T, dtype=np.int64))
    if not rows["obs"]:
        raise DatasetError(f"Minari dataset {p} holds no episodes")
    data = {k: np.concatenate(v) for k, v in rows.items()}
    act_space, obs_space = dataset.action_space, dataset.observation_space
    if not isinstance(act_space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
        raise DatasetError(f"Minari dataset {p}: wam needs Box spaces, got {obs_space} and {act_space}")
    env_spec = getattr(dataset, "env_spec", None)
    meta = {"task": getattr(env_spec, "id", None), "env_id": getattr(env_spec, "id", None),
            "obs_dim": int(np.prod(obs_space.shape)), "action_dim": int(np.prod(act_space.shape)),
            "observation_space": space_to_json(obs_space), "action_space": space_to_json(act_space),
            "source": f"minari:{p}"}
    return data, meta
