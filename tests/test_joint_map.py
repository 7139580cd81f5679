"""Joint-order mapping between backends (sim2real/joint_map.py): checked, by name."""

import numpy as np
import pytest

from sim2real.joint_map import JointMap, JointMapError

MUJOCO = [f"{leg}_{j}" for leg in ("LF", "RF", "LH", "RH") for j in ("HAA", "HFE", "KFE")]
ISAAC = [f"{leg}_{j}" for j in ("HAA", "HFE", "KFE") for leg in ("LF", "LH", "RF", "RH")]


def test_permuted_order_maps_by_name():
    jmap = JointMap(MUJOCO, ISAAC)
    x = np.arange(12.0)[None].repeat(3, 0)  # value i belongs to MUJOCO[i]
    sim = jmap.to_sim(x)
    assert sim.shape == (3, 12)
    for k, name in enumerate(ISAAC):
        assert sim[0, k] == MUJOCO.index(name)
    np.testing.assert_array_equal(jmap.to_policy(sim), x)
    assert not jmap.is_identity and JointMap(MUJOCO, MUJOCO).is_identity


def test_missing_extra_and_duplicate_joints_raise_naming_them():
    with pytest.raises(JointMapError, match="missing in the simulator: \\['RH_KFE'\\]"):
        JointMap(MUJOCO, ISAAC[:-1])
    with pytest.raises(JointMapError, match="does not know: \\['LF_WHEEL'\\]"):
        JointMap(MUJOCO, [*ISAAC, "LF_WHEEL"])
    renamed = [n if n != "LH_HFE" else "LH_hfe" for n in ISAAC]
    with pytest.raises(JointMapError, match="LH_HFE.*LH_hfe"):
        JointMap(MUJOCO, renamed)
    with pytest.raises(JointMapError, match="duplicates: \\['LF_HAA'\\]"):
        JointMap([*MUJOCO[:-1], "LF_HAA"], ISAAC)
    with pytest.raises(JointMapError, match="simulator joint names contain duplicates"):
        JointMap(MUJOCO, [*ISAAC[:-1], "LF_HAA"])


def test_wrong_width_is_an_error():
    with pytest.raises(JointMapError, match="got shape \\(2, 11\\)"):
        JointMap(MUJOCO, ISAAC).to_sim(np.zeros((2, 11)))
