"""Pixel world model on Push-T (issue 7): train, then measure what the acceptance asks.

    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model train   # collect + train + save (runs/pixel_pusht)
    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model eval    # tables, GIF, plot, results.json
    python -m benchmarks.pixel_world_model oracles                   # PSNR of re-rendered frames with the T or the pusher frozen
    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model tokenizer --latent-channels 32 --tag _c32   # stage 1 alone, resized
    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model train --run R2 --continue-from R1/world_model  # more DiT steps
    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model objects --run R2 --continue-from R1/world_model  # a new object-dynamics head
    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model precision --run R   # open loop in float32 vs bfloat16

``train`` collects ``configs/tasks/pusht.yaml``'s frames (scripted pusher + noise) and
``--state-episodes`` episodes of state rows without frames (``run/states.npz``, for the heads on states), trains
``configs/models/pixel_dit.yaml`` and saves the checkpoint with its start frames and the
held-out episode ids. ``eval`` prints: tokenizer PSNR / SSIM, open-loop PSNR / SSIM at
horizons 1, 8, 16 on held-out episodes, coverage-head calibration, policy evaluation in
imagination vs the real env (Pearson r over >= 10 policies), imagined frames/s for 1 and 64
envs; and writes ``real_vs_imagined.gif`` and ``psnr_ssim_vs_horizon.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from world_models import build_model, load_checkpoint, save_checkpoint
from world_models.base import ModelSpec
from world_models.checkpoint import read_config
from world_models.data import split_episodes
from world_models.pixel.frames import FrameStore, frame_model_spec
from world_models.pixel.tokenizer import to_uint8
from world_models.pixel.training import (PixelTrainConfig, encode_rows, open_loop, psnr, start_rows, train_dynamics,
                                         train_pixel_model, train_tokenizer)

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (1, 8, 16)


def load_cfg() -> tuple[dict, dict]:
    return (yaml.safe_load((ROOT / "configs/models/pixel_dit.yaml").read_text()),
            yaml.safe_load((ROOT / "configs/tasks/pusht.yaml").read_text()))


def run_frames(run: Path, seed: int, model_cfg: dict, task_cfg: dict) -> tuple[dict, dict, dict, ModelSpec]:
    """The run's frame data (collected into ``run/data`` first if missing): all rows, the
    train / held-out split and the model spec."""
    from tasks.pusht import collect_pusht, frame_dataset_meta

    store_path = run / "data"
    if not (store_path / "meta.json").exists():
        t0 = time.time()
        rows = collect_pusht(int(task_cfg["collect"]["steps"]) // 151, max_steps=150, size=model_cfg["params"]["frame_size"], seed=seed)
        store = FrameStore(store_path, frame_dataset_meta(model_cfg["params"]["frame_size"]))
        store.append(rows)
        print(f"collected {len(rows['step'])} frames in {time.time() - t0:.0f} s")
    store = FrameStore(store_path)
    data = store.load()
    tr, va = split_episodes(data, float(model_cfg["val_fraction"]), seed=seed)
    spec = frame_model_spec({**frame_dataset_meta(), **store.meta}, int(model_cfg["history"]), int(model_cfg["forecast"]), float(model_cfg["dt"]))
    return data, tr, va, spec


def train(run: Path, seed: int, tokenizer_from: str | None = None, overrides: dict[str, Any] | None = None,
          state_episodes: int = 0) -> None:
    model_cfg, task_cfg = load_cfg()
    model_cfg["params"].update(overrides or {})
    data, tr, va, spec = run_frames(run, seed, model_cfg, task_cfg)
    torch.manual_seed(seed)
    model = build_model("pixel_dit", spec, **model_cfg["params"])
    cfg = PixelTrainConfig(**model_cfg["train"], seed=seed)
    earlier = 0.0
    if tokenizer_from:  # a tokenizer trained before on the same data: only the DiT and heads train (and the
        from safetensors.torch import load_file  # object decoder, when the config draws the object and it did not)

        weights = load_file(Path(tokenizer_from) / "model.safetensors")
        missing, unexpected = model.tokenizer.load_state_dict(
            {k.removeprefix("tokenizer."): v for k, v in weights.items() if k.startswith("tokenizer.")}, strict=False)
        if unexpected or any(not k.startswith("object_") for k in missing):
            raise ValueError(f"{tokenizer_from} holds another tokenizer: missing {missing}, unexpected {unexpected}")
        cfg.tokenizer_steps = 0
        if not missing:
            cfg.object_decoder_steps = 0
        earlier = read_config(tokenizer_from)["extra"]["metrics"]["tokenizer_seconds"]
    metrics = train_pixel_model(model, tr, va, cfg, state_rows=_state_rows(run, seed, state_episodes))
    if tokenizer_from:
        metrics.update(tokenizer_from=str(tokenizer_from), tokenizer_seconds=earlier + metrics["tokenizer_seconds"])
    metrics["train_seconds"] = metrics["tokenizer_seconds"] + metrics["dynamics_seconds"]
    metrics["threads"] = torch.get_num_threads()
    first = data["step"] == 0
    save_checkpoint(model, run / "world_model",
                    extra={"task": "pusht", "metrics": metrics, "val_episodes": np.unique(va["episode"]).tolist()},
                    tensors={"start/pixels": torch.as_tensor(data["pixels"][first]),
                             "start/agent_pos": torch.as_tensor(data["agent_pos"][first])})
    print(json.dumps(metrics, indent=2))


def _state_rows(run: Path, seed: int, episodes: int) -> dict[str, np.ndarray] | None:
    """``episodes`` real Push-T episodes without frames for the heads on states (collected into
    ``run/states.npz`` first if missing; None for 0)."""
    from tasks.pusht import collect_pusht

    if not episodes:
        return None
    path = run / "states.npz"
    if not path.exists():
        t0 = time.time()
        rows = collect_pusht(episodes, max_steps=150, seed=seed + 1, pixels=False)
        run.mkdir(parents=True, exist_ok=True)
        np.savez(path, **rows)
        print(f"collected {len(rows['step'])} state rows in {time.time() - t0:.0f} s")
    with np.load(path) as z:
        return dict(z)


# what `objects` may override
OBJECT_HEAD_PARAMS = ("object_dynamics_hidden", "object_dynamics_frame", "object_dynamics_members", "object_dynamics_noise")


def refine_objects(run: Path, seed: int, source: str, state_episodes: int, overrides: dict[str, Any] | None = None) -> None:
    """A fresh object-dynamics head (the config's ``object_dynamics_hidden``, ``_frame`` and ``_members``,
    or ``overrides`` of them) on a trained checkpoint
    ``source``: the heads on states train on the run's rows plus its state rows, then the head on its
    own rollouts (``object_rollout_*``); the tokenizer, DiT and latent heads are kept. Saved to
    ``run/world_model``; prints the object's open-loop error (held-out episodes) before and after, and
    for an ensemble the members' spread: its mean and its Pearson correlation with the error over the starts."""
    from world_models.pixel.training import object_open_loop

    model_cfg, task_cfg = load_cfg()
    data, tr, va, _ = run_frames(run, seed, model_cfg, task_cfg)
    old, extra, tensors = load_checkpoint(source)
    torch.manual_seed(seed)
    params = {**model_cfg["params"], **(overrides or {})}
    head = {k: params[k] for k in OBJECT_HEAD_PARAMS}
    model = build_model("pixel_dit", old.spec, **{**old.config(), **head})
    kept = {k: v for k, v in old.state_dict().items() if not k.startswith("object_dynamics.")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith("object_dynamics.") for k in missing):
        raise ValueError(f"{source} does not match the config's model: missing {missing}, unexpected {unexpected}")
    cfg = PixelTrainConfig(**{**model_cfg["train"], "dynamics_steps": 0, "head_steps": 0}, seed=seed + 2)
    more = train_dynamics(model, tr, cfg, state_rows=_state_rows(run, seed, state_episodes))
    res = {}
    for name, m in (("before", old), ("after", model)):
        o = object_open_loop(m.eval(), va, 64, starts=512, seed=seed)
        res[name] = {f"h{h}": [float(o["position_error"][:, h - 1].mean()), float(o["angle_error"][:, h - 1].mean())]
                     for h in (1, 4, 8, 16, 32, 64)}
    res["still"] = {f"h{h}": [float(o["still_position_error"][:, h - 1].mean()), float(o["still_angle_error"][:, h - 1].mean())]
                    for h in (1, 4, 8, 16, 32, 64)}
    spread = {}
    if model.object_dynamics.members > 1:  # o is the new model's; (spread, Pearson r of spread and position error)
        spread = {f"h{h}": [float(o["spread"][:, h - 1].mean()),
                            float(np.corrcoef(o["spread"][:, h - 1].numpy(), o["position_error"][:, h - 1].numpy())[0, 1])]
                  for h in (1, 4, 8, 16, 32, 64)}
    metrics = {**extra["metrics"], "objects_from": str(source), "object_seconds": more["dynamics_seconds"], "object_open_loop": res,
               "object_spread": spread}
    save_checkpoint(model, run / "world_model", extra={**extra, "metrics": metrics}, tensors=tensors)
    print("| object open loop, held-out (position world units / angle rad) | " + " | ".join(f"h={h}" for h in (1, 4, 8, 16, 32, 64))
          + " |\n|---|" + "---|" * 6)
    for name, v in res.items():
        print(f"| {name} | " + " | ".join(f"{a:.1f} / {b:.2f}" for a, b in v.values()) + " |")
    if spread:
        print("| after: members' spread (world units) / its Pearson r with the error | "
              + " | ".join(f"{a:.1f} / {b:.2f}" for a, b in spread.values()) + " |")


def continue_training(run: Path, seed: int, source: str, steps: int | None) -> None:
    """More DiT + head steps on a trained checkpoint ``source`` (same data, tokenizer and latent
    units kept; a fresh cosine schedule of ``steps``, default the config's ``dynamics_steps``),
    saved to ``run/world_model`` with the wall-clock of both parts."""
    model_cfg, task_cfg = load_cfg()
    data, tr, _, _ = run_frames(run, seed, model_cfg, task_cfg)
    model, extra, tensors = load_checkpoint(source)
    cfg = PixelTrainConfig(**{**model_cfg["train"], **({"dynamics_steps": steps} if steps else {})}, seed=seed + 1)
    more = train_dynamics(model, tr, cfg)
    metrics = {**extra["metrics"], **more, "continued_from": str(source), "continued_steps": cfg.dynamics_steps}
    metrics["dynamics_seconds"] = extra["metrics"]["dynamics_seconds"] + more["dynamics_seconds"]
    metrics["train_seconds"] = metrics["tokenizer_seconds"] + metrics["dynamics_seconds"]
    save_checkpoint(model, run / "world_model", extra={**extra, "metrics": metrics}, tensors=tensors)
    print(json.dumps(metrics, indent=2))


def tokenizer_study(run: Path, seed: int, latent_channels: int | None, channels: list[int] | None, steps: int | None,
                    tag: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 1 alone with the tokenizer's size changed (``None``: the config's): round-trip
    PSNR / SSIM on the held-out frames and wall-clock, written to ``run/tokenizer<tag>.json``;
    the model (tokenizer trained, the rest untouched) is saved to ``run/tokenizer<tag>/`` for
    ``train --tokenizer-from``."""
    model_cfg, task_cfg = load_cfg()
    _, tr, va, spec = run_frames(run, seed, model_cfg, task_cfg)
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    params = {**model_cfg["params"], **(overrides or {}), **given(latent_channels=latent_channels, tokenizer_channels=channels)}
    torch.manual_seed(seed)
    model = build_model("pixel_dit", spec, **params)
    cfg = PixelTrainConfig(**{**model_cfg["train"], **given(tokenizer_steps=steps)}, seed=seed)
    metrics = train_tokenizer(model, tr, va, cfg)
    metrics["frozen_latent"] = frozen_latent_psnr(model, va)
    res = {**metrics, "decoder_agent_radius": params.get("decoder_agent_radius", 0.0),
           "latent_channels": params["latent_channels"], "tokenizer_channels": params["tokenizer_channels"],
           "tokenizer_steps": cfg.tokenizer_steps, "tokenizer_parameters": sum(p.numel() for p in model.tokenizer.parameters())}
    (run / f"tokenizer{tag}.json").write_text(json.dumps(res, indent=2))
    save_checkpoint(model, run / f"tokenizer{tag}", extra={"task": "pusht", "metrics": res})
    print(json.dumps(res, indent=2))
    return res


@torch.no_grad()
def frozen_latent_psnr(model, rows: dict, horizons=HORIZONS, starts: int = 256) -> dict[str, float]:
    """PSNR of frame t's latent decoded at the agent position (and object pose) of frame t + h
    against frame t + h (held-out rows): what a dynamics model that never changed the latent
    would score. A tokenizer that draws the agent from its state (``decoder_agent_radius`` > 0)
    scores "true pusher, T frozen" here; one that also draws the object (``decoder_object_extent``
    > 0) "both true (re-rendered)"; one that does neither, "copy the last frame" through the tokenizer."""
    r = {k: torch.as_tensor(np.asarray(v)) for k, v in rows.items()}
    start, out = start_rows(r["episode"], max(horizons), starts), {}
    z = encode_rows(model, r)[start]
    for h in horizons:
        pos = model.norm_obs(r["agent_pos"][start + h].float())
        pose = model.norm_object_pose(r["block_pose"][start + h].float()) if model.object_head is not None else None
        frames = to_uint8(model.tokenizer.decode(z, pos, pose))
        out[f"h{h}"] = float(psnr(frames, r["pixels"][start + h]).mean())
    return out


def copy_last_baseline(rows: dict, horizons=HORIZONS) -> dict[str, dict[str, float]]:
    """PSNR / SSIM of predicting "nothing moves" (the last real frame) h steps ahead, over every
    held-out start row with h successors: the floor a world model has to beat."""
    from world_models.pixel.training import psnr, ssim

    px, ep = torch.as_tensor(rows["pixels"]), np.asarray(rows["episode"])
    out = {}
    for h in horizons:
        i = np.arange(len(ep) - h)
        i = i[ep[i + h] == ep[i]]
        a, b = px[i], px[i + h]
        out[f"h{h}"] = {"psnr": float(psnr(a, b).mean()), "ssim": float(ssim(a, b).mean())}
    return out


def oracle_psnr(episodes: int, seed: int, horizons=HORIZONS) -> dict[str, dict[str, float]]:
    """PSNR at h steps of frames re-rendered by Push-T itself with one part of the state
    frozen at the start row: which part of the picture a world model has to get right.
    ``episodes`` fresh episodes of the data collector; starts every 10 steps."""
    from tasks.pusht import collect_pusht, make_pusht_env
    from world_models.pixel.training import psnr

    data = collect_pusht(episodes, seed=seed, progress=False)
    env = make_pusht_env(data["pixels"].shape[1])
    env.reset(seed=seed)
    sim = env.unwrapped

    def render(agent: np.ndarray, block: np.ndarray) -> torch.Tensor:
        sim._set_state(np.array([*agent, *block], dtype=np.float64))
        return torch.as_tensor(np.ascontiguousarray(sim._render(visualize=False)))

    cases = {"copy the last frame": lambda t0, t: torch.as_tensor(data["pixels"][t0]),
             "true pusher, T frozen": lambda t0, t: render(data["agent_pos"][t], data["block_pose"][t0]),
             "true T, pusher frozen": lambda t0, t: render(data["agent_pos"][t0], data["block_pose"][t]),
             "both true (re-rendered)": lambda t0, t: render(data["agent_pos"][t], data["block_pose"][t])}
    out: dict[str, dict[str, list]] = {k: {f"h{h}": [] for h in horizons} for k in cases}
    for e in np.unique(data["episode"]):
        rows = np.nonzero(data["episode"] == e)[0]
        for t0 in rows[2:len(rows) - max(horizons):10]:
            for h in horizons:
                truth = torch.as_tensor(data["pixels"][t0 + h])
                for name, predict in cases.items():
                    out[name][f"h{h}"].append(float(psnr(predict(t0, t0 + h), truth)))
    env.close()
    return {name: {k: float(np.mean(v)) for k, v in hs.items()} for name, hs in out.items()}


def _policies() -> dict[str, dict]:
    """>= 10 policies of varied quality, each a set of PushPolicy arguments (or "stay")."""
    return {
        "push": {}, "push_noise10": {"noise": 10.0}, "push_noise30": {"noise": 30.0}, "push_noise60": {"noise": 60.0},
        "push_noise120": {"noise": 120.0}, "push_gentle": {"push_depth": 15.0}, "push_far": {"standoff": 110.0},
        "push_eps25": {"random_prob": 0.25}, "push_eps50": {"random_prob": 0.5}, "push_wrong_goal": {"goal": (110.0, 400.0)},
        "random": {"random_prob": 1.0}, "stay": {"stay": True},
    }


def _make_policy(args: dict, seed: int):
    from tasks.pusht import PushPolicy

    if args.get("stay"):
        return lambda obs: np.asarray(obs["agent_pos"], np.float32)
    return PushPolicy(seed=seed, **args).act


def policy_evaluation(model, starts: int, horizon: int, seed: int) -> dict[str, dict[str, float]]:
    """Mean return (sum of per-step rewards over ``horizon`` steps or until success) and final
    coverage of every policy, in the real env and in imagination, from the same ``starts``
    real start states (reset seeds) with the same policy seeds."""
    from tasks.pusht import make_pusht_env

    env = make_pusht_env(model.frame_size)
    firsts = [env.reset(seed=seed + 10_000 + i)[0] for i in range(starts)]
    out = {}
    for name, args in _policies().items():
        real_ret, real_cov = [], []
        for i in range(starts):
            act = _make_policy(args, seed + i)
            obs, info = env.reset(seed=seed + 10_000 + i)
            ret, cov = 0.0, float(env.unwrapped._get_coverage())
            for _ in range(horizon):
                obs, r, term, trunc, info = env.step(act(obs))
                ret, cov = ret + float(r), float(info["coverage"])
                if term:
                    break
            real_ret.append(ret)
            real_cov.append(cov)
        acts = [_make_policy(args, seed + i) for i in range(starts)]
        obs = {"pixels": torch.as_tensor(np.stack([f["pixels"] for f in firsts])),
               "agent_pos": torch.as_tensor(np.stack([f["agent_pos"] for f in firsts])).float()}
        with torch.no_grad():
            carry = model.observe(model.initial(starts), obs, obs["agent_pos"], torch.ones(starts, dtype=torch.bool))
            gen = torch.Generator().manual_seed(seed)
            ret, alive, cov = torch.zeros(starts), torch.ones(starts, dtype=torch.bool), torch.zeros(starts)
            for _ in range(horizon):
                px, pos = carry["pixels"].numpy(), carry["obs"].numpy()
                a = torch.as_tensor(np.stack([acts[i]({"pixels": px[i], "agent_pos": pos[i]}) for i in range(starts)]))
                carry, pred = model.imagine(carry, a, generator=gen)
                ret += torch.where(alive, pred.reward, torch.zeros_like(pred.reward))
                cov = torch.where(alive, pred.extras["coverage"], cov)
                alive &= pred.termination_logit <= 0
        out[name] = {"real_return": float(np.mean(real_ret)), "imagined_return": float(ret.mean()),
                     "real_coverage": float(np.mean(real_cov)), "imagined_coverage": float(cov.mean())}
        print(f"  {name:16s} real {out[name]['real_return']:6.2f}  imagined {out[name]['imagined_return']:6.2f}", flush=True)
    env.close()
    return out


def frames_per_second(model, starts: dict, num_envs: int, steps: int = 10) -> float:
    from wam_env.pixels import ImaginedPixelVecEnv

    env = ImaginedPixelVecEnv(num_envs, model=model, start_data=starts)
    env.reset(seed=0)
    action = torch.full((num_envs, 2), 256.0)
    env.step(action)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return num_envs * steps / (time.perf_counter() - t0)


def write_visuals(ol: dict, out: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import imageio.v2 as imageio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real, fake = ol["real"][:4].numpy(), ol["imagined"][:4].numpy()  # (4, H, h, w, 3)
    rows = [np.concatenate([real[i], np.full_like(real[i][:, :, :2], 255), fake[i]], axis=2) for i in range(len(real))]
    grid = np.concatenate([np.concatenate([r, np.full_like(r[:, :2], 255)], axis=1) for r in rows], axis=1)
    grid = grid.repeat(3, axis=1).repeat(3, axis=2)
    imageio.mimsave(out / "real_vs_imagined.gif", list(grid), duration=0.1, loop=0)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for label, (p, s) in curves.items():
        h = np.arange(1, len(p) + 1)
        ax[0].plot(h, p, marker=".", label=label)
        ax[1].plot(h, s, marker=".", label=label)
    ax[0].axhline(26, color="gray", ls="--", lw=0.8, label="goal 26 dB")
    ax[0].set(xlabel="open-loop horizon (steps)", ylabel="PSNR (dB)", title="Push-T 64x64, held-out episodes")
    ax[1].set(xlabel="open-loop horizon (steps)", ylabel="SSIM")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "psnr_ssim_vs_horizon.png", dpi=120)


def evaluate(run: Path, seed: int, starts: int = 16, horizon: int = 40) -> None:
    model, extra, tensors = load_checkpoint(run / "world_model")
    model.eval()
    data = FrameStore(run / "data").load()
    is_val = np.isin(data["episode"], extra["val_episodes"])
    va = {k: v[is_val] for k, v in data.items()}
    res: dict = {"train": extra["metrics"], "val_episodes": len(extra["val_episodes"]), "val_frames": int(is_val.sum())}
    curves = {}
    res["copy_last_baseline"] = copy_last_baseline(va)
    for mode, sample in (("mean", False), ("sampled", True)):
        ol = open_loop(model, va, horizon=16, starts=64, sample=sample, seed=seed)
        p, s = ol["psnr"].mean(0).numpy(), ol["ssim"].mean(0).numpy()
        curves[f"{mode} (x0 = {'noise' if sample else '0'})"] = (p, s)
        err = ol["agent_error"].mean(0).numpy()
        res[f"open_loop_{mode}"] = {f"h{h}": {"psnr": float(p[h - 1]), "ssim": float(s[h - 1]),
                                              "agent_error": float(err[h - 1])} for h in HORIZONS}
        cov, cov_pred = ol["coverage"].flatten(), ol["coverage_pred"].flatten()
        res[f"coverage_head_imagined_{mode}"] = {"mae": float((cov - cov_pred).abs().mean()),
                                                  "pearson": float(np.corrcoef(cov, cov_pred)[0, 1])}
        if not sample:
            ol_mean = ol
    write_visuals(ol_mean, run, curves)
    with torch.no_grad():
        z = encode_rows(model, {k: torch.as_tensor(v) for k, v in va.items()})
        cov_real = torch.sigmoid(model.coverage_head(z))
    true = torch.as_tensor(va["coverage"])
    res["coverage_head_real"] = {"mae": float((cov_real - true).abs().mean()), "pearson": float(np.corrcoef(cov_real, true)[0, 1])}
    first = data["step"] == 0
    start_frames = {"pixels": data["pixels"][first], "agent_pos": data["agent_pos"][first]}
    res["fps"] = {str(n): frames_per_second(model, start_frames, n) for n in (1, 64)}
    print("policy evaluation (real vs imagined mean return):", flush=True)
    pe = policy_evaluation(model, starts, horizon, seed)
    rr = np.array([v["real_return"] for v in pe.values()])
    ir = np.array([v["imagined_return"] for v in pe.values()])
    rc = np.array([v["real_coverage"] for v in pe.values()])
    ic = np.array([v["imagined_coverage"] for v in pe.values()])
    res["policy_eval"] = {"starts": starts, "horizon": horizon, "policies": pe,
                          "pearson_return": float(np.corrcoef(rr, ir)[0, 1]), "pearson_final_coverage": float(np.corrcoef(rc, ic)[0, 1])}
    (run / "results.json").write_text(json.dumps(res, indent=2))
    print_tables(res)


def precision_study(run: Path, seed: int, starts: int = 64, horizon: int = 16) -> None:
    """Open loop on held-out episodes with the DiT and tokenizer in float32 and in bfloat16 (the
    mean flow, so that the two differ only by precision): PSNR against the real frames, PSNR of the
    bfloat16 frames against the float32 ones, and the imagined pusher's error, at horizons 1, 8, 16;
    and the wall-clock of each (one process, float32 first)."""
    model, extra, _ = load_checkpoint(run / "world_model")
    model.eval()
    data = FrameStore(run / "data").load()
    va = {k: v[np.isin(data["episode"], extra["val_episodes"])] for k, v in data.items()}
    out: dict[str, dict] = {}
    frames = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        t0 = time.time()
        ol = open_loop(model, va, horizon=horizon, starts=starts, sample=False, seed=seed, autocast=dtype)
        seconds = time.time() - t0
        frames[name] = ol["imagined"]
        p, err = ol["psnr"].mean(0).numpy(), ol["agent_error"].mean(0).numpy()
        out[name] = {"seconds": seconds, **{f"h{h}": {"psnr_vs_real": float(p[h - 1]), "agent_error": float(err[h - 1])} for h in HORIZONS}}
    between = psnr(frames["bfloat16"], frames["float32"]).mean(0).numpy()
    out["bfloat16_vs_float32_psnr"] = {f"h{h}": float(between[h - 1]) for h in HORIZONS}
    (run / "precision.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def print_tables(res: dict) -> None:
    t = res["train"]
    print(f"\ntokenizer (held-out frames): PSNR {t['tokenizer_psnr']:.2f} dB, SSIM {t['tokenizer_ssim']:.3f}; "
          f"training wall-clock {t['train_seconds'] / 60:.1f} min on {t['threads']} thread(s) "
          f"(tokenizer {t['tokenizer_seconds'] / 60:.1f}, dynamics {t['dynamics_seconds'] / 60:.1f})")
    print("\n| open loop (64 held-out starts) | PSNR h=1 | PSNR h=8 | PSNR h=16 | SSIM h=1 | SSIM h=8 | SSIM h=16 |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("mean", "sampled", "copy_last_baseline"):
        o = res[f"open_loop_{mode}"] if mode != "copy_last_baseline" else res[mode]
        print(f"| {mode} | " + " | ".join(f"{o[f'h{h}']['psnr']:.2f}" for h in HORIZONS) + " | "
              + " | ".join(f"{o[f'h{h}']['ssim']:.3f}" for h in HORIZONS) + " |")
    print("\nimagined agent state, open loop (mean): error " + ", ".join(
        f"h={h} {res['open_loop_mean'][f'h{h}']['agent_error']:.2f}" for h in HORIZONS) + " (state units)")
    print("\n| coverage head | MAE | Pearson r |\n|---|---|---|")
    for key in ("coverage_head_real", "coverage_head_imagined_mean", "coverage_head_imagined_sampled"):
        print(f"| {key} | {res[key]['mae']:.3f} | {res[key]['pearson']:.3f} |")
    pe = res["policy_eval"]
    print(f"\n| policy ({pe['starts']} starts, {pe['horizon']} steps) | real return | imagined return | real final coverage | imagined final coverage |")
    print("|---|---|---|---|---|")
    for name, v in pe["policies"].items():
        print(f"| {name} | {v['real_return']:.2f} | {v['imagined_return']:.2f} | {v['real_coverage']:.3f} | {v['imagined_coverage']:.3f} |")
    print(f"\nPearson r (real vs imagined): return {pe['pearson_return']:.3f}, final coverage {pe['pearson_final_coverage']:.3f}")
    print(f"imagined frames/s: 1 env {res['fps']['1']:.1f}, 64 envs {res['fps']['64']:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["train", "objects", "eval", "oracles", "tokenizer", "precision"])
    p.add_argument("--run", default=str(ROOT / "runs/pixel_pusht"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-from", default=None, help="train: reuse the tokenizer of this checkpoint (skips stage 1)")
    p.add_argument("--starts", type=int, default=16, help="start states per policy (policy evaluation)")
    p.add_argument("--horizon", type=int, default=40, help="steps per policy-evaluation episode")
    p.add_argument("--episodes", type=int, default=24, help="oracles: fresh episodes to score")
    p.add_argument("--latent-channels", type=int, default=None, help="tokenizer: latent channels (default: the config's)")
    p.add_argument("--tokenizer-channels", type=int, nargs=4, default=None, help="tokenizer: stem and stage widths (default: the config's)")
    p.add_argument("--tokenizer-steps", type=int, default=None, help="tokenizer: training steps (default: the config's)")
    p.add_argument("--tag", default="", help="tokenizer: suffix of the result file and checkpoint folder")
    p.add_argument("--continue-from", default=None, help="train: more DiT steps on this trained checkpoint (same data); "
                                                          "objects: the checkpoint whose object-dynamics head is replaced")
    p.add_argument("--dynamics-steps", type=int, default=None, help="train --continue-from: steps (default: the config's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="train, tokenizer, objects: override one of the config's model params (VALUE read as YAML), e.g. agent_loss_weight=4")
    p.add_argument("--state-episodes", type=int, default=2000,
                   help="train, objects: real episodes without frames for the heads on states (run/states.npz; 0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (2 = both cores of the reference machine)")
    args = p.parse_args()
    known = load_cfg()[0]["params"]
    overrides = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            p.error(f"--param {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        overrides[key] = yaml.safe_load(value)
    torch.set_num_threads(args.threads)
    if args.phase == "train":
        if args.continue_from:
            continue_training(Path(args.run), args.seed, args.continue_from, args.dynamics_steps)
        else:
            train(Path(args.run), args.seed, args.tokenizer_from, overrides, args.state_episodes)
    elif args.phase == "objects":
        if not args.continue_from:
            p.error("objects needs --continue-from CHECKPOINT")
        if set(overrides) - set(OBJECT_HEAD_PARAMS):
            p.error(f"objects replaces only the object-dynamics head: --param may set {OBJECT_HEAD_PARAMS}, got {sorted(overrides)}")
        refine_objects(Path(args.run), args.seed, args.continue_from, args.state_episodes, overrides)
    elif args.phase == "tokenizer":
        tokenizer_study(Path(args.run), args.seed, args.latent_channels, args.tokenizer_channels, args.tokenizer_steps, args.tag,
                        overrides)
    elif args.phase == "oracles":
        res = oracle_psnr(args.episodes, args.seed + 12345)
        print("| oracle | " + " | ".join(f"PSNR h={h}" for h in HORIZONS) + " |\n|---|" + "---|" * len(HORIZONS))
        for name, v in res.items():
            print(f"| {name} | " + " | ".join(f"{v[f'h{h}']:.2f}" for h in HORIZONS) + " |")
    elif args.phase == "precision":
        precision_study(Path(args.run), args.seed, starts=64)
    else:
        evaluate(Path(args.run), args.seed, args.starts, args.horizon)


if __name__ == "__main__":
    main()
