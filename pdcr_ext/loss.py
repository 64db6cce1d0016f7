"""PDCRLoss: patch-dragsaw contrastive regularization of hidden features (eq. 12), 2-D and 3-D."""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, _ops
from .functional import dragsaw_loss, ratios_unchecked
from .geometry import ReceptiveField, patch_boxes, rf_boxes
from .sampling import grid_positions

PAPER_SAMPLES = (128, 64, 32, 8)  # N per layer in the paper: 128, 64, 32, then 8 for the rest
PAPER_PATCH_SIZES = (5, 7, 9)
AUTHORS_TAU = 1.0  # the paper gives no temperature; the authors' released config: loss_temperature 1
AUTHORS_CROSS_SAMPLES = 32  # the paper gives no cross-layer N; the authors sample 32 on each layer
POSITION_ENCODINGS = ("normalized", "pixels")


class LayerGeometry(NamedTuple):
    """What one layer's sampled positions are on the image (fixed unless jitter is on). D = 2
    spatial axes (row, col) for images, 3 (depth, row, col) for volumes."""

    positions: torch.Tensor  # (N, D) feature positions, on the features' device
    boxes: torch.Tensor  # (P, N, 2D) their patches, (lo per axis, hi per axis), on the labels' device
    code: torch.Tensor | None  # (N, 2D) the encoded box as (x_min, x_max, y_min, y_max[, z_min, z_max])
    image_size: tuple  # (H, W) or (D, H, W), the scale of "normalized" position codes


class PDCRLoss(nn.Module):
    """The paper's eq. 12 from hidden features and the label map.

    For every layer l, N_l feature positions are sampled on a grid over both axes of its map; each
    position is a patch of the image (mode "hierarchical": a series of squares of `patch_sizes`
    pixels centred on the position's image location; mode "receptive_field": the position's
    receptive field, eqs. 5-7). Pairs of positions are pulled by the affinity of their patches'
    class make-up (eq. 3 on the ratios of eq. 4) and pushed by one minus it, at once (eq. 9).
    Cross-layer pairs (l, l') compare layer l's positions with layer l''s after a learnable 1x1
    projection of both to `projection_channels` (32 in the paper).

    The value, per image b, with the defaults (the paper's setting, Section V-A and V-C2 (3)):

        L_b = weight * ( sum_l  lw_l  * T_l(b)  +  sum_(l,l')  cw_ll' * T_ll'(b) )
        T(b) = 1/P sum_k  sum_i sum_j  -log( exp(s_ij w_ij(k)/tau) / sum_n exp(s_in (1 - w_in(k))/tau) )

    over the P patch sizes k, the N rows i and the K columns j (K = N in a single layer). Eq. 12
    as printed sums over k; the paper's text (Section V-C2 (3): "calculate the contrastive loss
    for each patch pair in the series first, then average the loss") and the authors' code
    (divided by the number of patches) average it: patch_reduction="mean" (default), "sum" the
    printed k-sum. pair_reduction="sum" (default, eq. 12) sums the N*K pairs; "mean" divides each
    term by them (a value that does not grow with N: useful for dense sampling, but 1 / (N K) of
    the paper's at the same weight: 1 / 16 384 at N = 128). `reduction` then combines the images:
    "mean" (default), "sum" or "none" (shape (B,)); the paper does not say how it combines a batch
    (the authors' code sums it). weight=0.01 is the paper's ("we add it as a regularization to
    cross-entropy loss with a weight of 0.01"), on every term; the authors' demo config weights
    the encoder terms 0.1 and the decoder and cross-layer terms 0.01 (weight=0.01 with
    layer_weights 10 on the encoder layers gives that). tau=1 is the authors' released value
    (the paper gives none). A cross-layer pair samples `cross_samples` = 32 positions on each of
    its two layers (the authors' 32 x 32; eq. 12 uses one N for both). Note that T includes about
    K * log K per row that no feature can remove: its minimum is not 0, and its values are large
    (about N^2 log N = 79 000 for a layer of N = 128, before the weight).

    Args:
        num_classes: M, the label values are in [0, M) (or ignore_index).
        mode: "hierarchical" (H-PDCR, default) or "receptive_field" (RF-PDCR).
        samples: N per layer: an int; a sequence whose last entry repeats (paper: 128, 64, 32, 8 by
            depth); or a mapping from layer name to N (needs layer_names).
        patch_sizes: the H-PDCR patch series in pixels (paper: 5, 7, 9).
        receptive_fields: RF mode: one ReceptiveField (or (size, stride, offset)) per layer, e.g.
            from pdcr_ext.receptive_field_of.
        cross_layers: pairs (l, l') of layer indices for cross-layer terms (hierarchical mode).
        in_channels: channels of each layer; needed for the layers in cross_layers, whose
            projections are created here (so that they are parameters before the optimizer is).
        projection_channels: width of the cross-layer projections.
        position_encoding: "normalized" (default): append each position's patch box as
            (x_min, x_max, y_min, y_max) divided by the image width / height, so that it lies in
            [0, 1] like the scale of a unit feature vector; "pixels": the paper's raw
            coordinates; False: none. The box is the receptive field in RF mode and the middle
            patch of the series in hierarchical mode (the series shares its centre). Cross-layer
            vectors get it after their projection. (True means "normalized".)
        cross_samples: N sampled on each layer of a cross-layer pair (default 32, the authors'),
            at most the layer's h*w; None: each layer's own N from `samples`.
        tau: temperature of eq. 9 (default 1.0, the authors' released value).
        weight: factor of the whole term (paper: 0.01 on top of cross-entropy).
        layer_weights, cross_weights: per-term factors (default 1).
        reduction: over images: "mean", "sum" or "none" (per-image values, (B,)).
        patch_reduction: over the patch series: "mean" (default; Section V-C2 (3), the authors'
            code) or "sum" (eq. 12 as printed).
        pair_reduction: "sum" (eq. 12) or "mean" (each term divided by its N*K pairs).
        jitter: draw each position uniformly inside its grid cell at every call (from
            `generator`, which must be on the features' device) instead of the cell centre.
        area: "box" (eq. 4: divide by the full patch area) or "inside" (by its in-image,
            not-ignored part).
        ignore_index: a label value for unlabelled pixels: they belong to no class (see
            pdcr_ext.foreground_ratios).
        validate: check the label values once per call (one reduction and one host
            synchronisation; torch._assert_async under torch.compile). False for CUDA graphs.
        layer_names: names of the layers (for `.terms` and mapping `samples`).
        backend: "auto", "native" or "reference".

    forward(features, labels): features is a sequence of (B, C_l, h_l, w_l) tensors (layer l at
    index l), labels (B, H, W) or (B, 1, H, W) integers; for volumes (B, C_l, d_l, h_l, w_l) and
    (B, D, H, W) or (B, 1, D, H, W) (patches become cubes, position codes gain (z_min, z_max)).
    Returns the weighted total; the per-term values of the last call (before `weight`, averaged
    over images, detached) are in `.terms`, keyed by layer name and "a~b" for cross-layer pairs.
    An image's loss does not depend on the rest of its batch. One call computes the ratios of
    every layer and patch size from one integral image (volume) of the labels.
    """

    def __init__(self, num_classes: int = 2, *, mode: str = "hierarchical",
                 samples: int | Sequence[int] | Mapping[str, int] = PAPER_SAMPLES,
                 patch_sizes: Sequence[int] = PAPER_PATCH_SIZES,
                 receptive_fields: Sequence | None = None,
                 cross_layers: Sequence[tuple[int, int]] = (),
                 in_channels: Sequence[int] | None = None, projection_channels: int = 32,
                 position_encoding: str | bool = "normalized", tau: float = AUTHORS_TAU,
                 weight: float = 0.01, layer_weights: Sequence[float] | None = None,
                 cross_weights: Sequence[float] | None = None, reduction: str = "mean",
                 patch_reduction: str = "mean", pair_reduction: str = "sum",
                 cross_samples: int | None = AUTHORS_CROSS_SAMPLES, jitter: bool = False,
                 generator: torch.Generator | None = None, area: str = "box",
                 ignore_index: int | None = None, validate: bool = True,
                 layer_names: Sequence[str] | None = None, backend: str = "auto"):
        super().__init__()
        self.num_classes = _checks.num_classes(num_classes)
        self.mode = _checks.choice("mode", mode, ("hierarchical", "receptive_field"))
        self.layer_names = None if layer_names is None else [str(n) for n in layer_names]
        self.samples = self._parse_samples(samples)
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
        if position_encoding is True:
            position_encoding = "normalized"
        if position_encoding not in (False, None):
            _checks.choice("position_encoding", position_encoding, POSITION_ENCODINGS)
        self.position_encoding = position_encoding or None
        self.tau = _checks.tau(tau)
        self.weight = float(weight)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.cross_weights = None if cross_weights is None else [float(w) for w in cross_weights]
        if self.cross_weights is not None and len(self.cross_weights) != len(self.cross_layers):
            raise ValueError(f"cross_weights must give one weight per pair of cross_layers "
                             f"({len(self.cross_layers)}), got {len(self.cross_weights)}")
        self.reduction = _checks.choice("reduction", reduction, _checks.REDUCTIONS)
        self.patch_reduction = _checks.choice("patch_reduction", patch_reduction, ("mean", "sum"))
        self.pair_reduction = _checks.choice("pair_reduction", pair_reduction, ("sum", "mean"))
        if cross_samples is not None and (isinstance(cross_samples, bool) or not isinstance(cross_samples, int)
                                          or cross_samples < 1):
            raise ValueError(f"cross_samples must be None or an int >= 1, got {cross_samples!r}")
        self.cross_samples = cross_samples
        self.jitter = bool(jitter)
        self.generator = generator
        self.area = _checks.choice("area", area, ("box", "inside"))
        self.ignore_index = _checks.ignore_index(ignore_index, self.num_classes)
        self.validate = bool(validate)
        self.backend = _checks.choice("backend", backend, _ops.BACKENDS)
        self.terms: dict[str, torch.Tensor] = {}
        self._geometry_cache: dict[tuple, LayerGeometry] = {}

    def _parse_samples(self, samples) -> tuple[int, ...]:
        if isinstance(samples, Mapping):
            if self.layer_names is None:
                raise ValueError("samples given by layer name need layer_names")
            unknown = sorted(set(samples) - set(self.layer_names))
            missing = [n for n in self.layer_names if n not in samples]
            if unknown or missing:
                raise ValueError(f"samples must give N for every layer {self.layer_names}: "
                                 f"missing {missing}, unknown {unknown}")
            samples = [samples[n] for n in self.layer_names]
        values = (samples,) if isinstance(samples, int) else tuple(samples)
        if not values or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
            raise ValueError(f"samples must be an int >= 1, a non-empty sequence of them, or a "
                             f"mapping from layer name to one, got {samples!r}")
        return values

    def name(self, layer: int) -> str:
        return self.layer_names[layer] if self.layer_names else f"layer{layer}"

    # -- sampling and patches ----------------------------------------------------------------

    def num_samples(self, layer: int) -> int:
        return self.samples[min(layer, len(self.samples) - 1)]

    def _geometry(self, layer: int, feature: torch.Tensor, labels: torch.Tensor,
                  samples: int | None = None) -> LayerGeometry:
        """Positions, patch boxes and position code of one layer (N = `samples`, default the
        layer's own); cached unless jittered."""
        size, image = tuple(feature.shape[2:]), tuple(labels.shape[1:])  # (h, w[, ...]), (H, W[, ...])
        n = min(self.num_samples(layer) if samples is None else samples, math.prod(size))
        key = (layer, n, size, image, feature.device, labels.device)
        cacheable = not self.jitter and not torch.compiler.is_compiling()
        if cacheable and key in self._geometry_cache:
            return self._geometry_cache[key]
        positions = grid_positions(size, n, jitter=self.jitter, generator=self.generator,
                                   device=feature.device)
        if self.mode == "receptive_field":
            if layer >= len(self.receptive_fields):
                raise ValueError(f"receptive_fields has {len(self.receptive_fields)} entries, "
                                 f"but layer {layer} was given")
            boxes = rf_boxes(self.receptive_fields[layer], positions)[None]  # P = 1
            encoded = boxes[0]
        else:
            # the image pixel at the centre of the feature cell, (i + 1/2) * H / h on every axis,
            # for any layer
            centres = torch.stack([((2 * positions[:, a] + 1) * image[a]) // (2 * size[a])
                                   for a in range(len(size))], dim=1)
            boxes = torch.stack([patch_boxes(centres, side) for side in self.patch_sizes])
            encoded = boxes[len(self.patch_sizes) // 2]
        dims = len(size)
        # the paper's order (x_min, x_max, y_min, y_max), then (z_min, z_max) for volumes
        order = [i for a in reversed(range(dims)) for i in (a, a + dims)]
        code = encoded[:, order] if self.position_encoding else None
        geometry = LayerGeometry(positions, boxes.to(labels.device), code, image)
        if cacheable:
            self._geometry_cache[key] = geometry
        return geometry

    def _vectors(self, feature, geometry: LayerGeometry, projection=None):
        """(B, N, C [+ 2D]) feature vectors at the positions, projected and position-encoded."""
        index = (slice(None), slice(None)) + tuple(geometry.positions.unbind(1))
        vectors = feature[index].transpose(1, 2)
        if projection is not None:  # a 1x1 convolution on the sampled vectors
            vectors = F.linear(vectors, projection.weight.flatten(1), projection.bias)
        if geometry.code is not None:
            code = geometry.code.to(vectors.dtype)
            if self.position_encoding == "normalized":  # scalar divisions: no host-to-device copy
                sides = geometry.image_size[::-1]  # W, H[, D]: the code's axis order
                code = torch.cat([code[:, 2 * i:2 * i + 2] / side for i, side in enumerate(sides)], dim=1)
            vectors = torch.cat([vectors, code.expand(vectors.shape[0], -1, -1)], dim=-1)
        return vectors

    def _ratios(self, labels: torch.Tensor, geometries: Sequence[LayerGeometry]) -> list[torch.Tensor]:
        """Every layer's (B, P, N, M) ratios from ONE native call: one integral image."""
        boxes = torch.cat([g.boxes.reshape(-1, g.boxes.shape[-1]) for g in geometries])
        native = _ops.use_native(self.backend, labels.device)
        ratios = ratios_unchecked(labels, boxes.expand(labels.shape[0], -1, -1), self.num_classes,
                                  self.area, self.ignore_index, native)
        out, start = [], 0
        for g in geometries:
            P, N = g.boxes.shape[:2]
            out.append(ratios[:, start:start + P * N].reshape(-1, P, N, self.num_classes))
            start += P * N
        return out

    def _term(self, rows, phi_rows, cols=None, phi_cols=None):
        """Per-image value of one term of eq. 12: (B,)."""
        per_row = dragsaw_loss(rows, phi_rows, cols, phi_cols, tau=self.tau, reduction="none",
                               backend=self.backend)  # (B, P, N)
        per_image = per_row.sum(dim=(1, 2))
        if self.patch_reduction == "mean":  # Section V-C2 (3): average over the patch series
            per_image = per_image / max(per_row.shape[1], 1)
        if self.pair_reduction == "mean":
            pairs = per_row.shape[2] * (rows if cols is None else cols).shape[1]
            per_image = per_image / max(pairs, 1)
        return per_image

    # -- forward ------------------------------------------------------------------------------

    def forward(self, features: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            features = [features]
        features = list(features)
        if not features:
            raise ValueError("features must hold at least one (B, C, h, w) or (B, C, d, h, w) tensor")
        dims = features[0].dim() - 2 if isinstance(features[0], torch.Tensor) else 2
        if dims not in (2, 3):
            dims = 2  # the shape error below names the expected shapes
        shape_doc = "(B, C, h, w)" if dims == 2 else "(B, C, d, h, w)"
        for i, f in enumerate(features):
            _checks.tensor(f"features[{i}]", f, ndim=dims + 2, shape_doc=shape_doc, floating=True)
        labels = _checks.labels(labels, spatial_dims=dims)
        B = labels.shape[0]
        for i, f in enumerate(features):
            if f.shape[0] != B:
                raise ValueError(f"features[{i}] has batch {f.shape[0]} but labels has {B}")
        if self.layer_names is not None and len(self.layer_names) != len(features):
            raise ValueError(f"layer_names has {len(self.layer_names)} entries for {len(features)} layers")
        for a, b in self.cross_layers:
            if max(a, b) >= len(features):
                raise ValueError(f"cross_layers pair ({a}, {b}) needs {max(a, b) + 1} layers, got {len(features)}")
        if self.layer_weights is not None and len(self.layer_weights) != len(features):
            raise ValueError(f"layer_weights has {len(self.layer_weights)} entries for {len(features)} layers")
        if self.validate:
            _checks.label_values(labels, self.num_classes, self.ignore_index)

        geometries = [self._geometry(i, f, labels) for i, f in enumerate(features)]
        # a cross-layer pair samples cross_samples positions on each of its layers (None: their own)
        cross_layers = sorted({i for pair in self.cross_layers for i in pair})
        if self.cross_samples is None:
            cross_geometries = {i: geometries[i] for i in cross_layers}
        else:
            cross_geometries = {i: self._geometry(i, features[i], labels, self.cross_samples) for i in cross_layers}
        ratios = self._ratios(labels, geometries + list(cross_geometries.values()))
        cross_ratios = dict(zip(cross_geometries, ratios[len(geometries):]))
        total = features[0].new_zeros(B, dtype=torch.float32)
        terms = {}
        for i, (feature, geometry) in enumerate(zip(features, geometries)):
            term = self._term(self._vectors(feature, geometry), ratios[i])
            terms[self.name(i)] = term.detach().mean()
            total = total + (1.0 if self.layer_weights is None else self.layer_weights[i]) * term
        for t, (a, b) in enumerate(self.cross_layers):
            rows = self._vectors(features[a], cross_geometries[a], self.projections[str(a)])
            cols = self._vectors(features[b], cross_geometries[b], self.projections[str(b)])
            term = self._term(rows, cross_ratios[a], cols, cross_ratios[b])
            terms[f"{self.name(a)}~{self.name(b)}"] = term.detach().mean()
            total = total + (1.0 if self.cross_weights is None else self.cross_weights[t]) * term
        self.terms = terms
        total = self.weight * total
        if self.reduction == "none":
            return total
        return total.sum() / max(B, 1) if self.reduction == "mean" else total.sum()
