"""Build Isaac Lab's local asset folder from wam's own robot files (runs in .venv-isaaclab).

Isaac Lab ships no robot files: its configs point at a remote content server
(``{ISAACLAB_NUCLEUS_DIR}/Robots/...``), and ``ISAACSIM_ASSET_ROOT`` redirects that server to
a local folder. ``python -m sim2real.isaaclab.assets`` (run by ``scripts/setup_isaaclab.sh``)
fills that folder, ``assets/isaaclab/`` (git-ignored, as ``assets/``), from the same robot
files the MuJoCo tasks use, with the converters that come with Isaac Lab:

- ``Isaac/IsaacLab/Robots/ANYbotics/ANYmal-C/anymal_c.usd``: ANYmal C from
  ``assets/anymal_c/urdf/anymal_c.urdf`` via ``UrdfConverter``. The URDF is prepared as
  ``tasks/locomotion/robots.py`` prepares it for MuJoCo (visual meshes dropped: collision is
  primitives only; the singular ``hatch`` inertia repaired), its revolute joints get limits
  (the URDF has none, and the importer would lock a joint without them: ±2π, i.e. free as on
  MuJoCo), and every fixed joint is merged except the feet (``dont_collapse``), so the
  ``<leg>_FOOT`` bodies that Isaac Lab's contact terms name stay bodies.
- ``Isaac/IsaacLab/Robots/Unitree/G1/g1_29dof.usd``: the 29-DoF G1 from
  ``assets/unitree_g1/xmls/g1.xml`` via ``MjcfConverter``.
- ``Isaac/IsaacLab/Environments/Grid/default_ground_plane_checker_v1/default_ground_plane.usda``:
  the ground plane ``GroundPlaneCfg`` loads (a colliding ``Plane`` prim, no textures).

Each robot's ``.usd`` is a one-line layer over the converter's output tree next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NUCLEUS_LAB = Path("Isaac", "IsaacLab")  # ISAACLAB_NUCLEUS_DIR relative to ISAACSIM_ASSET_ROOT
ANYMAL_C_USD = NUCLEUS_LAB / "Robots/ANYbotics/ANYmal-C/anymal_c.usd"
G1_USD = NUCLEUS_LAB / "Robots/Unitree/G1/g1_29dof.usd"
GROUND_USD = NUCLEUS_LAB / "Environments/Grid/default_ground_plane_checker_v1/default_ground_plane.usda"
MANIFEST = "manifest.json"
_JOINT_LIMIT = 2 * 3.141592653589793  # rad, for the URDF's limit-less revolute joints


class IsaacAssetError(RuntimeError):
    """The local Isaac Lab asset folder is missing or could not be built."""


def wam_assets() -> Path:
    """wam's robot files: ``$WAM_ASSETS`` or ``<repository>/assets`` (as ``tasks.assets``)."""
    env = os.environ.get("WAM_ASSETS")
    return Path(env) if env else REPO / "assets"


def isaac_asset_root() -> Path:
    """The folder ``ISAACSIM_ASSET_ROOT`` points at: ``$WAM_ISAACLAB_ASSETS`` or ``<wam assets>/isaaclab``."""
    env = os.environ.get("WAM_ISAACLAB_ASSETS")
    return Path(env) if env else wam_assets() / "isaaclab"


def _source(relative: str) -> Path:
    path = wam_assets() / relative
    if not path.is_file():
        raise IsaacAssetError(f"{path} is missing: run scripts/setup_venv.sh (it fetches wam's robot files) first")
    return path


def prepare_anymal_urdf(text: str) -> str:
    """ANYmal C's URDF ready for the USD importer (see the module docstring); fixed joints
    other than the feet are merged here with the importer's own ``merge_fixed_joints``."""
    from isaacsim.asset.importer.urdf.impl.urdf_utils import merge_fixed_joints

    text = re.sub(r"<visual>.*?</visual>", "", text, flags=re.S)
    singular = '<inertia ixx="0.001" ixy="0.001" ixz="0.001" iyy="0.001" iyz="0.001" izz="0.001"/>'
    if singular not in text:
        raise IsaacAssetError("anymal_c.urdf: the hatch inertia to repair was not found (unexpected URDF version)")
    text = text.replace(singular, '<inertia ixx="0.001" ixy="0" ixz="0" iyy="0.001" iyz="0" izz="0.001"/>')
    root = ET.fromstring(text)
    kept = []
    for joint in root.findall("joint"):
        if joint.get("type") == "revolute":
            limit = joint.find("limit")
            if limit is None:
                limit = ET.SubElement(joint, "limit", effort="0", velocity="0")
            limit.set("lower", limit.get("lower", str(-_JOINT_LIMIT)))
            limit.set("upper", limit.get("upper", str(_JOINT_LIMIT)))
        elif joint.get("type") == "fixed" and joint.get("dont_collapse") == "true":
            joint.set("type", "floating")  # hidden from the merge, restored below
            kept.append(joint.get("name"))
    if len(kept) != 4:
        raise IsaacAssetError(f"anymal_c.urdf: expected 4 foot joints marked dont_collapse, found {kept}")
    with tempfile.TemporaryDirectory() as tmp:
        src, merged = Path(tmp, "in.urdf"), Path(tmp, "merged.urdf")
        src.write_text(ET.tostring(root, encoding="unicode"))
        merge_fixed_joints(str(src), str(merged))
        root = ET.parse(merged).getroot()
    for joint in root.findall("joint"):
        if joint.get("name") in kept:
            joint.set("type", "fixed")
    return ET.tostring(root, encoding="unicode")


def _top_layer(target: Path, tree_usd: Path, prim: str) -> None:
    """Write ``target`` (.usd, ASCII) as a layer whose default prim references ``tree_usd``."""
    rel = os.path.relpath(tree_usd, target.parent)
    target.write_text(f'#usda 1.0\n(\n    defaultPrim = "{prim}"\n    metersPerUnit = 1\n    upAxis = "Z"\n)\n\n'
                      f'def Xform "{prim}" (\n    prepend references = @./{rel}@\n)\n{{\n}}\n')


def _convert(converter_cls, cfg, out_dir: Path) -> Path:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return Path(converter_cls(cfg).usd_path)


def _default_prim(usd: Path) -> str:
    from pxr import Usd

    stage = Usd.Stage.Open(str(usd))
    prim = stage.GetDefaultPrim()
    if not prim:
        raise IsaacAssetError(f"{usd}: the converter wrote no default prim")
    return prim.GetName()


def build_anymal_c(root: Path) -> Path:
    """Convert ANYmal C (URDF -> USD) into ``root``; returns the ``.usd`` Isaac Lab loads."""
    from isaaclab.sim.converters import UrdfConverter, UrdfConverterCfg

    target = root / ANYMAL_C_USD
    work = target.parent / "anymal_c_src"
    work.mkdir(parents=True, exist_ok=True)
    urdf = work / "anymal_c.urdf"
    urdf.write_text(prepare_anymal_urdf(_source("anymal_c/urdf/anymal_c.urdf").read_text()))
    shutil.copy(_source("anymal_c/ANYmal_c_license.txt"), target.parent / "ANYmal_c_license.txt")
    cfg = UrdfConverterCfg(
        asset_path=str(urdf),
        usd_dir=str(target.parent / "converted"),
        fix_base=False,
        merge_fixed_joints=False,  # done in prepare_anymal_urdf, keeping the feet
        force_usd_conversion=True,
        self_collision=False,
        # Isaac Lab's actuator models write the gains; the USD drive is left at zero
        joint_drive=UrdfConverterCfg.JointDriveCfg(gains=UrdfConverterCfg.JointDriveCfg.PDGainsCfg(stiffness=0.0, damping=0.0)),
    )
    usd = _convert(UrdfConverter, cfg, target.parent / "converted")
    _top_layer(target, usd, _default_prim(usd))
    return target


def build_g1(root: Path) -> Path:
    """Convert the 29-DoF G1 (MJCF -> USD) into ``root``; returns the ``.usd`` Isaac Lab loads."""
    from isaaclab.sim.converters import MjcfConverter, MjcfConverterCfg

    target = root / G1_USD
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_source("unitree_g1/LICENSE"), target.parent / "LICENSE")
    cfg = MjcfConverterCfg(asset_path=str(_source("unitree_g1/xmls/g1.xml")), usd_dir=str(target.parent / "converted"),
                           force_usd_conversion=True)
    usd = _convert(MjcfConverter, cfg, target.parent / "converted")
    _top_layer(target, usd, _default_prim(usd))
    return target


def build_ground_plane(root: Path) -> Path:
    """An infinite colliding ground plane (z = 0) where ``GroundPlaneCfg`` looks for one."""
    from pxr import Usd, UsdGeom, UsdPhysics

    target = root / GROUND_USD
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Usd.Stage.CreateNew(str(target))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    top = UsdGeom.Xform.Define(stage, "/GroundPlane")
    stage.SetDefaultPrim(top.GetPrim())
    plane = UsdGeom.Plane.Define(stage, "/GroundPlane/CollisionPlane")
    plane.CreateAxisAttr(UsdGeom.Tokens.z)
    plane.CreateWidthAttr(100.0)
    plane.CreateLengthAttr(100.0)
    UsdPhysics.CollisionAPI.Apply(plane.GetPrim())
    stage.GetRootLayer().Save()
    return target


def build(root: Path, robots: tuple[str, ...] = ("anymal_c", "g1")) -> dict:
    """Build the asset folder ``root``; writes and returns its manifest (paths relative to ``root``)."""
    # USD schema plugins (Newton's, registered on `import isaaclab`; PhysX's, registered by the
    # importer on first use) count only if registered before the first stage opens: the
    # converters run first, the ground plane last, or they fail on "PhysxJointAPI"
    import isaaclab.sim.converters  # noqa: F401

    builders = {"anymal_c": build_anymal_c, "g1": build_g1}
    unknown = [r for r in robots if r not in builders]
    if unknown:
        raise IsaacAssetError(f"unknown robots {unknown}; available: {sorted(builders)}")
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"format": "wam.isaaclab_assets", "version": 1}
    for robot in robots:
        manifest[robot] = str(builders[robot](root).relative_to(root))
    manifest["ground"] = str(build_ground_plane(root).relative_to(root))
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="asset root (default: assets/isaaclab)")
    parser.add_argument("--robots", default="anymal_c,g1", help="comma-separated: anymal_c, g1")
    args = parser.parse_args(argv)
    manifest = build(args.out or isaac_asset_root(), tuple(r for r in args.robots.split(",") if r))
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
