"""The arrows of the loop, one function each: collect → train model → train policy → evaluate.

Each takes the experiment config (see :mod:`wam.config`) and returns what it made; the CLI
subcommands and ``wam demo`` are thin shells around them. This is the one place where tasks,
world models, imagined envs and agents meet.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents import mbpo, mbpo_ppo, ppo_rsl_rl, ppo_sb3
from agents.evaluate import evaluate_policy, evaluate_velocity_tracking
from agents.policy import MLPPolicy
from tasks import LEGGED_TASKS, Task, get_task
from tasks.collect import collect, dataset_meta, make_real_vec_env, random_policy, with_noise
from wam.config import ConfigError, dataclass_from
from wam_env import ImaginedLeggedVecEnv, ImaginedVecEnv
from world_models import build_model, save_checkpoint
from world_models.base import WorldModel
from world_models.data import DatasetError, TransitionStore, load_chunks, model_spec_from_data, split_episodes, to_torch
from world_models.pixel.frames import FrameStore, frame_model_spec
from world_models.pixel.training import PixelTrainConfig, train_pixel_model
from world_models.training import WorldModelTrainConfig, train_world_model

AGENTS = {
    "ppo_sb3": (ppo_sb3.Sb3PPOConfig, ppo_sb3.train),
    "ppo_rsl_rl": (ppo_rsl_rl.RslRlPPOConfig, ppo_rsl_rl.train),
}
START_DATA_LIMIT = 200_000  # transitions of real start states saved inside a model checkpoint


def start_tensors(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The last ``START_DATA_LIMIT`` real transitions a checkpoint carries for imagined envs to
    start from (``start/obs``, ``start/action``, ``start/episode``, ``start/terminated``, and
    ``start/step`` where the data record the step within the episode)."""
    keys = ("obs", "action", "episode", "terminated") + (("step",) if "step" in data else ())
    return {f"start/{k}": torch.as_tensor(np.asarray(data[k])[-START_DATA_LIMIT:]) for k in keys}


def run_path(cfg: dict[str, Any], key: str, default: str) -> Path:
    """``cfg[...][key]`` or ``<run_dir>/<default>``."""
    return Path(cfg["paths"][key] or Path(cfg["run_dir"]) / default)


def task_of(cfg: dict[str, Any]) -> Task:
    try:
        return get_task(cfg["task"])
    except KeyError as e:
        raise ConfigError(str(e)) from e


def collection_policy(cfg: dict[str, Any], task: Task, seed: int):
    """The policy that ``collect.policy`` names: ``random`` or a policy folder, plus noise."""
    c = cfg["collect"]
    space = make_real_vec_env(task, 1).single_action_space
    if c["policy"] in (None, "random"):
        return random_policy(space, seed)
    policy = MLPPolicy.load(c["policy"])
    return with_noise(policy.act, space, float(c["noise"]), seed) if c["noise"] else policy.act


def run_collect(cfg: dict[str, Any], policy=None, steps: int | None = None, seed_offset: int = 0) -> TransitionStore:
    """Collect real transitions into the dataset at ``paths.data`` (appending).

    Legged tasks store the world-model state and contacts (:mod:`tasks.locomotion.collect`):
    ``collect.policy=random`` there means the default pose plus Gaussian action noise of
    ``collect.noise`` (a uniform action in the ±10 box would throw the robot about)."""
    task = task_of(cfg)
    c = cfg["collect"]
    seed = int(cfg["seed"]) + seed_offset
    if task.name in LEGGED_TASKS:
        from tasks.locomotion.collect import collect_legged, legged_dataset_meta

        if policy is None and c["policy"] not in (None, "random"):
            policy = MLPPolicy.load(c["policy"]).act
        transitions = collect_legged(task.name, policy, int(steps or c["steps"]), num_envs=int(c["num_envs"]), seed=seed,
                                     action_noise=float(c["noise"]), noise_hold=int(c["noise_hold"]), progress=cfg["progress"])
        store = TransitionStore(run_path(cfg, "data", "data"), legged_dataset_meta(task.name))
        store.append(transitions)
        return store
    if task.name == "pusht":  # camera frames: scripted pusher + noise, whole episodes of <= 150 actions
        from tasks.pusht import collect_pusht, frame_dataset_meta

        rows = collect_pusht(max(1, int(steps or c["steps"]) // 151), max_steps=150, seed=seed, progress=cfg["progress"])
        frames = FrameStore(run_path(cfg, "data", "data"), frame_dataset_meta(rows["pixels"].shape[1]))
        frames.append(rows)
        return frames
    policy = policy if policy is not None else collection_policy(cfg, task, seed)
    transitions = collect(task, policy, int(steps or c["steps"]), num_envs=int(c["num_envs"]), seed=seed, progress=cfg["progress"])
    store = TransitionStore(run_path(cfg, "data", "data"), dataset_meta(task))
    store.append(transitions)
    return store


def run_train_model(cfg: dict[str, Any], log_name: str = "world_model") -> tuple[Any, dict[str, float]]:
    """Train the configured world model on ``paths.data``; save it to ``paths.model``."""
    task = task_of(cfg)
    m = cfg["model"]
    if task.name == "pusht":
        return run_train_pixel_model(cfg)
    store = TransitionStore(run_path(cfg, "data", "data"))
    if store.meta.get("task") not in (task.name, None):
        raise ConfigError(f"dataset {store.path} was collected on task {store.meta.get('task')!r}, not {task.name!r}")
    data = store.load()
    train, val = split_episodes(data, float(m["val_fraction"]), seed=int(cfg["seed"]))
    spec = model_spec_from_data(store.meta, train, int(m["history"]), int(m["forecast"]), float(m["dt"]))
    try:
        model = build_model(m["name"], spec, **(m["params"] or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.params: {e}") from e
    train_cfg = dataclass_from(WorldModelTrainConfig, {**m["train"], "seed": cfg["seed"], "device": cfg["device"]}, "model.train")
    t0 = time.perf_counter()
    metrics = train_world_model(
        model, to_torch(train, cfg["device"]), to_torch(val, cfg["device"]), train_cfg,
        log_dir=str(Path(cfg["run_dir"]) / "tb" / log_name), progress=cfg["progress"],
    )
    metrics["train_seconds"] = time.perf_counter() - t0
    start = start_tensors(data)
    save_checkpoint(
        model, run_path(cfg, "model", "world_model"),
        extra={"task": task.name, "env_id": task.env_id, "dataset": str(store.path), "metrics": metrics},
        tensors=start,
    )
    return model, metrics


def run_train_pixel_model(cfg: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """``model=pixel_dit`` on a frame dataset (``task=pusht``): tokenizer, then DiT and heads;
    the checkpoint carries the episodes' first frames as start states."""
    m = cfg["model"]
    if m["name"] != "pixel_dit":
        raise ConfigError(f"task {cfg['task']!r} has camera frames: use model=pixel_dit, not {m['name']!r}")
    store = FrameStore(run_path(cfg, "data", "data"))
    data = store.load()
    train, val = split_episodes(data, float(m["val_fraction"]), seed=int(cfg["seed"]))
    spec = frame_model_spec(store.meta, int(m["history"]), int(m["forecast"]), float(m["dt"]))
    try:
        model = build_model("pixel_dit", spec, **(m["params"] or {})).to(cfg["device"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.params: {e}") from e
    train_cfg = dataclass_from(PixelTrainConfig, {**m["train"], "seed": cfg["seed"]}, "model.train")
    t0 = time.perf_counter()
    metrics = train_pixel_model(model, train, val, train_cfg, progress=cfg["progress"])
    metrics["train_seconds"] = time.perf_counter() - t0
    first = data["step"] == 0
    save_checkpoint(
        model, run_path(cfg, "model", "world_model"),
        extra={"task": "pusht", "dataset": str(store.path), "metrics": metrics, "val_episodes": np.unique(val["episode"]).tolist()},
        tensors={"start/pixels": torch.as_tensor(data["pixels"][first]), "start/agent_pos": torch.as_tensor(data["agent_pos"][first])},
    )
    return model, metrics


def report_model_params(cfg: dict[str, Any], model: WorldModel, path: str | Path) -> list[str]:
    """A trained checkpoint keeps the params it was built and trained with: print to stderr
    which of the experiment's ``model.params`` differ from those of ``model`` (loaded from
    ``path``) and so do not apply, and return them as ``"key: checkpoint X, config Y"``."""
    trained, wanted = model.config(), cfg["model"].get("params") or {}
    differ = [f"{k}: checkpoint {trained[k]!r}, config {wanted[k]!r}" for k in sorted(wanted) if k in trained and trained[k] != wanted[k]]
    if differ:
        print(f"wam: world model {path} keeps the params it was trained with; these model.params do not apply: "
              + "; ".join(differ), file=sys.stderr)
    return differ


def make_imagined_env(cfg: dict[str, Any], model=None) -> ImaginedVecEnv | ImaginedLeggedVecEnv:
    """The batched imagined env the agent trains in (``agent.num_envs`` envs)."""
    a = cfg["agent"]
    if task_of(cfg).name in LEGGED_TASKS:
        return ImaginedLeggedVecEnv(
            num_envs=int(a["num_envs"]),
            model=model if model is not None else str(run_path(cfg, "model", "world_model")),
            task=cfg["task"], device=cfg["device"], max_episode_steps=a["max_episode_steps"], sample=bool(a["sample"]),
        )
    return ImaginedVecEnv(
        num_envs=int(a["num_envs"]),
        model=model if model is not None else str(run_path(cfg, "model", "world_model")),
        task=cfg["task"],
        device=cfg["device"],
        max_episode_steps=a["max_episode_steps"],
        sample=bool(a["sample"]),
    )


def make_real_train_env(cfg: dict[str, Any]) -> gym.vector.VectorEnv:
    """The batched physics env of a legged task (``agent.num_envs`` robots), for model-free baselines."""
    task = task_of(cfg)
    if task.name not in LEGGED_TASKS:
        raise ConfigError(f"train_on=real needs a batched physics env; task {task.name!r} has none (only {list(LEGGED_TASKS)})")
    return gym.make_vec(task.env_id, num_envs=int(cfg["agent"]["num_envs"]), device=cfg["device"])


def run_train_policy(cfg: dict[str, Any], log_name: str = "policy") -> tuple[MLPPolicy, dict[str, Any]]:
    """Train the configured agent in imagination (``train_on: imagined``, wam's way) or, for the
    model-free baselines of legged tasks, on MuJoCo physics (``train_on: real``); save the
    policy to ``paths.policy``."""
    a = cfg["agent"]
    if a["name"] == "mbpo_ppo":
        return run_mbpo_ppo(cfg, log_name)
    if a["name"] == "mbpo":
        return run_mbpo(cfg, log_name)
    if a["name"] not in AGENTS:
        raise ConfigError(f"unknown agent {a['name']!r}; available: {sorted([*AGENTS, 'mbpo', 'mbpo_ppo'])}")
    config_cls, train = AGENTS[a["name"]]
    agent_cfg = dataclass_from(config_cls, {**(a["params"] or {}), "seed": cfg["seed"], "device": cfg["device"]}, "agent.params")
    if cfg["train_on"] not in ("imagined", "real"):
        raise ConfigError(f"train_on must be 'imagined' or 'real', got {cfg['train_on']!r}")
    env = make_imagined_env(cfg) if cfg["train_on"] == "imagined" else make_real_train_env(cfg)
    if cfg["train_on"] == "imagined":
        report_model_params(cfg, env.model, run_path(cfg, "model", "world_model"))
    t0 = time.perf_counter()
    policy, curve = train(env, agent_cfg, log_dir=str(Path(cfg["run_dir"]) / "tb" / log_name), progress=cfg["progress"])
    curve["train_seconds"] = time.perf_counter() - t0
    policy.save(run_path(cfg, "policy", "policy"))
    return policy, curve


def run_mbpo_ppo(cfg: dict[str, Any], log_name: str = "policy") -> tuple[MLPPolicy, dict[str, Any]]:
    """MBPO-PPO (``agent=mbpo_ppo``) on a legged task: starts from the dataset at ``paths.data``
    and the world model at ``paths.model`` (``wam collect`` / ``wam train-model`` first), appends
    every new real batch to the dataset and, after every iteration, saves the improved model
    back and the best policy so far to ``paths.policy`` (with the PPO actor and critic beside
    it, ``ppo_state.safetensors``) and the per-iteration history to ``<run_dir>/mbpo_ppo.json``,
    so a run stopped for time keeps its progress. ``agent.resume``: an earlier
    run's policy folder for PPO to continue from."""
    from world_models.checkpoint import load_checkpoint

    task = task_of(cfg)
    if task.name not in LEGGED_TASKS:
        raise ConfigError(f"agent=mbpo_ppo runs on legged tasks {list(LEGGED_TASKS)}, not {task.name!r}")
    a = cfg["agent"]
    agent_cfg = dataclass_from(mbpo_ppo.MbpoPPOConfig, {**(a["params"] or {}), "num_envs": int(a["num_envs"]), "sample": bool(a["sample"]),
                                                          "seed": cfg["seed"], "device": cfg["device"]}, "agent.params")
    dataclass_from(ppo_rsl_rl.RslRlPPOConfig, agent_cfg.ppo, "agent.params.ppo")  # unknown PPO keys: an error now
    store = TransitionStore(run_path(cfg, "data", "data"))
    model_path = run_path(cfg, "model", "world_model")
    model, extra, _ = load_checkpoint(model_path, device=cfg["device"])
    if extra.get("task") != task.name:
        raise ConfigError(f"world model {model_path} was trained on task {extra.get('task')!r}, not {task.name!r}")
    report_model_params(cfg, model, model_path)
    train_cfg = dataclass_from(WorldModelTrainConfig, {**cfg["model"]["train"], "seed": cfg["seed"], "device": cfg["device"]}, "model.train")
    t0 = time.perf_counter()
    data = store.load()
    start = start_tensors(data)  # the checkpoint's start states: the stored tail, kept current without re-reading the dataset

    def append(new: dict[str, np.ndarray]) -> None:
        nonlocal start
        store.append(new)
        chunk = start_tensors(load_chunks(store.path, store.meta["chunks"][-1:], store.fields, "dataset"))  # as stored (sorted, renumbered)
        start = {k: torch.cat([v, chunk[k]])[-START_DATA_LIMIT:] for k, v in start.items()}

    def save(policy: MLPPolicy, history: dict[str, Any], runner_state: dict[str, Any]) -> None:
        """Model, best policy with its PPO state, and history: after every iteration and at the end."""
        save_checkpoint(model, model_path, extra={**extra, "mbpo_ppo": True}, tensors=start)
        mbpo_ppo.save_runner_state(policy.save(run_path(cfg, "policy", "policy")), runner_state)
        history = {**history, "train_seconds": time.perf_counter() - t0}
        (Path(cfg["run_dir"]) / "mbpo_ppo.json").write_text(json.dumps(history, indent=2).replace("NaN", "null"))

    policy, history, runner_state = mbpo_ppo.train(task.name, model, data, agent_cfg, train_cfg, append=append,
                                                   log_dir=str(Path(cfg["run_dir"]) / "tb" / log_name), progress=cfg["progress"],
                                                   start_policy=a["resume"], on_iteration=save)  # not a policy folder: PolicyFileError
    save(policy, history, runner_state)
    history["train_seconds"] = time.perf_counter() - t0
    return policy, history


def mbpo_config(cfg: dict[str, Any]) -> mbpo.MbpoConfig:
    """``agent.params`` as :class:`agents.mbpo.MbpoConfig` (unknown or bad keys: ConfigError)."""
    return dataclass_from(mbpo.MbpoConfig, {**(cfg["agent"]["params"] or {}), "seed": cfg["seed"], "device": cfg["device"]}, "agent.params")


def mbpo_model_kwargs(cfg: dict[str, Any], log_dir: str | None) -> dict[str, Any]:
    """The world model MBPO trains, from the experiment's ``model`` section (``model=mlp_ensemble``
    by default for ``agent=mbpo``, ``model=rwm_gru`` for the recurrent model)."""
    m = cfg["model"]
    train_cfg = dataclass_from(WorldModelTrainConfig, {**m["train"], "seed": cfg["seed"], "device": cfg["device"]}, "model.train")
    return {"model_name": m["name"], "model_params": m["params"] or {}, "history": int(m["history"]),
            "forecast": int(m["forecast"]), "dt": float(m["dt"]), "train_cfg": train_cfg,
            "val_fraction": float(m["val_fraction"]), "log_dir": log_dir,
            "progress": cfg["progress"]}


def run_mbpo(cfg: dict[str, Any], log_name: str = "policy") -> tuple[MLPPolicy, dict[str, Any]]:
    """MBPO (``agent=mbpo``): SAC on branched model rollouts. Online it collects its own real
    data on the task's env (nothing to collect first); ``agent.params.offline=true`` trains
    from ``paths.data`` (a wam dataset) or ``agent.params.dataset`` (a local Minari dataset)
    alone. Saves the policy to ``paths.policy``, the world model (with its real start data)
    to ``paths.model`` and the history to ``<run_dir>/mbpo.json``."""
    task = task_of(cfg)
    if task.name in LEGGED_TASKS:
        raise ConfigError(f"agent=mbpo runs on single Gymnasium envs; legged task {task.name!r} uses agent=mbpo_ppo")
    agent_cfg = mbpo_config(cfg)
    kwargs = mbpo_model_kwargs(cfg, str(Path(cfg["run_dir"]) / "tb" / log_name))
    try:
        if agent_cfg.offline:
            if agent_cfg.dataset:
                data, meta = mbpo.load_minari(agent_cfg.dataset)
            else:
                store = TransitionStore(run_path(cfg, "data", "data"))
                data, meta = store.load(), store.meta
            policy, history, model, data = mbpo.train_offline(data, meta, agent_cfg, task=task, **kwargs)
        else:
            policy, history, model, data = mbpo.train(task, agent_cfg, **kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, (DatasetError, ConfigError)):
            raise
        raise ConfigError(f"agent=mbpo: {e}") from e
    if model is not None:
        start = start_tensors(data)
        save_checkpoint(model, run_path(cfg, "model", "world_model"), extra={"task": task.name, "env_id": task.env_id, "mbpo": True},
                        tensors=start)
    policy.save(run_path(cfg, "policy", "policy"))
    out = Path(cfg["run_dir"]) / "mbpo.json"
    out.write_text(json.dumps(history, indent=2).replace("NaN", "null"))
    return policy, history


def run_evaluate(cfg: dict[str, Any], policy: MLPPolicy | None = None) -> dict[str, Any]:
    """Evaluate a policy (``paths.policy``) on the task's real env; write ``evaluation.json``."""
    task = task_of(cfg)
    e = cfg["evaluate"]
    policy = policy if policy is not None else MLPPolicy.load(run_path(cfg, "policy", "policy"))
    seed = int(cfg["seed"]) + 10_000
    if task.name in LEGGED_TASKS:  # velocity tracking: one forward command per robot, all in one batch
        result = {"task": task.name, **evaluate_velocity_tracking(policy, task.name, int(e["episodes"]), seed)}
    else:
        returns = evaluate_policy(policy.act, task, episodes=int(e["episodes"]), seed=seed)
        result = {"task": task.name, "episodes": len(returns), "mean_return": float(np.mean(returns)),
                  "std_return": float(np.std(returns)), "returns": returns.tolist()}
    out = Path(cfg["run_dir"]) / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def run_play(cfg: dict[str, Any], policy: MLPPolicy | None = None) -> Path:
    """Render a policy on the task's MuJoCo env (env 0, tracking camera) to ``<run_dir>/play.<format>``."""
    import imageio.v2 as imageio

    from tasks.locomotion.registry import env_cfg
    from tasks.locomotion.velocity_env import LeggedVelocityVecEnv

    task = task_of(cfg)
    p = cfg["play"]
    if task.name not in LEGGED_TASKS:
        raise ConfigError(f"wam play renders legged tasks {list(LEGGED_TASKS)}, not {task.name!r}")
    if p["format"] not in ("mp4", "gif"):
        raise ConfigError(f"play.format must be mp4 or gif, got {p['format']!r}")
    policy = policy if policy is not None else MLPPolicy.load(run_path(cfg, "policy", "policy"))
    env_config = env_cfg(task.name)
    if p["command"] is not None:
        vx, vy, wz = (float(v) for v in p["command"])
        env_config = dataclasses.replace(env_config, commands=dataclasses.replace(
            env_config.commands, lin_vel_x=(vx, vx), lin_vel_y=(vy, vy), ang_vel_z=(wz, wz), heading_command=False,
            rel_standing_envs=0.0))
    env = LeggedVelocityVecEnv(env_config, num_envs=1, render_mode="rgb_array")
    obs, _ = env.reset(seed=int(cfg["seed"]))
    fps = 25  # every second policy step (50 Hz)
    frames = []
    for step in range(int(float(p["seconds"]) / env.step_dt)):
        action = np.clip(policy.act(obs.numpy()), -env_config.action_limit, env_config.action_limit)
        obs, *_ = env.step(action)
        if step % 2 == 0:
            frames.append(env.render())
    env.close()
    out = Path(cfg["run_dir"]) / f"play.{p['format']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if p["format"] == "gif":
        imageio.mimsave(out, [f[::2, ::2] for f in frames], duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(out, frames, fps=fps, macro_block_size=8)
    return out
