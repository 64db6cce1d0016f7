"""Foreground ratios (eq. 4), affinity (eq. 3) and the fused dragsaw loss (eqs. 8, 9, 12).

Every function checks its arguments (ValueError naming the bad one), then runs the native op
(backend="native", or "auto" when the extension is built for the tensors' device) or the
pure-PyTorch reference (backend="reference").
"""

from __future__ import annotations

import torch

import pdcr_reference as ref

from . import _checks, _ops

CUDA_MAX_PATCH_SIZES = 8  # per-row state for every patch size lives in registers (csrc/cuda)


def _use_native(backend: str, device: torch.device) -> bool:
    _checks.choice("backend", backend, _checks.BACKENDS)
    if backend == "reference":
        return False
    supported = _ops.NATIVE and (device.type == "cpu" or (device.type == "cuda" and _ops.has_cuda_kernels()))
    if backend == "native" and not supported:
        reason = (
            f"the extension is not built ({_ops.IMPORT_ERROR})"
            if not _ops.NATIVE
            else f"it has no kernels for device {device}"
        )
        raise ValueError(f"backend='native' is unavailable: {reason}")
    return supported


def foreground_ratios(labels: torch.Tensor, boxes: torch.Tensor, num_classes: int, *,
                      area: str = "box", backend: str = "auto") -> torch.Tensor:
    """Foreground ratio of every class in every box (eq. 4).

    Args:
        labels: (B, H, W) integer label map, values in [0, num_classes).
        boxes: (N, 4) boxes shared by the batch, or (B, N, 4); int, (y0, x0, y1, x1) inclusive,
            in image pixels; they may extend past the image.
        num_classes: M.
        area: "box" divides by the full box area (eq. 4 as written: r^2 for receptive fields;
            pixels outside the image belong to no class); "inside" divides by the area of the
            box's part inside the image (all ratios 0 for a box entirely outside).
        backend: "auto", "native" or "reference".

    Returns:
        (B, N, M) float32 ratios in [0, 1].
    """
    labels = _checks.tensor("labels", labels, ndim=3, shape_doc="(B, H, W)", integer=True)
    boxes = _checks.tensor("boxes", boxes, integer=True)
    if boxes.dim() == 2:
        boxes = boxes.unsqueeze(0).expand(labels.shape[0], -1, -1)
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) or (B, N, 4), got {tuple(boxes.shape)}")
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"boxes batch {boxes.shape[0]} != labels batch {labels.shape[0]}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    _checks.choice("area", area, ("box", "inside"))
    _checks.same_device(labels=labels, boxes=boxes)
    boxes = boxes.long()
    if boxes.numel() and bool(((boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])).any()):
        raise ValueError("boxes must have y1 >= y0 and x1 >= x0 (inclusive ends)")
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}), found values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    if _use_native(backend, labels.device):
        return torch.ops.pdcr.foreground_ratios(labels, boxes, num_classes, area == "inside")
    return ref.foreground_ratios(labels, boxes, num_classes, area)


def _phi(name: str, phi, batch: int, count: int, count_name: str) -> torch.Tensor:
    phi = _checks.tensor(name, phi, ndim=4, shape_doc=f"(B, P, {count_name}, M)", floating=True)
    if phi.shape[0] != batch or phi.shape[2] != count:
        raise ValueError(
            f"{name} must have shape (B={batch}, P, {count_name}={count}, M), got {tuple(phi.shape)}"
        )
    return phi


def affinity(phi_rows: torch.Tensor, phi_cols: torch.Tensor | None = None) -> torch.Tensor:
    """Affinity of every pair of patches (eq. 3): w_ij = 1 - (1/M) sum_m |phi_i^m - phi_j^m|.

    Args:
        phi_rows: (B, P, N, M) foreground ratios of the rows' patches.
        phi_cols: (B, P, K, M) ratios of the columns' patches, or None for phi_rows.

    Returns:
        (B, P, N, K) affinities in [0, 1]. Materialises the matrix (the fused loss never does).
    """
    phi_rows = _checks.tensor("phi_rows", phi_rows, ndim=4, shape_doc="(B, P, N, M)", floating=True)
    if phi_cols is None:
        phi_cols = phi_rows
    phi_cols = _checks.tensor("phi_cols", phi_cols, ndim=4, shape_doc="(B, P, K, M)", floating=True)
    B, P, _, M = phi_rows.shape
    if phi_cols.shape[0] != B or phi_cols.shape[1] != P or phi_cols.shape[3] != M:
        raise ValueError(
            f"phi_cols must have shape (B={B}, P={P}, K, M={M}), got {tuple(phi_cols.shape)}"
        )
    _checks.same_device(phi_rows=phi_rows, phi_cols=phi_cols)
    return ref.affinity(phi_rows, phi_cols)


def dragsaw_loss(rows: torch.Tensor, phi_rows: torch.Tensor, cols: torch.Tensor | None = None,
                 phi_cols: torch.Tensor | None = None, *, tau: float = 0.5,
                 reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """Patch-dragsaw contrastive loss (eq. 9; one term of eq. 12), fused.

    For image b, patch size k and row i:

        l[b,k,i] = sum_j -log( exp(s_ij w_ij(k) / tau) / sum_n exp(s_in (1 - w_in(k)) / tau) )

    with s the cosine similarity of v / max(|v|, 1e-8) (eq. 8) and w the affinity (eq. 3); the
    diagonal is included. Pairs are pulled by w and pushed by 1 - w at once.

    Args:
        rows: (B, N, C) feature vectors (float16, bfloat16, float32 or float64).
        phi_rows: (B, P, N, M) foreground ratios of the rows' patches (P patch sizes, M classes).
        cols: (B, K, C) vectors of another layer (cross-layer term), or None for rows.
        phi_cols: (B, P, K, M) their ratios; given exactly when cols is.
        tau: temperature > 0.
        reduction: "none" -> (B, P, N); "sum" -> scalar sum; "mean" -> sum / (B*P*N*K)
            (0 for an empty batch).
        backend: "auto", "native" or "reference".

    Returns:
        The loss, float32 for half-precision features, else in their dtype. Differentiable with
        respect to rows and cols (the native backward is hand-written and streams like the forward).
    """
    rows = _checks.tensor("rows", rows, ndim=3, shape_doc="(B, N, C)", floating=True)
    if (cols is None) != (phi_cols is None):
        given, missing = ("cols", "phi_cols") if phi_cols is None else ("phi_cols", "cols")
        raise ValueError(f"{given} was given without {missing}: give both (cross-layer) or neither")
    B, N, C = rows.shape
    phi_rows = _phi("phi_rows", phi_rows, B, N, "N")
    if cols is None:
        cols, phi_cols = rows, phi_rows
    else:
        cols = _checks.tensor("cols", cols, ndim=3, shape_doc="(B, K, C)", floating=True)
        if cols.shape[0] != B or cols.shape[2] != C:
            raise ValueError(f"cols must have shape (B={B}, K, C={C}), got {tuple(cols.shape)}")
        if cols.dtype != rows.dtype:
            raise ValueError(f"cols dtype {cols.dtype} differs from rows dtype {rows.dtype}")
        phi_cols = _phi("phi_cols", phi_cols, B, cols.shape[1], "K")
        if phi_cols.shape[1] != phi_rows.shape[1]:
            raise ValueError(
                f"phi_cols has P={phi_cols.shape[1]} patch sizes but phi_rows has P={phi_rows.shape[1]}"
            )
        if phi_cols.shape[3] != phi_rows.shape[3]:
            raise ValueError(f"phi_cols has M={phi_cols.shape[3]} classes but phi_rows has M={phi_rows.shape[3]}")
    if C < 1:
        raise ValueError("rows must have at least one channel (C >= 1)")
    tau = _checks.tau(tau)
    _checks.choice("reduction", reduction, _checks.REDUCTIONS)
    _checks.same_device(rows=rows, phi_rows=phi_rows, cols=cols, phi_cols=phi_cols)

    if _use_native(backend, rows.device):
        if rows.device.type == "cuda" and phi_rows.shape[1] > CUDA_MAX_PATCH_SIZES:
            raise ValueError(
                f"phi_rows has P={phi_rows.shape[1]} patch sizes; the CUDA kernels take at most "
                f"{CUDA_MAX_PATCH_SIZES} patch sizes per call (split the series into several calls)"
            )
        per_row, _ = torch.ops.pdcr.dragsaw_loss(rows, phi_rows, cols, phi_cols, tau)
    else:
        per_row = ref.dragsaw_row_loss(rows, phi_rows, cols, phi_cols, tau)
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    pairs = per_row.numel() * cols.shape[1]
    return total / pairs if pairs > 0 else total
