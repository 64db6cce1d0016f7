"""UAFR: uncertainty-aware feature re-weighting (eqs. 13-15) as an nn.Module."""

from __future__ import annotations

import torch
from torch import nn

import pdcr_reference as ref

from . import _checks, _ops


def uafr_reweight(features: torch.Tensor, logits: torch.Tensor, *, backend: str = "auto"):
    """Q_hat = Q * (1 + (1 - U)), U the normalised entropy of softmax(logits) over the maps.

    Args:
        features: Q, (B, C, H, W) float, or (B, C, D, H, W) for volumes (any spatial shape: every
            pixel is independent).
        logits: F(Q), (B, M, *spatial) with M >= 2, same dtype and device.
        backend: "auto" (the fused native op when built for the device), "native", "reference".

    Returns:
        (Q_hat (B, C, *spatial), U (B, *spatial)); U is float32 for half-precision inputs and
        carries no gradient (it is kept for figures).
    """
    features = _checks.tensor("features", features, floating=True)
    if features.dim() not in (4, 5):
        raise ValueError(f"features must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(features.shape)}")
    logits = _checks.tensor("logits", logits, ndim=features.dim(),
                            shape_doc="(B, M) + the spatial shape of features", floating=True)
    B, spatial = features.shape[0], tuple(features.shape[2:])
    if logits.shape[0] != B or tuple(logits.shape[2:]) != spatial:
        raise ValueError(f"logits must have shape (B={B}, M, {', '.join(map(str, spatial))}), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 maps (M >= 2) for a normalised entropy, got M={logits.shape[1]}")
    if logits.dtype != features.dtype:
        raise ValueError(f"logits dtype {logits.dtype} differs from features dtype {features.dtype}")
    _checks.same_device(features=features, logits=logits)
    if _ops.use_native(backend, features.device):
        return tuple(torch.ops.pdcr.uafr_reweight(features, logits))
    out, u = ref.uafr_reweight(features, logits)
    return out, u.detach()


AUTHORS_HIDDEN = 16  # the authors' released head: 3x3 conv C -> 16, BN, ReLU, 1x1 conv 16 -> M
WIDE = "wide"  # min(C, 64) hidden channels: the earlier default, about 3x Table IV's multiply-adds


class UAFR(nn.Module):
    """Uncertainty-aware feature re-weighting (Liu et al., eqs. 13-15).

    F = k x k conv -> BatchNorm -> ReLU -> 1 x 1 conv to M maps (Section IV: "a 3x3 conv layer
    followed by an identity conv layer. ReLU and batch-normalization are used in between");
    A = softmax over the maps; U = normalised Shannon entropy of A (log2, divided by log2 M);
    output Q * (1 + (1 - U)). Confident pixels are amplified up to 2x, uniform ones (U = 1) pass
    unchanged. No supervision.

    Args:
        in_channels: C of the feature map Q (B, C, H, W), or (B, C, D, H, W) with spatial_dims=3.
        num_maps: M >= 2 (the paper finds M = number of classes best).
        hidden_channels: width of the k x k conv. The paper does not give it; default 16, the
            authors' released head (every UAFR head of their code is C -> 16 -> M; on their
            DeepLabV3+'s seven UAFR layers it gives Table IV's +0.8 M and +1.4 GMACs exactly, at
            their 384 x 384 input). On pdcr_seg's UNet, FCN and DeepLabV3+ (UAFR on every stage)
            it adds 0.3-0.5 M parameters and 0.9-6.1 GMACs at 384 x 512 (Table IV: 0.6-1.5 M,
            1.4-7.6 G; README, "Models"). "wide": min(C, 64), the earlier default (1.2-2.0 M,
            3.5-24 G: about 3x Table IV's multiply-adds on the UNet).
        kernel_size: k (odd; the paper finds 3 best).
        spatial_dims: 2 (Conv2d head, default) or 3 (Conv3d head, for volumes; MONAI's name).
        backend: "auto", "native" or "reference" for the fused re-weighting step.

    Shapes: (B, C, *S) -> (B, C, *S), S = (H, W) or (D, H, W). The last uncertainty map (B, *S) is
    kept in `.uncertainty` (detached) for figures.
    """

    def __init__(self, in_channels: int, num_maps: int = 2, hidden_channels: int | str = AUTHORS_HIDDEN,
                 kernel_size: int = 3, backend: str = "auto", spatial_dims: int = 2):
        super().__init__()
        for name, value, minimum in (("in_channels", in_channels, 1), ("num_maps", num_maps, 2),
                                     ("kernel_size", kernel_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}")
        hidden = min(in_channels, 64) if hidden_channels == WIDE else hidden_channels
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden_channels must be an int >= 1 or {WIDE!r} (min(C, 64)), got {hidden_channels!r}")
        _checks.choice("backend", backend, _ops.BACKENDS)
        _checks.choice("spatial_dims", spatial_dims, (2, 3))
        self.backend = backend
        self.num_maps = num_maps
        self.spatial_dims = spatial_dims
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.head = nn.Sequential(  # F (eq. 13)
            conv(in_channels, hidden, kernel_size, padding=kernel_size // 2, bias=False),
            norm(hidden),
            nn.ReLU(inplace=True),
            conv(hidden, num_maps, 1),
        )
        self.uncertainty: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() != self.spatial_dims + 2:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"UAFR(spatial_dims={self.spatial_dims}) takes (B, C, "
                             f"{'H, W' if self.spatial_dims == 2 else 'D, H, W'}) features, got {got}")
        logits = self.head(features)
        out, u = uafr_reweight(features, logits.to(features.dtype), backend=self.backend)
        self.uncertainty = u.detach()
        return out
