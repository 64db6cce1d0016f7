"""Foreground ratios (eq. 4): native integral image against the reference's direct count."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pdcr_ext
import pdcr_reference as ref
from conftest import requires_native

pytestmark = requires_native


@st.composite
def label_maps_and_boxes(draw):
    B = draw(st.integers(0, 3))
    H, W = draw(st.integers(1, 24)), draw(st.integers(1, 24))  # square and non-square
    M = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["random", "one_class", "missing_class"]))
    labels = torch.randint(0, M, (B, H, W), generator=g)
    if kind == "one_class":
        labels.fill_(M - 1)
    elif kind == "missing_class" and M > 2:
        labels[labels == 1] = 0  # class 1 absent: the others must keep their slots
    N = draw(st.integers(0, 12))
    y0 = torch.randint(-8, H + 4, (B, N), generator=g)
    x0 = torch.randint(-8, W + 4, (B, N), generator=g)
    hs = torch.randint(1, 12, (B, N), generator=g)
    ws = torch.randint(1, 12, (B, N), generator=g)
    boxes = torch.stack([y0, x0, y0 + hs - 1, x0 + ws - 1], dim=-1)
    dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    return labels.to(dtype), boxes, M


@given(case=label_maps_and_boxes(), area=st.sampled_from(["box", "inside"]))
def test_native_matches_reference(case, area):
    labels, boxes, M = case
    got = pdcr_ext.foreground_ratios(labels, boxes, M, area=area, backend="native")
    want = pdcr_ext.foreground_ratios(labels, boxes, M, area=area, backend="reference")
    assert got.shape == (labels.shape[0], boxes.shape[1], M) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert (got >= 0).all() and (got.sum(-1) <= 1 + 1e-6).all()


def test_shared_boxes_broadcast_over_the_batch():
    labels = torch.randint(0, 3, (4, 9, 13))
    boxes = torch.tensor([[0, 0, 4, 4], [3, 8, 12, 14], [-2, -2, 1, 1]])
    shared = pdcr_ext.foreground_ratios(labels, boxes, 3)
    per_image = pdcr_ext.foreground_ratios(labels, boxes.expand(4, 3, 4), 3)
    torch.testing.assert_close(shared, per_image)


def test_boxes_entirely_outside_the_image_are_all_zero():
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    boxes = torch.tensor([[10, 10, 12, 12], [-5, 0, -1, 3]])
    for area in ("box", "inside"):
        assert torch.equal(pdcr_ext.foreground_ratios(labels, boxes, 2, area=area),
                           torch.zeros(1, 2, 2))


def test_large_box_costs_the_same_and_counts_everything():
    labels = torch.randint(0, 2, (2, 64, 48))
    boxes = torch.tensor([[-100, -100, 1000, 1000]])
    inside = pdcr_ext.foreground_ratios(labels, boxes, 2, area="inside")
    frac_one = labels.float().mean(dim=(1, 2))
    torch.testing.assert_close(inside[:, 0, 1], frac_one)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_label_out_of_range_is_an_error(backend):
    labels = torch.tensor([[[0, 3]]])
    with pytest.raises(ValueError, match="labels"):
        pdcr_ext.foreground_ratios(labels, torch.tensor([[0, 0, 0, 0]]), 3, backend=backend)
    with pytest.raises(ValueError, match="labels"):
        pdcr_ext.foreground_ratios(-labels, torch.tensor([[0, 0, 0, 0]]), 3, backend=backend)
