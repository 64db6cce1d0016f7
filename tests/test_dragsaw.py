"""Native dragsaw loss against the reference: values, gradients, edge cases, every CPU ISA."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pdcr_ext
import pdcr_reference as ref
from conftest import requires_native
from helpers import assert_float32_close, random_features, random_ratios, reference_float32, rel_err

pytestmark = requires_native


def _inputs(B, N, K, C, P, M, *, dtype=torch.float64, seed=0, cross=True, noncontiguous=False,
            zero_rows=()):
    g = torch.Generator().manual_seed(seed)
    rows = random_features(B, N, C, dtype=dtype, generator=g, noncontiguous=noncontiguous,
                           zero_rows=zero_rows)
    phi_rows = random_ratios(B, P, N, M, generator=g, noncontiguous=noncontiguous)
    if not cross:
        return rows, phi_rows, None, None
    cols = random_features(B, K, C, dtype=dtype, generator=g, noncontiguous=noncontiguous)
    return rows, phi_rows, cols, random_ratios(B, P, K, M, generator=g)


def _both_backends(rows, phi_rows, cols, phi_cols, *, tau, reduction="none", weights=None):
    """Loss and gradients from both backends, the reference in float64."""
    out = {}
    for backend in ("native", "reference"):
        cast = (lambda t: t.detach().double()) if backend == "reference" else (lambda t: t.detach())
        r = cast(rows).clone().requires_grad_()
        c = None if cols is None else cast(cols).clone().requires_grad_()
        p_rows = cast(phi_rows)
        p_cols = None if phi_cols is None else cast(phi_cols)
        loss = pdcr_ext.dragsaw_loss(r, p_rows, c, p_cols, tau=tau, reduction=reduction,
                                     backend=backend)
        seed = torch.ones_like(loss, dtype=torch.float64) if weights is None else weights
        (loss.double() * seed).sum().backward()
        out[backend] = (loss.detach(), r.grad, None if c is None else c.grad)
    return out["native"], out["reference"]


@pytest.mark.parametrize("cross", [True, False])
def test_gradcheck_float64(cross, cpu_isa):
    rows, phi_rows, cols, phi_cols = _inputs(2, 9, 7, 5, 3, 3, cross=cross)
    for isa in cpu_isa.available_cpu_isas():
        cpu_isa.set_cpu_isa(isa)
        if cross:
            fn = lambda r, c: pdcr_ext.dragsaw_loss(r, phi_rows, c, phi_cols, tau=0.3, reduction="none")
            args = (rows.requires_grad_(), cols.requires_grad_())
        else:
            fn = lambda r: pdcr_ext.dragsaw_loss(r, phi_rows, tau=0.3, reduction="none")
            args = (rows.requires_grad_(),)
        assert torch.autograd.gradcheck(fn, args), isa


def test_gradcheck_across_several_column_and_row_tiles():
    # N, K beyond one row tile (16) and one column tile (256) exercise the streaming paths.
    rows, phi_rows, cols, phi_cols = _inputs(1, 37, 300, 3, 2, 2, seed=3)
    fn = lambda r, c: pdcr_ext.dragsaw_loss(r, phi_rows, c, phi_cols, tau=0.5, reduction="sum")
    assert torch.autograd.gradcheck(fn, (rows.requires_grad_(), cols.requires_grad_()), atol=1e-5)


@given(
    B=st.integers(0, 3), N=st.integers(1, 40), K=st.integers(1, 45), C=st.integers(1, 40),
    P=st.integers(1, 4), M=st.integers(2, 5), tau=st.floats(0.05, 2.0),
    reduction=st.sampled_from(["none", "sum", "mean"]), cross=st.booleans(),
    noncontiguous=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_native_matches_reference(B, N, K, C, P, M, tau, reduction, cross, noncontiguous, dtype, seed):
    rows, phi_rows, cols, phi_cols = _inputs(B, N, K, C, P, M, dtype=dtype, seed=seed, cross=cross,
                                             noncontiguous=noncontiguous)
    (loss, grad_r, grad_c), (ref_loss, ref_grad_r, ref_grad_c) = _both_backends(
        rows, phi_rows, cols, phi_cols, tau=tau, reduction=reduction)
    assert loss.dtype == dtype and loss.shape == ref_loss.shape
    if dtype == torch.float64:
        for got, want in ((loss, ref_loss), (grad_r, ref_grad_r), (grad_c, ref_grad_c)):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        return
    same_precision = reference_float32(rows, phi_rows, cols, phi_cols, tau, reduction)
    assert_float32_close((loss, grad_r, grad_c), (ref_loss, ref_grad_r, ref_grad_c), same_precision,
                         rows, cols, tau)


@pytest.mark.parametrize("shape", [(2, 33, 20, 17), (3, 5, 70, 48), (1, 260, 257, 9)])
def test_every_cpu_isa_matches_reference(shape, cpu_isa):
    B, N, K, C = shape
    rows, phi_rows, cols, phi_cols = _inputs(B, N, K, C, 3, 2, dtype=torch.float32, seed=7)
    weights = torch.randn(B, 3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for isa in cpu_isa.available_cpu_isas():
        cpu_isa.set_cpu_isa(isa)
        (loss, gr, gc), (rl, rgr, rgc) = _both_backends(rows, phi_rows, cols, phi_cols, tau=0.4,
                                                        weights=weights)
        assert rel_err(loss, rl) < 1e-5, isa
        assert rel_err(gr, rgr) < 1e-4, isa
        assert rel_err(gc, rgc) < 1e-4, isa


def test_tiny_tau_is_finite_and_matches_float64():
    rows, phi_rows, cols, phi_cols = _inputs(2, 24, 31, 8, 3, 2, dtype=torch.float32, seed=11)
    (loss, gr, gc), (rl, rgr, rgc) = _both_backends(rows, phi_rows, cols, phi_cols, tau=1e-3)
    assert torch.isfinite(loss).all() and torch.isfinite(gr).all() and torch.isfinite(gc).all()
    assert rel_err(loss, rl) < 1e-5
    assert rel_err(gr, rgr) < 1e-3 and rel_err(gc, rgc) < 1e-3


def test_zero_feature_vectors_give_no_nan():
    rows, phi_rows, cols, phi_cols = _inputs(2, 6, 5, 4, 2, 2, zero_rows=[(0, 0), (1, 3)])
    cols[1, 2] = 0
    (loss, gr, gc), (rl, rgr, rgc) = _both_backends(rows, phi_rows, cols, phi_cols, tau=0.5)
    for t in (loss, gr, gc):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(loss, rl)
    torch.testing.assert_close(gr, rgr)
    torch.testing.assert_close(gc, rgc)


def test_one_class_masks_give_affinity_one_and_finite_loss():
    # every patch entirely of class 0: w = 1, the pull term is sum_j s_ij and nothing is pushed
    B, N, P, M = 2, 7, 3, 2
    rows = torch.randn(B, N, 5, dtype=torch.float64)
    phi = torch.zeros(B, P, N, M, dtype=torch.float64)
    phi[..., 0] = 1
    loss = pdcr_ext.dragsaw_loss(rows, phi, tau=0.5, reduction="none")
    s = ref.cosine_similarity(rows, rows)
    want = (-s / 0.5).sum(-1)[:, None, :] + N * torch.log(torch.tensor(float(N)))
    torch.testing.assert_close(loss, want.expand_as(loss))


def test_single_row_and_empty_batch():
    rows, phi_rows, _, _ = _inputs(1, 1, 1, 6, 2, 3, cross=False)
    (loss, gr, _), (rl, rgr, _) = _both_backends(rows, phi_rows, None, None, tau=0.5)
    torch.testing.assert_close(loss, rl)
    torch.testing.assert_close(gr, rgr)

    rows = torch.randn(0, 4, 3, requires_grad=True)
    phi = torch.rand(0, 2, 4, 2)
    for reduction, shape in (("none", (0, 2, 4)), ("sum", ()), ("mean", ())):
        loss = pdcr_ext.dragsaw_loss(rows, phi, reduction=reduction)
        assert loss.shape == shape and (loss.numel() == 0 or loss.item() == 0)
    pdcr_ext.dragsaw_loss(rows, phi, reduction="sum").backward()
    assert rows.grad.shape == rows.shape


def test_half_precision_inputs_accumulate_in_float32():
    rows, phi_rows, cols, phi_cols = _inputs(2, 20, 18, 16, 3, 2, dtype=torch.float32, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        r = rows.to(dtype).requires_grad_()
        c = cols.to(dtype).requires_grad_()
        loss = pdcr_ext.dragsaw_loss(r, phi_rows, c, phi_cols, tau=0.5, reduction="none")
        assert loss.dtype == torch.float32
        loss.sum().backward()
        assert r.grad.dtype == dtype and c.grad.dtype == dtype
        want = ref.dragsaw_row_loss(r.detach().double(), phi_rows.double(), c.detach().double(),
                                    phi_cols.double(), 0.5)
        assert rel_err(loss, want) < 1e-5  # the rounding is in the inputs, not the accumulation


def test_mean_divides_by_every_pair():
    rows, phi_rows, cols, phi_cols = _inputs(2, 5, 7, 3, 3, 2)
    total = pdcr_ext.dragsaw_loss(rows, phi_rows, cols, phi_cols, reduction="sum")
    mean = pdcr_ext.dragsaw_loss(rows, phi_rows, cols, phi_cols, reduction="mean")
    torch.testing.assert_close(mean, total / (2 * 3 * 5 * 7))


def test_per_image_losses_do_not_depend_on_the_batch():
    rows, phi_rows, _, _ = _inputs(4, 12, 12, 6, 3, 2, cross=False)
    batch = pdcr_ext.dragsaw_loss(rows, phi_rows, reduction="none")
    for b in range(4):
        alone = pdcr_ext.dragsaw_loss(rows[b:b + 1], phi_rows[b:b + 1], reduction="none")
        torch.testing.assert_close(batch[b:b + 1], alone)


def test_pull_and_push_directions():
    # A pair of alike patches (w = 1) is pulled: the loss falls as their features align.
    # A pair of unlike patches (w = 0) is pushed: the loss falls as their features part.
    phi = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)  # (1, 1, 2, 2)
    unlike = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    aligned = torch.tensor([[[1.0, 0.0], [1.0, 0.1]]], dtype=torch.float64)
    apart = torch.tensor([[[1.0, 0.0], [-1.0, 0.1]]], dtype=torch.float64)
    loss = lambda v, p: float(pdcr_ext.dragsaw_loss(v, p, tau=0.5, reduction="sum"))
    assert loss(aligned, phi) < loss(apart, phi)
    assert loss(apart, unlike) < loss(aligned, unlike)
