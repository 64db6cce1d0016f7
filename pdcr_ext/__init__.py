"""pdcr_ext: patch-dragsaw contrastive regularization (PDCR) for medical image segmentation.

Implements Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image
Segmentation" with fused native kernels (C++ now, CUDA when built), checked against the
pure-PyTorch reference in ``pdcr_reference``.
"""

from . import _ops
from ._version import __version__
from .environment import info
from .functional import affinity, dragsaw_loss, foreground_ratios
from .geometry import ReceptiveField, patch_boxes, receptive_field, receptive_field_of, rf_boxes
from .loss import PDCRLoss
from .plugin import LayerInfo, PDCRHandle, attach, list_layers
from .sampling import grid_positions
from .uafr import UAFR, uafr_reweight

# Both plain booleans: whether the native library loaded, and whether it has CUDA kernels.
native_available: bool = _ops.NATIVE
has_cuda_kernels: bool = _ops.HAS_CUDA_KERNELS

__all__ = [
    "ReceptiveField",
    "receptive_field",
    "receptive_field_of",
    "rf_boxes",
    "patch_boxes",
    "grid_positions",
    "UAFR",
    "PDCRLoss",
    "attach",
    "PDCRHandle",
    "list_layers",
    "LayerInfo",
    "uafr_reweight",
    "foreground_ratios",
    "affinity",
    "dragsaw_loss",
    "native_available",
    "has_cuda_kernels",
    "info",
]
