"""Argument checks of the public functions: bad input raises ValueError naming the argument."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("none", "mean", "sum")


def tensor(name: str, value, *, ndim: int | None = None, shape_doc: str = "",
           floating: bool = False, integer: bool = False) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(value.shape)}")
    if floating and value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor, got {value.dtype}")
    return value


def same_device(**tensors: torch.Tensor) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                "all tensors must be on the same device"
            )


def tau(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a positive finite number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"tau must be a positive finite number, got {value!r}")
    return value


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def spatial_shape_doc(spatial_dims: int) -> str:
    return "(B, H, W) or (B, 1, H, W)" if spatial_dims == 2 else "(B, D, H, W) or (B, 1, D, H, W)"


# The integer types the native ratio kernels dispatch (AT_DISPATCH_INTEGRAL_TYPES). torch's
# uint16/32/64 would pass an "is integer" test and then fail inside the op's dispatch.
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def labels(value, *, spatial_dims: int, name: str = "labels") -> torch.Tensor:
    """An integer label map (B, *S) or MONAI's (B, 1, *S), S = (H, W) or (D, H, W): returns (B, *S)."""
    value = tensor(name, value, integer=True)
    if value.dtype not in LABEL_DTYPES:
        raise ValueError(f"{name} must be uint8, int8, int16, int32 or int64, got {value.dtype} "
                         "(convert with .long())")
    if value.dim() == spatial_dims + 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.dim() != spatial_dims + 1:
        raise ValueError(f"{name} must have shape {spatial_shape_doc(spatial_dims)} for "
                         f"{spatial_dims}-D data, got {tuple(value.shape)}")
    return value


def ignore_index(value, num_classes: int):
    """None, or an int that is not a class index (pixels with it belong to no class)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"ignore_index must be an int or None, got {value!r}")
    if 0 <= value < num_classes:
        raise ValueError(f"ignore_index={value} is a class index (num_classes={num_classes}); "
                         "give a value outside [0, num_classes), e.g. 255 or -100")
    return value


def num_classes(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {value!r}")
    return value


def none_true(bad: torch.Tensor, message, static_message: str) -> None:
    """Raise ValueError(message()) if any element of the boolean tensor `bad` is true.

    One reduction and one host synchronisation. Under torch.compile (where a Python branch on a
    tensor would break the graph) the check becomes torch._assert_async with `static_message`.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), static_message)
        return
    if bad.numel() and bool(bad.any()):
        raise ValueError(message())


def label_values(labels: torch.Tensor, num_classes: int, ignore: int | None,
                 name: str = "labels") -> None:
    """Every label lies in [0, num_classes) or equals the ignore index."""
    bad = (labels < 0) | (labels >= num_classes)
    if ignore is not None:
        bad &= labels != ignore
    allowed = f"[0, num_classes={num_classes})" + ("" if ignore is None else f" or equal ignore_index={ignore}")

    def message():
        found = torch.unique(labels[bad])
        shown = ", ".join(str(int(v)) for v in found[:6]) + (", ..." if len(found) > 6 else "")
        hint = "" if ignore is not None else " (unlabelled pixels? pass ignore_index)"
        return f"{name} must lie in {allowed}, found {shown}{hint}"

    none_true(bad, message, f"{name} must lie in {allowed}")
