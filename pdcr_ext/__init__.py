"""pdcr_ext: patch-dragsaw contrastive regularization (PDCR) for medical image segmentation.

Implements Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image
Segmentation" with fused native kernels (C++ now, CUDA when built), checked against the
pure-PyTorch reference in ``pdcr_reference``.
"""

from . import _ops
from .functional import affinity, dragsaw_loss, foreground_ratios
from .geometry import ReceptiveField, patch_boxes, receptive_field, rf_boxes
from .sampling import grid_positions

__version__ = "0.1.0"

native_available = _ops.NATIVE
has_cuda_kernels = _ops.has_cuda_kernels

__all__ = [
    "ReceptiveField",
    "receptive_field",
    "rf_boxes",
    "patch_boxes",
    "grid_positions",
    "foreground_ratios",
    "affinity",
    "dragsaw_loss",
    "native_available",
    "has_cuda_kernels",
]
