"""Pure-PyTorch reference of PDCR (Liu et al., "Contrastive and Selective Hidden Embeddings for
Medical Image Segmentation").

Each function computes one equation of the paper and says which. It favours clarity over speed
and memory (the N x K matrices are materialised); it is the oracle the native kernels are tested
against, and the ``backend="reference"`` of pdcr_ext's public functions.
"""

from .geometry import (
    LayerSpec,
    patch_boxes,
    rf_boxes,
    rf_compose,
    rf_end,
    rf_geometry,
    rf_size,
    rf_start,
)
from .loss import (
    affinity,
    cosine_similarity,
    dragsaw_loss_eq12,
    dragsaw_row_loss,
)
from .ratios import foreground_ratios
from .uafr import uafr_reweight, uncertainty

__all__ = [
    "LayerSpec",
    "rf_start",
    "rf_end",
    "rf_size",
    "rf_geometry",
    "rf_compose",
    "rf_boxes",
    "patch_boxes",
    "foreground_ratios",
    "cosine_similarity",
    "affinity",
    "dragsaw_row_loss",
    "dragsaw_loss_eq12",
    "uncertainty",
    "uafr_reweight",
]
