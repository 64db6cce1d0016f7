"""Which path a dragsaw loss on CUDA takes, decided before the forward, so that backward() never
fails after a forward succeeded.

The CUDA kernels keep whole feature vectors in shared memory (pdcr_ext/_cuda_layout.py): the
forward fits more channels than the backward, and no kernel fits beyond a few thousand. So:

- "kernel": the CUDA kernels, when a backward fits the device (the atomic one when it fits, else
  the split one: the C++ code makes the same choice from the same layout); the forward then fits
  too, since it needs less.
- "basis": when no backward fits but the N + K vectors of an image (N for a single layer) are
  fewer than C, the kernels run on their coordinates in an orthonormal basis Q of their span
  (C x r, r = N or N + K, from a QR factorisation). v -> Q^T v keeps every inner product and norm,
  hence every similarity s_ij (eq. 8) and the loss, and the gradient maps back exactly: the loss
  depends on the vectors only through their inner products, so its gradient with respect to each
  vector lies in the span, where Q Q^T is the identity (Q is held fixed; the gradient of v -> v Q
  is g -> g Q^T). With the paper's N <= 128 this keeps wide layers (DeepLabV3+'s 1024 or 2048
  channels) on the kernels, at r channels.
- "tiled": otherwise (dense sampling of a wide layer), the pure-PyTorch reference itself, a block
  of rows at a time under activation checkpointing: exact (it is the oracle's formula), memory
  O(rows per block x K) instead of O(N x K), slower than the kernels. A channel-chunked kernel
  would be faster but is new kernel code that no GPU has run; this path is the reference.

float16 features: the float16 kernels' backward now stores its gradient tile G in float32
(csrc/cuda/dragsaw_layout.h: a float16 G underflowed to 0 at reduction="mean" and can overflow at
reduction="sum"). Until that code has run on a GPU, float16 calls take the float32 kernels, which
compute the same in float32 throughout (the float16 kernels differ in the forward: float16
normalised vectors on float16 tensor cores).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

import pdcr_reference as ref

from . import _cuda_layout

# Set to True once tests/test_cuda.py::test_float16_kernels_* and test_float16_kernel_gradients_*
# have passed on a GPU: float16 calls then run the float16 forward kernel and its float32-G
# backward.
FLOAT16_KERNELS_RUN_ON_A_GPU = False

# Memory of one block of rows of the tiled path: the reference materialises about 2M + 5 values
# per (patch size, row, column) of a block.
TILED_BLOCK_BYTES = 256 * 2**20

DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}


class Route(NamedTuple):
    path: str  # "kernel", "basis" or "tiled"
    dtype: str  # the feature dtype the kernels see ("kernel" and "basis")
    channels: int  # the width the kernels see: C, or the basis rank r
    backward: str  # the backward kernel ("atomic" or "split"; "none" for "tiled")
    reason: str


def kernel_dtype(dtype: str) -> str:
    """The dtype whose kernels run features of `dtype` (float16 -> float32 until its own kernels
    have run on a GPU)."""
    return "float32" if dtype == "float16" and not FLOAT16_KERNELS_RUN_ON_A_GPU else dtype


def decide(*, dtype: str, C: int, N: int, K: int, P: int, M: int, single_layer: bool, limit: int,
           prefer_atomic: bool = True) -> Route:
    """The path of one call (see the module docstring). `limit`: the device's opt-in shared
    memory per block in bytes; `prefer_atomic`: the atomic backward is the chosen variant."""
    run_dtype = kernel_dtype(dtype)
    if N == 0 or K == 0:  # no pairs: the kernels return before choosing a tile
        return Route("kernel", run_dtype, C, "none", "no pairs")
    plan = _cuda_layout.plan(run_dtype, C, P, M, limit, prefer_atomic)
    if plan.backward != "none":
        return Route("kernel", run_dtype, C, plan.backward,
                     f"C={C} fits the {plan.backward} backward ({plan.backward_tile}-row tiles)")
    rank = N if single_layer else N + K
    basis_dtype = "float64" if dtype == "float64" else "float32"  # QR needs float32 at least
    if rank < C:
        plan = _cuda_layout.plan(basis_dtype, rank, P, M, limit, prefer_atomic)
        if plan.backward != "none":
            return Route("basis", basis_dtype, rank, plan.backward,
                         f"C={C} fits no backward; its {rank} vectors span at most {rank} dimensions")
    return Route("tiled", dtype, C, "none",
                 f"C={C} fits no backward and the vectors span up to {min(rank, C)} dimensions")


_optin_cache: dict = {}


@torch.compiler.assume_constant_result
def optin_shared_memory(index: int) -> int:
    """Opt-in shared memory per block of CUDA device `index` (the kernels' limit)."""
    if index not in _optin_cache:
        props = torch.cuda.get_device_properties(index)
        limit = getattr(props, "shared_memory_per_block_optin", None)
        if limit is None:  # older torch: the value of the device's compute capability
            # (unknown ones get the smallest of the table: a route that fits there fits anywhere)
            table = _cuda_layout.OPTIN_SHARED_MEMORY
            limit = table.get(f"sm_{props.major}{props.minor}", min(table.values()))
        _optin_cache[index] = int(limit)
    return _optin_cache[index]


def route_for(rows: torch.Tensor, phi_rows: torch.Tensor, cols: torch.Tensor) -> Route:
    """decide() for CUDA tensors rows (B, N, C), phi_rows (B, P, N, M), cols (B, K, C)."""
    index = rows.device.index if rows.device.index is not None else torch.cuda.current_device()
    return decide(dtype=DTYPE_NAMES[rows.dtype], C=rows.shape[2], N=rows.shape[1], K=cols.shape[1],
                  P=phi_rows.shape[1], M=phi_rows.shape[3], single_layer=cols is rows,
                  limit=optin_shared_memory(index))


def native_row_loss(rows, phi_rows, cols, phi_cols, tau):
    """The native op's per-row loss (B, P, N); cols may be rows (a single layer)."""
    return torch.ops.pdcr.dragsaw_loss(rows, phi_rows, cols, phi_cols, tau)[0]


def basis_row_loss(rows: torch.Tensor, phi_rows: torch.Tensor, cols: torch.Tensor,
                   phi_cols: torch.Tensor, tau: float, row_loss: Callable, dtype: torch.dtype):
    """row_loss on the coordinates of the vectors in an orthonormal basis of their span (see the
    module docstring), computed in `dtype`. Exact for any C; the kernels see r = N (single layer,
    cols is rows) or N + K channels."""
    single_layer = cols is rows
    with torch.no_grad():
        span = rows if single_layer else torch.cat([rows, cols], dim=1)  # (B, r, C)
        q = torch.linalg.qr(span.to(dtype).transpose(1, 2)).Q  # (B, C, r), orthonormal columns
    row_coords = rows.to(dtype) @ q  # differentiable: the gradient is g Q^T
    col_coords = row_coords if single_layer else cols.to(dtype) @ q
    return row_loss(row_coords, phi_rows, col_coords, phi_cols, tau)


def tiled_row_loss(rows: torch.Tensor, phi_rows: torch.Tensor, cols: torch.Tensor,
                   phi_cols: torch.Tensor, tau: float, block_bytes: int = TILED_BLOCK_BYTES):
    """The reference's per-row loss (B, P, N), a block of rows at a time, each block recomputed in
    the backward (activation checkpointing): exact, O(block x K) memory."""
    B, P, N, M = phi_rows.shape
    K = cols.shape[1]
    element = 8 if rows.dtype == torch.float64 else 4
    per_row = max(1, B * P * K * (2 * M + 5) * element)
    block = max(1, min(N, block_bytes // per_row))
    pieces = [
        checkpoint(ref.dragsaw_row_loss, rows[:, start:start + block],
                   phi_rows[:, :, start:start + block], cols, phi_cols, tau, use_reentrant=False)
        for start in range(0, N, block)
    ]
    return torch.cat(pieces, dim=2) if len(pieces) != 1 else pieces[0]


def row_loss(rows: torch.Tensor, phi_rows: torch.Tensor, cols: torch.Tensor, phi_cols: torch.Tensor,
             tau: float, route: Route) -> torch.Tensor:
    """The per-row loss (B, P, N) along `route` (cols is rows for a single layer)."""
    if route.path == "tiled":
        return tiled_row_loss(rows, phi_rows, cols, phi_cols, tau)
    dtype = getattr(torch, route.dtype)
    if route.path == "basis":
        return basis_row_loss(rows, phi_rows, cols, phi_cols, tau, native_row_loss, dtype)
    if rows.dtype != dtype:
        single_layer = cols is rows
        rows = rows.to(dtype)
        cols = rows if single_layer else cols.to(dtype)
    return native_row_loss(rows, phi_rows, cols, phi_cols, tau)
