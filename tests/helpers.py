"""Input builders shared by the tests."""

from __future__ import annotations

import torch


def random_features(B, N, C, *, dtype=torch.float64, generator=None, zero_rows=(), noncontiguous=False):
    """(B, N, C) features; rows listed in zero_rows are zero vectors; optionally a strided view."""
    if noncontiguous:
        x = torch.randn(B, C, N, dtype=dtype, generator=generator).transpose(1, 2)
    else:
        x = torch.randn(B, N, C, dtype=dtype, generator=generator)
    for b, i in zero_rows:
        x[b, i] = 0
    return x


def random_ratios(B, P, N, M, *, dtype=torch.float64, generator=None, noncontiguous=False):
    """(B, P, N, M) ratios in [0, 1] that sum to at most 1 over classes, as eq. 4 gives."""
    raw = torch.rand(B, P, N, M + 1, dtype=dtype, generator=generator)
    ratios = (raw / raw.sum(-1, keepdim=True))[..., :M]
    if noncontiguous:
        ratios = ratios.transpose(1, 2).contiguous().transpose(1, 2)
    return ratios


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
