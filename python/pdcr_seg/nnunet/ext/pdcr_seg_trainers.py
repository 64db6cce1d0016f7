"""pdcr_seg's nnU-Net trainers (PDCR and UAFR), for nnU-Net's trainer search; pdcr-seg nnunet install.

`pdcr-seg nnunet install` copies this file into nnU-Net's top-level trainer folder
(nnunetv2/training/nnUNetTrainer/) and `pdcr-seg nnunet uninstall` removes it; or point
nnU-Net's nnUNet_extTrainer at the folder that holds it. nnU-Net then finds nnUNetTrainerPDCR,
nnUNetTrainerUAFR, nnUNetTrainerPDCRUAFR and their short schedules (see pdcr_seg/nnunet/trainers.py)
by name, and also its own nnUNetTrainer_<N>epochs, which live in a subfolder its search reaches only
after importing modules that need torchvision.
"""

try:
    from pdcr_seg.nnunet.trainers import *  # noqa: F401,F403
except ImportError as error:  # pdcr_seg (or pdcr_ext) gone: leave nnU-Net's search working
    import warnings

    warnings.warn(f"pdcr_seg's nnU-Net trainers are unavailable ({error}); `pdcr-seg nnunet uninstall` "
                  f"or deleting {__file__} removes this notice")
try:  # nnU-Net's own short schedules (nnUNetTrainer_1epoch, _5epochs, ...): that module needs no torchvision
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (  # noqa: F401
        nnUNetTrainer_1epoch, nnUNetTrainer_5epochs, nnUNetTrainer_10epochs, nnUNetTrainer_20epochs,
        nnUNetTrainer_50epochs, nnUNetTrainer_100epochs, nnUNetTrainer_250epochs)
except ImportError:
    pass
