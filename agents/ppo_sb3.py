"""PPO from stable-baselines3, trained inside a batched imagined env.

The env goes through :class:`~wam_env.sb3.Sb3VecEnvAdapter`; the result leaves as an
:class:`~agents.policy.MLPPolicy`. Defaults are the rl-zoo PPO settings for Pendulum-v1 (gSDE,
gamma 0.9, n_steps 1024, 10 epochs of minibatches of 64) without VecNormalize, for an env of
4 envs (4096 transitions per rollout; with N envs scale ``n_steps`` to about 4096 / N).
Measured on the real Pendulum-v1 through the same adapter (3 seeds, 1 CPU thread): the
deterministic policy's mean return over 20 episodes passes -250 after 24.6k steps (12-13 s)
and is about -175 at 50k steps (25-28 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from tqdm import tqdm

from agents.policy import ACTIVATIONS, MLPPolicy
from wam_env.sb3 import Sb3VecEnvAdapter


@dataclass
class Sb3PPOConfig:
    """Every SB3 PPO hyperparameter wam sets (names as in ``stable_baselines3.PPO``).

    ``n_steps`` is per env: one rollout holds ``n_steps * env.num_envs`` transitions, cut into
    minibatches of ``batch_size``.
    """

    total_timesteps: int = 50_000
    n_steps: int = 1024
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 1e-3
    gamma: float = 0.9
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    use_sde: bool = True
    sde_sample_freq: int = 4
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    seed: int = 0
    device: str = "cpu"


class _Curve(BaseCallback):
    """Per rollout: mean return of the episodes finished in it; per step: imagination stats."""

    def __init__(self, total: int, progress: bool) -> None:
        super().__init__()
        self.curve: dict[str, list[float]] = {"timesteps": [], "mean_return": [], "wall_time": []}
        self._returns: list[float] = []
        self._start = time.perf_counter()
        self._bar = tqdm(total=total, desc="ppo_sb3", unit="step", disable=not progress)

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        self._returns += [info["episode"]["r"] for info in infos if "episode" in info]
        if "uncertainty" in infos[0]:
            self.logger.record_mean("Imagination/uncertainty", float(np.mean([i["uncertainty"] for i in infos])))
        if "model_diverged" in infos[0]:
            self.logger.record_mean("Imagination/diverged", float(np.mean([i["model_diverged"] for i in infos])))
        self._bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        if self._returns:
            self.curve["timesteps"].append(self.num_timesteps)
            self.curve["mean_return"].append(float(np.mean(self._returns)))
            self.curve["wall_time"].append(time.perf_counter() - self._start)
            self._bar.set_postfix(imagined_return=f"{self.curve['mean_return'][-1]:.1f}")
        self._returns = []

    def _on_training_end(self) -> None:
        self._bar.close()


def train(
    env: gym.vector.VectorEnv,
    cfg: Sb3PPOConfig,
    log_dir: str | None = None,
    progress: bool = True,
) -> tuple[MLPPolicy, dict[str, list[float]]]:
    """Train SB3 PPO in ``env`` (an :class:`~wam_env.imagined.ImaginedVecEnv` or any SAME_STEP
    torch vector env).

    Args:
        env: the batched env; its ``num_envs`` envs all collect each rollout.
        cfg: hyperparameters.
        log_dir: TensorBoard event files go straight into this folder (SB3 tags
            ``rollout/*``, ``train/*``, plus ``Imagination/uncertainty`` / ``diverged``).
        progress: show a tqdm bar.

    Returns:
        The deterministic policy, and the learning curve of imagined returns: lists
        ``timesteps``, ``mean_return`` (episodes finished in each rollout), ``wall_time`` (s).
    """
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {cfg.activation!r}; one of {sorted(ACTIVATIONS)}")
    model = PPO(
        "MlpPolicy",
        Sb3VecEnvAdapter(env),
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        learning_rate=cfg.learning_rate,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        use_sde=cfg.use_sde,
        sde_sample_freq=cfg.sde_sample_freq,
        policy_kwargs={"net_arch": list(cfg.net_arch), "activation_fn": ACTIVATIONS[cfg.activation]},
        seed=cfg.seed,
        device=cfg.device,
        verbose=0,
    )
    if log_dir is not None:
        model.set_logger(configure(log_dir, ["tensorboard"]))
    callback = _Curve(cfg.total_timesteps, progress)
    model.learn(cfg.total_timesteps, callback=callback)
    return MLPPolicy.from_sb3(model).cpu(), callback.curve
