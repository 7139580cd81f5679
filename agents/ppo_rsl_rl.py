"""PPO from rsl-rl 5.x, trained inside a batched imagined env.

The env goes through :class:`~wam_env.rsl_rl.RslRlVecEnvAdapter`; rsl-rl's
``OnPolicyRunner`` trains and writes TensorBoard itself (``Train/mean_reward``, ``Loss/*``,
``Policy/mean_std``, ``Perf/*``, plus ``Imagination/*`` from the adapter); the result leaves
as an :class:`~agents.policy.MLPPolicy`.

rsl-rl 5.x train config layout (what :meth:`RslRlPPOConfig.train_cfg` builds)::

    {"num_steps_per_env", "save_interval", "obs_groups": {"actor": [...], "critic": [...]},
     "algorithm": {"class_name": "PPO", <PPO.__init__ kwargs>},
     "actor":  {"class_name": "MLPModel", "hidden_dims", "activation", "obs_normalization",
                "distribution_cfg": {"class_name": "GaussianDistribution", "init_std", "std_type"}},
     "critic": {"class_name": "MLPModel", "hidden_dims", "activation", "obs_normalization"},
     "logger": "tensorboard", "check_for_nan", "run_name"}

The runner writes into the dict it is given (``multi_gpu``, resolved ``obs_groups``), so it
gets a deep copy.

Defaults are tuned for Pendulum-like tasks with 64 envs (2048 transitions per iteration):
gamma 0.95, 5 epochs x 8 minibatches, adaptive learning rate with desired KL 0.005 and an
entropy bonus of 0.005 (with KL 0.01 and no entropy bonus the std and learning rate collapsed
in one of three seeds). Measured on the real Pendulum-v1 through the same adapter (3 seeds, 1
CPU thread): the deterministic policy's mean return over 20 episodes passes -250 after
102k-143k steps (8-16 s) and hovers around -230 (-200 to -270) up to 150 iterations (26-34 s).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from rsl_rl.runners import OnPolicyRunner

from agents.policy import MLPPolicy
from wam_env.rsl_rl import RslRlVecEnvAdapter


@dataclass
class RslRlPPOConfig:
    """Every rsl-rl PPO hyperparameter wam sets (names as in rsl-rl's ``PPO`` / ``MLPModel``).

    One iteration collects ``num_steps_per_env * env.num_envs`` transitions, then runs
    ``num_learning_epochs`` epochs of ``num_mini_batches`` minibatches.
    """

    max_iterations: int = 150
    num_steps_per_env: int = 32
    learning_rate: float = 1e-3
    schedule: str = "adaptive"  # "adaptive" (KL-driven learning rate) or "fixed"
    desired_kl: float = 0.005
    gamma: float = 0.95
    lam: float = 0.95
    clip_param: float = 0.2
    entropy_coef: float = 0.005
    value_loss_coef: float = 1.0
    max_grad_norm: float = 1.0
    use_clipped_value_loss: bool = True
    num_learning_epochs: int = 5
    num_mini_batches: int = 8
    actor_hidden_dims: tuple[int, ...] = (64, 64)
    critic_hidden_dims: tuple[int, ...] = (64, 64)
    activation: str = "elu"
    init_noise_std: float = 1.0
    obs_normalization: bool = True
    init_at_random_ep_len: bool = False
    save_interval: int = 50
    resume: str | None = None  # rsl-rl checkpoint (<log_dir>/model_<it>.pt) of an earlier run to continue
    seed: int = 0
    device: str = "cpu"

    def train_cfg(self) -> dict[str, Any]:
        """The rsl-rl 5.x ``train_cfg`` dict for ``OnPolicyRunner``."""
        return {
            "num_steps_per_env": self.num_steps_per_env,
            "save_interval": self.save_interval,
            "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
            "algorithm": {
                "class_name": "PPO",
                "learning_rate": self.learning_rate,
                "schedule": self.schedule,
                "desired_kl": self.desired_kl,
                "gamma": self.gamma,
                "lam": self.lam,
                "clip_param": self.clip_param,
                "entropy_coef": self.entropy_coef,
                "value_loss_coef": self.value_loss_coef,
                "max_grad_norm": self.max_grad_norm,
                "use_clipped_value_loss": self.use_clipped_value_loss,
                "num_learning_epochs": self.num_learning_epochs,
                "num_mini_batches": self.num_mini_batches,
            },
            "actor": {
                "class_name": "MLPModel",
                "hidden_dims": list(self.actor_hidden_dims),
                "activation": self.activation,
                "obs_normalization": self.obs_normalization,
                "distribution_cfg": {
                    "class_name": "GaussianDistribution",
                    "init_std": self.init_noise_std,
                    "std_type": "scalar",
                },
            },
            "critic": {
                "class_name": "MLPModel",
                "hidden_dims": list(self.critic_hidden_dims),
                "activation": self.activation,
                "obs_normalization": self.obs_normalization,
            },
            "logger": "tensorboard",
            "check_for_nan": True,
            "run_name": "wam_ppo_rsl_rl",
        }


def train(
    env: gym.vector.VectorEnv,
    cfg: RslRlPPOConfig,
    log_dir: str | None = None,
    progress: bool = True,
) -> tuple[MLPPolicy, dict[str, list[float]]]:
    """Train rsl-rl PPO in ``env`` (an :class:`~wam_env.imagined.ImaginedVecEnv` or any
    SAME_STEP torch vector env).

    Args:
        env: the batched env; rsl-rl wants many envs (hundreds or more).
        cfg: hyperparameters.
        log_dir: rsl-rl's TensorBoard events, ``model_<it>.pt`` checkpoints (every
            ``save_interval`` iterations) and git state go here; None: no logs, no checkpoints.
        progress: let rsl-rl print its per-iteration report (only when ``log_dir`` is set;
            rsl-rl reports nothing without one).

    Returns:
        The deterministic policy, and the learning curve of imagined returns: lists
        ``timesteps``, ``mean_return`` (episodes finished in each iteration), ``wall_time`` (s).
    """
    torch.manual_seed(cfg.seed)  # rsl-rl draws everything (init, sampling, minibatches) from torch
    adapter = RslRlVecEnvAdapter(env, seed=cfg.seed)
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        runner = OnPolicyRunner(adapter, copy.deepcopy(cfg.train_cfg()), log_dir, cfg.device)
        if cfg.resume is not None:
            # rsl-rl's own format (torch pickle: weights, optimizer, iteration); resume only your own runs
            if not Path(cfg.resume).is_file():
                raise FileNotFoundError(f"resume: no rsl-rl checkpoint at {cfg.resume}")
            runner.load(cfg.resume, map_location=cfg.device)
        runner.learn(cfg.max_iterations, init_at_random_ep_len=cfg.init_at_random_ep_len)
    return MLPPolicy.from_rsl_rl(runner).cpu(), _curve(adapter, cfg.num_steps_per_env)


def _curve(adapter: RslRlVecEnvAdapter, steps_per_iteration: int) -> dict[str, list[float]]:
    """Per iteration with finished episodes: total timesteps, mean return, wall time (s)."""
    by_iteration: dict[int, list[tuple[float, float]]] = {}
    for step, seconds, ret, _ in adapter.episodes:
        by_iteration.setdefault(step // steps_per_iteration, []).append((seconds, ret))
    curve: dict[str, list[float]] = {"timesteps": [], "mean_return": [], "wall_time": []}
    for it, items in sorted(by_iteration.items()):
        curve["timesteps"].append((it + 1) * steps_per_iteration * adapter.num_envs)
        curve["mean_return"].append(float(np.mean([r for _, r in items])))
        curve["wall_time"].append(max(s for s, _ in items))
    return curve
