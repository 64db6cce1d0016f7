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
    if _ops.use_native("auto", positions.device):
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


# ---------------------------------------------------------------------------------------------
# Receptive fields traced from a model


class _Node(NamedTuple):
    spec: object  # (LayerSpec rows, LayerSpec cols), None for identity, or a str: why unsupported
    parents: tuple
    tensor: torch.Tensor  # kept alive so that ids stay unique during the trace


def _as_pair(value, default):
    if value is None:
        value = default
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _arg(args, kwargs, index, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


_CONV = {torch.conv2d, torch.nn.functional.conv2d}
_MAX_POOL = {torch.nn.functional.max_pool2d, torch.max_pool2d,
             torch.nn.functional.max_pool2d_with_indices}
_AVG_POOL = {torch.nn.functional.avg_pool2d, torch._C._nn.avg_pool2d}
_UPSAMPLING = {torch.nn.functional.interpolate, torch.nn.functional.upsample,
               torch.nn.functional.conv_transpose2d, torch.conv_transpose2d,
               torch.nn.functional.pixel_shuffle, torch.nn.functional.adaptive_avg_pool2d,
               torch.nn.functional.adaptive_max_pool2d}


def _spec_of(func, args, kwargs):
    """Per-axis LayerSpecs of a spatial op, None for ops that keep the grid, or a reason string."""
    if func in _CONV:
        weight = _arg(args, kwargs, 1, "weight")
        kernel = tuple(int(k) for k in weight.shape[-2:])
        stride = _as_pair(_arg(args, kwargs, 3, "stride"), 1)
        dilation = _as_pair(_arg(args, kwargs, 5, "dilation"), 1)
        padding = _arg(args, kwargs, 4, "padding", 0)
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        padding = _as_pair(padding, 0)
    elif func in _MAX_POOL or func in _AVG_POOL:
        kernel = _as_pair(_arg(args, kwargs, 1, "kernel_size"), 1)
        stride = _as_pair(_arg(args, kwargs, 2, "stride") or kernel, 1)
        padding = _as_pair(_arg(args, kwargs, 3, "padding"), 0)
        dilation = _as_pair(_arg(args, kwargs, 4, "dilation"), 1) if func in _MAX_POOL else (1, 1)
    elif func in _UPSAMPLING:
        return f"{getattr(func, '__name__', func)} (receptive fields are defined for encoder layers; use mode='hierarchical')"
    else:
        return None
    return tuple(ref.LayerSpec(kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1))


class _Trace(torch.overrides.TorchFunctionMode):
    """Records, for every 4-D tensor an op produces, the op's geometry and its 4-D inputs."""

    def __init__(self):
        super().__init__()
        self.nodes: dict[int, _Node] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.dim() == 4]
        if func in _CONV or func in _MAX_POOL or func in _AVG_POOL:
            inputs = inputs[:1]  # the data, not the weights
        outputs = [t for t in torch.utils._pytree.tree_leaves(out)
                   if isinstance(t, torch.Tensor) and t.dim() == 4]
        spec = _spec_of(func, args, kwargs)
        for o in outputs:
            if any(o is i for i in inputs):
                continue  # in-place: the grid is unchanged
            node_spec = spec
            if spec is None and any(i.shape[-2:] != o.shape[-2:] for i in inputs):
                node_spec = f"{getattr(func, '__name__', func)} (changes the grid in a way this trace does not model)"
            self.nodes[id(o)] = _Node(node_spec, tuple(id(i) for i in inputs), o)
        return out


def receptive_field_of(model: nn.Module, layer: str, input_size=None, *, return_paths: bool = False):
    """Receptive field of a named module's output, traced from the model.

    Runs the model once on zeros of `input_size` ((H, W), (C, H, W) or (B, C, H, W); C defaults
    to the first convolution's input channels, (H, W) to 256 x 256) while recording every op, then composes the convolutions
    and poolings (stride, padding, dilation; ceil_mode does not change the geometry) on the way
    from the input to the module's output. Where paths merge (residual additions, concatenations)
    the result is the path with the largest field, and a warning says so when the paths differ.

    Returns:
        ReceptiveField, or (ReceptiveField, list of every distinct path's ReceptiveField) when
        `return_paths` is true.

    Raises:
        ValueError: unknown layer name, an output that is not (B, C, H, W), or an op on the path
        whose geometry is not a box (upsampling, adaptive pooling: use mode="hierarchical").
    """
    import warnings

    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of the model; known: {_close_names(layer, modules)}")
    input_size = (256, 256) if input_size is None else tuple(int(v) for v in input_size)
    if len(input_size) == 2:  # (H, W): the channels of the first convolution
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None:
            raise ValueError("input_size must give the channels, (C, H, W): the model has no "
                             "nn.Conv2d to infer them from")
        input_size = (first_conv.in_channels,) + input_size
    if len(input_size) == 3:
        input_size = (2,) + input_size
    if len(input_size) != 4:
        raise ValueError(f"input_size must be (H, W), (C, H, W) or (B, C, H, W), got {input_size}")
    parameter = next(model.parameters(), None)
    x = torch.zeros(input_size, device=parameter.device if parameter is not None else "cpu",
                    dtype=parameter.dtype if parameter is not None else torch.float32)
    captured = {}
    handle = modules[layer].register_forward_hook(lambda mod, inp, out: captured.setdefault("out", out))
    was_training = model.training
    trace = _Trace()
    try:
        model.eval()
        with torch.no_grad(), trace:
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    out = captured.get("out")
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ValueError(f"layer {layer!r} must output a (B, C, H, W) tensor, got "
                         f"{type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}")

    memo: dict[int, list] = {}

    def paths(node_id):  # every distinct (rows, cols) geometry reaching this tensor
        if node_id in memo:
            return memo[node_id]
        if node_id == id(x) or node_id not in trace.nodes:
            result = [((1, 1, 0), (1, 1, 0))] if node_id == id(x) else []
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
                    for rows, cols in paths(parent):
                        if node.spec is not None:
                            rows, cols = ref.rf_compose(rows, node.spec[0]), ref.rf_compose(cols, node.spec[1])
                        if (rows, cols) not in result:
                            result.append((rows, cols))
        memo[node_id] = result
        return result

    found = paths(id(out))
    if not found:
        raise ValueError(f"layer {layer!r}: its output does not depend on the model input through traced ops")
    fields = [ReceptiveField(*[(r[i] if r[i] == c[i] else (r[i], c[i])) for i in range(3)]) for r, c in found]
    best = max(range(len(found)), key=lambda i: found[i][0][0] * found[i][1][0])
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
