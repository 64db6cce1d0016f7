"""Receptive fields (eqs. 5-7) of layer stacks, and the image boxes of feature positions.

The formulas live in the reference (pdcr_reference.geometry); this module turns layer
descriptions and nn.Modules into per-axis layer specs and calls them, and computes boxes with the
native ``rf_boxes`` op when the extension is built.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Union

import torch
from torch import nn

import pdcr_reference as ref

from . import _checks, _ops

IntOrPair = Union[int, tuple]


class ReceptiveField(NamedTuple):
    """Geometry of a layer's output on the input image, per axis (ints when both axes agree).

    Feature position x covers image pixels [x*stride + offset, x*stride + offset + size - 1].
    """

    size: IntOrPair
    stride: IntOrPair
    offset: IntOrPair

    def per_axis(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """((size_y, size_x), (stride_y, stride_x), (offset_y, offset_x))."""
        return tuple(_pair("receptive field", v) for v in self)  # type: ignore[return-value]


# Modules that do not move or resize the grid: skipped when composing a stack.
_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softmax,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm,
    nn.LayerNorm, nn.SyncBatchNorm,
)


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _module_specs(module: nn.Module, where: str) -> list[tuple[ref.LayerSpec, ref.LayerSpec]]:
    """Per-axis (kernel, stride, padding, dilation) of one module (a list: Sequential recurses)."""
    if isinstance(module, nn.Sequential):
        specs = []
        for name, child in module.named_children():
            specs += _module_specs(child, f"{where}.{name}")
        return specs
    if isinstance(module, _POINTWISE):
        return []
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(f"{where}.kernel_size", module.kernel_size)
        stride = _pair(f"{where}.stride", module.stride if module.stride is not None else kernel)
        dilation = _pair(f"{where}.dilation", getattr(module, "dilation", 1))
        padding = module.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":  # PyTorch pads (total // 2) before, the rest after
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        padding = _pair(f"{where}.padding", padding)
        return [
            (
                ref.LayerSpec(kernel[0], stride[0], padding[0], dilation[0]),
                ref.LayerSpec(kernel[1], stride[1], padding[1], dilation[1]),
            )
        ]
    raise ValueError(
        f"{where}: cannot take the receptive field of {type(module).__name__}; give layers as "
        "(kernel, stride, padding[, dilation]) tuples or Conv2d / MaxPool2d / AvgPool2d modules "
        "(pdcr_ext.receptive_field_of traces whole models)"
    )


def _layer_specs(layer, where: str) -> list[tuple[ref.LayerSpec, ref.LayerSpec]]:
    if isinstance(layer, nn.Module):
        return _module_specs(layer, where)
    if isinstance(layer, (tuple, list)) and len(layer) in (3, 4):
        values = [_pair(f"{where}[{i}]", v) for i, v in enumerate(layer)]
        kernel, stride, padding = values[:3]
        dilation = values[3] if len(values) == 4 else (1, 1)
        for axis in (0, 1):
            if kernel[axis] < 1 or stride[axis] < 1 or dilation[axis] < 1 or padding[axis] < 0:
                raise ValueError(
                    f"{where}: need kernel, stride, dilation >= 1 and padding >= 0, got {tuple(layer)}"
                )
        return [tuple(ref.LayerSpec(kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1))]
    raise ValueError(
        f"{where} must be (kernel, stride, padding[, dilation]) or an nn.Module, got {layer!r}"
    )


def receptive_field(layers: Iterable) -> ReceptiveField:
    """Receptive field of the output of a single-path stack of layers (eqs. 5-7).

    Args:
        layers: iterable of (kernel, stride, padding) or (kernel, stride, padding, dilation), each
            an int or a (rows, cols) pair, or nn.Conv2d / nn.MaxPool2d / nn.AvgPool2d modules
            (nn.Sequential and pointwise modules such as ReLU or BatchNorm2d are accepted too).

    Returns:
        ReceptiveField(size, stride, offset); ints for square geometry, (rows, cols) pairs
        otherwise. Feature position x covers pixels [x*stride + offset, x*stride + offset + size - 1].

    Example: VGG-16 up to pool5 gives ReceptiveField(size=212, stride=32, offset=-90).
    """
    specs = []
    for index, layer in enumerate(layers):
        specs += _layer_specs(layer, f"layers[{index}]")
    per_axis = [ref.rf_geometry([s[axis] for s in specs]) for axis in (0, 1)]
    fields = []
    for i in range(3):
        y, x = per_axis[0][i], per_axis[1][i]
        fields.append(y if y == x else (y, x))
    return ReceptiveField(*fields)


def _positions(name: str, positions) -> torch.Tensor:
    positions = _checks.tensor(name, positions, integer=True)
    if positions.dim() < 1 or positions.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (..., 2) as (row, col), got {tuple(positions.shape)}")
    return positions.long()


def _boxes(positions: torch.Tensor, size, stride, offset) -> torch.Tensor:
    if _ops.NATIVE:
        return torch.ops.pdcr.rf_boxes(positions, list(size), list(stride), list(offset))
    return ref.rf_boxes(positions, size, stride, offset)


def rf_boxes(rf: ReceptiveField, positions: torch.Tensor) -> torch.Tensor:
    """Image boxes of feature positions (eqs. 5-6).

    Args:
        rf: a ReceptiveField (or a (size, stride, offset) triple).
        positions: (N, 2) (or (..., 2)) integer feature positions as (row, col).

    Returns:
        LongTensor (N, 4) (or (..., 4)) of (y0, x0, y1, x1), inclusive, in image pixels; boxes may
        extend past the image.
    """
    size, stride, offset = ReceptiveField(*rf).per_axis()
    if min(size) < 1 or min(stride) < 1:
        raise ValueError(f"rf must have size >= 1 and stride >= 1, got {tuple(rf)}")
    return _boxes(_positions("positions", positions), size, stride, offset)


def patch_boxes(centers: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches of side ``size`` centred on image pixels (H-PDCR's patch series).

    Args:
        centers: (N, 2) (or (..., 2)) integer pixel centres as (row, col).
        size: side in pixels (>= 1). Even sides start at centre - (size - 1) // 2.

    Returns:
        LongTensor (N, 4) of (y0, x0, y1, x1), inclusive; boxes may extend past the image.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    offset = -((size - 1) // 2)
    return _boxes(_positions("centers", centers), (size, size), (1, 1), (offset, offset))
