"""PDCRLoss: patch-dragsaw contrastive regularization of hidden features (eq. 12)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .functional import dragsaw_loss, foreground_ratios
from .geometry import ReceptiveField, patch_boxes, rf_boxes
from .sampling import grid_positions

PAPER_SAMPLES = (128, 64, 32, 8)  # N per layer in the paper: 128, 64, 32, then 8 for the rest
PAPER_PATCH_SIZES = (5, 7, 9)


class PDCRLoss(nn.Module):
    """The paper's eq. 12 from hidden features and the label map.

    For every layer l, N_l feature positions are sampled on a grid over both axes of its map; each
    position is a patch of the image (mode "hierarchical": a series of squares of `patch_sizes`
    pixels centred on the position's image location; mode "receptive_field": the position's
    receptive field, eqs. 5-7). Pairs of positions are pulled by the affinity of their patches'
    class make-up (eq. 3 on the ratios of eq. 4) and pushed by one minus it, at once (eq. 9).
    Cross-layer pairs (l, l') compare layer l's positions with layer l''s after a learnable 1x1
    projection of both to `projection_channels` (32 in the paper).

    Args:
        num_classes: M, the label values are in [0, M).
        mode: "hierarchical" (H-PDCR, default) or "receptive_field" (RF-PDCR).
        samples: N per layer: an int, or a sequence whose last entry repeats (paper: 128, 64, 32, 8).
        patch_sizes: the H-PDCR patch series in pixels (paper: 5, 7, 9).
        receptive_fields: RF mode: one ReceptiveField (or (size, stride, offset)) per layer, e.g.
            from pdcr_ext.receptive_field_of.
        cross_layers: pairs (l, l') of layer indices for cross-layer terms (hierarchical mode).
        in_channels: channels of each layer; needed for the layers in cross_layers, whose
            projections are created here (so that they are parameters before the optimizer is).
        projection_channels: width of the cross-layer projections.
        position_encoding: append each position's patch box, normalised to [0, 1] by the image
            size, to its feature vector (paper: on). The box is the receptive field in RF mode and
            the middle patch of the series in hierarchical mode.
        tau: temperature of eq. 9.
        weight: factor of the whole term (paper: 0.01 on top of cross-entropy).
        layer_weights, cross_weights: per-term factors (default 1).
        reduction: "mean" (each term averaged over its pairs, then over images), "sum" (eq. 12's
            sums, summed over images) or "none" (per-image totals, shape (B,)).
        jitter: draw each position uniformly inside its grid cell at every call (from
            `generator`) instead of the cell centre.
        area: "box" (eq. 4: divide by the full patch area) or "inside" (by its in-image part).

    forward(features, labels): features is a sequence of (B, C_l, h_l, w_l) tensors (layer l at
    index l), labels (B, H, W) integers. Returns the weighted total; the per-term values of the last
    call (before `weight`, detached) are in `.terms`. An image's loss does not depend on the rest
    of its batch.
    """

    def __init__(self, num_classes: int = 2, *, mode: str = "hierarchical",
                 samples: int | Sequence[int] = PAPER_SAMPLES,
                 patch_sizes: Sequence[int] = PAPER_PATCH_SIZES,
                 receptive_fields: Sequence | None = None,
                 cross_layers: Sequence[tuple[int, int]] = (),
                 in_channels: Sequence[int] | None = None, projection_channels: int = 32,
                 position_encoding: bool = True, tau: float = 0.5, weight: float = 0.01,
                 layer_weights: Sequence[float] | None = None,
                 cross_weights: Sequence[float] | None = None, reduction: str = "mean",
                 jitter: bool = False, generator: torch.Generator | None = None,
                 area: str = "box", backend: str = "auto"):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.mode = _checks.choice("mode", mode, ("hierarchical", "receptive_field"))
        self.samples = (samples,) if isinstance(samples, int) else tuple(samples)
        if not self.samples or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.samples):
            raise ValueError(f"samples must be an int >= 1 or a non-empty sequence of them, got {samples!r}")
        self.patch_sizes = tuple(patch_sizes)
        if not self.patch_sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.patch_sizes):
            raise ValueError(f"patch_sizes must be ints >= 1, got {patch_sizes!r}")
        self.receptive_fields = None
        if self.mode == "receptive_field":
            if receptive_fields is None:
                raise ValueError("mode='receptive_field' needs receptive_fields (one per layer; "
                                 "see pdcr_ext.receptive_field_of)")
            self.receptive_fields = [ReceptiveField(*rf) for rf in receptive_fields]
        self.cross_layers = [tuple(int(i) for i in pair) for pair in cross_layers]
        if self.cross_layers and self.mode != "hierarchical":
            raise ValueError("cross_layers need mode='hierarchical': receptive fields of different "
                             "layers are patches of different sizes (the paper's H-PDCR)")
        self.in_channels = None if in_channels is None else [int(c) for c in in_channels]
        self.projections = nn.ModuleDict()
        for layer in sorted({i for pair in self.cross_layers for i in pair}):
            if self.in_channels is None or layer >= len(self.in_channels):
                raise ValueError(f"in_channels must give the channels of layer {layer} (used in cross_layers)")
            self.projections[str(layer)] = nn.Conv2d(self.in_channels[layer], projection_channels, 1)
        self.position_encoding = bool(position_encoding)
        self.tau = _checks.tau(tau)
        self.weight = float(weight)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.cross_weights = None if cross_weights is None else [float(w) for w in cross_weights]
        if self.cross_weights is not None and len(self.cross_weights) != len(self.cross_layers):
            raise ValueError(f"cross_weights must give one weight per pair of cross_layers "
                             f"({len(self.cross_layers)}), got {len(self.cross_weights)}")
        self.reduction = _checks.choice("reduction", reduction, _checks.REDUCTIONS)
        self.jitter = bool(jitter)
        self.generator = generator
        self.area = _checks.choice("area", area, ("box", "inside"))
        self.backend = _checks.choice("backend", backend, _checks.BACKENDS)
        self.terms: dict[str, torch.Tensor] = {}

    # -- sampling and patches ----------------------------------------------------------------

    def num_samples(self, layer: int) -> int:
        return self.samples[min(layer, len(self.samples) - 1)]

    def _layer_patches(self, layer: int, feature: torch.Tensor, labels: torch.Tensor):
        """Positions (N, 2), their patch boxes per size (P, N, 4) and the encoded box (N, 4)."""
        h, w = feature.shape[-2:]
        H, W = labels.shape[-2:]
        n = min(self.num_samples(layer), h * w)
        positions = grid_positions(h, w, n, jitter=self.jitter, generator=self.generator)
        if self.mode == "receptive_field":
            if layer >= len(self.receptive_fields):
                raise ValueError(f"receptive_fields has {len(self.receptive_fields)} entries, "
                                 f"but layer {layer} was given")
            boxes = rf_boxes(self.receptive_fields[layer], positions)[None]  # P = 1
            encoded = boxes[0]
        else:
            # the image pixel at the centre of the feature cell (i + 1/2) * H / h, for any layer
            centres = torch.stack([((2 * positions[:, 0] + 1) * H) // (2 * h),
                                   ((2 * positions[:, 1] + 1) * W) // (2 * w)], dim=1)
            boxes = torch.stack([patch_boxes(centres, size) for size in self.patch_sizes])
            encoded = boxes[len(self.patch_sizes) // 2]
        return positions.to(feature.device), boxes.to(labels.device), encoded

    def _vectors(self, feature, positions, encoded, labels, projection=None):
        """(B, N, C [+ 4]) feature vectors at the positions, projected and position-encoded."""
        vectors = feature[:, :, positions[:, 0], positions[:, 1]].transpose(1, 2)
        if projection is not None:  # a 1x1 convolution on the sampled vectors
            vectors = F.linear(vectors, projection.weight.flatten(1), projection.bias)
        if self.position_encoding:
            H, W = labels.shape[-2:]
            scale = torch.tensor([H, W, H, W], dtype=vectors.dtype, device=vectors.device)
            code = (encoded.to(vectors.device, vectors.dtype) / scale).expand(vectors.shape[0], -1, -1)
            vectors = torch.cat([vectors, code], dim=-1)
        return vectors

    def _ratios(self, labels, boxes):
        return torch.stack([foreground_ratios(labels, b, self.num_classes, area=self.area,
                                              backend=self.backend) for b in boxes], dim=1)

    def _term(self, rows, phi_rows, cols=None, phi_cols=None):
        """Per-image value of one term of eq. 12: (B,)."""
        per_row = dragsaw_loss(rows, phi_rows, cols, phi_cols, tau=self.tau, reduction="none",
                               backend=self.backend)  # (B, P, N)
        per_image = per_row.sum(dim=(1, 2))
        if self.reduction != "sum":
            pairs = per_row.shape[1] * per_row.shape[2] * (rows if cols is None else cols).shape[1]
            per_image = per_image / max(pairs, 1)
        return per_image

    # -- forward ------------------------------------------------------------------------------

    def forward(self, features: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            features = [features]
        features = list(features)
        if not features:
            raise ValueError("features must hold at least one (B, C, h, w) tensor")
        labels = _checks.tensor("labels", labels, ndim=3, shape_doc="(B, H, W)", integer=True)
        B = labels.shape[0]
        for i, f in enumerate(features):
            _checks.tensor(f"features[{i}]", f, ndim=4, shape_doc="(B, C, h, w)", floating=True)
            if f.shape[0] != B:
                raise ValueError(f"features[{i}] has batch {f.shape[0]} but labels has {B}")
        for a, b in self.cross_layers:
            if max(a, b) >= len(features):
                raise ValueError(f"cross_layers pair ({a}, {b}) needs {max(a, b) + 1} layers, got {len(features)}")
        if self.layer_weights is not None and len(self.layer_weights) != len(features):
            raise ValueError(f"layer_weights has {len(self.layer_weights)} entries for {len(features)} layers")

        patches = [self._layer_patches(i, f, labels) for i, f in enumerate(features)]
        ratios = [self._ratios(labels, boxes) for _, boxes, _ in patches]
        total = features[0].new_zeros(B, dtype=torch.float32)
        self.terms = {}
        for i, (feature, (positions, _, encoded)) in enumerate(zip(features, patches)):
            vectors = self._vectors(feature, positions, encoded, labels)
            term = self._term(vectors, ratios[i])
            self.terms[f"layer{i}"] = term.detach().mean()
            total = total + (1.0 if self.layer_weights is None else self.layer_weights[i]) * term
        for t, (a, b) in enumerate(self.cross_layers):
            rows = self._vectors(features[a], patches[a][0], patches[a][2], labels, self.projections[str(a)])
            cols = self._vectors(features[b], patches[b][0], patches[b][2], labels, self.projections[str(b)])
            term = self._term(rows, ratios[a], cols, ratios[b])
            self.terms[f"cross{a}-{b}"] = term.detach().mean()
            total = total + (1.0 if self.cross_weights is None else self.cross_weights[t]) * term
        total = self.weight * total
        if self.reduction == "none":
            return total
        return total.sum() / max(B, 1) if self.reduction == "mean" else total.sum()
