"""Foreground ratios (eq. 4), affinity (eq. 3) and the fused dragsaw loss (eqs. 8, 9, 12).

Every function checks its arguments (ValueError naming the bad one), then runs the native op
(backend="native", or "auto" when the extension is built for the tensors' device) or the
pure-PyTorch reference (backend="reference").
"""

from __future__ import annotations

import torch

import pdcr_reference as ref

from . import _checks, _cuda_route, _ops

CUDA_MAX_PATCH_SIZES = 8  # per-row state for every patch size lives in registers (csrc/cuda)


def foreground_ratios(labels: torch.Tensor, boxes: torch.Tensor, num_classes: int, *,
                      area: str = "box", ignore_index: int | None = None, validate: bool = True,
                      backend: str = "auto") -> torch.Tensor:
    """Foreground ratio of every class in every box (eq. 4), in 2-D or 3-D.

    Args:
        labels: integer label map (B, H, W) or (B, 1, H, W) (MONAI's convention) with 2-D boxes;
            (B, D, H, W) or (B, 1, D, H, W) with 3-D boxes. Values in [0, num_classes), or
            ignore_index.
        boxes: (N, 4) boxes shared by the batch, or (B, N, 4), as (y0, x0, y1, x1); in 3-D (N, 6)
            or (B, N, 6) as (z0, y0, x0, z1, y1, x1). Integers, inclusive ends, in image pixels;
            they may extend past the image.
        num_classes: M.
        area: "box" divides by the full box area (eq. 4 as written: r^2 for receptive fields;
            pixels outside the image belong to no class); "inside" divides by the number of the
            box's pixels inside the image that are not ignored (all ratios 0 when there are none).
        ignore_index: a label value (not in [0, M)) for unlabelled pixels: they belong to no
            class, like pixels outside the image: with area="box" they count in the denominator
            (the ratios sum to less than 1), with area="inside" they do not.
        validate: check the labels' values and the boxes (one reduction and one host
            synchronisation each; under torch.compile, torch._assert_async). False skips both:
            then invalid labels count for no class on CUDA and raise on the CPU.
        backend: "auto", "native" or "reference".

    Returns:
        (B, N, M) float32 ratios in [0, 1].
    """
    boxes = _checks.tensor("boxes", boxes, integer=True)
    if boxes.dim() not in (2, 3) or boxes.shape[-1] not in (4, 6):
        raise ValueError("boxes must have shape (N, 4) or (B, N, 4) in 2-D, (N, 6) or (B, N, 6) in "
                         f"3-D, got {tuple(boxes.shape)}")
    dims = boxes.shape[-1] // 2
    labels = _checks.labels(labels, spatial_dims=dims)
    if boxes.dim() == 2:
        boxes = boxes.unsqueeze(0).expand(labels.shape[0], -1, -1)
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"boxes batch {boxes.shape[0]} != labels batch {labels.shape[0]}")
    num_classes = _checks.num_classes(num_classes)
    ignore_index = _checks.ignore_index(ignore_index, num_classes)
    _checks.choice("area", area, ("box", "inside"))
    _checks.same_device(labels=labels, boxes=boxes)
    boxes = boxes.long()
    if validate:
        inverted = (boxes[..., dims:] < boxes[..., :dims]).any(-1)
        _checks.none_true(inverted, lambda: "boxes must have end >= start on every axis "
                          f"(inclusive ends), e.g. box {boxes[inverted][0].tolist()}",
                          "boxes must have end >= start on every axis")
        _checks.label_values(labels, num_classes, ignore_index)
    return ratios_unchecked(labels, boxes, num_classes, area, ignore_index,
                            _ops.use_native(backend, labels.device))


def ratios_unchecked(labels: torch.Tensor, boxes: torch.Tensor, num_classes: int, area: str,
                     ignore_index: int | None, native: bool) -> torch.Tensor:
    """foreground_ratios without argument checks: labels (B, *S), boxes (B, N, 2 len(S)) int64.
    For callers that built the boxes and checked the labels themselves (PDCRLoss)."""
    if native:
        return torch.ops.pdcr.foreground_ratios(labels, boxes, num_classes, area == "inside", ignore_index)
    return ref.foreground_ratios(labels, boxes, num_classes, area, ignore_index)


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
                 phi_cols: torch.Tensor | None = None, *, tau: float = 1.0,
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
        tau: temperature > 0 (default 1.0, the authors' released value; the paper gives none).
        reduction: "none" -> (B, P, N); "sum" -> scalar sum; "mean" -> sum / (B*P*N*K)
            (0 for an empty batch).
        backend: "auto", "native" or "reference".

    Returns:
        The loss, float32 for half-precision features, else in their dtype. Differentiable with
        respect to rows and cols (the native backward is hand-written and streams like the forward).
        On CUDA the path is chosen before the forward from the device's shared memory (README,
        GPU section): the kernels when their backward fits C, else the kernels on the vectors'
        coordinates in a basis of their span (when N + K < C), else the reference a block of rows
        at a time; every path is exact.
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

    if _ops.use_native(backend, rows.device):
        if rows.device.type == "cuda":
            if phi_rows.shape[1] > CUDA_MAX_PATCH_SIZES:
                raise ValueError(
                    f"phi_rows has P={phi_rows.shape[1]} patch sizes; the CUDA kernels take at most "
                    f"{CUDA_MAX_PATCH_SIZES} patch sizes per call (split the series into several calls)"
                )
            # chosen before the forward from the device's shared memory: a width whose backward
            # would not fit runs on an exact path instead (_cuda_route.py), never fails in backward()
            route = _cuda_route.route_for(rows, phi_rows, cols)
            per_row = _cuda_route.row_loss(rows, phi_rows, cols, phi_cols, tau, route)
        else:
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
