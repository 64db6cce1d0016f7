"""pdcr_seg: the paper's segmentation system around pdcr_ext.

Models (UNet, FCN, DeepLabV3+ and MONAI's networks, each naming the layers the paper equips),
data (a synthetic set with ambiguous boundaries, a real nuclei image, folders such as ISIC),
MONAI metrics and transforms, a training loop (one process or torchrun's DDP) with checkpoints
and figures, and the `pdcr-seg` command line. pdcr_ext never imports this package.
"""

from pdcr_ext._version import __version__  # one version for the whole distribution
