"""CUDA kernels against the reference. Marked `cuda`: skipped where no GPU (or no CUDA build) is
present; run on a GPU machine by `make gpu-check`."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pdcr_ext
import pdcr_reference as ref
from helpers import assert_float32_close, random_features, random_ratios, rel_err

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


def test_too_many_patch_sizes_is_an_error():
    rows = torch.randn(1, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="at most 8 patch sizes"):
        pdcr_ext.dragsaw_loss(rows, torch.rand(1, 9, 4, 2, device="cuda"))
    with pytest.raises(RuntimeError, match="at most 8 patch sizes"):
        phi = torch.rand(1, 9, 4, 2, device="cuda")
        torch.ops.pdcr.dragsaw_loss(rows, phi, rows, phi, 0.5)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_uafr_matches_reference(dtype):
    import pdcr_reference as ref

    g = torch.Generator().manual_seed(9)
    q = torch.randn(2, 5, 17, 13, generator=g).to(dtype)
    z = (3 * torch.randn(2, 3, 17, 13, generator=g)).to(dtype)
    qc, zc = q.cuda().requires_grad_(), z.cuda().requires_grad_()
    out, u = pdcr_ext.uafr_reweight(qc, zc, backend="native")
    q64, z64 = q.double().requires_grad_(), z.double().requires_grad_()
    want, want_u = ref.uafr_reweight(q64, z64)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (out.double() * weights.cuda()).sum().backward()
    (want * weights).sum().backward()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
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
