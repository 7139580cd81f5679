"""Wall-clock of VLA post-training's imagined rollouts (issue 8): policy + pixel world model + success heads.

    OMP_NUM_THREADS=1 python -m benchmarks.vla_imagination_speed --envs 128 --decisions 38 --starts 16

Builds the committed configs' parts untrained (``configs/models/pixel_dit.yaml``, ``configs/vla.yaml``'s
policy and success heads; speed does not depend on the weights), starts ``--envs`` rollouts from
``--starts`` distinct random frames (a PGPE / GRPO group shares its start) and times one
:func:`agents.vla.rollout.rollout_imagined` of ``--decisions`` policy calls, split into the imagination's
``start`` (observing the start frames), its ``step`` (one imagined frame per action), the policy and the
success heads. ``--rounds`` repeats it; each round is printed. Run it from another checkout (``cd`` there,
same interpreter) to compare code versions on the same machine in one sitting.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
import yaml

ROOT = Path.cwd()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", type=int, default=128)
    p.add_argument("--decisions", type=int, default=38, help="policy calls per rollout (each a chunk of actions)")
    p.add_argument("--starts", type=int, default=16, help="distinct start frames (envs / starts rollouts share one)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="float32", help="PixelImagination's precision: float32 or bfloat16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from agents.vla.policy import VLAConfig, VLAPolicy
    from agents.vla.rollout import rollout_imagined
    from agents.vla.success import SuccessConfig, SuccessEnsemble
    from tasks.pusht import frame_dataset_meta
    from wam_env.pixels import PixelImagination
    from world_models import build_model
    from world_models.pixel.frames import frame_model_spec

    model_cfg = yaml.safe_load((ROOT / "configs/models/pixel_dit.yaml").read_text())
    vla_cfg = yaml.safe_load((ROOT / "configs/vla.yaml").read_text())
    torch.manual_seed(0)
    spec = frame_model_spec(frame_dataset_meta(model_cfg["params"]["frame_size"]), model_cfg["history"])
    model = build_model("pixel_dit", spec, **model_cfg["params"]).eval()
    size = model_cfg["params"]["frame_size"]
    starts = {"pixels": torch.randint(0, 256, (args.starts, size, size, 3), dtype=torch.uint8),
              "agent_pos": torch.rand(args.starts, 2) * 400 + 50}
    # float32 passes no `precision`, so that checkouts from before it (f54181a) run the same script
    imagination = PixelImagination(model, start_data=starts, **({} if args.precision == "float32" else {"precision": args.precision}))
    imagination.seed(0)
    policy = VLAPolicy(VLAConfig(**vla_cfg["policy_cfg"])).eval()
    heads = SuccessEnsemble(size, policy.cfg.lang_dim,
                            SuccessConfig(**{k: v for k, v in vla_cfg["success"].items() if k != "holdout_fraction"})).eval()
    lang = torch.randn(args.envs, policy.cfg.lang_dim)
    index = torch.arange(args.envs) % args.starts

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(obj, name: str, label: str) -> None:
        f = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            out = f(*a, **k)
            spent[label] += time.perf_counter() - t
            return out

        setattr(obj, name, wrapper)

    for obj, name, label in ((imagination, "start", "start"), (imagination, "step", "world model step"),
                             (policy, "sample", "policy"), (heads, "judge", "success heads")):
        timed(obj, name, label)
    rollout_imagined(policy, imagination, heads, index, lang, 1)  # warm-up
    steps = args.envs * args.decisions * policy.cfg.chunk
    for r in range(args.rounds):
        spent.clear()
        t = time.perf_counter()
        rollout_imagined(policy, imagination, heads, index, lang, args.decisions)
        total = time.perf_counter() - t
        print(json.dumps({"round": r, "envs": args.envs, "decisions": args.decisions, "seconds": round(total, 1),
                          "precision": args.precision,
                          "imagined_steps_per_s": round(steps / total, 1), **{k: round(v, 1) for k, v in spent.items()}}))


if __name__ == "__main__":
    main()
