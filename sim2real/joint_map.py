"""Map per-joint arrays between two simulators' joint orders, by joint name.

MuJoCo lists ANYmal C's joints in the URDF's leg order (``LF_HAA, LF_HFE, LF_KFE, RF_HAA, ...``),
Isaac Lab as its USD articulation is parsed (``LF_HAA, LF_HFE, LF_KFE, LH_HAA, ...``).
A policy trained in one order must read and write the other through a checked permutation:
a joint that one side lacks, has twice, or an extra joint is an error naming the joint, never
a silent reorder.

Pure python + numpy: the Isaac Lab worker (Python 3.12, its own environment) imports this
module by file path, so it may import nothing from wam.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


class JointMapError(ValueError):
    """Two joint lists that cannot be mapped onto each other; the message names the joints."""


def _check_unique(names: Sequence[str], side: str) -> None:
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise JointMapError(f"{side} joint names contain duplicates: {duplicates}")


class JointMap:
    """A checked permutation between a ``policy`` joint order and a ``sim`` joint order.

    Args:
        policy_joints: joint names in the order the policy reads and writes them (J,).
        sim_joints: joint names in the simulator's order (J,), the same set.

    Raises:
        JointMapError: a duplicate on either side, or a joint on one side only (both listed).

    ``to_sim(x)`` reorders (..., J) arrays from policy to sim order, ``to_policy(x)`` back.
    """

    def __init__(self, policy_joints: Sequence[str], sim_joints: Sequence[str]):
        policy_joints, sim_joints = list(policy_joints), list(sim_joints)
        _check_unique(policy_joints, "policy")
        _check_unique(sim_joints, "simulator")
        missing = [n for n in policy_joints if n not in set(sim_joints)]
        extra = [n for n in sim_joints if n not in set(policy_joints)]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"policy joints missing in the simulator: {missing}")
            if extra:
                parts.append(f"simulator joints the policy does not know: {extra}")
            raise JointMapError("; ".join(parts))
        self.policy_joints = tuple(policy_joints)
        self.sim_joints = tuple(sim_joints)
        sim_index = {n: i for i, n in enumerate(sim_joints)}
        policy_index = {n: i for i, n in enumerate(policy_joints)}
        # sim_of_policy[i]: simulator index of policy joint i; policy_of_sim[k]: policy index of sim joint k
        self.sim_of_policy = np.array([sim_index[n] for n in policy_joints], dtype=np.int64)  # (J,)
        self.policy_of_sim = np.array([policy_index[n] for n in sim_joints], dtype=np.int64)  # (J,)

    @property
    def num_joints(self) -> int:
        return len(self.policy_joints)

    @property
    def is_identity(self) -> bool:
        return self.policy_joints == self.sim_joints

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.num_joints:
            raise JointMapError(f"expected an array (..., {self.num_joints}) of per-joint values, got shape {x.shape}")
        return x

    def to_sim(self, x: np.ndarray) -> np.ndarray:
        """(..., J) in policy order -> (..., J) in simulator order."""
        return self._check(x)[..., self.policy_of_sim]

    def to_policy(self, x: np.ndarray) -> np.ndarray:
        """(..., J) in simulator order -> (..., J) in policy order."""
        return self._check(x)[..., self.sim_of_policy]

