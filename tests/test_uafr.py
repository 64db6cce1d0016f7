"""UAFR (eqs. 13-15): the fused native re-weighting against the eager formula, and the module."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pdcr_ext
import pdcr_reference as ref
from conftest import requires_native


def _eager(features, logits):
    """The paper's formulas, spelled out: A = softmax, U = -sum a log2 a / log2 M, Q (1 + (1 - U))."""
    a = torch.softmax(logits, dim=1)
    u = -(a * torch.log2(a)).sum(1) / math.log2(logits.shape[1])
    return features * (1 + (1 - u)).unsqueeze(1), u


def test_reference_is_the_paper_formula():
    q, z = torch.randn(2, 5, 6, 7, dtype=torch.float64), torch.randn(2, 3, 6, 7, dtype=torch.float64)
    out, u = ref.uafr_reweight(q, z)
    want_out, want_u = _eager(q, z)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(u, want_u)
    assert (u >= 0).all() and (u <= 1 + 1e-12).all()


@requires_native
@given(B=st.integers(0, 3), C=st.integers(1, 9), M=st.integers(2, 6), H=st.integers(1, 13),
       W=st.integers(1, 13), scale=st.sampled_from([0.1, 1.0, 30.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_native_matches_reference(B, C, M, H, W, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, C, H, W, dtype=dtype, generator=g).requires_grad_()
    z = (scale * torch.randn(B, M, H, W, dtype=dtype, generator=g)).requires_grad_()
    out, u = pdcr_ext.uafr_reweight(q, z, backend="native")
    q2, z2 = q.detach().double().requires_grad_(), z.detach().double().requires_grad_()
    want, want_u = ref.uafr_reweight(q2, z2)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.double(), want, **tol)
    torch.testing.assert_close(u.double(), want_u, **tol)
    seed_grad = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (out.double() * seed_grad).sum().backward()
    (want * seed_grad).sum().backward()
    torch.testing.assert_close(q.grad.double(), q2.grad, **tol)
    torch.testing.assert_close(z.grad.double(), z2.grad, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


@requires_native
def test_gradcheck_and_opcheck():
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pdcr_ext.uafr_reweight(a, b, backend="native")[0], (q, z))
    torch.library.opcheck(torch.ops.pdcr.uafr_reweight.default, (q, z))
    torch.library.opcheck(torch.ops.pdcr.uafr_reweight.default, (q.detach().float(), z.detach().float()))
    torch.library.opcheck(torch.ops.pdcr.uafr_reweight_backward.default,
                          (torch.randn_like(q), q.detach(), z.detach()))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_uniform_maps_leave_features_unchanged(backend):
    q = torch.randn(2, 4, 5, 5)
    out, u = pdcr_ext.uafr_reweight(q, torch.zeros(2, 3, 5, 5), backend=backend)
    torch.testing.assert_close(u, torch.ones(2, 5, 5))
    torch.testing.assert_close(out, q)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_confident_maps_double_features_without_nan(backend):
    q = torch.randn(1, 2, 3, 3)
    z = torch.zeros(1, 2, 3, 3)
    z[:, 0] = 1e4  # softmax underflows to exactly 0 for the other map
    out, u = pdcr_ext.uafr_reweight(q, z, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(u).all()
    torch.testing.assert_close(out, 2 * q)


@requires_native
def test_half_precision_inputs():
    q, z = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    for dtype in (torch.float16, torch.bfloat16):
        out, u = pdcr_ext.uafr_reweight(q.to(dtype), z.to(dtype), backend="native")
        want, want_u = ref.uafr_reweight(q.to(dtype).double(), z.to(dtype).double())
        assert out.dtype == dtype and u.dtype == torch.float32
        torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(u.double(), want_u, rtol=1e-5, atol=1e-5)


def test_module_shapes_parameters_and_uncertainty():
    torch.manual_seed(0)
    module = pdcr_ext.UAFR(16, num_maps=3, hidden_channels=8)
    x = torch.randn(2, 16, 10, 12)
    y = module(x)
    assert y.shape == x.shape and module.uncertainty.shape == (2, 10, 12)
    assert module.uncertainty.requires_grad is False
    # F = 3x3 conv 16 -> 8 (no bias), BN(8), 1x1 conv 8 -> 3 (with bias)
    assert sum(p.numel() for p in module.parameters()) == 16 * 8 * 9 + 2 * 8 + 8 * 3 + 3
    y.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    eager = pdcr_ext.UAFR(16, num_maps=3, hidden_channels=8, backend="reference")
    eager.load_state_dict(module.state_dict())
    torch.testing.assert_close(eager(x), module(x))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_maps"):
        pdcr_ext.UAFR(8, num_maps=1)
    with pytest.raises(ValueError, match="kernel_size"):
        pdcr_ext.UAFR(8, kernel_size=4)
    with pytest.raises(ValueError, match="logits must have shape"):
        pdcr_ext.uafr_reweight(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 4, 3))
    with pytest.raises(ValueError, match="at least 2 maps"):
        pdcr_ext.uafr_reweight(torch.randn(1, 2, 3, 3), torch.randn(1, 1, 3, 3))
    with pytest.raises(ValueError, match="features must have shape"):
        pdcr_ext.uafr_reweight(torch.randn(2, 3, 3), torch.randn(1, 2, 3, 3))
