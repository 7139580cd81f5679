"""Training loop and open-loop evaluation for the state world models."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from world_models.base import WorldModel
from world_models.data import WindowSampler, check_oversampling
from world_models.heads import termination_metrics


@dataclass
class WorldModelTrainConfig:
    """Hyperparameters of :func:`train_world_model`.

    Attributes:
        batch_size: windows per gradient step.
        learning_rate / weight_decay: Adam (L2 weight decay, 0 for none).
        grad_clip: max global gradient norm.
        max_steps: gradient steps at most.
        eval_every: steps between validation losses (and TensorBoard points).
        patience: stop after this many evaluations without a lower validation loss.
        val_windows: validation windows (a fixed set, drawn once, uniformly).
        near_fall_fraction / near_fall_steps: share of every training batch drawn from the
            windows whose forecast starts fewer than ``near_fall_steps`` transitions before a
            termination (:class:`~world_models.data.WindowSampler`); 0: uniform windows.
        recent_fraction / recent_transitions: share of every training batch drawn from the
            windows that start in the newest ``recent_transitions`` transitions (MBPO: the
            latest collection); 0: uniform windows.
        seed: seeds the samplers, initialisation noise and the loss's sampling.
        device: where the model trains.
    """

    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int = 600
    eval_every: int = 50
    patience: int = 10
    val_windows: int = 1024
    near_fall_fraction: float = 0.0
    near_fall_steps: int = 50
    recent_fraction: float = 0.0
    recent_transitions: int = 20_000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_oversampling(self.near_fall_fraction, self.near_fall_steps, self.recent_fraction, self.recent_transitions)  # via dataclass_from: a ConfigError naming model.train


@torch.no_grad()
def _evaluate(model: WorldModel, batch: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
    """Validation losses, with the loss's own sampling seeded so evaluations compare."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: float(v) for k, v in model.loss(batch).items()}


def train_world_model(
    model: WorldModel,
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    cfg: WorldModelTrainConfig,
    log_dir: str | None = None,
    progress: bool = True,
    fit_normalizers: bool = True,
) -> dict[str, float]:
    """Fit normalizers on ``train`` (unless ``fit_normalizers`` is False: a warm-started
    model keeps the statistics its weights were trained with), then train ``model.loss`` on (history, forecast) windows
    (``model.spec.history`` / ``forecast``) with Adam, keeping the weights of the best
    validation loss. An ensemble with ``select_elites`` picks its elites on validation.

    Args:
        train / val: flat transitions (``world_models.data`` fields), split by episode.
        log_dir: TensorBoard folder (scalars under ``WorldModel/``), or None.

    Returns final metrics: ``val_*`` losses of the kept weights, termination precision /
    recall on all validation transitions, ``steps``, ``best_step``, ``train_seconds``.
    """
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    train = {k: v.to(device) for k, v in train.items()}
    val = {k: v.to(device) for k, v in val.items()}
    if fit_normalizers:
        model.fit_normalizers(train)
    spec = model.spec
    sampler = WindowSampler(train, spec.history, spec.forecast, seed=cfg.seed, near_fall_fraction=cfg.near_fall_fraction,
                            near_fall_steps=cfg.near_fall_steps, recent_fraction=cfg.recent_fraction, recent_transitions=cfg.recent_transitions)
    val_sampler = WindowSampler(val, spec.history, spec.forecast, seed=cfg.seed + 1)
    val_batch = val_sampler.sample(min(cfg.val_windows, len(val_sampler)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when logging

        writer = SummaryWriter(log_dir)

    best_loss, best_step, best_state, bad_evals = math.inf, 0, copy.deepcopy(model.state_dict()), 0
    sums: dict[str, float] = {}
    n_sum, step, start = 0, 0, time.perf_counter()
    bar = tqdm(range(1, cfg.max_steps + 1), desc=f"train {type(model).__name__}", disable=not progress, unit="step")
    for step in bar:
        model.train()
        losses = model.loss(sampler.sample(cfg.batch_size))
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"world-model loss became {float(losses['loss'])} at step {step}")
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        for k, v in [*losses.items(), ("grad_norm", grad_norm)]:
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n_sum += 1
        if step % cfg.eval_every and step != cfg.max_steps:
            continue
        model.eval()
        val_losses = _evaluate(model, val_batch, cfg.seed)
        if writer is not None:
            for k, v in sums.items():
                writer.add_scalar(f"WorldModel/{k}", v / n_sum, step)
            for k, v in val_losses.items():
                writer.add_scalar(f"WorldModel/val_{k}", v, step)
        bar.set_postfix(loss=f"{sums['loss'] / n_sum:.4g}", val=f"{val_losses['loss']:.4g}")
        sums, n_sum = {}, 0
        if val_losses["loss"] < best_loss:
            best_loss, best_step, best_state, bad_evals = val_losses["loss"], step, copy.deepcopy(model.state_dict()), 0
        else:
            bad_evals += 1
            if bad_evals >= cfg.patience:
                break
    bar.close()
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    if hasattr(model, "select_elites"):
        model.select_elites(val_batch)
    metrics = {f"val_{k}": v for k, v in _evaluate(model, val_batch, cfg.seed).items()}
    with torch.no_grad():
        _, logit = model.reward_termination(val["obs"], val["action"], val["next_obs"])
    if logit is not None:
        metrics.update(termination_metrics(logit, val["terminated"]))
    metrics.update(steps=float(step), best_step=float(best_step), train_seconds=seconds)
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"WorldModel/final_{k}", v, step)
        writer.close()
    return metrics


@torch.no_grad()
def open_loop_rollout(
    model: WorldModel, obs_hist: torch.Tensor, prev_act_hist: torch.Tensor, actions: torch.Tensor, sample: bool = False
) -> torch.Tensor:
    """Warm ``model`` up on a real history, then imagine with given actions.

    Args:
        obs_hist: (B, M + 1, D) real observations; the last one is where imagination starts.
        prev_act_hist: (B, M + 1, A) the action before each of them (row 0 is ignored).
        actions: (B, H, A) actions to imagine with, env units.

    Returns predicted observations (B, H, D): entry k follows ``actions[:, k]``.
    """
    B, T = obs_hist.shape[:2]
    is_first = torch.zeros(B, T, dtype=torch.bool, device=obs_hist.device)
    is_first[:, 0] = True
    carry = model.observe_sequence(model.initial(B), obs_hist, prev_act_hist, is_first)
    preds = []
    for k in range(actions.shape[1]):
        carry, pred = model.imagine(carry, actions[:, k], sample=sample)
        preds.append(pred.obs)
    return torch.stack(preds, dim=1)


@torch.no_grad()
def open_loop_error(
    model: WorldModel, data: dict[str, torch.Tensor], history: int, horizon: int, num_windows: int, seed: int = 0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSE of open-loop predictions per horizon step, in the model's obs-normalizer units
    (or per-dimension ``scale`` (D,), e.g. the test data's std, to compare models whose
    normalizers were fit on different data).

    Windows of ``history + horizon`` consecutive transitions inside one episode are drawn
    from ``data`` (flat transitions grouped by episode); the model observes the first
    ``history`` steps, then imagines ``horizon`` steps with the real actions (``sample=False``).

    Returns (horizon,): sqrt of the squared error averaged over windows and dimensions.
    """
    device = model.device
    episode = data["episode"].to(device)
    span = history + horizon
    n = episode.shape[0]
    if n < span:
        raise ValueError(f"need windows of {span} transitions, the data hold only {n}")
    starts = torch.arange(n - span + 1, device=device)
    starts = starts[episode[starts] == episode[starts + span - 1]]
    if starts.numel() == 0:
        raise ValueError(f"no episode holds {span} = history {history} + horizon {horizon} transitions")
    g = torch.Generator().manual_seed(seed)
    starts = starts[torch.randperm(starts.numel(), generator=g)[:num_windows].to(device)]
    idx = starts[:, None] + torch.arange(span, device=device)  # (B, span)
    obs, action, next_obs = (data[k].to(device)[idx] for k in ("obs", "action", "next_obs"))
    prev_act = torch.cat([torch.zeros_like(action[:, :1]), action[:, :history]], dim=1)
    pred = open_loop_rollout(model, obs[:, : history + 1], prev_act, action[:, history:])
    err = (pred - next_obs[:, history:]) / (model.obs_normalizer.std if scale is None else scale.to(device))
    return err.pow(2).mean(dim=(0, 2)).sqrt()
