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


def reference_float32(rows, phi_rows, cols, phi_cols, tau, reduction="none"):
    """Loss and gradients (seeded with ones) of the reference in float32, on the CPU."""
    import pdcr_ext

    cast = lambda t: None if t is None else t.detach().cpu().float()
    r = cast(rows).clone().requires_grad_()
    c = None if cols is None else cast(cols).clone().requires_grad_()
    loss = pdcr_ext.dragsaw_loss(r, cast(phi_rows), c, cast(phi_cols), tau=tau, reduction=reduction,
                                 backend="reference")
    loss.sum().backward()
    return loss.detach(), r.grad, None if c is None else c.grad


def assert_float32_close(got, want, same_precision, rows, cols, tau):
    """float32 results within twice the error of the same-precision reference (the flash-attention
    acceptance rule), plus a slack of a few float32 ulps of the computation's natural magnitude:
    |dL/dv| ~ K (K + 1) / (tau |v|) before the normalisation's projection, which cancels it
    exactly in some cases (C = 1) and only approximately in others.

    got, want (float64), same_precision: (loss, grad_rows, grad_cols) triples; None entries skipped.
    """
    features = rows if cols is None else torch.cat([rows.cpu(), cols.cpu()], dim=1)
    K = features.shape[1] if cols is None else cols.shape[1]
    min_norm = float(features.double().norm(dim=-1).min().clamp_min(1e-3)) if features.numel() else 1.0
    natural = (max(K * (1 + 1 / tau), 1.0), K * (K + 1) / tau / min_norm, K * (K + 1) / tau / min_norm)
    for name, g, w, r32, scale in zip(("loss", "grad_rows", "grad_cols"), got, want, same_precision, natural):
        if w is None:
            continue
        g, w, r32 = g.detach().cpu().double(), w.detach().cpu().double(), r32.detach().cpu().double()
        err, ref_err = (g - w).abs(), (r32 - w).abs()
        slack = 1e-4 * w.abs() + 5e-7 * scale
        excess = err - 2 * ref_err - slack
        assert (excess <= 0).all(), f"{name}: error exceeds the bound by {float(excess.max()):.3g}"
