"""The dragsaw loss: cosine similarity (eq. 8), affinity (eq. 3), per-row loss (eq. 9) and the
sum over patch sizes, layers and layer pairs (eq. 12). Materialises the N x K matrices.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

NORM_EPS = 1e-8  # v / max(|v|, eps), as the native kernels


def cosine_similarity(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Eq. 8 (and 10, 11): s_ij = v_i . v_j / (|v_i| |v_j|).  (B, N, C), (B, K, C) -> (B, N, K)."""
    return F.normalize(rows, dim=-1, eps=NORM_EPS) @ F.normalize(cols, dim=-1, eps=NORM_EPS).transpose(-1, -2)


def affinity(phi_rows: torch.Tensor, phi_cols: torch.Tensor) -> torch.Tensor:
    """Eq. 3: w_ij = 1 - (1/M) sum_m |phi_i^m - phi_j^m|.  (B, P, N, M), (B, P, K, M) -> (B, P, N, K)."""
    return 1 - (phi_rows.unsqueeze(-2) - phi_cols.unsqueeze(-3)).abs().mean(-1)


def dragsaw_row_loss(rows: torch.Tensor, phi_rows: torch.Tensor, cols: torch.Tensor,
                     phi_cols: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 9 per row and patch size k (the summand of eq. 12):

        l_i(k) = sum_j -log( exp(s_ij w_ij(k) / tau) / sum_n exp(s_in (1 - w_in(k)) / tau) )

    rows (B, N, C), phi_rows (B, P, N, M), cols (B, K, C), phi_cols (B, P, K, M) -> (B, P, N).
    Half-precision inputs are computed in float32.
    """
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows, cols = rows.float(), cols.float()
    phi_rows, phi_cols = phi_rows.to(rows.dtype), phi_cols.to(rows.dtype)
    s = cosine_similarity(rows, cols).unsqueeze(1)  # (B, 1, N, K): shared by every patch size
    w = affinity(phi_rows, phi_cols)  # (B, P, N, K)
    pull = s * w / tau  # numerator logits: pull pairs in proportion to their affinity
    push = s * (1 - w) / tau  # denominator logits: push in proportion to their dissimilarity
    log_denominator = torch.logsumexp(push, dim=-1, keepdim=True)  # log sum_n exp(push_in)
    return -(pull - log_denominator).sum(-1)


def dragsaw_loss_eq12(features: Sequence[torch.Tensor], phis: Sequence[torch.Tensor],
                      cross_pairs: Sequence[tuple[int, int]], tau: float) -> torch.Tensor:
    """Eq. 12: the sum over layers l of the single-layer loss, plus the sum over layer pairs
    (l, l') of the cross-layer loss, each summed over rows, columns and patch sizes.

    features[l] (B, N_l, C), phis[l] (B, P, N_l, M); cross_pairs lists the (l, l') pairs
    (features of a pair must share C: the paper projects both to 32 channels first).
    """
    total = sum(dragsaw_row_loss(v, phi, v, phi, tau).sum() for v, phi in zip(features, phis))
    for a, b in cross_pairs:
        total = total + dragsaw_row_loss(features[a], phis[a], features[b], phis[b], tau).sum()
    return total
