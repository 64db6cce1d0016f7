"""Receptive fields (eqs. 5-7) of layer stacks, and the image boxes of feature positions.

The formulas live in the reference (pdcr_reference.geometry); this module turns layer
descriptions and nn.Modules into per-axis layer specs and calls them, and computes boxes with the
native ``rf_boxes`` op when the extension is built.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Union

import torch
from torch import nn

import pdcr_reference as ref

from . import _checks, _ops

IntOrAxes = Union[int, tuple]


class ReceptiveField(NamedTuple):
    """Geometry of a layer's output on the input image, per axis: (rows, cols) in 2-D, (depth,
    rows, cols) in 3-D; ints when every axis agrees.

    Feature position x covers image pixels [x*stride + offset, x*stride + offset + size - 1].
    """

    size: IntOrAxes
    stride: IntOrAxes
    offset: IntOrAxes

    def per_axis(self, dims: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(sizes, strides, offsets), one value per axis; `dims` (2 or 3) expands ints, and is
        taken from the tuples' length when not given (2 when all are ints)."""
        lengths = {len(v) for v in self if isinstance(v, (tuple, list))}
        if dims is None:
            dims = lengths.pop() if len(lengths) == 1 else 2
        return tuple(_axes("receptive field", v, dims) for v in self)  # type: ignore[return-value]


# Modules that do not move or resize the grid: skipped when composing a stack.
_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softmax,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm,
)
_SPATIAL_2D = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_SPATIAL_3D = (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d)


def _axes(name: str, value, dims: int) -> tuple[int, ...]:
    """An int (the same on every axis) or one int per axis -> a tuple of `dims` ints."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or {dims} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * dims
    if isinstance(value, (tuple, list)) and len(value) == dims and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError(f"{name} must be an int or {dims} ints, got {value!r}")


def _layer_dims(value) -> int | None:
    """2 or 3 for a tuple of per-axis values, None for an int (any number of axes)."""
    return len(value) if isinstance(value, (tuple, list)) and len(value) in (2, 3) else None


# A layer before its number of axes is known: (dims or None, kernel, stride, padding, dilation),
# each of the four an int or a tuple of per-axis ints.
_Layer = tuple


def _module_layers(module: nn.Module, where: str) -> list[_Layer]:
    """The spatial layers of one module (a list: Sequential recurses)."""
    if isinstance(module, nn.Sequential):
        layers = []
        for name, child in module.named_children():
            layers += _module_layers(child, f"{where}.{name}")
        return layers
    if isinstance(module, _POINTWISE):
        return []
    if isinstance(module, _SPATIAL_2D + _SPATIAL_3D):
        dims = 2 if isinstance(module, _SPATIAL_2D) else 3
        kernel = _axes(f"{where}.kernel_size", module.kernel_size, dims)
        stride = _axes(f"{where}.stride", module.stride if module.stride is not None else kernel, dims)
        dilation = _axes(f"{where}.dilation", getattr(module, "dilation", 1), dims)
        padding = module.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":  # PyTorch pads (total // 2) before, the rest after
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        return [(dims, kernel, stride, _axes(f"{where}.padding", padding, dims), dilation)]
    raise ValueError(
        f"{where}: cannot take the receptive field of {type(module).__name__}; give layers as "
        "(kernel, stride, padding[, dilation]) tuples or Conv2d / MaxPool2d / AvgPool2d (or their "
        "3-D versions) modules (pdcr_ext.receptive_field_of traces whole models)"
    )


def _layers(layer, where: str) -> list[_Layer]:
    if isinstance(layer, nn.Module):
        return _module_layers(layer, where)
    if isinstance(layer, (tuple, list)) and len(layer) in (3, 4):
        values = list(layer) + ([1] if len(layer) == 3 else [])
        found = {d for d in map(_layer_dims, values) if d is not None}
        if len(found) > 1 or any(not isinstance(v, int) and _layer_dims(v) is None for v in values):
            raise ValueError(f"{where} must give ints or tuples of one length (2 or 3), got {tuple(layer)}")
        dims = found.pop() if found else None
        return [(dims, *values)]
    raise ValueError(
        f"{where} must be (kernel, stride, padding[, dilation]) or an nn.Module, got {layer!r}"
    )


def _specs(layers: list[_Layer], where: str, dims: int) -> list[tuple[ref.LayerSpec, ...]]:
    """Per-axis LayerSpecs of every layer, checking kernel, stride, dilation >= 1, padding >= 0."""
    specs = []
    for index, (_, kernel, stride, padding, dilation) in enumerate(layers):
        k, s, p, d = (_axes(f"{where}[{index}]", v, dims) for v in (kernel, stride, padding, dilation))
        for axis in range(dims):
            if k[axis] < 1 or s[axis] < 1 or d[axis] < 1 or p[axis] < 0:
                raise ValueError(f"{where}[{index}]: need kernel, stride, dilation >= 1 and padding >= 0, "
                                 f"got kernel {k}, stride {s}, padding {p}, dilation {d}")
        specs.append(tuple(ref.LayerSpec(k[a], s[a], p[a], d[a]) for a in range(dims)))
    return specs


def _field(per_axis_geometry) -> ReceptiveField:
    """ReceptiveField from one (size, jump, offset) per axis: ints when every axis agrees."""
    fields = []
    for i in range(3):
        values = tuple(g[i] for g in per_axis_geometry)
        fields.append(values[0] if len(set(values)) == 1 else values)
    return ReceptiveField(*fields)


def receptive_field(layers: Iterable, spatial_dims: int | None = None) -> ReceptiveField:
    """Receptive field of the output of a single-path stack of layers (eqs. 5-7), 2-D or 3-D.

    Args:
        layers: iterable of (kernel, stride, padding) or (kernel, stride, padding, dilation), each
            an int or one int per axis ((rows, cols) or (depth, rows, cols)), or nn.Conv2d /
            nn.MaxPool2d / nn.AvgPool2d modules or their 3-D versions (nn.Sequential and
            pointwise modules such as ReLU or BatchNorm are accepted too).
        spatial_dims: 2 or 3; needed only when every layer is given by ints (default 2).

    Returns:
        ReceptiveField(size, stride, offset); ints when every axis agrees, per-axis tuples
        otherwise. Feature position x covers pixels [x*stride + offset, x*stride + offset + size - 1].

    Example: VGG-16 up to pool5 gives ReceptiveField(size=212, stride=32, offset=-90).
    """
    collected = []
    for index, layer in enumerate(layers):
        collected += _layers(layer, f"layers[{index}]")
    found = {dims for dims, *_ in collected if dims is not None}
    if spatial_dims is not None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        found.add(spatial_dims)
    if len(found) > 1:
        raise ValueError(f"layers mix {sorted(found)}-dimensional geometry")
    dims = found.pop() if found else 2
    specs = _specs(collected, "layers", dims)
    return _field([ref.rf_geometry([s[axis] for s in specs]) for axis in range(dims)])


def _positions(name: str, positions) -> torch.Tensor:
    positions = _checks.tensor(name, positions, integer=True)
    if positions.dim() < 1 or positions.shape[-1] not in (2, 3):
        raise ValueError(f"{name} must have shape (..., 2) as (row, col) or (..., 3) as (depth, row, col), "
                         f"got {tuple(positions.shape)}")
    return positions.long()


def _boxes(positions: torch.Tensor, size, stride, offset) -> torch.Tensor:
    if _ops.use_native("auto", positions.device):
        return torch.ops.pdcr.rf_boxes(positions, list(size), list(stride), list(offset))
    return ref.rf_boxes(positions, size, stride, offset)


def rf_boxes(rf: ReceptiveField, positions: torch.Tensor) -> torch.Tensor:
    """Image boxes of feature positions (eqs. 5-6), 2-D or 3-D.

    Args:
        rf: a ReceptiveField (or a (size, stride, offset) triple).
        positions: (N, 2) (or (..., 2)) integer feature positions as (row, col); in 3-D (..., 3)
            as (depth, row, col).

    Returns:
        LongTensor (..., 4) of (y0, x0, y1, x1), or (..., 6) of (z0, y0, x0, z1, y1, x1);
        inclusive, in image pixels; boxes may extend past the image.
    """
    positions = _positions("positions", positions)
    size, stride, offset = ReceptiveField(*rf).per_axis(positions.shape[-1])
    if min(size) < 1 or min(stride) < 1:
        raise ValueError(f"rf must have size >= 1 and stride >= 1, got {tuple(rf)}")
    return _boxes(positions, size, stride, offset)


def patch_boxes(centers: torch.Tensor, size: int) -> torch.Tensor:
    """Square (cubic) patches of side ``size`` centred on image pixels (H-PDCR's patch series).

    Args:
        centers: (N, 2) (or (..., 2)) integer pixel centres as (row, col); (..., 3) in 3-D.
        size: side in pixels (>= 1). Even sides start at centre - (size - 1) // 2.

    Returns:
        LongTensor (..., 4) of (y0, x0, y1, x1) or (..., 6) of (z0, y0, x0, z1, y1, x1), inclusive;
        boxes may extend past the image.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    centers = _positions("centers", centers)
    dims = centers.shape[-1]
    return _boxes(centers, (size,) * dims, (1,) * dims, (-((size - 1) // 2),) * dims)


# ---------------------------------------------------------------------------------------------
# Receptive fields traced from a model


class _Node(NamedTuple):
    spec: object  # per-axis LayerSpecs, None for identity, or a str: why unsupported
    parents: tuple
    tensor: torch.Tensor  # kept alive so that ids stay unique during the trace


def _as_axes(value, default, dims: int) -> tuple[int, ...]:
    if value is None:
        value = default
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value[-dims:]) if len(value) >= dims else (int(value[0]),) * dims
    return (int(value),) * dims


def _arg(args, kwargs, index, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


F = torch.nn.functional
_CONV = {torch.conv2d, F.conv2d, torch.conv3d, F.conv3d}
_MAX_POOL = {F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices,
             F.max_pool3d, torch.max_pool3d, F.max_pool3d_with_indices}
_AVG_POOL = {F.avg_pool2d, torch._C._nn.avg_pool2d, F.avg_pool3d, torch._C._nn.avg_pool3d}
_UPSAMPLING = {F.interpolate, F.upsample, F.conv_transpose2d, torch.conv_transpose2d,
               F.conv_transpose3d, torch.conv_transpose3d, F.pixel_shuffle,
               F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d}


def _spec_of(func, args, kwargs, dims: int):
    """Per-axis LayerSpecs of a spatial op, None for ops that keep the grid, or a reason string."""
    if func in _CONV:
        weight = _arg(args, kwargs, 1, "weight")
        kernel = tuple(int(k) for k in weight.shape[2:])
        stride = _as_axes(_arg(args, kwargs, 3, "stride"), 1, dims)
        dilation = _as_axes(_arg(args, kwargs, 5, "dilation"), 1, dims)
        padding = _arg(args, kwargs, 4, "padding", 0)
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        padding = _as_axes(padding, 0, dims)
    elif func in _MAX_POOL or func in _AVG_POOL:
        kernel = _as_axes(_arg(args, kwargs, 1, "kernel_size"), 1, dims)
        stride = _as_axes(_arg(args, kwargs, 2, "stride") or kernel, 1, dims)
        padding = _as_axes(_arg(args, kwargs, 3, "padding"), 0, dims)
        dilation = _as_axes(_arg(args, kwargs, 4, "dilation"), 1, dims) if func in _MAX_POOL else (1,) * dims
    elif func in _UPSAMPLING:
        return f"{getattr(func, '__name__', func)} (receptive fields are defined for encoder layers; use mode='hierarchical')"
    else:
        return None
    return tuple(ref.LayerSpec(kernel[a], stride[a], padding[a], dilation[a]) for a in range(dims))


class _Trace(torch.overrides.TorchFunctionMode):
    """Records, for every feature map (B, C, *S) an op produces (S of `dims` axes), the op's
    geometry and its feature-map inputs."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims
        self.nodes: dict[int, _Node] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ndim = self.dims + 2
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.dim() == ndim]
        if func in _CONV or func in _MAX_POOL or func in _AVG_POOL:
            inputs = inputs[:1]  # the data, not the weights
        outputs = [t for t in torch.utils._pytree.tree_leaves(out)
                   if isinstance(t, torch.Tensor) and t.dim() == ndim]
        spec = _spec_of(func, args, kwargs, self.dims)
        for o in outputs:
            if any(o is i for i in inputs):
                continue  # in-place: the grid is unchanged
            node_spec = spec
            if spec is None and any(i.shape[2:] != o.shape[2:] for i in inputs):
                node_spec = f"{getattr(func, '__name__', func)} (changes the grid in a way this trace does not model)"
            self.nodes[id(o)] = _Node(node_spec, tuple(id(i) for i in inputs), o)
        return out


def _first_conv(model: nn.Module):
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)


def model_dims(model: nn.Module) -> int:
    """2 or 3: the spatial axes of the model's first convolution (2 when it has none)."""
    return 3 if isinstance(_first_conv(model), nn.Conv3d) else 2


def model_input(model: nn.Module, input_size=None, *, default_side: int = 256) -> tuple[int, ...]:
    """A full input shape (B, C, *S) from what users give: None, the spatial size S, (C, *S) or
    (B, C, *S); C from the first convolution, S from `default_side` (2-D) or a quarter of it (3-D)."""
    dims = model_dims(model)
    if input_size is None:
        input_size = ((default_side,) * 2) if dims == 2 else ((default_side // 4,) * 3)
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) == dims:  # the image size: the channels of the first convolution
        first = _first_conv(model)
        if first is None:
            raise ValueError("input_size must give the channels, (C, H, W): the model has no "
                             "convolution to infer them from")
        input_size = (first.in_channels,) + input_size
    if len(input_size) == dims + 1:
        input_size = (2,) + input_size
    if len(input_size) != dims + 2:
        names = "(H, W), (C, H, W) or (B, C, H, W)" if dims == 2 else "(D, H, W), (C, D, H, W) or (B, C, D, H, W)"
        raise ValueError(f"input_size must be {names} for this {dims}-D model, got {input_size}")
    return input_size


def receptive_field_of(model: nn.Module, layer: str, input_size=None, *, return_paths: bool = False):
    """Receptive field of a named module's output, traced from the model (2-D or 3-D).

    Runs the model once on zeros of `input_size` ((H, W), (C, H, W) or (B, C, H, W); in 3-D
    (D, H, W), (C, D, H, W) or (B, C, D, H, W); C defaults to the first convolution's input
    channels, the size to 256 x 256 or 64^3) while recording every op, then composes the
    convolutions and poolings (stride, padding, dilation; ceil_mode does not change the geometry)
    on the way from the input to the module's output. Where paths merge (residual additions,
    concatenations) the result is the path with the largest field, and a warning says so when the
    paths differ.

    Returns:
        ReceptiveField, or (ReceptiveField, list of every distinct path's ReceptiveField) when
        `return_paths` is true.

    Raises:
        ValueError: unknown layer name, an output that is not a feature map, or an op on the path
        whose geometry is not a box (upsampling, adaptive pooling: use mode="hierarchical").
    """
    import warnings

    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of the model; known: {_close_names(layer, modules)}")
    dims = model_dims(model)
    input_size = model_input(model, input_size)
    parameter = next(model.parameters(), None)
    x = torch.zeros(input_size, device=parameter.device if parameter is not None else "cpu",
                    dtype=parameter.dtype if parameter is not None else torch.float32)
    captured = {}
    handle = modules[layer].register_forward_hook(lambda mod, inp, out: captured.setdefault("out", out))
    was_training = model.training
    trace = _Trace(dims)
    try:
        model.eval()
        with torch.no_grad(), trace:
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    out = captured.get("out")
    if not isinstance(out, torch.Tensor) or out.dim() != dims + 2:
        raise ValueError(f"layer {layer!r} must output a (B, C, {', '.join('DHW'[3 - dims:])}) tensor, got "
                         f"{type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}")

    memo: dict[int, list] = {}
    identity = ((1, 1, 0),) * dims

    def paths(node_id):  # every distinct per-axis geometry reaching this tensor
        if node_id in memo:
            return memo[node_id]
        if node_id == id(x) or node_id not in trace.nodes:
            result = [identity] if node_id == id(x) else []
        else:
            node = trace.nodes[node_id]
            if isinstance(node.spec, str):
                upstream = [p for parent in node.parents for p in paths(parent)]
                if upstream:
                    raise ValueError(f"layer {layer!r}: the path from the input passes through {node.spec}")
                result = []
            else:
                result = []
                for parent in node.parents:
                    for geometry in paths(parent):
                        if node.spec is not None:
                            geometry = tuple(ref.rf_compose(g, s) for g, s in zip(geometry, node.spec))
                        if geometry not in result:
                            result.append(geometry)
        memo[node_id] = result
        return result

    found = paths(id(out))
    if not found:
        raise ValueError(f"layer {layer!r}: its output does not depend on the model input through traced ops")
    fields = [_field(geometry) for geometry in found]
    best = max(range(len(found)), key=lambda i: math.prod(axis[0] for axis in found[i]))
    if len(found) > 1:
        warnings.warn(
            f"layer {layer!r} is reached by {len(found)} paths with different receptive fields; "
            f"using the largest, {fields[best]} (pass return_paths=True to see all)",
            stacklevel=2,
        )
    return (fields[best], fields) if return_paths else fields[best]


def _close_names(name, modules, limit=8):
    import difflib

    close = difflib.get_close_matches(name, [n for n in modules if n], n=limit)
    return ", ".join(close) if close else ", ".join(list(n for n in modules if n)[:limit])
