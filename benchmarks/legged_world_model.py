"""RWM on ANYmal C (or G1 with ``--task g1_flat``): prediction error vs horizon, imagination throughput, policy evaluation.

    .venv/bin/python benchmarks/legged_world_model.py prediction --policy runs/anymal_ppo/policy
    .venv/bin/python benchmarks/legged_world_model.py throughput --model runs/anymal_rwm/world_model
    .venv/bin/python benchmarks/legged_world_model.py policy-eval --checkpoints runs/anymal_ppo/tb/policy --steps 2000 \
        --start-from policy --start-margin 0 --action-noise 0 0.5 1.0 --fall-noise 1.0
    .venv/bin/python benchmarks/legged_world_model.py reward-audit --model runs/anymal_rwm3/world_model --start-data runs/anymal_rwm3/data \
        --checkpoints runs/anymal_ppo/tb/policy/model_0.pt runs/anymal_ppo/tb/policy/model_199.pt
    .venv/bin/python benchmarks/legged_world_model.py falls --task g1_flat --model runs/g1_rwm1/world_model --checkpoints runs/g1_rwm1/policy
    .venv/bin/python benchmarks/legged_world_model.py action-probes --task g1_flat --model runs/g1_rwm3/world_model \
        --probes zero '.*_knee_joint=0.5' '.*_ankle_pitch_joint=0.3' '.*_ankle_pitch_joint=-0.3,.*_hip_pitch_joint=0.4,.*_knee_joint=0.5'

- ``prediction``: trains, with equal gradient steps and batch, the dual-autoregressive GRU
  (N = 8), the same GRU teacher-forced (N = 1) and the MLP ensemble on a data mixture
  (default pose + action noise 0.5, plus ``--policy`` with noise 0.3), then measures the
  open-loop RMSE (history 32, real actions, mean prediction) per horizon on held-out
  episodes of the policy with noise 0.1, in units of the held-out data's std per dimension; zero-delta baseline; and
  the N = 8 model trained on the perturbed data alone (what the policy mixture adds).
- ``throughput``: ``ImaginedLeggedVecEnv`` env-steps/s at 4096 envs with the full RWM model
  (2 x 256 GRU, 5 heads, contact and termination heads, the task's reward terms) vs the MuJoCo
  ANYmal C env at 512 envs on all cores, in the same run; FLOP utilisation against a
  2048^2 fp32 matmul.
- ``policy-eval``: without ``--model``, first trains the model it evaluates with: the N = 8 GRU
  on perturbed data plus noisy data of every second checkpoint (the others held out), plus
  data with falls at each ``--fall-noise`` std. Then for every rsl-rl checkpoint
  (``model_*.pt``) in the folders given and every ``--action-noise`` std, the policy's
  mean reward per step in imagination and on MuJoCo (same commands distribution, the same
  action noise, 64 robots, 5 s from reset; imagination with the model's mean prediction
  unless ``--sample``, restarting every ``--horizon`` = 100 steps as MBPO-PPO's imagination
  does, from the model's start data or with ``--start-from policy`` from the policy's own
  MuJoCo states, at least ``--start-margin`` s before a real fall), their Pearson and Spearman
  correlations, the termination rates of both, and the termination head's precision / recall
  on the real transitions; all also per noise level and over the held-out checkpoints alone.

- ``reward-audit``: for each checkpoint given (``--checkpoints``: rsl-rl ``.pt`` files, folders
  of them, or wam policy folders), the deterministic policy's mean reward per step of every
  reward term, and terminations per step, on MuJoCo and in imagination with ``--model``
  (sampled and mean prediction; episodes of ``--horizon`` = 100 steps from real states at
  least 1 s before a real fall; 64 robots x 250 steps each; sampled with terms on the sample,
  sampled with terms on the ensemble mean (``score_mean``), mean): which terms the model gets
  wrong. On MuJoCo, ``joint_acc_l2`` terms are also scored with the acceleration imagination
  computes, the velocity change over the 20 ms control step, beside MuJoCo's ``qacc``.
- ``falls``: does the model foresee this policy's falls? For each checkpoint, 64 robots x 250
  steps from reset on MuJoCo and in imagination (every imagined episode starts from one of the
  policy's real reset states, no restarts, the model's mean unless ``--sample``): the share of
  robots that fall and when (median step of the first fall), which real termination terms
  ended the episodes, and the termination head's precision / recall on the real transitions
  (and the recall of its calibrated probability above 0.5, what imagination without
  ``--sample`` ends an episode on).
- ``action-probes``: does the model know which actions delay a fall? Each ``--probes`` entry is
  an open-loop action held from reset, joint-name patterns with their offsets (action units,
  ``pattern=value`` joined by commas; ``zero``: the default pose); for each, 64 robots x 250
  steps on MuJoCo and in imagination from the same real reset states (the model's mean): the
  share that fall and the median step of the first fall.

Results go to ``runs/benchmarks/<task>_<part><--tag>.json``; tables are printed as in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from imagination_throughput import matmul_flops, timed_rate
from prediction_error import ZeroDelta

from agents.policy import MLPPolicy
from tasks.locomotion import mdp
from tasks.locomotion.collect import collect_legged, legged_dataset_meta, perturb_action
from tasks.locomotion.registry import env_cfg
from tasks.locomotion.velocity_env import LeggedVelocityVecEnv
from wam.config import load_config
from wam_env.legged import ImaginedLeggedVecEnv
from world_models import build_model, open_loop_error, train_world_model
from world_models.checkpoint import load_checkpoint
from world_models.data import model_spec_from_data, split_episodes, to_torch
from world_models.heads import termination_metrics
from world_models.training import WorldModelTrainConfig

HORIZONS = (1, 2, 4, 8, 16, 32, 64)


def _merge(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, offset = {k: [] for k in parts[0]}, 0
    for p in parts:
        for k in out:
            out[k].append(p[k] + offset if k == "episode" else p[k])
        offset += int(p["episode"].max()) + 1
    return {k: np.concatenate(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------ prediction


def prediction(task: str, policy: Path | None, steps: int, hidden: int, seed: int) -> dict[str, Any]:
    act = MLPPolicy.load(policy).act if policy else None
    parts = [collect_legged(task, None, 100_000, num_envs=100, seed=seed, action_noise=0.5, progress=False)]
    if act is not None:
        parts.append(collect_legged(task, act, 50_000, num_envs=50, seed=seed + 1, action_noise=0.3, progress=False))
    data = _merge(*parts)
    test = to_torch(collect_legged(task, act, 32 * 500, num_envs=32, seed=seed + 99, action_noise=0.1, progress=False))
    meta = legged_dataset_meta(task)
    train, val = split_episodes(data, 0.1, seed=seed)
    scale = test["next_obs"].std(0).clamp_min(1e-3)  # one unit for every model: the held-out data's std per dimension
    gru = {"hidden": hidden, "learn_reward": False}
    runs = {"rwm_gru N=8": ("rwm_gru", 32, 8, gru, train, val),
            "rwm_gru N=8, history_weight 1": ("rwm_gru", 32, 8, {**gru, "history_weight": 1.0}, train, val),
            "rwm_gru N=8, history_weight 1, forecast_noise 0": ("rwm_gru", 32, 8, {**gru, "history_weight": 1.0, "forecast_noise": 0.0}, train, val),
            "rwm_gru N=1 (teacher forced)": ("rwm_gru", 32, 1, gru, train, val),
            "mlp_ensemble": ("mlp_ensemble", 0, 1, {"learn_reward": False}, train, val)}
    if len(parts) > 1:  # the data mixture: the same model on the perturbed default-pose data alone
        runs["rwm_gru N=8, perturbed data only"] = ("rwm_gru", 32, 8, gru, *split_episodes(parts[0], 0.1, seed=seed))
    cfg = WorldModelTrainConfig(batch_size=256, max_steps=steps, eval_every=100, seed=seed)
    result: dict[str, Any] = {"models": {}, "train_transitions": len(train["reward"]), "test_transitions": int(test["reward"].shape[0])}
    model = None
    for label, (name, history, forecast, params, tr, va) in runs.items():
        spec = model_spec_from_data(meta, tr, history, forecast, dt=0.02)
        torch.manual_seed(seed)
        model = build_model(name, spec, **params)
        metrics = train_world_model(model, to_torch(tr), to_torch(va), cfg, progress=False)
        rmse = open_loop_error(model, test, history=32, horizon=64, num_windows=512, seed=seed, scale=scale)
        result["models"][label] = {**metrics, "rmse": rmse.tolist(), "config": model.config()}
        print(f"{label}: " + ", ".join(f"h={h} {rmse[h - 1]:.3f}" for h in HORIZONS) + f" ({metrics['train_seconds']:.0f} s)")
    result["zero_delta_rmse"] = open_loop_error(ZeroDelta(model), test, history=32, horizon=64, num_windows=512, seed=seed, scale=scale).tolist()
    return result


# ------------------------------------------------------------------------------------ throughput


def throughput(task: str, model_path: Path | None, seconds: float) -> dict[str, Any]:
    data = collect_legged(task, None, 20_000, num_envs=64, seed=0, action_noise=0.5, progress=False)
    if model_path is not None:
        trained, _, _ = load_checkpoint(model_path)
    meta = legged_dataset_meta(task)
    spec = model_spec_from_data(meta, data, 32, 8, dt=0.02)
    model = build_model("rwm_gru", spec, hidden=256, layers=2, ensemble=5, learn_reward=False)  # RWM's full size
    if model_path is not None and trained.config()["hidden"] == 256:
        model = trained
    else:
        train, val = split_episodes(data, 0.1)
        train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(max_steps=100, eval_every=50), progress=False)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "matmul_gflops": matmul_flops(seconds) / 1e9}
    real = LeggedVelocityVecEnv(env_cfg(task), num_envs=512)
    real.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    real_actions = 0.3 * torch.randn(512, real.single_action_space.shape[0], generator=g)
    result["mujoco_512_steps_per_s"] = timed_rate(lambda: real.step(real_actions), seconds, 512)
    real.close()
    for n in (256, 4096):
        env = ImaginedLeggedVecEnv(n, model=model, task=task, start_data=data)
        env.reset(seed=0)
        actions = 0.3 * torch.randn(n, real_actions.shape[1], generator=g)
        rate = timed_rate(lambda: env.step(actions), seconds, n)
        carry = {k: v.clone() for k, v in env.carry.items()}
        with torch.no_grad():
            bare = timed_rate(lambda: model.imagine(carry, actions), seconds, n)
        flops = float(model.flops_per_step(sample=env.sample))  # the env and the bare imagine both sample
        result[f"imagined_{n}"] = {"env_steps_per_s": rate, "bare_model_steps_per_s": bare, "x_mujoco": rate / result["mujoco_512_steps_per_s"],
                                   "utilisation_env": flops * rate / (result["matmul_gflops"] * 1e9),
                                   "utilisation_bare_model": flops * bare / (result["matmul_gflops"] * 1e9)}
        print(f"{n} imagined envs: {rate:,.0f} env-steps/s ({rate / result['mujoco_512_steps_per_s']:.2f}x MuJoCo), bare model {bare:,.0f}/s")
    result["flops_per_step"] = flops
    print(f"MuJoCo ANYmal C, 512 envs: {result['mujoco_512_steps_per_s']:,.0f} env-steps/s; matmul {result['matmul_gflops']:.0f} GFLOP/s; "
          f"model {result['flops_per_step'] / 1e6:.2f} MFLOP/step")
    return result


# ------------------------------------------------------------------------------------ policy evaluation


def load_rsl_rl_policy(path: Path, env: ImaginedLeggedVecEnv | LeggedVelocityVecEnv, actor_hidden: tuple[int, ...] = (128, 128, 128)) -> MLPPolicy:
    """An rsl-rl ``model_<it>.pt`` (Isaac Lab's ANYmal runner layout) as an :class:`MLPPolicy`."""
    from rsl_rl.runners import OnPolicyRunner

    from agents.ppo_rsl_rl import RslRlPPOConfig
    from wam_env.rsl_rl import RslRlVecEnvAdapter

    cfg = RslRlPPOConfig(actor_hidden_dims=actor_hidden, critic_hidden_dims=actor_hidden, obs_normalization=False)
    with contextlib.redirect_stdout(io.StringIO()):
        runner = OnPolicyRunner(RslRlVecEnvAdapter(env), cfg.train_cfg(), None, "cpu")
        runner.load(str(path), load_cfg={"actor": True, "critic": False, "optimizer": False, "iteration": False})
    return MLPPolicy.from_rsl_rl(runner).cpu()


def checkpoint_files(checkpoint_dirs: list[Path]) -> list[Path]:
    return sorted((p for d in checkpoint_dirs for p in d.glob("model_*.pt")), key=lambda p: (str(p.parent), int(p.stem.split("_")[1])))


def train_policy_eval_model(task: str, files: list[Path], steps: int, hidden: int, seed: int, out: Path,
                            fall_noise: tuple[float, ...] = ()) -> tuple[Path, list[Path]]:
    """The model policy evaluation needs has seen what policies do: 100k perturbed default-pose
    steps (action noise 0.5) plus 10k steps (action noise 0.3) of every second checkpoint; the
    others stay held out. Every std in ``fall_noise`` adds 30k perturbed default-pose steps and
    5k steps of every seen checkpoint at that noise: data in which the robots fall, which the
    termination head and the dynamics towards a fall are learned from.
    Trains the N = 8 GRU with the task's sizes and saves it to ``out``; returns it and the
    checkpoints whose data it saw."""
    from world_models.checkpoint import save_checkpoint

    probe = LeggedVelocityVecEnv(env_cfg(task), num_envs=1)  # the spaces rsl-rl's runner is built for
    seen = files[::2]
    parts = [collect_legged(task, None, 100_000, num_envs=100, seed=seed, action_noise=0.5, progress=False)]
    for i, f in enumerate(seen):
        parts.append(collect_legged(task, load_rsl_rl_policy(f, probe).act, 10_000, num_envs=50, seed=seed + 10 + i, action_noise=0.3, progress=False))
    for j, noise in enumerate(fall_noise):
        parts.append(collect_legged(task, None, 30_000, num_envs=100, seed=seed + 100 * (j + 1), action_noise=noise, progress=False))
        for i, f in enumerate(seen):
            parts.append(collect_legged(task, load_rsl_rl_policy(f, probe).act, 5_000, num_envs=50, seed=seed + 100 * (j + 1) + 10 + i,
                                        action_noise=noise, progress=False))
    data = _merge(*parts)
    train, val = split_episodes(data, 0.1, seed=seed)
    spec = model_spec_from_data(legged_dataset_meta(task), train, 32, 8, dt=0.02)
    torch.manual_seed(seed)
    params = {**load_config([f"task={task}", "model=rwm_gru"])["model"]["params"], "hidden": hidden}  # the task config's model
    model = build_model("rwm_gru", spec, **params)
    metrics = train_world_model(model, to_torch(train), to_torch(val), WorldModelTrainConfig(batch_size=256, max_steps=steps, eval_every=100, patience=10, seed=seed), progress=False)
    print(f"policy-eval model: {len(train['reward'])} train transitions, {metrics['train_seconds']:.0f} s, val loss {metrics['val_loss']:.3f}, "
          f"termination precision {metrics.get('termination_precision', float('nan')):.3f} recall {metrics.get('termination_recall', float('nan')):.3f}")
    start = {k: torch.as_tensor(v) for k, v in data.items()}
    save_checkpoint(model, out, extra={"task": task, "metrics": metrics, "seen_checkpoints": [str(f) for f in seen], "fall_noise": list(fall_noise)},
                    tensors={f"start/{k}": start[k] for k in ("obs", "action", "episode", "terminated")})
    return out, seen


def policy_eval(task: str, model_path: Path | None, checkpoint_dirs: list[Path], envs: int, steps: int, seed: int,
                train_steps: int = 3000, hidden: int = 128, sample: bool = False, horizon: int = 100,
                start_from: str = "data", action_noise: tuple[float, ...] = (0.0,), fall_noise: tuple[float, ...] = (),
                start_margin_s: float = 1.0, tag: str = "") -> dict[str, Any]:
    """Imagined vs MuJoCo mean reward per step of every checkpoint: ``envs`` robots x ``steps``
    steps each side, imagined episodes restarting from real states every ``horizon`` steps.
    ``start_from="data"`` draws those states from the model's start data (what MBPO-PPO's
    imagination does); ``"policy"`` from the checkpoint's own MuJoCo rollout, so both worlds
    score the states the policy visits (branched rollouts, as MBPO's), and the model answers
    "what does this policy earn in the next ``horizon`` steps from here, under new commands".

    Every checkpoint is evaluated once per ``action_noise`` std (action units, Gaussian noise
    added to its action in both worlds, then clipped to the action box): noisy versions of a
    walking policy fall on MuJoCo, which the teacher's own checkpoints do not, so the
    termination head's rate and precision / recall are measured on policies that do fall.
    ``start_margin_s`` (the env's option) keeps imagined starts that far before a real fall;
    0 draws from every real state, so the falls that follow a start can happen in both worlds
    (the unbiased setting for comparing termination rates). Without ``model_path`` the model
    is trained here and saved to ``runs/benchmarks/<task>_policy_eval_model<tag>``."""
    if start_from not in ("data", "policy"):
        raise ValueError(f"start_from must be 'data' or 'policy', got {start_from!r}")
    files = checkpoint_files(checkpoint_dirs)
    if len(files) < 2:
        raise ValueError(f"policy-eval needs >= 2 rsl-rl checkpoints (model_*.pt) in {checkpoint_dirs}, found {len(files)}")
    if model_path is not None:  # where policy-eval trained it: the checkpoints whose data it saw, its fall data
        if fall_noise:
            raise ValueError("fall_noise shapes the data of policy-eval's own model; it cannot apply to a given model")
        extra = load_checkpoint(model_path)[1]
        seen = [Path(p) for p in extra.get("seen_checkpoints", [])]
        fall_noise = tuple(extra.get("fall_noise", ()))
    else:
        model_path, seen = train_policy_eval_model(task, files, train_steps, hidden, seed, Path(f"runs/benchmarks/{task}_policy_eval_model{tag}"),
                                                   fall_noise)
    imag = ImaginedLeggedVecEnv(envs, model=str(model_path), task=task, sample=sample, max_episode_steps=horizon, start_margin_s=start_margin_s)
    model = imag.model
    rows = []
    all_logits, all_terms = [], []
    limit = float(imag.single_action_space.high[0])
    policies = {f: load_rsl_rl_policy(f, imag) for f in files}
    for f, noise in itertools.product(files, action_noise):
        policy = policies[f]
        real = collect_legged(task, policy.act, envs * steps, num_envs=envs, seed=seed, action_noise=noise, progress=False)
        if start_from == "policy":
            imag.set_start_data(real)
        obs, _ = imag.reset(seed=seed)
        gen = torch.Generator().manual_seed(seed + 7)
        r_imag, t_imag = [], []
        for _ in range(steps):
            obs, r, term, _, _ = imag.step(perturb_action(policy.act(obs), noise, gen, limit))
            r_imag.append(r)
            t_imag.append(term.float())
        with torch.no_grad():
            _, logit = model.reward_termination(torch.as_tensor(real["obs"]), torch.as_tensor(real["action"]), torch.as_tensor(real["next_obs"]))
        all_logits.append(logit)
        all_terms.append(torch.as_tensor(real["terminated"]))
        row = {"checkpoint": str(f), "action_noise": noise, "model_saw_its_data": f in seen, "imagined_reward": float(torch.stack(r_imag).mean()),
               "real_reward": float(real["reward"].mean()), "imagined_termination_rate": float(torch.stack(t_imag).mean()),
               "real_termination_rate": float(real["terminated"].mean())}
        rows.append(row)
        print(f"{f} + noise {noise}: reward/step imagined {row['imagined_reward']:.4f} real {row['real_reward']:.4f}; "
              f"terminations/step imagined {row['imagined_termination_rate']:.4f} real {row['real_termination_rate']:.4f}")
    tm = termination_metrics(torch.cat(all_logits), torch.cat(all_terms))
    out = {"rows": rows, **_agreement(rows), **tm, "model": str(model_path), "sample": sample, "envs": envs, "steps": steps,
           "horizon": imag.max_episode_length, "start_from": start_from, "action_noise": list(action_noise), "fall_noise": list(fall_noise),
           "start_margin_s": start_margin_s,
           "by_action_noise": {str(n): _agreement([r for r in rows if r["action_noise"] == n]) for n in action_noise}}
    for name, agreement in [(f"{len(rows)} policies", out)] + [(f"action noise {n}", out["by_action_noise"][str(n)]) for n in action_noise]:
        print(f"{name}: Pearson(imagined, real) {agreement['pearson']:.3f} (held out {agreement['pearson_held_out'] or float('nan'):.3f}), "
              f"Spearman {agreement['spearman']:.3f}; terminations/step imagined {agreement['imagined_termination_rate']:.2e} "
              f"vs real {agreement['real_termination_rate']:.2e}")
    print(f"termination head on the real transitions: precision {tm['termination_precision']:.3f}, recall {tm['termination_recall']:.3f}")
    return out


def _agreement(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Pearson / Spearman of imagined vs real reward per step over ``rows`` (and over the
    checkpoints whose data the model never saw), and the mean termination rates per step."""
    im, re = np.array([r["imagined_reward"] for r in rows]), np.array([r["real_reward"] for r in rows])
    held = np.array([not r["model_saw_its_data"] for r in rows])
    return {"pearson": float(np.corrcoef(im, re)[0, 1]), "spearman": float(np.corrcoef(im.argsort().argsort(), re.argsort().argsort())[0, 1]),
            "pearson_held_out": float(np.corrcoef(im[held], re[held])[0, 1]) if 2 < held.sum() < len(rows) else None,
            "imagined_termination_rate": float(np.mean([r["imagined_termination_rate"] for r in rows])),
            "real_termination_rate": float(np.mean([r["real_termination_rate"] for r in rows]))}


def _metered(env: ImaginedLeggedVecEnv | LeggedVelocityVecEnv) -> dict[str, float]:
    """Wrap ``env``'s reward terms so that each adds its weighted mean value per step
    (weight x dt, as the env sums it) to the returned dict."""
    sums: dict[str, float] = {}
    for k, (fn, weight, params) in list(env._rewards.items()):
        sums[k] = 0.0

        def metered(s, _fn=fn, _k=k, _w=weight, **kw):
            value = _fn(s, **kw)
            sums[_k] += float(value.float().mean()) * _w * env.step_dt
            return value

        env._rewards[k] = (metered, weight, params)
    return sums


def _control_step_joint_acc(env: LeggedVelocityVecEnv) -> tuple[dict[str, float], Callable[[torch.Tensor], None]]:
    """Meter MuJoCo's ``joint_acc_l2`` terms a second time with the joint acceleration the
    imagined env can compute, (v_t+1 - v_t) / control dt, instead of MuJoCo's ``qacc`` at the
    last physics substep. Returns the sums (key ``<term> (control-step)``) and a function to
    call after every ``env.step`` with its ``terminated | truncated`` (N,) (envs that reset in
    that step are left out)."""
    terms = {k: (fn, w, p) for k, (fn, w, p) in env._rewards.items() if fn is mdp.joint_acc_l2}
    sums = {f"{k} (control-step)": 0.0 for k in terms}
    prev = {"vel": env.state.joint_vel.clone()}

    def after_step(done: torch.Tensor) -> None:
        s = env.state
        fd = dataclasses.replace(s, joint_acc=(s.joint_vel - prev["vel"]) / env.step_dt)
        keep = ~done.cpu()
        for k, (fn, w, p) in terms.items():
            sums[f"{k} (control-step)"] += float(fn(fd, **p)[keep].sum()) / len(keep) * w * env.step_dt
        prev["vel"] = s.joint_vel.clone()

    return sums, after_step


def _is_policy_folder(path: Path) -> bool:
    return (path / "policy.json").is_file()


def _audit_policy(path: Path, env: ImaginedLeggedVecEnv | LeggedVelocityVecEnv) -> MLPPolicy:
    """A wam policy folder (``policy.json``) or an rsl-rl ``model_<it>.pt``."""
    return MLPPolicy.load(path) if _is_policy_folder(path) else load_rsl_rl_policy(path, env)


def reward_audit(task: str, model_path: Path, checkpoints: list[Path], start_data: Path | None, envs: int, steps: int, seed: int,
                 horizon: int = 100) -> dict[str, Any]:
    files = [f for c in checkpoints for f in (checkpoint_files([c]) if c.is_dir() and not _is_policy_folder(c) else [c])]
    rows: dict[str, Any] = {}
    for f in files:
        row = {}
        for side in ("real", "imagined_sampled", "imagined_sampled_scored_on_mean", "imagined_mean"):
            if side == "real":
                env = LeggedVelocityVecEnv(env_cfg(task), num_envs=envs, num_threads=1)
            else:
                env = ImaginedLeggedVecEnv(envs, model=str(model_path), task=task, sample=side != "imagined_mean",
                                           score_mean=side == "imagined_sampled_scored_on_mean",
                                           start_data=None if start_data is None else str(start_data), max_episode_steps=horizon)
            policy = _audit_policy(f, env)
            obs, _ = env.reset(seed=seed)
            extra, after_step = _control_step_joint_acc(env) if side == "real" else ({}, None)
            sums = _metered(env)
            terminations = 0.0
            for _ in range(steps):
                obs, _, terminated, truncated, _ = env.step(policy.act(obs).clamp(-10, 10))
                terminations += float(terminated.float().mean())
                if after_step is not None:
                    after_step(terminated | truncated)
            row[side] = {**{k: v / steps for k, v in sums.items()}, "total": sum(sums.values()) / steps, "terminations": terminations / steps,
                         **{k: v / steps for k, v in extra.items()}}
            env.close()
        rows[str(f)] = row
        print(f"{f}  (reward per step: MuJoCo | imagined sampled | sampled, scored on the mean | imagined mean)")
        for k in row["real"]:
            print(f"  {k:30s} " + " | ".join(f"{row[side][k]:+.5f}" if k in row[side] else "–" for side in row))
    return {"rows": rows, "model": str(model_path), "envs": envs, "steps": steps}


def _first_fall_steps(terminated: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Step (N,) of each env's first termination in (T, N) flags, -1 where its first episode
    ended by time-out or did not end."""
    ended = terminated | truncated
    first_end = ended.float().argmax(0)  # the first True (0 where none)
    fell = ended.any(0) & terminated.gather(0, first_end[None]).squeeze(0)
    return torch.where(fell, first_end, -1)


def _fall_summary(steps: torch.Tensor) -> dict[str, float | None]:
    fallen = steps[steps >= 0]
    return {"fall_fraction": float((steps >= 0).float().mean()), "median_fall_step": float(fallen.median()) if len(fallen) else None}


def _imagined_first_falls(task: str, model_path: Path, act: Callable[[torch.Tensor], torch.Tensor], real: dict[str, np.ndarray],
                          envs: int, steps: int, seed: int, sample: bool) -> tuple[ImaginedLeggedVecEnv, torch.Tensor]:
    """``act`` for ``steps`` imagined steps on ``envs`` robots, each started from one of the real
    reset states in ``real`` (no restarts); the env and each robot's first-fall step (N,) (-1: none)."""
    imag = ImaginedLeggedVecEnv(envs, model=str(model_path), task=task, sample=sample, start_data=real, reset_start_fraction=1.0,
                                start_margin_s=0.0, max_episode_steps=steps)
    obs, _ = imag.reset(seed=seed)
    flags = []
    for _ in range(steps):
        obs, _, terminated, truncated, _ = imag.step(act(obs))
        flags.append((terminated, truncated))
    return imag, _first_fall_steps(torch.stack([t for t, _ in flags]), torch.stack([u for _, u in flags]))


def probe_actions(spec: str, joint_names: list[str], limit: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The open-loop policy of one ``--probes`` entry: obs (N, .) -> the same joint offsets (N, J)
    every step, clipped to the ±``limit`` action box."""
    offsets = torch.zeros(len(joint_names))
    for part in filter(None, spec.split(",")):
        if part == "zero":
            continue
        pattern, _, value = part.partition("=")
        hit = [i for i, n in enumerate(joint_names) if re.fullmatch(pattern, n)]
        if not hit or not value:
            raise ValueError(f"probe {part!r}: need <joint-name pattern>=<offset> matching some of {joint_names}")
        offsets[hit] = float(value)
    offsets = offsets.clamp(-limit, limit)
    return lambda obs: offsets.expand(obs.shape[0], -1)


@torch.no_grad()
def action_probes(task: str, model_path: Path, probes: list[str], envs: int, steps: int, seed: int) -> dict[str, Any]:
    """Real vs imagined first falls under each open-loop probe, from reset (see the module docstring)."""
    cfg = env_cfg(task)
    ref = LeggedVelocityVecEnv(cfg, num_envs=1, num_threads=1)
    names = list(ref.joint_names)
    ref.close()
    rows: dict[str, Any] = {}
    for spec in probes:
        act = probe_actions(spec, names, cfg.action_limit)
        real = collect_legged(task, act, envs * steps, num_envs=envs, seed=seed, progress=False)  # grouped by env, time order inside
        flags = {k: torch.as_tensor(real[k]).reshape(envs, -1)[:, :steps].T for k in ("terminated", "truncated")}
        real_first = _first_fall_steps(flags["terminated"].bool(), flags["truncated"].bool())
        _, imag_first = _imagined_first_falls(task, model_path, act, real, envs, steps, seed, sample=False)
        rows[spec] = {"real": _fall_summary(real_first), "imagined": _fall_summary(imag_first)}
        med = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"{spec}: fell within {steps} steps: real {rows[spec]['real']['fall_fraction']:.0%} (median step {med(rows[spec]['real']['median_fall_step'])}), "
              f"imagined {rows[spec]['imagined']['fall_fraction']:.0%} (median step {med(rows[spec]['imagined']['median_fall_step'])})")
    return {"rows": rows, "model": str(model_path), "envs": envs, "steps": steps}


@torch.no_grad()
def falls(task: str, model_path: Path, checkpoints: list[Path], envs: int, steps: int, seed: int, sample: bool = False) -> dict[str, Any]:
    """Real vs imagined falls of each checkpoint from reset (see the module docstring)."""
    files = [f for c in checkpoints for f in (checkpoint_files([c]) if c.is_dir() and not _is_policy_folder(c) else [c])]
    rows: dict[str, Any] = {}
    for f in files:
        real_env = LeggedVelocityVecEnv(env_cfg(task), num_envs=envs, num_threads=1)
        policy = _audit_policy(f, real_env)
        obs, _ = real_env.reset(seed=seed)
        flags, term_counts = [], {}
        for _ in range(steps):
            obs, _, terminated, truncated, info = real_env.step(policy.act(obs))
            flags.append((terminated, truncated))
            for k, v in info.get("log", {}).items():
                if k.startswith("Episode_Termination/"):
                    term = k.removeprefix("Episode_Termination/")
                    term_counts[term] = term_counts.get(term, 0) + int(v)
        real_env.close()
        real_first = _first_fall_steps(torch.stack([t for t, _ in flags]), torch.stack([u for _, u in flags]))
        real = collect_legged(task, policy.act, envs * steps, num_envs=envs, seed=seed, progress=False)  # transitions for the head
        imag, imag_first = _imagined_first_falls(task, model_path, policy.act, real, envs, steps, seed, sample)
        _, logit = imag.model.reward_termination(torch.as_tensor(real["obs"]), torch.as_tensor(real["action"]), torch.as_tensor(real["next_obs"]))
        y = torch.as_tensor(real["terminated"]).bool()
        p = torch.sigmoid(logit - torch.log(imag.model.heads.pos_weight))
        row = {"real": _fall_summary(real_first), "imagined": _fall_summary(imag_first), "real_termination_terms": term_counts,
               "real_transitions": len(y), "real_terminations": int(y.sum()), **termination_metrics(logit, y),
               "calibrated_recall_p_over_0.5": float((p[y] > 0.5).float().mean()) if y.any() else None}
        rows[str(f)] = row
        med = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"{f}: fell from reset within {steps} steps: real {row['real']['fall_fraction']:.0%} (median step {med(row['real']['median_fall_step'])}), "
              f"imagined {row['imagined']['fall_fraction']:.0%} (median step {med(row['imagined']['median_fall_step'])}); real terms {term_counts}; "
              f"head on {row['real_terminations']} real terminations: precision {row['termination_precision']:.3f} recall {row['termination_recall']:.3f}")
    return {"rows": rows, "model": str(model_path), "envs": envs, "steps": steps, "sample": sample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("prediction", "throughput", "policy-eval", "reward-audit", "falls", "action-probes"))
    parser.add_argument("--task", default="anymal_c_flat", choices=("anymal_c_flat", "g1_flat"))
    parser.add_argument("--policy", type=Path, default=None, help="prediction: a wam.policy folder for the policy-collected data")
    parser.add_argument("--model", type=Path, default=None, help="a legged world-model checkpoint folder")
    parser.add_argument("--checkpoints", type=Path, nargs="*", default=[], help="policy-eval: folders of rsl-rl model_*.pt files; reward-audit / falls: those, .pt files or wam policy folders")
    parser.add_argument("--steps", type=int, default=1000, help="prediction / policy-eval without --model: gradient steps per model")
    parser.add_argument("--hidden", type=int, default=128, help="prediction: GRU hidden size")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--start-data", type=Path, default=None, help="reward-audit: dataset folder to start imagined episodes from (default: the checkpoint's)")
    parser.add_argument("--sample", action="store_true", help="policy-eval / falls: sample the model's predictive distribution (default: its mean)")
    parser.add_argument("--horizon", type=int, default=100,
                        help="policy-eval / reward-audit: imagined steps before an episode restarts from real states (MBPO-PPO's imagination_horizon)")
    parser.add_argument("--start-from", choices=("data", "policy"), default="data",
                        help="policy-eval: imagined episodes start from the model's start data, or from each checkpoint's own MuJoCo states")
    parser.add_argument("--action-noise", type=float, nargs="+", default=[0.0],
                        help="policy-eval: evaluate every checkpoint once per Gaussian action-noise std (action units), the same noise in both worlds")
    parser.add_argument("--fall-noise", type=float, nargs="*", default=[],
                        help="policy-eval without --model: add perturbed and checkpoint data at each of these action-noise stds (data with falls)")
    parser.add_argument("--start-margin", type=float, default=1.0,
                        help="policy-eval: imagined episodes start at least this many seconds before a real fall (0: from every real state)")
    parser.add_argument("--probes", nargs="*", default=[], help="action-probes: open-loop actions, e.g. zero '.*_knee_joint=0.5'")
    parser.add_argument("--tag", default="", help="suffix of the result file (and of policy-eval's own model folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.part == "prediction":
        result = prediction(args.task, args.policy, args.steps, args.hidden, args.seed)
    elif args.part == "throughput":
        result = throughput(args.task, args.model, args.seconds)
    elif args.part == "action-probes":
        if args.model is None or not args.probes:
            parser.error("action-probes needs --model and --probes")
        result = action_probes(args.task, args.model, args.probes, 64, 250, args.seed)
    elif not args.checkpoints:
        parser.error(f"{args.part} needs --checkpoints")
    elif args.part in ("reward-audit", "falls") and args.model is None:
        parser.error(f"{args.part} needs --model")
    elif args.part == "falls":
        result = falls(args.task, args.model, args.checkpoints, 64, 250, args.seed, sample=args.sample)
    elif args.part == "reward-audit":
        result = reward_audit(args.task, args.model, args.checkpoints, args.start_data, 64, 250, args.seed, horizon=args.horizon)
    else:
        result = policy_eval(args.task, args.model, args.checkpoints, 64, 250, args.seed, train_steps=args.steps, hidden=args.hidden,
                             sample=args.sample, horizon=args.horizon, start_from=args.start_from, action_noise=tuple(args.action_noise),
                             fall_noise=tuple(args.fall_noise), start_margin_s=args.start_margin, tag=args.tag)
    out = Path("runs/benchmarks") / f"{args.task}_{args.part.replace('-', '_')}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
