"""CUDA routing on the CPU: the shared-memory layout mirror (pdcr_ext/_cuda_layout.py) against the
known limits of each GPU generation and against the C++ layout the kernels use, the route chosen
for every width and dtype from (fake) device properties, and the math of the paths taken when no
kernel fits (the basis and tiled paths, run here on CPU tensors against the reference)."""

import types

import pytest
import torch

import pdcr_reference as ref
from conftest import requires_native
from helpers import random_features, random_ratios
from pdcr_ext import _cuda_layout as layout
from pdcr_ext import _cuda_route as route

H200 = layout.OPTIN_SHARED_MEMORY["sm_90"]
A100 = layout.OPTIN_SHARED_MEMORY["sm_80"]
SM86 = layout.OPTIN_SHARED_MEMORY["sm_86"]
SM89 = layout.OPTIN_SHARED_MEMORY["sm_89"]

# Largest C (P = 3, M = 2) of the forward, split backward and atomic backward: the H200 values
# were read off the kernel's layout by hand (fp32 forward: 2 tiles of 16 x (C + 4) floats + S
# 16 x 20 + ratios = 128 C + 2560 bytes <= 232448 gives C <= 1792); float16's backward runs
# the float32 kernels (G in float32), so it has float32's backward limits.
LIMITS = {
    ("sm_90", "float32"): (1792, 1184, 880),
    ("sm_90", "float16"): (3584, 1184, 880),
    ("sm_90", "bfloat16"): (3584, 1776, 1184),
    ("sm_90", "float64"): (880, 576, 432),
    ("sm_80", "float32"): (1280, 848, 624),
    ("sm_80", "float16"): (2560, 848, 624),
    ("sm_80", "bfloat16"): (2560, 1264, 848),
    ("sm_86", "float32"): (768, 496, 368),
    ("sm_86", "float16"): (1536, 496, 368),
    ("sm_86", "bfloat16"): (1536, 752, 496),
    ("sm_89", "float32"): (768, 496, 368),
    ("sm_89", "bfloat16"): (1536, 752, 496),
}


@pytest.mark.parametrize("arch,dtype", sorted(LIMITS))
def test_layout_mirror_limits_per_gpu(arch, dtype):
    limit = layout.OPTIN_SHARED_MEMORY[arch]
    got = tuple(layout.max_channels(limit, dtype, kernel, 3, 2) for kernel in layout.KERNELS)
    assert got == LIMITS[arch, dtype]
    for kernel, C in zip(layout.KERNELS, got):  # the boundary itself: C fits, C + 1 does not
        assert layout.choose_tile(limit, dtype, kernel, C, 3, 2) == 16
        assert layout.choose_tile(limit, dtype, kernel, C + 1, 3, 2) == 0


def test_layout_bytes_worked_by_hand():
    # fp32 forward, 16-row tiles, C = 1792: rows and cols 16 x 1796 x 4 each, S 16 x 20 x 4,
    # ratios 16 x 3 x 2 x 4 each (384 -> 384), every part 128-aligned
    assert layout.shared_memory("float32", "forward", 16, 1792, 3, 2) == 2 * 114944 + 1280 + 2 * 384
    # + G (16 x 20 x 4) + one accumulator (16 x 1796 x 4) for the split backward
    assert layout.shared_memory("float32", "split", 16, 1792, 3, 2) == 2 * 114944 + 1280 + 1280 + 114944 + 768
    # bf16 tiles are half as wide; the accumulators stay float
    assert layout.shared_memory("bfloat16", "split", 16, 64, 3, 2) == 2 * 2304 + 1280 + 768 + 4352 + 768
    # float16's backward is float32's; its forward is bfloat16's
    assert layout.shared_memory("float16", "atomic", 64, 64, 3, 2) == layout.shared_memory("float32", "atomic", 64, 64, 3, 2)
    assert layout.shared_memory("float16", "forward", 64, 64, 3, 2) == layout.shared_memory("bfloat16", "forward", 64, 64, 3, 2)


@requires_native
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_layout_mirror_equals_the_kernels_layout(dtype):
    """The C++ layout (csrc/cuda/dragsaw_layout.h, compiled into every build) gives the same
    bytes and the same choices as the mirror."""
    from pdcr_ext import _C

    for C in (1, 16, 17, 64, 100, 256, 511, 880, 881, 1184, 1185, 1792, 1800, 3584, 4000):
        for P, M in ((1, 2), (3, 2), (8, 5)):
            for kernel in layout.KERNELS:
                for tile in layout.TILE_SIZES:
                    assert _C.cuda_dragsaw_shared_memory(dtype, kernel, tile, C, P, M) == \
                        layout.shared_memory(dtype, kernel, tile, C, P, M), (dtype, kernel, tile, C, P, M)
            for limit in (A100, SM86, H200, 48 * 1024):
                for prefer in (True, False):
                    assert tuple(_C.cuda_dragsaw_plan(dtype, C, P, M, limit, prefer)) == \
                        tuple(layout.plan(dtype, C, P, M, limit, prefer)), (dtype, C, P, M, limit, prefer)


def _decide(dtype="float32", C=64, N=128, K=128, P=3, M=2, single_layer=True, limit=H200, **kw):
    return route.decide(dtype=dtype, C=C, N=N, K=K, P=P, M=M, single_layer=single_layer, limit=limit, **kw)


def test_routes_by_width_on_an_h200():
    assert _decide(C=880)[:4] == ("kernel", "float32", 880, "atomic")
    assert _decide(C=881)[:4] == ("kernel", "float32", 881, "split")  # atomic does not fit: split
    assert _decide(C=1184)[:4] == ("kernel", "float32", 1184, "split")
    assert _decide(C=880, prefer_atomic=False).backward == "split"
    # past every backward: the basis of the N vectors (single layer) or N + K (cross-layer)
    assert _decide(C=1185, N=128)[:4] == ("basis", "float32", 128, "atomic")
    assert _decide(C=2048, N=128, K=64, single_layer=False)[:4] == ("basis", "float32", 192, "atomic")
    assert _decide(C=1200, N=700, K=700, single_layer=False).path == "tiled"  # N + K > C
    assert _decide(C=1300, N=1200).path == "tiled"  # basis rank 1200 < C, but past the split limit itself
    assert _decide(C=1300, N=1100)[:3] == ("basis", "float32", 1100)
    assert _decide(dtype="bfloat16", C=1776)[:4] == ("kernel", "bfloat16", 1776, "split")
    assert _decide(dtype="bfloat16", C=1792, N=64)[:4] == ("basis", "float32", 64, "atomic")
    assert _decide(dtype="float64", C=1000, N=64)[:4] == ("basis", "float64", 64, "atomic")
    assert _decide(C=5000, N=0).path == "kernel"  # no pairs: no kernel runs


def test_routes_for_real_layers_on_smaller_gpus():
    # UNet's 512-channel stage: past sm_86's float32 backward (496), N = 128 -> basis
    assert _decide(C=512, limit=SM86)[:4] == ("basis", "float32", 128, "atomic")
    assert _decide(C=512, limit=SM89).path == "basis"
    # DeepLabV3+ with ResNet-50, 1024 channels at stage 4, N = 32: kernels only via the basis
    assert _decide(C=1024, N=32, limit=A100)[:4] == ("basis", "float32", 32, "atomic")
    assert _decide(C=1024, N=32, limit=H200)[:4] == ("kernel", "float32", 1024, "split")
    assert _decide(C=624, limit=A100).backward == "atomic"
    assert _decide(C=640, limit=A100).backward == "split"


def test_float16_runs_the_float32_kernels_until_its_own_have_run_on_a_gpu(monkeypatch):
    assert route.FLOAT16_KERNELS_RUN_ON_A_GPU is False  # flip it with the GPU log that shows the test
    assert _decide(dtype="float16", C=64)[:4] == ("kernel", "float32", 64, "atomic")
    assert _decide(dtype="float16", C=1000).path == "kernel" and _decide(dtype="float16", C=1000).dtype == "float32"
    monkeypatch.setattr(route, "FLOAT16_KERNELS_RUN_ON_A_GPU", True)
    assert _decide(dtype="float16", C=64)[:4] == ("kernel", "float16", 64, "atomic")
    # its backward (G in float32) has float32's limits, though its forward fits 3584
    assert _decide(dtype="float16", C=1184).backward == "split"
    assert _decide(dtype="float16", C=1200, N=64).path == "basis"


def test_device_limit_from_fake_device_properties(monkeypatch):
    monkeypatch.setattr(route, "_optin_cache", {})
    props = types.SimpleNamespace(major=9, minor=0, shared_memory_per_block_optin=123456)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert route.optin_shared_memory(0) == 123456
    # a torch without the property: the table, by compute capability
    monkeypatch.setattr(route, "_optin_cache", {})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(major=8, minor=6))
    assert route.optin_shared_memory(0) == SM86
    monkeypatch.setattr(route, "_optin_cache", {})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(major=12, minor=0))
    assert route.optin_shared_memory(0) == min(layout.OPTIN_SHARED_MEMORY.values())


@requires_native
def test_direct_op_call_refuses_a_width_without_a_backward_before_backward(monkeypatch):
    """What the autograd formula checks for CUDA inputs, with a fake device limit."""
    from pdcr_ext import _ops

    monkeypatch.setattr(route, "optin_shared_memory", lambda index: SM86)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    rows, phi = torch.randn(1, 4, 512), torch.rand(1, 3, 4, 2)
    with pytest.raises(ValueError, match="C=512 channels .* call pdcr_ext.dragsaw_loss"):
        _ops._check_cuda_backward_fits(rows, phi)
    _ops._check_cuda_backward_fits(torch.randn(1, 4, 368), phi)  # the atomic backward fits


def _case(B, N, K, C, P, M, dtype, seed, cross=True):
    g = torch.Generator().manual_seed(seed)
    rows = random_features(B, N, C, dtype=dtype, generator=g)
    cols = random_features(B, K, C, dtype=dtype, generator=g) if cross else rows
    phi_rows = random_ratios(B, P, N, M, generator=g).to(dtype)
    phi_cols = random_ratios(B, P, K, M, generator=g).to(dtype) if cross else phi_rows
    return rows, phi_rows, cols, phi_cols


def _loss_and_grads(fn, rows, cols, cross):
    r = rows.detach().clone().requires_grad_()
    c = cols.detach().clone().requires_grad_() if cross else r
    loss = fn(r, c)
    (loss.double() * torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).reshape(loss.shape)).sum().backward()
    return loss.detach(), r.grad, c.grad if cross else None


@requires_native
@pytest.mark.parametrize("cross", [True, False])
def test_basis_path_matches_the_reference(cross):
    """The native (CPU) kernels on the coordinates of the vectors in a basis of their span give
    the loss and gradients of the full-width reference."""
    rows, phi_rows, cols, phi_cols = _case(2, 9, 7, 80, 3, 2, torch.float64, seed=1, cross=cross)
    basis = lambda r, c: route.basis_row_loss(r, phi_rows, c, phi_cols if cross else phi_rows, 0.4,
                                              route.native_row_loss, torch.float64)
    reference = lambda r, c: ref.dragsaw_row_loss(r, phi_rows, c, phi_cols if cross else phi_rows, 0.4)
    got = _loss_and_grads(basis, rows, cols, cross)
    want = _loss_and_grads(reference, rows, cols, cross)
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@requires_native
@pytest.mark.parametrize("cross", [True, False])
def test_basis_path_gradcheck_float64(cross):
    rows, phi_rows, cols, phi_cols = _case(1, 3, 4, 13, 2, 3, torch.float64, seed=2, cross=cross)
    rows = rows.requires_grad_()
    if cross:
        cols = cols.requires_grad_()
        fn = lambda r, c: route.basis_row_loss(r, phi_rows, c, phi_cols, 0.3, route.native_row_loss, torch.float64)
        assert torch.autograd.gradcheck(fn, (rows, cols))
    else:
        fn = lambda r: route.basis_row_loss(r, phi_rows, r, phi_rows, 0.3, route.native_row_loss, torch.float64)
        assert torch.autograd.gradcheck(fn, (rows,))


@requires_native
def test_basis_path_in_float32_with_zero_and_parallel_vectors():
    """Rank-deficient spans (a zero vector, repeated vectors) and float32 coordinates."""
    rows, phi_rows, cols, phi_cols = _case(1, 12, 10, 300, 3, 2, torch.float64, seed=3)
    rows[0, 2] = 0
    rows[0, 5] = 3 * rows[0, 4]
    cols[0, :3] = rows[0, :3]
    basis = lambda r, c: route.basis_row_loss(r.float(), phi_rows.float(), c.float(), phi_cols.float(), 0.5,
                                              route.native_row_loss, torch.float32)
    reference = lambda r, c: ref.dragsaw_row_loss(r, phi_rows, c, phi_cols, 0.5)
    (loss, gr, gc), (rl, rgr, rgc) = _loss_and_grads(basis, rows, cols, True), _loss_and_grads(reference, rows, cols, True)
    torch.testing.assert_close(loss.double(), rl, rtol=2e-5, atol=1e-4)
    torch.testing.assert_close(gr, rgr, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gc, rgc, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cross", [True, False])
def test_tiled_path_gradcheck_float64_over_several_blocks(cross):
    rows, phi_rows, cols, phi_cols = _case(2, 7, 6, 5, 2, 3, torch.float64, seed=4, cross=cross)
    rows = rows.requires_grad_()
    block = 2 * 2 * 6 * (2 * 3 + 5) * 8 * 3  # 3 rows per block: blocks of 3, 3, 1
    if cross:
        cols = cols.requires_grad_()
        fn = lambda r, c: route.tiled_row_loss(r, phi_rows, c, phi_cols, 0.6, block_bytes=block)
        assert torch.autograd.gradcheck(fn, (rows, cols))
        torch.testing.assert_close(fn(rows, cols), ref.dragsaw_row_loss(rows, phi_rows, cols, phi_cols, 0.6))
    else:
        fn = lambda r: route.tiled_row_loss(r, phi_rows, r, phi_rows, 0.6, block_bytes=block)
        assert torch.autograd.gradcheck(fn, (rows,))
        torch.testing.assert_close(fn(rows), ref.dragsaw_row_loss(rows, phi_rows, rows, phi_rows, 0.6))


@requires_native
@pytest.mark.parametrize("path", ["kernel", "basis", "tiled"])
def test_every_route_gives_the_same_loss_and_gradients(path):
    """row_loss along each route, on CPU tensors (the CPU op stands in for the CUDA one), float16
    features included: the float32 route keeps float16 gradients for float16 inputs."""
    rows, phi_rows, cols, phi_cols = _case(2, 20, 17, 48, 3, 2, torch.float32, seed=5)
    rows16, cols16 = rows.half(), cols.half()
    how = route.Route(path, "float32", 37 if path == "basis" else 48, "atomic", "test")
    fn = lambda r, c: route.row_loss(r, phi_rows, c, phi_cols, 0.5, how)
    loss, gr, gc = _loss_and_grads(fn, rows16, cols16, True)
    reference = lambda r, c: ref.dragsaw_row_loss(r, phi_rows.double(), c, phi_cols.double(), 0.5)
    rl, rgr, rgc = _loss_and_grads(reference, rows16.double(), cols16.double(), True)
    assert loss.dtype == torch.float32 and gr.dtype == torch.float16 and gc.dtype == torch.float16
    torch.testing.assert_close(loss.double(), rl, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(gr.double(), rgr, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(gc.double(), rgc, rtol=2e-3, atol=2e-3)
