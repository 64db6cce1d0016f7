"""``pdcr-seg nnunet install | uninstall``: make the trainers visible to nnU-Net's trainer search.

nnU-Net v2 finds a trainer by name: ``nnUNetv2_train`` and ``nnUNetv2_predict`` import every module
of its trainer folder ``nnunetv2/training/nnUNetTrainer/`` (the top level first, then every
subfolder), then the folders of ``nnUNet_extTrainer``. ``install`` copies ``ext/pdcr_seg_trainers.py``
(a module that imports ``pdcr_seg.nnunet.trainers``) into that top level, where it is found before
any subfolder is imported: that matters where torchvision does not import (its PyPI wheels need a
CUDA build of torch, and nnU-Net's ``primus`` trainers in a subfolder import it through timm), the
case of a CPU-only torch. ``uninstall`` removes that file (and only a file this command wrote).
Where torchvision works, ``export nnUNet_extTrainer=<this package>/ext`` is the alternative that
writes nothing into nnU-Net's folder.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from . import NnunetError, require_nnunet

MODULE = "pdcr_seg_trainers.py"
SOURCE = Path(__file__).resolve().parent / "ext" / MODULE
MARKER = '"""pdcr_seg\'s nnU-Net trainers'  # how uninstall recognises a file it wrote


def ext_dir() -> Path:
    """The folder for nnU-Net's nnUNet_extTrainer (it holds only the module that install copies)."""
    return SOURCE.parent


def trainer_folder() -> Path:
    """nnunetv2/training/nnUNetTrainer of the nnunetv2 that `import nnunetv2` finds (not imported)."""
    require_nnunet()
    spec = importlib.util.find_spec("nnunetv2")
    for location in spec.submodule_search_locations or []:
        folder = Path(location) / "training" / "nnUNetTrainer"
        if (folder / "nnUNetTrainer.py").is_file():
            return folder
    raise NnunetError(f"nnunetv2 at {list(spec.submodule_search_locations or [])} has no "
                      f"training/nnUNetTrainer/nnUNetTrainer.py: a damaged install?")


def _ours(path: Path) -> bool:
    try:
        return path.read_text(encoding="utf-8").startswith(MARKER)
    except (OSError, UnicodeDecodeError):
        return False


def install(folder: Path | None = None) -> Path:
    """Copies the module into nnU-Net's trainer folder (again, if an older copy of ours is there)."""
    target = (folder or trainer_folder()) / MODULE
    if target.exists() and not _ours(target):
        raise NnunetError(f"{target} exists and was not written by pdcr-seg nnunet install: left as it is")
    try:
        shutil.copyfile(SOURCE, target)
    except OSError as error:
        raise NnunetError(f"cannot write {target} ({error.strerror}); where torchvision imports, "
                          f"export nnUNet_extTrainer={ext_dir()} instead") from None
    return target


def uninstall(folder: Path | None = None) -> Path | None:
    """Removes the module install wrote (and its compiled copies); None when there was none."""
    target = (folder or trainer_folder()) / MODULE
    if not target.exists():
        return None
    if not _ours(target):
        raise NnunetError(f"{target} was not written by pdcr-seg nnunet install: left as it is")
    target.unlink()
    for compiled in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
        compiled.unlink()
    return target
