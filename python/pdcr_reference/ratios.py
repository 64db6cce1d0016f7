"""Foreground ratios (eq. 4) by direct counting.

phi_i^m = (number of pixels of class m in box R_i) / (area of R_i).

Counted here with explicit row and column masks over the one-hot labels, an independent method
from the native kernels' integral image.
"""

from __future__ import annotations

import torch


def foreground_ratios(labels: torch.Tensor, boxes: torch.Tensor, num_classes: int,
                      area: str = "box") -> torch.Tensor:
    """labels (B, H, W) in [0, M); boxes (B, N, 4) as (y0, x0, y1, x1) inclusive -> (B, N, M).

    area="box": divide by the full box area (eq. 4 as written; r^2 for receptive fields, pixels
    outside the image belong to no class). area="inside": divide by the area of the box's part
    inside the image (0 for every class when that part is empty).
    """
    B, H, W = labels.shape
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)  # B,H,W,M
    ys = torch.arange(H, device=labels.device)
    xs = torch.arange(W, device=labels.device)
    y0, x0, y1, x1 = boxes.long().unbind(-1)  # each (B, N)
    in_rows = (ys >= y0[..., None]) & (ys <= y1[..., None])  # (B, N, H)
    in_cols = (xs >= x0[..., None]) & (xs <= x1[..., None])  # (B, N, W)
    counts = torch.einsum("bnh,bhwm,bnw->bnm", in_rows.double(), one_hot, in_cols.double())
    if area == "box":
        denominator = ((y1 - y0 + 1) * (x1 - x0 + 1)).double()
    elif area == "inside":
        denominator = (in_rows.sum(-1) * in_cols.sum(-1)).double()
    else:
        raise ValueError(f"area must be 'box' or 'inside', got {area!r}")
    ratios = counts / denominator.clamp_min(1)[..., None]
    return ratios.to(torch.float32)
