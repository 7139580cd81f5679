"""Imagined legged velocity tasks: RWM-style world models behind the MuJoCo tasks' interface.

:class:`ImaginedLeggedVecEnv` (``gym.make_vec("wam/AnymalC-Flat-Imagined-v0", model=ckpt)``)
is a drop-in for :class:`tasks.locomotion.velocity_env.LeggedVelocityVecEnv`: the same
policy observation, action box, reward terms, commands, episode length and torch interface,
with the physics replaced by a world model that predicts the privileged state (base twist,
projected gravity, joint positions / velocities / torques, base height) and the contacts.

Per step, for every env at once:

1. the model consumes (state, action) and predicts the next state, its contact logits and a
   termination logit;
2. a :class:`~tasks.locomotion.mdp.LeggedState` is built from the prediction (when sampling,
   from the ensemble-mean next state for scoring, ``score_mean``, while the episode follows the sample): contacts
   above 0.5 probability, joint accelerations by finite difference, foot air time from the
   predicted foot contacts, undesired contact forces as the contact flags (2 N when in
   contact, above the terms' 1 N threshold); foot velocities are not predicted (zero, so
   ``feet_slide`` scores 0 in imagination);
3. the task's own reward terms score it (weight x step dt, as on MuJoCo), and it terminates
   where the calibrated termination head says so (a Bernoulli draw of its probability) or
   where a termination term that reads the predicted state (``bad_orientation``) does;
4. the policy observation is assembled from the predicted state as the real task does.

Commands are resampled as ``CommandCfg`` says; heading commands use the yaw integrated from
the predicted yaw-frame angular velocity (the absolute yaw is not part of the state, and the
heading is sampled uniformly, so the start yaw is 0 without loss). Episodes start from real
states: a window of real (state, action) history is drawn from the start data and the model
is warmed up on it; the last real action is the env's previous action. Start states closer
than ``start_margin_s`` to a real termination are not drawn (the real task starts standing).
A share ``reset_start_fraction`` of the episodes starts from real reset states instead (the
first transition of a real episode, ``step`` 0, drawn whatever followed it): every real
episode begins there, and a policy that never practises starting from rest in imagination
can fall on MuJoCo in its first seconds (BENCHMARKS.md, issue 4, "falls at the start").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from tasks.locomotion import mdp
from tasks.locomotion.collect import MODEL_STATE
from tasks.locomotion.config import VelocityEnvCfg
from tasks.locomotion.registry import env_cfg
from tasks.locomotion.velocity_env import LeggedVelocityVecEnv
from wam_env.imagined import load_start_data
from world_models.base import Carry, WorldModel
from world_models.checkpoint import load_checkpoint
from world_models.data import WindowSampler

# termination terms that read only the predicted state; the others (contact forces) are the learned head's job
STATE_TERMINATIONS = (mdp.bad_orientation, mdp.base_height_below)


class ImaginedLeggedVecEnv(gym.vector.VectorEnv):
    """``num_envs`` imagined robots advanced by one world-model call per step.

    Args:
        num_envs: N.
        model: a checkpoint folder or a :class:`WorldModel` whose spec has ``contact_dim`` > 0
            and whose observation is the legged model state (``tasks.locomotion.collect``).
        task: ``anymal_c_flat`` / ``g1_flat`` (default: the checkpoint's task).
        cfg: the task config (default: the task's), for commands and reward terms.
        start_data: real transitions to start from (dataset folder or dict; default: saved in
            the checkpoint).
        device: torch device of every tensor.
        sample: sample the model's predictive distribution (True) or use its mean.
        score_mean: when sampling, the reward terms and foot contacts read the ensemble-mean
            next state (``Prediction.extras["mean_obs"]``) while the episode follows the sample
            (falls and terminations too): terms on finite differences and contact events would
            otherwise charge the draw's noise as jerk and foot flicker (BENCHMARKS.md, per-term audit).
        termination_threshold: calibrated P(terminated) above which the learned head ends an
            episode when ``sample`` is False (with ``sample`` it is drawn, see ``_learned_termination``).
        termination_bias: logit added to the head's calibrated termination logit (0: the head as
            trained). MBPO-PPO moves it so that the policy's imagined termination rate meets its
            real one (``MbpoPPOConfig.termination_bias_step``): a head calibrated on the data can
            still miss the falls of a policy whose gait it has not seen.
        uncertainty_penalty: lambda of MOPO's reward penalty, reward -= lambda x epistemic
            uncertainty (per step, before the dt-weighted terms are summed; 0: off).
        max_episode_steps: episode length in steps (default: the task's 20 s).
        start_margin_s: episodes start only from real states at least this many seconds
            (of the same real episode) before a termination. The real task starts standing;
            noisy or policy data holds robots already falling, and starting there would charge
            the policy for falls it did not cause (0: any state).
        reset_start_fraction: share of episodes that start from a real reset state (a start
            data transition with ``step`` 0) rather than from any healthy real state. With
            imagined episodes of H steps and real ones of T, H / T gives the start of the
            episode the weight it has on the real task.

    Observations (N, 3 + 3 + 3 + 3 + 3J) float32, rewards (N,), terminated / truncated (N,)
    bool, all on ``device``; SAME_STEP autoreset with ``info["final_obs"]``;
    ``info["model_diverged"]`` (N,) (non-finite or out-of-range predictions end an episode as
    truncated), ``info["uncertainty"]`` (N,), ``info["state"]`` (N, D) the predicted state,
    ``info["log"]`` per-term episode sums of finished episodes (``Episode_Reward/<term>``).
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        model: WorldModel | str | Path | None = None,
        task: str | None = None,
        cfg: VelocityEnvCfg | None = None,
        start_data: str | Path | dict | None = None,
        device: str | torch.device = "cpu",
        sample: bool = True,
        score_mean: bool = True,
        termination_threshold: float = 0.5,
        termination_bias: float = 0.0,
        uncertainty_penalty: float = 0.0,
        max_episode_steps: int | None = None,
        start_margin_s: float = 1.0,
        reset_start_fraction: float = 0.0,
    ):
        if model is None:
            raise ValueError("ImaginedLeggedVecEnv needs model=<checkpoint folder or WorldModel>")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.device = torch.device(device)
        extra: dict[str, Any] = {}
        saved: dict[str, torch.Tensor] = {}
        if isinstance(model, (str, Path)):
            model, extra, saved = load_checkpoint(model, device=self.device)
        elif not isinstance(model, WorldModel):
            raise TypeError(f"model must be a WorldModel or a checkpoint path, got {type(model).__name__}")
        self.model = model.to(self.device).eval()
        spec = self.model.spec
        task = task or extra.get("task")
        if task is None:
            raise ValueError("no task given and the model carries none: pass task='anymal_c_flat' or 'g1_flat'")
        self.task_name = task
        self.cfg = cfg or env_cfg(task)
        ref = LeggedVelocityVecEnv(self.cfg, num_envs=1, num_threads=1)  # the task's layout and resolved terms
        J, F = ref.num_joints, len(self.cfg.robot.feet)
        lay = ref.state_layout
        self.state_slices = {k: lay[k] for k in MODEL_STATE}
        D = lay[MODEL_STATE[-1]].stop
        C = F + len(self.cfg.robot.undesired_contacts)
        if spec.obs_dim != D or spec.action_dim != J or spec.contact_dim != C:
            raise ValueError(
                f"model predicts state/action/contacts of sizes {spec.obs_dim}/{spec.action_dim}/{spec.contact_dim}; "
                f"task {task!r} needs {D}/{J}/{C} (a legged world model trained on `wam collect task={task}` data)"
            )
        self.num_envs, self.num_joints, self.num_feet = num_envs, J, F
        self.joint_names = ref.joint_names
        self.step_dt = ref.step_dt
        self.max_episode_length = int(max_episode_steps or ref.max_episode_length)
        self.obs_layout = ref.obs_layout
        self.single_observation_space = ref.single_observation_space
        self.single_action_space = ref.single_action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        to = lambda t: t.to(self.device)  # noqa: E731
        self.default_joint_pos, self.joint_pos_limits = to(ref.default_joint_pos), to(ref.joint_pos_limits)
        self._rewards = {k: (fn, w, {p: to(v) if torch.is_tensor(v) else v for p, v in params.items()})
                         for k, (fn, w, params) in ref.reward_terms.items()}
        self._state_terminations = {k: (fn, params) for k, (fn, _, params) in ref.termination_terms.items() if fn in STATE_TERMINATIONS}
        ref.close()
        self.termination_threshold, self.termination_bias = termination_threshold, termination_bias
        self.uncertainty_penalty = uncertainty_penalty
        self.sample, self.score_mean = sample, score_mean
        if start_margin_s < 0:
            raise ValueError(f"start_margin_s must be >= 0, got {start_margin_s}")
        self.start_margin_steps = int(round(start_margin_s / self.step_dt))
        if not 0.0 <= reset_start_fraction <= 1.0:
            raise ValueError(f"reset_start_fraction must be in [0, 1], got {reset_start_fraction}")
        self.reset_start_fraction = reset_start_fraction

        if start_data is None:
            if not saved:
                raise ValueError("no start_data given and the checkpoint holds none: pass start_data=<dataset folder>")
            start_data = {k.removeprefix("start/"): v for k, v in saved.items() if k.startswith("start/")}
        self.set_start_data(start_data)
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()

        N = num_envs
        z = lambda *s: torch.zeros(N, *s, device=self.device)  # noqa: E731
        self.action, self.prev_action = z(J), z(J)
        self.command, self._heading, self._yaw, self._command_time_left = z(3), z(), z(), z()
        self._is_heading = torch.zeros(N, dtype=torch.bool, device=self.device)
        self.air_time = mdp.AirTime(N, F, device=self.device)
        self.episode_length_buf = torch.zeros(N, dtype=torch.long, device=self.device)
        self.episode_sums = {k: z() for k in self._rewards}
        self.carry: Carry | None = None

    # ------------------------------------------------------------------------------ public API

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Start every env (or those in ``options["reset_mask"]`` (N,) bool) from real states."""
        if seed is not None:
            self.generator.manual_seed(seed)
            self.starts.generator.manual_seed(seed + 1)
            self.action_space.seed(seed)
        mask = None if options is None else options.get("reset_mask")
        if mask is None or self.carry is None:
            idx = torch.arange(self.num_envs, device=self.device)
            self.carry = None
        else:
            idx = torch.as_tensor(mask, device=self.device).nonzero().squeeze(1)
        self._reset_envs(idx)
        return self._observations(self.carry["obs"]), {}

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if self.carry is None:
            raise RuntimeError("call reset() before step()")
        action = self._check_action(actions)
        self.prev_action, self.action = self.action, action
        state = self.carry["obs"]
        with torch.no_grad():
            carry, pred = self.model.imagine(self.carry, action, sample=self.sample, generator=self.generator)
        nxt = pred.obs
        diverged = ~torch.isfinite(nxt).all(-1)
        if self._bound_low is not None:
            diverged |= ((nxt < self._bound_low) | (nxt > self._bound_high)).any(-1)
        if bool(diverged.any()):
            nxt = torch.where(diverged[:, None], state, nxt)
            carry["obs"] = nxt
        self.carry = carry
        self.episode_length_buf += 1
        contacts = torch.sigmoid(pred.contacts) > 0.5
        s = taken = self._legged_state(state, nxt, contacts)
        if self.sample and self.score_mean and "mean_obs" in pred.extras:  # score what the dynamics expect, not the draw's noise
            mean_next = torch.where(diverged[:, None], state, pred.extras["mean_obs"])
            s = self._legged_state(state, mean_next, torch.sigmoid(pred.extras["mean_contacts"]) > 0.5)
        self.air_time.update(s.foot_contact, self.step_dt)
        a = self.air_time
        s.last_air_time, s.current_air_time, s.current_contact_time, s.first_contact = (
            a.last_air_time, a.current_air_time, a.current_contact_time, a.first_contact)
        self._update_commands(s)
        s.command = self.command.clone()

        terminated = self._learned_termination(pred.termination_logit)
        for fn, params in self._state_terminations.values():  # falls follow the trajectory taken
            terminated |= fn(taken, **params).bool()
        terminated &= ~diverged
        truncated = (self.episode_length_buf >= self.max_episode_length) | diverged
        s.terminated = terminated
        reward = torch.zeros(self.num_envs, device=self.device)
        for k, (fn, weight, params) in self._rewards.items():
            value = fn(s, **params) * (weight * self.step_dt)
            self.episode_sums[k] += value
            reward += value
        if self.uncertainty_penalty:
            reward = reward - self.uncertainty_penalty * pred.uncertainty
        reward = torch.nan_to_num(reward, nan=0.0, posinf=0.0, neginf=0.0)
        obs = self._observations(nxt)
        info: dict[str, Any] = {"state": nxt.clone(), "model_diverged": diverged, "uncertainty": pred.uncertainty}
        done = terminated | truncated
        if bool(done.any()):
            idx = done.nonzero().squeeze(1)
            info["final_obs"] = obs.clone()
            info["_final_obs"] = done
            log = {f"Episode_Reward/{k}": float(v[idx].mean()) / (self.max_episode_length * self.step_dt) for k, v in self.episode_sums.items()}
            log["Episode_Termination/terminated"] = int(terminated[idx].sum())
            log["Episode_Termination/model_diverged"] = int(diverged[idx].sum())
            log["Episode_Termination/time_out"] = int((truncated & ~diverged)[idx].sum())
            info["log"] = log
            self._reset_envs(idx)
            obs[idx] = self._observations(self.carry["obs"][idx], idx)
        return obs, reward, terminated, truncated, info

    def close(self, **kwargs: Any) -> None:
        self.carry = None

    def set_start_data(self, source: str | Path | dict) -> None:
        """Draw future start states from ``source`` (dataset folder or dict of flat real
        transitions with ``obs`` (n, D), ``action`` (n, J), ``episode`` (n,), and ``step`` (n,),
        the step within the episode, for reset starts); re-read the divergence range from the
        model's spec (it widens when a warm start refits the model)."""
        D, J = self.model.spec.obs_dim, self.num_joints
        data = load_start_data(source, self.device)
        if data["obs"].shape[-1] != D or data["action"].shape[-1] != J:
            raise ValueError(f"start data has state/action dims {data['obs'].shape[-1]}/{data['action'].shape[-1]}, need {D}/{J}")
        data = {k: v.float() if v.is_floating_point() else v for k, v in data.items()}
        for k in ("next_obs", "reward", "terminated"):  # gathered by the sampler, unused here
            data.setdefault(k, torch.zeros(data["obs"].shape[:1] + ((D,) if k == "next_obs" else ()), device=self.device))
        spec = self.model.spec  # the divergence range: the model's data range, widened by its width each side
        if spec.obs_low:
            lo = torch.tensor(spec.obs_low, device=self.device)
            hi = torch.tensor(spec.obs_high, device=self.device)
            width = (hi - lo).clamp_min(1e-6)
            self._bound_low, self._bound_high = lo - width, hi + width
        else:
            self._bound_low = self._bound_high = None
        generator = getattr(self, "starts", None) and self.starts.generator
        self.starts = WindowSampler(data, history=self.model.spec.history, forecast=1)
        if generator is not None:
            self.starts.generator = generator
        self._start_index = self._healthy_starts(data["terminated"].bool())
        if len(self._start_index) == 0:
            raise ValueError(f"no start state lies {self.start_margin_steps} steps before a termination: "
                             "the start data only hold falls (lower start_margin_s or collect standing data)")
        self._reset_index = (data["step"] == 0).nonzero().squeeze(1) if "step" in data else self._start_index[:0]
        if self.reset_start_fraction > 0 and len(self._reset_index) == 0:
            raise ValueError(f"reset_start_fraction={self.reset_start_fraction} needs reset states in the start data "
                             "(transitions with 'step' 0, as `wam collect` records them); these data have "
                             + ("no 'step' field" if "step" not in data else "none"))

    def _healthy_starts(self, terminated: torch.Tensor) -> torch.Tensor:
        """Indices (k,) of the transitions with no termination in the next ``start_margin_steps``
        steps of their episode."""
        idx = torch.arange(terminated.shape[0], device=self.device)
        term_at = idx[terminated]
        if self.start_margin_steps == 0 or len(term_at) == 0:
            return idx
        nxt = torch.searchsorted(term_at, idx).clamp_max(len(term_at) - 1)
        next_term = term_at[nxt]
        falling = (next_term >= idx) & (next_term < self.starts.ep_end) & (next_term - idx < self.start_margin_steps)
        return idx[~falling]

    # ------------------------------------------------------------------------------ internals

    def _check_action(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        if a.shape != (self.num_envs, self.num_joints):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.num_joints}), got {tuple(a.shape)}")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("actions contain NaN or inf")
        limit = self.cfg.action_limit
        if bool((a.abs() > limit).any()):
            raise ValueError(f"actions outside the action space [-{limit}, {limit}] (max |a| = {float(a.abs().max()):.3g})")
        return a.clone()

    def _learned_termination(self, logit: torch.Tensor | None) -> torch.Tensor:
        """Terminations (N,) bool from the head's logit. The head is trained with class-balanced
        BCE (``pos_weight`` = negatives / positives), so its logit is shifted by log(pos_weight);
        removing the shift gives the calibrated P(terminated); ``termination_bias`` is added to the
        logit after that. ``sample``: Bernoulli draws of it (the imagined termination rate matches
        the real one in expectation); else P > threshold."""
        if logit is None:
            return torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        heads = getattr(self.model, "heads", None)
        shift = torch.log(heads.pos_weight) if heads is not None else 0.0
        p = torch.sigmoid(logit - shift + self.termination_bias)
        if self.sample:
            return torch.rand(p.shape, device=self.device, generator=self.generator) < p
        return p > self.termination_threshold

    def _part(self, state: torch.Tensor, key: str) -> torch.Tensor:
        return state[:, self.state_slices[key]]

    def _legged_state(self, state: torch.Tensor, nxt: torch.Tensor, contacts: torch.Tensor) -> mdp.LeggedState:
        N, F = self.num_envs, self.num_feet
        p = self._part
        undesired = contacts[:, F:]
        return mdp.LeggedState(
            base_lin_vel_b=p(nxt, "base_lin_vel"),
            base_ang_vel_b=p(nxt, "base_ang_vel"),
            projected_gravity=p(nxt, "projected_gravity"),
            base_height=p(nxt, "base_height")[:, 0],
            joint_pos=p(nxt, "joint_pos") + self.default_joint_pos,
            joint_vel=p(nxt, "joint_vel"),
            joint_acc=(p(nxt, "joint_vel") - p(state, "joint_vel")) / self.step_dt,
            joint_torque=p(nxt, "joint_torque"),
            default_joint_pos=self.default_joint_pos,
            joint_pos_limits=self.joint_pos_limits,
            action=self.action,
            prev_action=self.prev_action,
            command=self.command,
            foot_contact=contacts[:, :F],
            foot_vel_w=torch.zeros(N, F, 3, device=self.device),
            last_air_time=self.air_time.last_air_time,
            current_air_time=self.air_time.current_air_time,
            current_contact_time=self.air_time.current_contact_time,
            first_contact=self.air_time.first_contact,
            undesired_force=undesired.float() * 2.0,
            base_force=torch.zeros(N, 1, device=self.device),
        )

    def _observations(self, state: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Policy observation (n, 12 + 3J) of states (n, D): the real task's layout."""
        sel = (lambda t: t) if idx is None else (lambda t: t[idx])  # noqa: E731
        p = self._part
        return torch.cat([p(state, "base_lin_vel"), p(state, "base_ang_vel"), p(state, "projected_gravity"), sel(self.command),
                          p(state, "joint_pos"), p(state, "joint_vel"), sel(self.action)], dim=1)

    @torch.no_grad()
    def _reset_envs(self, idx: torch.Tensor) -> None:
        n = len(idx)
        if n == 0:
            return
        gen = self.starts.generator
        start = self._start_index[torch.randint(0, len(self._start_index), (n,), device=self.device, generator=gen)]
        if self.reset_start_fraction > 0:
            at_reset = torch.rand(n, device=self.device, generator=gen) < self.reset_start_fraction
            reset = self._reset_index[torch.randint(0, len(self._reset_index), (n,), device=self.device, generator=gen)]
            start = torch.where(at_reset, reset, start)
        w = self.starts.window(start)  # (n, M + 1, .): real history, then the start state
        prev_action = torch.zeros_like(w["action"])
        prev_action[:, 1:] = w["action"][:, :-1]
        new = self.model.observe_sequence(self.model.initial(n), w["obs"], prev_action, w["is_first"])
        if self.carry is None:
            self.carry = new
        else:
            for k, v in new.items():
                self.carry[k][idx] = v
        # the env's last / previous actions are the real ones before the start state
        M = w["action"].shape[1] - 1
        valid = w["valid"]
        last = torch.where(valid[:, M - 1, None], w["action"][:, M - 1], 0.0) if M >= 1 else torch.zeros_like(w["action"][:, 0])
        before = torch.where(valid[:, M - 2, None], w["action"][:, M - 2], 0.0) if M >= 2 else torch.zeros_like(last)
        self.action[idx], self.prev_action[idx] = last, before
        self.air_time.reset(idx)
        self.episode_length_buf[idx] = 0
        for v in self.episode_sums.values():
            v[idx] = 0.0
        self._yaw[idx] = 0.0
        self._resample_commands(idx)

    def _uniform(self, r: tuple[float, float], n: int) -> torch.Tensor:
        return r[0] + (r[1] - r[0]) * torch.rand(n, device=self.device, generator=self.generator)

    def _resample_commands(self, idx: torch.Tensor) -> None:
        c, n = self.cfg.commands, len(idx)
        cmd = torch.stack([self._uniform(c.lin_vel_x, n), self._uniform(c.lin_vel_y, n), self._uniform(c.ang_vel_z, n)], 1)
        self._heading[idx] = self._uniform(c.heading, n)
        self._is_heading[idx] = torch.rand(n, device=self.device, generator=self.generator) <= c.rel_heading_envs if c.heading_command \
            else torch.zeros(n, dtype=torch.bool, device=self.device)
        standing = torch.rand(n, device=self.device, generator=self.generator) <= c.rel_standing_envs
        self.command[idx] = torch.where(standing[:, None], 0.0, cmd)
        self._command_time_left[idx] = c.resampling_time
        self._update_heading(idx)

    def _update_heading(self, idx: torch.Tensor | None = None) -> None:
        c = self.cfg.commands
        sel = self._is_heading.clone()
        if idx is not None:
            sel &= torch.zeros_like(sel).index_fill_(0, idx, True)
        wz = (c.heading_control_stiffness * mdp.wrap_to_pi(self._heading - self._yaw)).clamp(*c.ang_vel_z)
        standing = (self.command == 0).all(dim=1)
        wz = torch.where(standing, 0.0, wz)
        self.command[:, 2] = torch.where(sel, wz, self.command[:, 2])

    def _update_commands(self, s: mdp.LeggedState) -> None:
        yaw_rate = mdp.body_to_yaw_frame(s.projected_gravity, s.base_ang_vel_b)[:, 2]
        self._yaw = mdp.wrap_to_pi(self._yaw + yaw_rate * self.step_dt)
        self._command_time_left -= self.step_dt
        expired = (self._command_time_left <= 1e-6).nonzero().squeeze(1)
        if len(expired):
            self._resample_commands(expired)
        self._update_heading()


class ImaginedLeggedEnv(gym.Env):
    """One imagined robot, numpy in and out (``gym.make("wam/AnymalC-Flat-Imagined-v0", model=ckpt)``).

    Observation float32 (12 + 3J,), action float32 (J,) inside the ±``action_limit`` box; the
    episode truncates at the task's 20 s. Arguments as :class:`ImaginedLeggedVecEnv`.
    """

    metadata = {"render_modes": []}

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported by imagined legged envs")
        self.vec = ImaginedLeggedVecEnv(num_envs=1, **kwargs)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self.render_mode = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        obs, _ = self.vec.reset(seed=seed)
        return obs[0].cpu().numpy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        obs, reward, terminated, truncated, info = self.vec.step(a[None])
        done = bool(terminated[0] | truncated[0])
        final = info["final_obs"][0] if done else obs[0]  # SAME_STEP autoreset inside: report the true last obs
        out = {"model_diverged": bool(info["model_diverged"][0]), "uncertainty": float(info["uncertainty"][0])}
        return final.cpu().numpy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out
