"""Foreground ratios (eq. 4) by direct counting, in 2-D and 3-D.

phi_i^m = (number of pixels of class m in box R_i) / (area of R_i).

Counted here with explicit per-axis masks over the one-hot labels, an independent method from the
native kernels' integral images.
"""

from __future__ import annotations

import torch


def foreground_ratios(labels: torch.Tensor, boxes: torch.Tensor, num_classes: int,
                      area: str = "box", ignore_index: int | None = None) -> torch.Tensor:
    """labels (B, *S) with S = (H, W) or (D, H, W), values in [0, M) or ignore_index;
    boxes (B, N, 2 len(S)) as (lo per axis, hi per axis), inclusive -> (B, N, M).

    area="box": divide by the full box area (eq. 4 as written; r^2 for receptive fields, pixels
    outside the image and ignored pixels belong to no class). area="inside": divide by the number
    of the box's pixels that are inside the image and not ignored (0 for every class when none).
    """
    dims = labels.dim() - 1
    ignored = (labels == ignore_index) if ignore_index is not None else torch.zeros_like(labels, dtype=torch.bool)
    classes = torch.where(ignored, torch.zeros_like(labels), labels).long()
    one_hot = torch.nn.functional.one_hot(classes, num_classes).to(torch.float64)  # B,*S,M
    one_hot = one_hot * (~ignored)[..., None]  # an ignored pixel belongs to no class
    lo, hi = boxes.long()[..., :dims], boxes.long()[..., dims:]  # (B, N, dims) each
    # inside[a] (B, N, S_a): which coordinates of axis a the box covers
    inside = []
    for a in range(dims):
        coords = torch.arange(labels.shape[a + 1], device=labels.device)
        inside.append(((coords >= lo[..., a, None]) & (coords <= hi[..., a, None])).double())
    axes = "dhw"[3 - dims:]
    spec = ",".join(f"bn{x}" for x in axes)
    # one axis at a time (einsum contracts left to right): never a (B, N, H, W) intermediate
    counts = torch.einsum(f"bn{axes[0]},b{axes}m,{spec[4:]}->bnm", inside[0], one_hot, *inside[1:])
    if area == "box":
        denominator = (hi - lo + 1).prod(-1).double()
    elif area == "inside":
        in_image = torch.stack([m.sum(-1) for m in inside], -1).prod(-1)
        ignored_in_box = torch.einsum(f"bn{axes[0]},b{axes},{spec[4:]}->bn", inside[0], ignored.double(),
                                      *inside[1:])
        denominator = in_image - ignored_in_box
    else:
        raise ValueError(f"area must be 'box' or 'inside', got {area!r}")
    ratios = counts / denominator.clamp_min(1)[..., None]
    return ratios.to(torch.float32)
