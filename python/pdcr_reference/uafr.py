"""UAFR (eqs. 13-15), eager: the re-weighting step of the uncertainty-aware feature re-weighting."""

from __future__ import annotations

import math

import torch


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Eqs. 13-14: U = -sum_m a_m log2 a_m / log2 M with A = softmax over the M maps.
    (B, M, H, W) -> (B, H, W), in [0, 1]."""
    M = logits.shape[1]
    log_a = torch.log_softmax(logits, dim=1)  # finite where a underflows to 0
    a = log_a.exp()
    return -(a * log_a / math.log(2)).sum(1) / math.log2(M)


def uafr_reweight(features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15: Q_hat = Q * (1 + (1 - U)).  features (B, C, H, W), logits (B, M, H, W)."""
    compute = torch.float32 if features.dtype in (torch.float16, torch.bfloat16) else features.dtype
    u = uncertainty(logits.to(compute))
    return (features.to(compute) * (1 + (1 - u)).unsqueeze(1)).to(features.dtype), u
