"""Vision-language-action policies and their RL post-training inside a pixel world model.

- :mod:`agents.vla.language`: cached MiniLM instruction embeddings (the ``vla`` extra),
- :mod:`agents.vla.policy`: the VLA policy (LeRobot-style ``select_action`` over a batch dict),
- :mod:`agents.vla.success`: instruction-conditioned success / progress heads (ensemble),
- :mod:`agents.vla.rollout`: batched rollouts in the real env and in imagination,
- :mod:`agents.vla.bc`, :mod:`agents.vla.ppo`, :mod:`agents.vla.grpo`: warm start and post-training,
- :mod:`agents.vla.loop`: the World-VLA-Loop (post-train, real checks, world-model refinement),
- :mod:`agents.vla.report`: report.md, plots and GIFs.
"""
