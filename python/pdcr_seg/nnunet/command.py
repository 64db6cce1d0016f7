"""The ``pdcr-seg nnunet`` subcommand: install | uninstall | convert.

    pdcr-seg nnunet install              nnU-Net finds nnUNetTrainerPDCR, ...UAFR, ...PDCRUAFR
    pdcr-seg nnunet uninstall            removes what install wrote
    pdcr-seg nnunet convert --data nuclei|lung-ct|folder:PATH --id N [--raw DIR]

Problems (nnU-Net missing, an id taken, bad data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import NnunetError


def cmd_install(args) -> int:
    from .install import install, trainer_folder

    folder = trainer_folder()
    try:  # the module nnU-Net will import: fail here, before writing, not in nnUNetv2_train
        from . import trainers
    except ImportError as error:
        raise NnunetError(f"cannot import pdcr_seg.nnunet.trainers: {error}") from None
    target = install(folder)
    print(f"wrote {target}")
    print(f"nnU-Net's trainer search now finds: {', '.join(trainers.__all__)} "
          f"(pdcr-seg nnunet uninstall removes it)")
    return 0


def cmd_uninstall(args) -> int:
    from .install import uninstall

    removed = uninstall()
    print(f"removed {removed}" if removed else "nothing to remove: pdcr-seg nnunet install had not written its module")
    return 0


def cmd_convert(args) -> int:
    from .convert import convert

    folder = convert(args.data, args.id, args.raw)
    print(f"wrote {folder}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.id} -c 3d_fullres --verify_dataset_integrity")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `nnunet` to pdcr-seg's subcommands."""
    n = subparsers.add_parser("nnunet", help="PDCR and UAFR in nnU-Net v2: install the trainers, convert data",
                              description=__doc__.split("\n\n")[0])
    sub = n.add_subparsers(dest="nnunet_command", required=True)
    i = sub.add_parser("install", help="make the trainers visible to nnU-Net (a module in its trainer folder)")
    i.set_defaults(nnunet_run=cmd_install)
    u = sub.add_parser("uninstall", help="remove the module install wrote")
    u.set_defaults(nnunet_run=cmd_uninstall)
    c = sub.add_parser("convert", help="a data set as nnUNet_raw/DatasetNNN_<Name>")
    c.add_argument("--data", required=True, help="nuclei, lung-ct or folder:PATH (a Decathlon folder)")
    c.add_argument("--id", type=int, required=True, help="nnU-Net's dataset id, 1..999")
    c.add_argument("--raw", default=None, help="nnU-Net's raw folder (default: $nnUNet_raw)")
    c.set_defaults(nnunet_run=cmd_convert)
    n.set_defaults(run=run)
    return n


def run(args) -> int:
    try:
        return args.nnunet_run(args)
    except NnunetError as error:
        print(f"pdcr-seg nnunet {args.nnunet_command}: error: {error}", file=sys.stderr)
        return 2
