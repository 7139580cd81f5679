"""Pixel world model on Push-T (issue 7): train, then measure what the acceptance asks.

    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model train   # collect + train + save (runs/pixel_pusht)
    OMP_NUM_THREADS=1 python -m benchmarks.pixel_world_model eval    # tables, GIF, plot, results.json

``train`` collects ``configs/tasks/pusht.yaml``'s frames (scripted pusher + noise), trains
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

import numpy as np
import torch
import yaml

from world_models import ModelSpec, build_model, load_checkpoint, save_checkpoint
from world_models.pixel.frames import FrameStore, split_frame_episodes
from world_models.pixel.training import PixelTrainConfig, encode_rows, open_loop, train_pixel_model

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (1, 8, 16)


def load_cfg() -> tuple[dict, dict]:
    return (yaml.safe_load((ROOT / "configs/models/pixel_dit.yaml").read_text()),
            yaml.safe_load((ROOT / "configs/tasks/pusht.yaml").read_text()))


def pusht_spec(model_cfg: dict) -> ModelSpec:
    return ModelSpec(obs_dim=2, action_dim=2, action_low=(0.0, 0.0), action_high=(512.0, 512.0),
                     history=int(model_cfg["history"]), forecast=int(model_cfg["forecast"]), dt=float(model_cfg["dt"]),
                     obs_low=(0.0, 0.0), obs_high=(512.0, 512.0), obs_names=("agent_x", "agent_y"))


def train(run: Path, seed: int) -> None:
    from tasks.pusht import collect_pusht

    model_cfg, task_cfg = load_cfg()
    store_path = run / "data"
    if not (store_path / "meta.json").exists():
        t0 = time.time()
        rows = collect_pusht(int(task_cfg["collect"]["steps"]) // 151, max_steps=150, size=model_cfg["params"]["frame_size"], seed=seed)
        store = FrameStore(store_path, {"task": "pusht", "frame_shape": list(rows["pixels"].shape[1:]), "state_dim": 2,
                                        "action_dim": 2, "action_low": [0.0, 0.0], "action_high": [512.0, 512.0]})
        store.append(rows)
        print(f"collected {len(rows['step'])} frames in {time.time() - t0:.0f} s")
    data = FrameStore(store_path).load()
    tr, va = split_frame_episodes(data, float(model_cfg["val_fraction"]), seed=seed)
    torch.manual_seed(seed)
    model = build_model("pixel_dit", pusht_spec(model_cfg), **model_cfg["params"])
    cfg = PixelTrainConfig(**model_cfg["train"], seed=seed)
    t0 = time.time()
    metrics = train_pixel_model(model, tr, va, cfg)
    metrics["train_seconds"] = time.time() - t0
    metrics["threads"] = torch.get_num_threads()
    first = data["step"] == 0
    save_checkpoint(model, run / "world_model",
                    extra={"task": "pusht", "metrics": metrics, "val_episodes": np.unique(va["episode"]).tolist()},
                    tensors={"start/pixels": torch.as_tensor(data["pixels"][first]),
                             "start/agent_pos": torch.as_tensor(data["agent_pos"][first])})
    print(json.dumps(metrics, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["train", "eval"])
    p.add_argument("--run", default=str(ROOT / "runs/pixel_pusht"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.phase == "train":
        train(Path(args.run), args.seed)
    else:
        evaluate(Path(args.run), args.seed)


if __name__ == "__main__":
    main()
