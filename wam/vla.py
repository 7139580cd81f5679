"""``wam vla-posttrain``: the World-VLA-Loop on Push-T (composition of agents.vla, world models, tasks).

Config: ``configs/vla.yaml`` plus ``key=value`` overrides (dotted, every key must exist);
short keys ``policy=``, ``model=``, ``task=``, ``algos=``, ``run_dir=`` are top-level keys.
Writes into ``run_dir``: ``warm_start/`` and ``<algo>/`` policies, ``success_heads/``, ``frames/`` (the loop's real
rows, with block pose), ``results.json``, ``report.md``, PNG plots and GIFs.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wam.config import CONFIG_DIR, ConfigError, dataclass_from, merge, parse_overrides, read_yaml

VLA_CONFIG = CONFIG_DIR / "vla.yaml"


def load_vla_config(args: list[str], base: str | Path | None = None) -> dict[str, Any]:
    """``configs/vla.yaml`` (or ``base``) with ``key=value`` overrides; unknown keys are a ConfigError."""
    cfg = read_yaml(Path(base) if base else VLA_CONFIG)
    if base:
        cfg = merge(read_yaml(VLA_CONFIG), cfg)
    for key, value in parse_overrides(args):
        update: dict[str, Any] = {}
        node = update
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        cfg = merge(cfg, update)
    if cfg["task"] != "pusht":
        raise ConfigError(f"vla-posttrain supports task=pusht (language variants), got {cfg['task']!r}")
    from agents.vla.loop import IMAGINATION_BACKENDS, POST_TRAINING_ALGOS

    bad = [a for a in (cfg["algos"] if isinstance(cfg["algos"], list) else [cfg["algos"]]) if a not in POST_TRAINING_ALGOS]
    if bad:
        raise ConfigError(f"unknown algos {bad}; valid: {list(POST_TRAINING_ALGOS)}")

    if cfg["post_train"]["imagination"] not in IMAGINATION_BACKENDS:
        raise ConfigError(f"post_train.imagination must be {' or '.join(map(repr, IMAGINATION_BACKENDS))}, got {cfg['post_train']['imagination']!r}")
    if cfg["model"] is None and cfg["post_train"]["imagination"] != "simulator":
        raise ConfigError("model=null needs post_train.imagination=simulator (no world model to imagine in)")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device")
    return cfg


def run_vla_posttrain(cfg: dict[str, Any], progress: bool = True,
                      encode: Callable[[list[str]], torch.Tensor] | None = None) -> dict[str, Any]:
    """Demos -> warm start -> success heads -> real eval -> post-training (per algo) -> real eval -> report.
    ``encode`` (``list[str] -> (N, 384)``) replaces MiniLM as the instruction embedding (tests)."""
    from agents.vla.bc import BCConfig, train_bc
    from agents.vla.grpo import VLAGRPOConfig
    from agents.vla.language import InstructionEmbedder
    from agents.vla.pgpe import VLAPGPEConfig
    from agents.vla.loop import (DemoConfig, PostTrainConfig, StartPool, collect_demos, concat_rows, evaluate_real,
                                 paired_imagination, post_train)
    from agents.vla.policy import VLAConfig, VLAPolicy, load_vla, save_vla
    from agents.vla.ppo import VLAPPOConfig
    from agents.vla.report import write_report
    from agents.vla.success import SuccessConfig, fit_success_heads, load_success_heads, save_success_heads
    from tasks.pusht import PUSHT_VARIANTS, frame_dataset_meta, variant_targets
    from world_models.checkpoint import load_checkpoint
    from world_models.pixel.frames import FrameStore
    from world_models.pixel.model import PixelWorldModel

    t_all = time.time()
    dev = torch.device(cfg["device"])
    torch.manual_seed(int(cfg["seed"]))
    run = Path(cfg["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    env, variants = cfg["env"], PUSHT_VARIANTS
    radius, max_steps, size = float(env["radius"]), int(env["max_steps"]), int(env["size"])
    algos = cfg["algos"] if isinstance(cfg["algos"], list) else [cfg["algos"]]
    demo_cfg = dataclass_from(DemoConfig, cfg["demos"], "demos")
    pt_cfg = dataclass_from(PostTrainConfig, {**cfg["post_train"], "seed": int(cfg["seed"])}, "post_train")
    ppo_cfg = dataclass_from(VLAPPOConfig, cfg["ppo"], "ppo")
    grpo_cfg = dataclass_from(VLAGRPOConfig, cfg["grpo"], "grpo")
    pgpe_cfg = dataclass_from(VLAPGPEConfig, cfg["pgpe"], "pgpe")
    succ = dict(cfg["success"])
    holdout = float(succ.pop("holdout_fraction"))
    succ_cfg = dataclass_from(SuccessConfig, {**succ, "seed": int(cfg["seed"])}, "success")
    bc_cfg = dataclass_from(BCConfig, {**cfg["bc"], "seed": int(cfg["seed"])}, "bc")
    timing: dict[str, float] = {}

    model = None  # model=null: the simulator backend only
    if cfg["model"] is not None:
        model, _, _ = load_checkpoint(cfg["model"], device=dev)
        if not isinstance(model, PixelWorldModel):
            raise ConfigError(f"model={cfg['model']} is a {type(model).__name__}, not a pixel world model")
        model.eval()
    embedder = InstructionEmbedder(dev, encode)
    names = list(variants)
    lang_table = embedder([variants[n].instruction for n in names])

    ens = None
    if cfg["success_heads"]:  # heads of an earlier run, with the calibration measured there
        ens, calib = load_success_heads(cfg["success_heads"], dev)
        if (ens.image_size, ens.lang_dim) != (size, lang_table.shape[1]):
            raise ConfigError(f"success_heads={cfg['success_heads']} judge {ens.image_size}x{ens.image_size} frames and "
                              f"{ens.lang_dim}-d instructions, this run has {size}x{size} and {lang_table.shape[1]}-d")

    t = time.time()
    demos = collect_demos(variants, demo_cfg, radius, size, progress=progress)
    timing["demos_s"] = time.time() - t
    demo_lang = lang_table[torch.as_tensor(demos["variant"])]
    if cfg["policy"]:
        policy = load_vla(cfg["policy"], dev, embedder)
        bc_metrics: dict[str, float] = {"loaded": 1.0}
    else:
        policy = VLAPolicy(dataclass_from(VLAConfig, {**cfg["policy_cfg"], "image_size": size}, "policy_cfg"), embedder).to(dev)
        t = time.time()
        bc_metrics = train_bc(policy, demos["rows"], demo_lang, bc_cfg, progress=progress)
        timing["bc_s"] = time.time() - t
    save_vla(policy, run / "warm_start")

    def real_eval(pol: VLAPolicy, **kw) -> dict:  # the before / after evaluation: same episodes, seeds and variants
        return evaluate_real(pol, lang_table, variants, int(cfg["eval"]["episodes"]), int(cfg["eval"]["seed"]), max_steps,
                             radius, size, **kw)

    t = time.time()
    before = real_eval(policy, frames_of=int(cfg["eval"]["gif_episodes"]), progress=progress)
    sampled_before = real_eval(policy, deterministic=False)["success_rate"]
    timing["eval_before_s"] = time.time() - t
    if progress:
        print(f"warm start: real success {before['success_rate']:.3f} (sampled {sampled_before:.3f}) "
              f"{before['per_variant']} ({bc_metrics})", flush=True)

    # success heads: real frames of the demos and of the warm start's episodes, split by episode
    t = time.time()
    real = concat_rows([demos["rows"], before["rows"]])
    targets = variant_targets(variants)
    if ens is None:
        ens, succ_train, calib = fit_success_heads(real, targets, lang_table, radius, succ_cfg, holdout, dev, progress)
    else:
        succ_train = {"loaded": 1.0}
    save_success_heads(ens, run / "success_heads", calib)
    timing["success_heads_s"] = time.time() - t
    if progress:
        print(f"success heads, held-out real pairs: {calib}", flush=True)

    def paired(pol: VLAPolicy, ev: dict, wm) -> dict:  # the evaluation episodes imagined again in wm: false successes at scale
        if not cfg["eval"]["paired_imagination"]:
            return {}
        t = time.time()
        out = paired_imagination(pol, wm, ens, lang_table, ev, pt_cfg.decisions, radius, targets, dev,
                                 pt_cfg.imagination, int(cfg["seed"]), **pt_cfg.imagination_options())
        timing["paired_imagination_s"] = timing.get("paired_imagination_s", 0.0) + time.time() - t
        return out

    store = FrameStore(run / "frames", {**frame_dataset_meta(size), "optional_fields": ["block_pose"]}) \
        if not (run / "frames" / "meta.json").exists() else FrameStore(run / "frames")
    results: dict[str, Any] = {"config": cfg, "bc": bc_metrics, "success_train": succ_train, "success_calibration": calib,
                               "before": {**_summary(before), "sampled_success_rate": sampled_before,
                                          "paired": paired(policy, before, model)}, "algos": {}}
    videos: dict[str, Any] = {"real_before": before["frames"]}
    for algo in algos:
        pol = copy.deepcopy(policy)
        wm = copy.deepcopy(model)
        pool = StartPool(real, targets)
        out = post_train(pol, algo, wm, ens, lang_table, variants, pool, real, pt_cfg, ppo_cfg, grpo_cfg, max_steps, radius,
                         frame_store=store, device=dev, progress=progress, pgpe=pgpe_cfg)
        save_vla(pol, run / algo)
        t = time.time()
        after = real_eval(pol, frames_of=int(cfg["eval"]["gif_episodes"]), progress=progress)
        sampled_after = real_eval(pol, deterministic=False)["success_rate"]
        eval_after_s = time.time() - t
        checks = [h for h in out["history"] if "real_success" in h]
        imagined = sum(h["imagined_successes"] for h in checks)
        false = sum(h["imagined_false_success"] for h in checks)
        results["algos"][algo] = {"after": {**_summary(after), "sampled_success_rate": sampled_after,
                                            "paired": paired(pol, after, wm)},
                                  "history": out["history"], "refinements": out["refinements"], "kept": out["kept"],
                                  "post_train_s": out["seconds"], "eval_after_s": eval_after_s,
                                  "imagined_successes_checked": imagined, "imagined_false_successes": false,
                                  "imagined_false_success_rate": false / imagined if imagined else float("nan")}
        if progress:
            print(f"{algo}: real success {before['success_rate']:.3f} -> {after['success_rate']:.3f} (sampled "
                  f"{sampled_before:.3f} -> {sampled_after:.3f}) {after['per_variant']}", flush=True)
        videos[f"real_after_{algo}"] = after["frames"]
        videos[f"imagined_{algo}"] = out["video"]
    timing["total_s"] = time.time() - t_all
    results["timing"] = timing
    results["torch_threads"] = torch.get_num_threads()
    (run / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    results["files"] = write_report(run, results, videos)
    return results


def _summary(ev: dict) -> dict[str, Any]:
    return {"success_rate": ev["success_rate"], "per_variant": ev["per_variant"], "episodes": int(len(ev["success"])),
            "mean_steps": float(ev["steps"].mean()), "mean_final_distance": float(ev["final_distance"].mean()),
            "success": ev["success"].astype(int).tolist()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
