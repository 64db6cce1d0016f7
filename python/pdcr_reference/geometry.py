"""Receptive fields of feature positions (eqs. 5-7) and the patches of H-PDCR.

A single-path stack of layers z = 1..l, each with kernel k_z, stride s_z, padding p_z and dilation
d_z (effective kernel k'_z = d_z (k_z - 1) + 1), maps feature position x of its output to the
image interval [start, end] of eqs. 5 and 6, of length r (eq. 7). One axis at a time.
"""

from __future__ import annotations

from math import prod
from typing import NamedTuple, Sequence

import torch


class LayerSpec(NamedTuple):
    """One layer on one axis: kernel, stride, padding, dilation."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1

    @property
    def effective_kernel(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


def _jump_before(layers: Sequence[LayerSpec], z: int) -> int:
    """prod_{t < z} s_t: the distance in image pixels between neighbours at layer z's input."""
    return prod(layer.stride for layer in layers[:z])


def rf_start(x: int, layers: Sequence[LayerSpec]) -> int:
    """Eq. 5: o = o_l prod_{t=1..l} s_t - sum_{z=1..l} p_z prod_{t<z} s_t."""
    return x * _jump_before(layers, len(layers)) - sum(
        layer.padding * _jump_before(layers, z) for z, layer in enumerate(layers)
    )


def rf_end(x: int, layers: Sequence[LayerSpec]) -> int:
    """Eq. 6: e = e_l prod_{t=1..l} s_t - sum_{z=1..l} (1 + p_z - k'_z) prod_{t<z} s_t."""
    return x * _jump_before(layers, len(layers)) - sum(
        (1 + layer.padding - layer.effective_kernel) * _jump_before(layers, z)
        for z, layer in enumerate(layers)
    )


def rf_size(layers: Sequence[LayerSpec]) -> int:
    """Eq. 7: r = sum_{z=1..l} (k'_z - 1) prod_{t<z} s_t + 1."""
    return sum((layer.effective_kernel - 1) * _jump_before(layers, z) for z, layer in enumerate(layers)) + 1


def rf_geometry(layers: Sequence[LayerSpec]) -> tuple[int, int, int]:
    """(size r, jump J, offset O) on one axis: position x covers [x J + O, x J + O + r - 1]."""
    layers = [LayerSpec(*layer) for layer in layers]
    return rf_size(layers), _jump_before(layers, len(layers)), rf_start(0, layers)


def rf_compose(geometry: tuple[int, int, int], layer: LayerSpec) -> tuple[int, int, int]:
    """Eqs. 5-7 one layer at a time: (size r, jump J, offset O) after appending `layer`:
    r += (k' - 1) J,  O -= p J,  J *= s. Folding it over a stack gives rf_geometry."""
    size, jump, offset = geometry
    return (size + (layer.effective_kernel - 1) * jump, jump * layer.stride, offset - layer.padding * jump)


def rf_boxes(positions: torch.Tensor, size, stride, offset) -> torch.Tensor:
    """Boxes of positions (..., D), D = 2 (row, col) or 3 (depth, row, col): (..., 2D) as
    (lo per axis, hi per axis), inclusive: (y0, x0, y1, x1) or (z0, y0, x0, z1, y1, x1).

    size, stride, offset: int or one value per axis. Eqs. 5-6 with o_l = e_l = the position.
    """
    dims = positions.shape[-1]
    size, stride, offset = (_axes(v, dims) for v in (size, stride, offset))
    pos = positions.long()
    lo = [pos[..., a] * stride[a] + offset[a] for a in range(dims)]
    hi = [lo[a] + size[a] - 1 for a in range(dims)]
    return torch.stack(lo + hi, dim=-1)


def patch_boxes(centers: torch.Tensor, size: int) -> torch.Tensor:
    """Square (cubic) patches of side ``size`` centred on pixels ``centers`` (..., 2 or 3) (H-PDCR).

    For even sizes the centre is the lower-right of the middle four pixels: the box starts at
    c - (size - 1) // 2.
    """
    return rf_boxes(centers, size, 1, -((size - 1) // 2))


def _axes(v, dims: int) -> tuple:
    return (int(v),) * dims if isinstance(v, int) else tuple(int(x) for x in v)
