"""PDCR and UAFR inside nnU-Net v2: trainers, their installation, and our data as nnU-Net datasets.

    pdcr-seg nnunet convert --data nuclei --id 501       nnUNet_raw/Dataset501_Nuclei3D
    nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres
    pdcr-seg nnunet install                              the trainers, visible to nnU-Net
    nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerPDCRUAFR [-device cpu]
    nnUNetv2_predict -i IN -o OUT -d 501 -c 3d_fullres -f 0 -tr nnUNetTrainerPDCRUAFR

* ``layers.py``: the paper's layers on nnU-Net's stages (one table, by module name).
* ``trainers.py``: ``nnUNetTrainerPDCR``, ``nnUNetTrainerUAFR``, ``nnUNetTrainerPDCRUAFR`` and their
  short schedules (``_1epoch``, ``_5epochs``, ``_tiny``).
* ``install.py``: ``pdcr-seg nnunet install | uninstall`` (a one-line module in nnU-Net's top-level
  trainer folder that imports ``trainers.py``).
* ``convert.py``: ``pdcr-seg nnunet convert``: nuclei, lung CT, Decathlon folders as nnU-Net raw data.
* ``command.py``: the ``pdcr-seg nnunet`` subcommand.

nnU-Net v2 is an optional dependency (``requirements-nnunet.txt``, installed by ``make``);
``require_nnunet()`` turns its absence into one line saying how to install it.
"""

from __future__ import annotations

import importlib.util

NNUNET_VERSION = "2.8.1"  # the version the trainers are written and tested against
INSTALL_HINT = (f"pip install --no-deps -r requirements-nnunet.txt (from the pdcr_ext repository; "
                f"or pip install nnunetv2=={NNUNET_VERSION})")


class NnunetError(RuntimeError):
    """A problem the `pdcr-seg nnunet` commands report in one line (exit status 2)."""


def require_nnunet() -> None:
    """Raises NnunetError (one line, how to install it) when nnunetv2 cannot be imported."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise NnunetError(f"nnU-Net v2 is not installed: {INSTALL_HINT}")
