"""CUDA kernels against the reference. Marked `cuda`: skipped where no GPU (or no CUDA build) is
present; run on a GPU machine by `make gpu-check`. Tests marked `native_raises` make (or, if a
limit were wrong, could make) a native op raise a C++ exception, which crashed the process on the
first GPU image: gpu_check.sh runs each of them in a process of its own."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pdcr_ext
import pdcr_reference as ref
from helpers import assert_float32_close, random_features, random_ratios, rel_err
from pdcr_ext import _cuda_layout, _cuda_route

pytestmark = pytest.mark.cuda


def _inputs(B, N, K, C, P, M, *, dtype, seed, cross=True, noncontiguous=False):
    g = torch.Generator().manual_seed(seed)
    rows = random_features(B, N, C, dtype=torch.float64, generator=g, noncontiguous=noncontiguous)
    cols = random_features(B, K, C, dtype=torch.float64, generator=g) if cross else None
    phi_rows = random_ratios(B, P, N, M, generator=g)
    phi_cols = random_ratios(B, P, K, M, generator=g) if cross else None
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(rows), phi_rows.float(), cast(cols), None if phi_cols is None else phi_cols.float()


def _weights(loss):
    return torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).reshape(loss.shape)


def _weighted_reference_float32(rows, phi_rows, cols, phi_cols, tau):
    r = rows.detach().float().requires_grad_()
    c = None if cols is None else cols.detach().float().requires_grad_()
    loss = pdcr_ext.dragsaw_loss(r, phi_rows.float(), c, None if phi_cols is None else phi_cols.float(),
                                 tau=tau, reduction="none", backend="reference")
    (loss.double() * _weights(loss)).sum().backward()
    return loss.detach(), r.grad, None if c is None else c.grad


def _run(rows, phi_rows, cols, phi_cols, tau, device, reduction="none"):
    """Loss and gradients on `device` (native) and, from the same rounded inputs, the float64
    reference on the CPU."""
    out = {}
    for where in ("native", "reference"):
        dev, dt = (device, rows.dtype) if where == "native" else ("cpu", torch.float64)
        r = rows.detach().to(dev, dt).requires_grad_()
        c = None if cols is None else cols.detach().to(dev, dt).requires_grad_()
        pr = phi_rows.to(dev, torch.float64 if where == "reference" else phi_rows.dtype)
        pc = None if phi_cols is None else phi_cols.to(dev, pr.dtype)
        loss = pdcr_ext.dragsaw_loss(r, pr, c, pc, tau=tau, reduction=reduction, backend=where)
        (loss.double() * _weights(loss).to(loss.device)).sum().backward()
        out[where] = [t.detach().cpu() if t is not None else None
                      for t in (loss, r.grad, None if c is None else c.grad)]
    return out["native"], out["reference"]


@pytest.mark.parametrize("variant", ["split", "atomic"])
@given(
    B=st.integers(1, 3), N=st.integers(1, 150), K=st.integers(1, 150), C=st.integers(1, 80),
    P=st.integers(1, 4), M=st.integers(2, 5), tau=st.floats(0.05, 2.0), cross=st.booleans(),
    noncontiguous=st.booleans(), seed=st.integers(0, 2**16),
)
@settings(max_examples=25)
def test_float32_matches_reference(variant, B, N, K, C, P, M, tau, cross, noncontiguous, seed):
    from pdcr_ext import _C

    before = _C.cuda_backward()
    _C.set_cuda_backward(variant)
    try:
        (loss, gr, gc), (rl, rgr, rgc) = _run(
            *_inputs(B, N, K, C, P, M, dtype=torch.float32, seed=seed, cross=cross,
                     noncontiguous=noncontiguous), tau, "cuda")
    finally:
        _C.set_cuda_backward(before)
    assert loss.dtype == torch.float32
    rows, phi_rows, cols, phi_cols = _inputs(B, N, K, C, P, M, dtype=torch.float32, seed=seed,
                                             cross=cross, noncontiguous=noncontiguous)
    ref32 = _weighted_reference_float32(rows, phi_rows, cols, phi_cols, tau)
    assert_float32_close((loss, gr, gc), (rl, rgr, rgc), ref32, rows, cols, tau)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("shape", [(2, 64, 64, 64), (1, 300, 130, 96), (3, 17, 33, 16)])
def test_half_precision_matches_reference_of_the_rounded_inputs(dtype, tol, shape):
    B, N, K, C = shape
    (loss, gr, gc), (rl, rgr, rgc) = _run(*_inputs(B, N, K, C, 3, 2, dtype=dtype, seed=1), 0.5, "cuda")
    assert loss.dtype == torch.float32 and gr.dtype == dtype
    assert rel_err(loss, rl) < tol
    assert rel_err(gr, rgr) < 5 * tol and rel_err(gc, rgc) < 5 * tol


@pytest.mark.parametrize("variant", ["split", "atomic"])
@pytest.mark.parametrize("shape", [(2, 64, 64, 64), (1, 300, 130, 96), (3, 17, 33, 16)])
def test_float16_kernels_match_reference_of_the_rounded_inputs(shape, variant):
    """The float16 kernels through the op itself (pdcr_ext.dragsaw_loss routes float16 to the
    float32 kernels until these have run on a GPU): forward on float16 tensor cores, backward on
    float32 tiles."""
    from pdcr_ext import _C

    B, N, K, C = shape
    rows, phi_rows, cols, phi_cols = _inputs(B, N, K, C, 3, 2, dtype=torch.float16, seed=1)
    r, c = rows.cuda().requires_grad_(), cols.cuda().requires_grad_()
    before = _C.cuda_backward()
    _C.set_cuda_backward(variant)
    try:
        loss, _ = torch.ops.pdcr.dragsaw_loss(r, phi_rows.cuda(), c, phi_cols.cuda(), 0.5)
        (loss.double() * _weights(loss).cuda()).sum().backward()
    finally:
        _C.set_cuda_backward(before)
    r64, c64 = rows.double().requires_grad_(), cols.double().requires_grad_()
    want = ref.dragsaw_row_loss(r64, phi_rows.double(), c64, phi_cols.double(), 0.5)
    (want * _weights(want)).sum().backward()
    assert loss.dtype == torch.float32 and r.grad.dtype == torch.float16
    assert rel_err(loss.cpu(), want) < 4e-3
    assert rel_err(r.grad.cpu(), r64.grad) < 2e-2 and rel_err(c.grad.cpu(), c64.grad) < 2e-2


@pytest.mark.parametrize("variant", ["split", "atomic"])
@pytest.mark.parametrize("cross", [True, False])
def test_gradcheck_float64(variant, cross):
    from pdcr_ext import _C

    rows, phi_rows, cols, phi_cols = _inputs(2, 19, 23, 7, 3, 3, dtype=torch.float64, seed=2, cross=cross)
    rows = rows.cuda().requires_grad_()
    phi_rows = phi_rows.double().cuda()
    before = _C.cuda_backward()
    _C.set_cuda_backward(variant)
    try:
        if cross:
            cols, phi_cols = cols.cuda().requires_grad_(), phi_cols.double().cuda()
            fn = lambda r, c: pdcr_ext.dragsaw_loss(r, phi_rows, c, phi_cols, tau=0.4, reduction="none")
            assert torch.autograd.gradcheck(fn, (rows, cols))
        else:
            fn = lambda r: pdcr_ext.dragsaw_loss(r, phi_rows, tau=0.4, reduction="none")
            assert torch.autograd.gradcheck(fn, (rows,))
    finally:
        _C.set_cuda_backward(before)


def test_wide_features_use_smaller_tiles_and_stay_correct():
    (loss, gr, gc), (rl, rgr, rgc) = _run(*_inputs(1, 70, 90, 700, 2, 2, dtype=torch.float32, seed=4), 0.5, "cuda")
    assert rel_err(loss, rl) < 1e-5 and rel_err(gr, rgr) < 1e-4 and rel_err(gc, rgc) < 1e-4


def test_tiny_tau_and_zero_vectors_on_cuda():
    rows, phi_rows, cols, phi_cols = _inputs(2, 40, 50, 8, 3, 2, dtype=torch.float32, seed=5)
    rows[0, 3] = 0
    (loss, gr, gc), (rl, rgr, rgc) = _run(rows, phi_rows, cols, phi_cols, 1e-3, "cuda")
    for t in (loss, gr, gc):
        assert torch.isfinite(t).all()
    assert rel_err(loss, rl) < 1e-4 and rel_err(gr, rgr) < 1e-3


@pytest.mark.native_raises
def test_too_many_patch_sizes_is_an_error():
    rows = torch.randn(1, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="at most 8 patch sizes"):
        pdcr_ext.dragsaw_loss(rows, torch.rand(1, 9, 4, 2, device="cuda"))
    with pytest.raises(RuntimeError, match="at most 8 patch sizes"):
        phi = torch.rand(1, 9, 4, 2, device="cuda")
        torch.ops.pdcr.dragsaw_loss(rows, phi, rows, phi, 0.5)


@pytest.mark.native_raises
def test_op_errors_from_cuda_code_reach_python():
    rows = torch.randn(1, 4, 3, device="cuda")
    phi = torch.rand(1, 2, 4, 2, device="cuda")
    with pytest.raises(RuntimeError, match="tau must be finite"):
        torch.ops.pdcr.dragsaw_loss(rows, phi, rows, phi, 0.0)


def test_deterministic_mode_gives_identical_gradients():
    rows, phi_rows, cols, phi_cols = _inputs(2, 300, 200, 32, 3, 2, dtype=torch.float32, seed=8)
    args = [t.cuda() for t in (rows, phi_rows, cols, phi_cols)]
    grads = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            r, c = args[0].clone().requires_grad_(), args[2].clone().requires_grad_()
            pdcr_ext.dragsaw_loss(r, args[1], c, args[3], reduction="sum").backward()
            grads.append((r.grad, c.grad))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@given(B=st.integers(1, 3), H=st.integers(1, 70), W=st.integers(1, 70), M=st.integers(1, 5),
       N=st.integers(1, 40), seed=st.integers(0, 2**16), area=st.sampled_from(["box", "inside"]))
@settings(max_examples=25)
def test_foreground_ratios_match_cpu(B, H, W, M, N, seed, area):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, M, (B, H, W), generator=g)
    y0 = torch.randint(-10, H + 5, (B, N), generator=g)
    x0 = torch.randint(-10, W + 5, (B, N), generator=g)
    boxes = torch.stack([y0, x0, y0 + torch.randint(0, 20, (B, N), generator=g),
                         x0 + torch.randint(0, 20, (B, N), generator=g)], dim=-1)
    want = pdcr_ext.foreground_ratios(labels, boxes, M, area=area, backend="reference")
    got = pdcr_ext.foreground_ratios(labels.cuda(), boxes.cuda(), M, area=area, backend="native")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-7)


@given(B=st.integers(1, 2), D=st.integers(1, 12), H=st.integers(1, 40), W=st.integers(1, 40),
       M=st.integers(1, 4), N=st.integers(1, 30), seed=st.integers(0, 2**16),
       area=st.sampled_from(["box", "inside"]), ignore=st.sampled_from([None, 255]))
@settings(max_examples=25)
def test_volume_ratios_and_ignore_index_match_cpu(B, D, H, W, M, N, seed, area, ignore):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, M, (B, D, H, W), generator=g)
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) < 0.3] = ignore
    lo = torch.stack([torch.randint(-5, s + 3, (B, N), generator=g) for s in (D, H, W)], -1)
    boxes = torch.cat([lo, lo + torch.randint(0, 12, (B, N, 3), generator=g)], -1)
    want = pdcr_ext.foreground_ratios(labels, boxes, M, area=area, ignore_index=ignore, backend="reference")
    got = pdcr_ext.foreground_ratios(labels.cuda(), boxes.cuda(), M, area=area, ignore_index=ignore,
                                     backend="native")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-7)
    flat = pdcr_ext.foreground_ratios(labels[:, 0].cuda(), boxes[..., [1, 2, 4, 5]].cuda(), M, area=area,
                                      ignore_index=ignore, backend="native")
    want_flat = pdcr_ext.foreground_ratios(labels[:, 0], boxes[..., [1, 2, 4, 5]], M, area=area,
                                           ignore_index=ignore, backend="reference")
    torch.testing.assert_close(flat.cpu(), want_flat, rtol=1e-6, atol=1e-7)


def test_bad_labels_raise_in_python_and_the_op_never_syncs():
    """The public function checks on the host; the CUDA op itself does not read anything back:
    out-of-range labels count for no class and inverted boxes give 0."""
    labels = torch.tensor([[[0, 7]]], device="cuda")
    box = torch.tensor([[[0, 0, 0, 1]]], device="cuda")
    with pytest.raises(ValueError, match="labels must lie"):
        pdcr_ext.foreground_ratios(labels, box, 2)
    with pytest.raises(ValueError, match="boxes must have end >= start"):
        pdcr_ext.foreground_ratios(labels * 0, torch.tensor([[[1, 0, 0, 1]]], device="cuda"), 2)
    got = torch.ops.pdcr.foreground_ratios(labels, box, 2, False)
    torch.testing.assert_close(got.cpu(), torch.tensor([[[0.5, 0.0]]]))
    inverted = torch.ops.pdcr.foreground_ratios(labels * 0, torch.tensor([[[1, 0, 0, 1]]], device="cuda"), 2, False)
    assert torch.equal(inverted.cpu(), torch.zeros(1, 1, 2))


def test_rf_boxes_match_cpu():
    positions = torch.randint(0, 50, (7, 11, 2))
    want = torch.ops.pdcr.rf_boxes(positions, [212, 5], [32, 2], [-90, 1])
    got = torch.ops.pdcr.rf_boxes(positions.cuda(), [212, 5], [32, 2], [-90, 1])
    torch.testing.assert_close(got.cpu(), want)


def test_rf_boxes_in_3d_match_cpu_and_the_reference():
    positions = torch.randint(0, 40, (5, 9, 3))
    want = ref.rf_boxes(positions, (44, 68, 5), (8, 16, 1), (-18, -26, 2))
    got = torch.ops.pdcr.rf_boxes(positions.cuda(), [44, 68, 5], [8, 16, 1], [-18, -26, 2])
    assert got.shape == (5, 9, 6)
    torch.testing.assert_close(got.cpu(), want)
    rf = pdcr_ext.receptive_field([(3, 1, 1), (2, 2, 0)] * 2, spatial_dims=3)
    torch.testing.assert_close(pdcr_ext.rf_boxes(rf, positions.cuda()).cpu(), pdcr_ext.rf_boxes(rf, positions))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_ratio_kernels_take_every_label_dtype_and_large_maps(dtype, dims):
    """Every integer type the kernels dispatch, ignore_index, rows wider than one warp's scan
    chunk (W > 32) and, in 3-D, a depth scan over many slices."""
    g = torch.Generator().manual_seed(11)
    shape = (2, 97, 75) if dims == 2 else (2, 19, 41, 37)
    labels = torch.randint(0, 3, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.2] = 100
    labels = labels.to(dtype)
    lo = torch.stack([torch.randint(-6, s + 2, (2, 300), generator=g) for s in shape[1:]], -1)
    boxes = torch.cat([lo, lo + torch.randint(0, 25, (2, 300, dims), generator=g)], -1)
    for area in ("box", "inside"):
        want = pdcr_ext.foreground_ratios(labels.long(), boxes, 3, area=area, ignore_index=100, backend="reference")
        got = pdcr_ext.foreground_ratios(labels.cuda(), boxes.cuda(), 3, area=area, ignore_index=100,
                                         backend="native")
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-7)


def test_opcheck_on_cuda():
    rows, phi_rows, cols, phi_cols = _inputs(2, 21, 13, 12, 3, 2, dtype=torch.float32, seed=6)
    args = [t.cuda() for t in (rows, phi_rows, cols, phi_cols)]
    torch.library.opcheck(torch.ops.pdcr.dragsaw_loss.default, (*args, 0.5))
    args[0].requires_grad_()
    args[2].requires_grad_()
    torch.library.opcheck(torch.ops.pdcr.dragsaw_loss.default, (*args, 0.5))
    loss, lse = torch.ops.pdcr.dragsaw_loss(*[a.detach() for a in args], 0.5)
    torch.library.opcheck(torch.ops.pdcr.dragsaw_loss_backward.default,
                          (torch.randn_like(loss), *[a.detach() for a in args], lse, 0.5))
    labels = torch.randint(0, 3, (2, 9, 14), device="cuda")
    boxes = torch.tensor([[[0, 0, 3, 3], [-2, 5, 8, 20]]] * 2, device="cuda")
    torch.library.opcheck(torch.ops.pdcr.foreground_ratios.default, (labels, boxes, 3, True))
    torch.library.opcheck(torch.ops.pdcr.rf_boxes.default,
                          (torch.randint(0, 9, (5, 2), device="cuda"), [3, 3], [2, 2], [-1, -1]))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_uafr_matches_reference(dtype, dims):
    g = torch.Generator().manual_seed(9)
    spatial = (17, 13) if dims == 2 else (5, 9, 7)
    q = torch.randn(2, 5, *spatial, generator=g).to(dtype)
    z = (3 * torch.randn(2, 3, *spatial, generator=g)).to(dtype)
    qc, zc = q.cuda().requires_grad_(), z.cuda().requires_grad_()
    out, u = pdcr_ext.uafr_reweight(qc, zc, backend="native")
    q64, z64 = q.double().requires_grad_(), z.double().requires_grad_()
    want, want_u = ref.uafr_reweight(q64, z64)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (out.double() * weights.cuda()).sum().backward()
    (want * weights).sum().backward()
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(dtype, 1e-5)
    assert out.dtype == dtype and u.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(out.cpu(), want) < tol and rel_err(u.cpu(), want_u) < 1e-5
    assert rel_err(qc.grad.cpu(), q64.grad) < tol and rel_err(zc.grad.cpu(), z64.grad) < 5 * tol


def test_plugin_trains_on_cuda():
    from models import EncoderDecoder

    model = EncoderDecoder().cuda()
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[(0, 1)], uafr_layers=["enc2"],
                             num_classes=2, samples=(32, 16), example_input=torch.zeros(2, 3, 32, 32, device="cuda"))
    x = torch.randn(4, 3, 32, 32, device="cuda")
    y = (x[:, 0] > 0).long()
    loss = torch.nn.functional.cross_entropy(model(x), y) + handle.loss(y)
    loss.backward()
    assert torch.isfinite(loss) and model.enc1[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Wide features: every route (pdcr_ext/_cuda_route.py) on this device, at the layout's limits


def _limit():
    return _cuda_route.optin_shared_memory(torch.cuda.current_device())


def _max_channels(dtype_name, kernel):
    return _cuda_layout.max_channels(_limit(), dtype_name, kernel, 3, 2)


# (case, dtype, (layout dtype, kernel whose limit, channels added), N, K, cross, expected path)
WIDE_CASES = [
    ("atomic-at-limit", torch.float32, ("float32", "atomic", 0), 96, 80, True, "kernel"),
    ("split-past-atomic-limit", torch.float32, ("float32", "atomic", 16), 96, 80, True, "kernel"),
    ("split-at-limit", torch.float32, ("float32", "split", 0), 40, 30, False, "kernel"),
    ("basis-cross", torch.float32, ("float32", "split", 16), 64, 48, True, "basis"),
    ("basis-single", torch.float32, ("float32", "split", 16), 64, 64, False, "basis"),
    ("tiled", torch.float32, ("float32", "split", 16), None, None, True, "tiled"),
    ("bf16-split-past-atomic-limit", torch.bfloat16, ("bfloat16", "atomic", 16), 96, 80, True, "kernel"),
    ("bf16-basis", torch.bfloat16, ("bfloat16", "split", 16), 64, 48, True, "basis"),
    ("fp16-basis", torch.float16, ("float32", "split", 16), 64, 48, True, "basis"),
]


@pytest.mark.native_raises  # a layout limit set too high would fail the launch in C++
@pytest.mark.parametrize("case,dtype,width,N,K,cross,path", WIDE_CASES, ids=[c[0] for c in WIDE_CASES])
def test_wide_features_take_every_route_and_match_the_reference(case, dtype, width, N, K, cross, path):
    layout_dtype, kernel, extra = width
    C = _max_channels(layout_dtype, kernel) + extra
    if N is None:  # more vectors than channels: no basis is narrower
        N = K = C // 2 + 8
    rows, phi_rows, cols, phi_cols = _inputs(1, N, K, C, 3, 2, dtype=dtype, seed=12, cross=cross)
    r = rows.cuda()
    c = cols.cuda() if cross else r
    assert _cuda_route.route_for(r, phi_rows.cuda(), c).path == path
    (loss, gr, gc), (rl, rgr, rgc) = _run(rows, phi_rows, cols, phi_cols, 0.5, "cuda")
    loss_tol, grad_tol = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 1e-1),
                          torch.float16: (1e-5, 2e-3)}[dtype]
    assert loss.dtype == torch.float32 and gr.dtype == dtype
    assert rel_err(loss, rl) < loss_tol and rel_err(gr, rgr) < grad_tol
    if cross:
        assert rel_err(gc, rgc) < grad_tol


@pytest.mark.native_raises  # a layout limit set too high would fail the launch in C++
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_kernel_runs_at_its_layout_limit(dtype):
    """The op alone (no gradient) at the largest C the layout gives the forward."""
    name = _cuda_route.DTYPE_NAMES[dtype]
    C = _max_channels(name, "forward")
    rows, phi_rows, _, _ = _inputs(1, 40, 40, C, 3, 2, dtype=dtype, seed=13, cross=False)
    loss, _ = torch.ops.pdcr.dragsaw_loss(rows.cuda(), phi_rows.cuda(), rows.cuda(), phi_rows.cuda(), 0.5)
    want = ref.dragsaw_row_loss(rows.double(), phi_rows.double(), rows.double(), phi_rows.double(), 0.5)
    assert rel_err(loss.cpu(), want) < (1e-5 if dtype == torch.float32 else 2e-2)


def test_direct_op_call_refuses_a_width_without_backward_in_the_forward():
    C = _max_channels("float32", "split") + 16  # fits the forward, no backward
    rows = torch.randn(1, 8, C, device="cuda", requires_grad=True)
    phi = torch.rand(1, 3, 8, 2, device="cuda")
    with pytest.raises(ValueError, match="too many for the CUDA backward kernels"):
        torch.ops.pdcr.dragsaw_loss(rows, phi, rows, phi, 0.5)
    loss = pdcr_ext.dragsaw_loss(rows, phi)  # the public function routes it
    loss.backward()
    assert torch.isfinite(rows.grad).all() and rows.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# float16 gradients at reduction="mean": the upstream gradient of every row is about 5e-9


def _mean_loss_float16_case():
    g = torch.Generator().manual_seed(14)
    B, N, C = 4, 4096, 64
    rows = torch.randn(B, N, C, generator=g).half().cuda()
    phi = random_ratios(B, 3, N, 2, generator=g).float().cuda()
    return rows, phi


def _float32_gradient(rows16, phi):
    r = rows16.detach().float().requires_grad_()
    pdcr_ext.dragsaw_loss(r, phi, reduction="mean").backward()
    return r.grad


def _assert_float16_gradient(got, want32):
    """got (float16) equals the float32 gradient rounded to float16, within two float16 subnormal
    steps. The gradients here are about 2e-8: most lie below float16's range (a scaled loss, as
    torch.amp.GradScaler makes, is how float16 training keeps them); the ones that do not must
    come out, where a float16 G tile gave zeros everywhere."""
    want = want32.half()
    assert got.dtype == torch.float16
    assert (want != 0).float().mean() > 0.2  # the premise: a good part is representable
    assert (got != 0).sum() >= 0.95 * (want != 0).sum()
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=2 * 2.0**-24)


def test_float16_mean_reduction_gradients_do_not_underflow():
    """The public function (float16 routed through the float32 kernels until its own have run on
    a GPU)."""
    rows, phi = _mean_loss_float16_case()
    r = rows.clone().requires_grad_()
    pdcr_ext.dragsaw_loss(r, phi, reduction="mean").backward()
    _assert_float16_gradient(r.grad, _float32_gradient(rows, phi))


def test_float16_kernel_gradients_do_not_underflow():
    """The float16 kernels themselves (the op, bypassing the routing): the forward on float16
    tensor cores, the backward with G in float32. When this passes on a GPU,
    _cuda_route.FLOAT16_KERNELS_RUN_ON_A_GPU may become True."""
    rows, phi = _mean_loss_float16_case()
    r = rows.clone().requires_grad_()
    per_row, _ = torch.ops.pdcr.dragsaw_loss(r, phi, r, phi, 0.5)
    (per_row.sum() / (per_row.numel() * rows.shape[1])).backward()
    # against the float32 kernels on the same float16 inputs; the float16 forward rounds the
    # normalised vectors to float16, a relative 1e-3 here, far below one float16 step
    _assert_float16_gradient(r.grad, _float32_gradient(rows, phi))


def test_float16_kernel_gradients_do_not_overflow_with_sum_reduction():
    """G_ij = g (K p_ij (1 - w_ij) - w_ij) / tau reaches K / tau where one column takes all of a
    row's push weight: here 16384 / 0.05 = 3.3e5, past float16's 65504, while the gradients
    themselves stay far below it. With G in float32 they come out finite and right."""
    g = torch.Generator().manual_seed(15)
    N, K, C, tau = 1024, 16384, 32, 0.05
    base = torch.randn(1, 1, C, generator=g)
    rows = (base + 0.05 * torch.randn(1, N, C, generator=g)).half().cuda()  # nearly parallel
    cols = (base + 0.05 * torch.randn(1, K, C, generator=g)).half().cuda()
    phi_rows = torch.tensor([0.0, 1.0]).expand(1, 1, N, 2).contiguous().cuda()
    phi_cols = torch.tensor([0.0, 1.0]).expand(1, 1, K, 2).contiguous().cuda()
    phi_cols[0, 0, 0] = torch.tensor([1.0, 0.0])  # column 0: the only unlike one (w = 0)
    r = rows.clone().requires_grad_()
    per_row, lse = torch.ops.pdcr.dragsaw_loss(r, phi_rows, cols, phi_cols, tau)
    per_row.sum().backward()
    # the premise: column 0 takes nearly all the push weight, so G_i0 ~ K / tau > 65504
    s0 = torch.nn.functional.cosine_similarity(rows.float()[0], cols.float()[0, :1], dim=-1)
    p0 = torch.exp(s0 / tau - lse[0, 0])
    assert float((K * p0 / tau).min()) > 65504
    r32 = rows.detach().float().requires_grad_()
    pdcr_ext.dragsaw_loss(r32, phi_rows, cols.float(), phi_cols, tau=tau, reduction="sum").backward()
    assert torch.isfinite(r32.grad).all() and float(r32.grad.abs().max()) < 65504
    assert torch.isfinite(r.grad).all()
    assert rel_err(r.grad.float(), r32.grad) < 2e-2


# ---------------------------------------------------------------------------------------------
# CUDA graphs


def test_cuda_graph_capture_of_pdcr_loss():
    """PDCRLoss with validate=False has no host synchronisation: forward and backward are captured
    in one CUDA graph, and a replay on new inputs gives the eager values."""
    torch.manual_seed(16)
    criterion = pdcr_ext.PDCRLoss(2, samples=(64, 32), cross_layers=[(0, 1)], in_channels=(16, 32),
                                  validate=False).cuda()
    feats = [torch.randn(2, 16, 32, 32, device="cuda", requires_grad=True),
             torch.randn(2, 32, 16, 16, device="cuda", requires_grad=True)]
    labels = torch.randint(0, 2, (2, 128, 128), device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: kernels chosen, geometry cached
        for _ in range(3):
            torch.autograd.grad(criterion(feats, labels), feats)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = criterion(feats, labels)
        static_grads = torch.autograd.grad(static_loss, feats)
    with torch.no_grad():
        for f in feats:
            f.copy_(torch.randn_like(f))
        labels.copy_(torch.randint(0, 2, labels.shape, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    eager_loss = criterion(feats, labels)
    eager_grads = torch.autograd.grad(eager_loss, feats)
    torch.testing.assert_close(static_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(static_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
