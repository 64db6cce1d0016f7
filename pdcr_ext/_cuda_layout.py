"""Shared memory of the CUDA dragsaw kernels, in plain integers: a mirror of
csrc/cuda/dragsaw_layout.h, which the kernels use. Python routes calls with it before the forward
(pdcr_ext/_cuda_route.py), so that a width that fits the forward but no backward never reaches the
kernels; the tests pin it to the C++ layout (exposed by the extension in every build) and to the
limits of the GPUs below.

A block holds a tile of T row vectors and one of T column vectors (C channels padded to a
multiple of 16, plus 16 bytes per row), the T x T similarity tile S, the backward also the T x T
gradient tile G and one (split) or two (atomic) T x Cp float accumulators, and the rows' and
columns' ratios (T x P x M each); every part starts 128-byte aligned. Only T (64, 32 or 16) can
shrink, so C decides what fits.
"""

from __future__ import annotations

from typing import NamedTuple

FEATURE_ALIGN = 16  # channels are padded to a multiple of this
TILE_SIZES = (64, 32, 16)  # tile heights, largest first
KERNELS = ("forward", "split", "atomic")
ACCUMULATORS = {"forward": 0, "split": 1, "atomic": 2}  # T x Cp float accumulators per block

# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) of the compute
# capabilities the extension is built for (CUDA C++ Programming Guide, "Technical Specifications
# per Compute Capability"): A100 163 KB, sm_86 / sm_89 (RTX 30xx/40xx, A10, L4, L40) 99 KB,
# H100 / H200 227 KB.
OPTIN_SHARED_MEMORY = {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448}


class TileBytes(NamedTuple):
    """Bytes per element of the features, the accumulation type and the gradient tile G."""

    feature: int
    acc: int
    grad: int


TILE_BYTES = {
    "float64": TileBytes(8, 8, 8),
    "float32": TileBytes(4, 4, 4),
    "float16": TileBytes(2, 4, 2),
    "bfloat16": TileBytes(2, 4, 2),
}

# float16's backward runs the float32 kernels (G stored in float32: float16's range is too narrow
# for it, see dragsaw_layout.h); every other type's backward runs its own kernels.
BACKWARD_KERNEL_TYPE = {"float64": "float64", "float32": "float32", "float16": "float32",
                        "bfloat16": "bfloat16"}


def padded_channels(channels: int) -> int:
    return -(-channels // FEATURE_ALIGN) * FEATURE_ALIGN


def _align128(x: int) -> int:
    return -(-x // 128) * 128


def _pad(bytes_per_element: int) -> int:
    return 16 // bytes_per_element


def tile_bytes(dtype: str, kernel: str) -> TileBytes:
    return TILE_BYTES[dtype if kernel == "forward" else BACKWARD_KERNEL_TYPE[dtype]]


def shared_memory(dtype: str, kernel: str, tile: int, channels: int, P: int, M: int) -> int:
    """Bytes of shared memory of one block of `kernel` ("forward", "split" or "atomic") for
    features of `dtype` ("float64", "float32", "float16", "bfloat16") and C = `channels`."""
    b = tile_bytes(dtype, kernel)
    accumulators = ACCUMULATORS[kernel]
    Cp, T = padded_channels(channels), tile
    ld_feat, ld_s = Cp + _pad(b.feature), T + _pad(b.acc)
    ld_g, ld_acc = T + _pad(b.grad), Cp + _pad(b.acc)
    parts = [
        T * ld_feat * b.feature,  # row vectors
        T * ld_feat * b.feature,  # column vectors
        T * ld_s * b.acc,  # S
        T * ld_g * b.grad if accumulators > 0 else 0,  # G
        T * ld_acc * b.acc if accumulators > 0 else 0,  # dR (or dC)
        T * ld_acc * b.acc if accumulators > 1 else 0,  # the atomic kernel's dC partial
        T * P * M * b.acc,  # rows' ratios
        P * M * T * b.acc,  # columns' ratios
    ]
    total = 0
    for part in parts:
        total = _align128(total + part)
    return total


def choose_tile(limit: int, dtype: str, kernel: str, channels: int, P: int, M: int) -> int:
    """The largest tile height whose block fits `limit` bytes, or 0 when none does."""
    for tile in TILE_SIZES:
        if shared_memory(dtype, kernel, tile, channels, P, M) <= limit:
            return tile
    return 0


class Plan(NamedTuple):
    forward_tile: int  # 0: the forward does not fit
    backward: str  # "atomic", "split" or "none"
    backward_tile: int  # 0: no backward fits


def plan(dtype: str, channels: int, P: int, M: int, limit: int, prefer_atomic: bool = True) -> Plan:
    """What the CUDA code runs (dragsaw_layout.h: choose_tile, plan_backward): the atomic backward
    when preferred and it fits, else the split one (it fits wherever the atomic one does)."""
    forward = choose_tile(limit, dtype, "forward", channels, P, M)
    if prefer_atomic:
        tile = choose_tile(limit, dtype, "atomic", channels, P, M)
        if tile:
            return Plan(forward, "atomic", tile)
    tile = choose_tile(limit, dtype, "split", channels, P, M)
    return Plan(forward, "split" if tile else "none", tile)


def max_channels(limit: int, dtype: str, kernel: str, P: int, M: int) -> int:
    """The largest C (a multiple of 16) whose `kernel` fits `limit` bytes with 16-row tiles."""
    low, high = 0, FEATURE_ALIGN
    while shared_memory(dtype, kernel, TILE_SIZES[-1], high, P, M) <= limit:
        low, high = high, 2 * high
    while high - low > FEATURE_ALIGN:  # the layout grows with C: bisect on multiples of 16
        mid = (low + high) // 2 // FEATURE_ALIGN * FEATURE_ALIGN
        if shared_memory(dtype, kernel, TILE_SIZES[-1], mid, P, M) <= limit:
            low = mid
        else:
            high = mid
    return low
