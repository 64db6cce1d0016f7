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


def oracle_ratios(labels, boxes, M, area, ignore_index):
    """The plainest count: slice every box out of the image, one box and class at a time."""
    B, N = boxes.shape[:2]
    dims = labels.dim() - 1
    out = torch.zeros(B, N, M, dtype=torch.float64)
    for b in range(B):
        for n in range(N):
            lo, hi = boxes[b, n, :dims].tolist(), boxes[b, n, dims:].tolist()
            window = labels[b][tuple(slice(max(l, 0), max(h + 1, 0)) for l, h in zip(lo, hi))]
            full = 1
            for l, h in zip(lo, hi):
                full *= h - l + 1
            valid = window.numel() - (int((window == ignore_index).sum()) if ignore_index is not None else 0)
            area_value = full if area == "box" else valid
            for m in range(M):
                out[b, n, m] = int((window == m).sum()) / area_value if area_value > 0 else 0.0
    return out.float()


@st.composite
def maps_with_ignored_pixels(draw, dims=2):
    B = draw(st.integers(1, 2))
    shape = tuple(draw(st.integers(1, 12 if dims == 2 else 7)) for _ in range(dims))
    M = draw(st.integers(1, 4))
    ignore_index = draw(st.sampled_from([255, -1, M, -100]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    labels = torch.randint(0, M, (B,) + shape, generator=g)
    labels[torch.rand(labels.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    N = draw(st.integers(1, 8))
    lo = torch.stack([torch.randint(-6, s + 3, (B, N), generator=g) for s in shape], -1)
    hi = lo + torch.randint(0, 9, (B, N, dims), generator=g)
    return labels, torch.cat([lo, hi], -1), M, ignore_index


@given(case=maps_with_ignored_pixels(), area=st.sampled_from(["box", "inside"]),
       backend=st.sampled_from(["native", "reference"]))
def test_ignore_index_against_a_direct_count(case, area, backend):
    """Ignored pixels belong to no class, like pixels outside the image: counted in the full box
    area, left out of the inside area."""
    labels, boxes, M, ignore_index = case
    got = pdcr_ext.foreground_ratios(labels, boxes, M, area=area, ignore_index=ignore_index, backend=backend)
    torch.testing.assert_close(got, oracle_ratios(labels, boxes, M, area, ignore_index), rtol=1e-6, atol=1e-7)


@given(case=maps_with_ignored_pixels(dims=3), area=st.sampled_from(["box", "inside"]),
       backend=st.sampled_from(["native", "reference"]))
def test_volumes_against_a_direct_count(case, area, backend):
    """3-D labels (B, D, H, W) and boxes (z0, y0, x0, z1, y1, x1): an integral volume."""
    labels, boxes, M, ignore_index = case
    got = pdcr_ext.foreground_ratios(labels, boxes, M, area=area, ignore_index=ignore_index, backend=backend)
    torch.testing.assert_close(got, oracle_ratios(labels, boxes, M, area, ignore_index), rtol=1e-6, atol=1e-7)


def test_ignored_pixels_lower_the_sum_with_the_box_area_only():
    labels = torch.tensor([[[0, 1], [255, 255]]])
    box = torch.tensor([[0, 0, 1, 1]])
    torch.testing.assert_close(pdcr_ext.foreground_ratios(labels, box, 2, ignore_index=255),
                               torch.tensor([[[0.25, 0.25]]]))
    torch.testing.assert_close(pdcr_ext.foreground_ratios(labels, box, 2, area="inside", ignore_index=255),
                               torch.tensor([[[0.5, 0.5]]]))


def test_monai_label_shape_gives_the_same_ratios():
    labels = torch.randint(0, 3, (2, 9, 7))
    boxes = torch.tensor([[0, 0, 4, 4], [3, 2, 8, 9]])
    torch.testing.assert_close(pdcr_ext.foreground_ratios(labels[:, None], boxes, 3),
                               pdcr_ext.foreground_ratios(labels, boxes, 3))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_other_out_of_range_labels_are_still_errors(backend):
    labels = torch.tensor([[[0, 255, 3]]])
    box = torch.tensor([[0, 0, 0, 2]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=2\) or equal ignore_index=255, found 3"):
        pdcr_ext.foreground_ratios(labels, box, 2, ignore_index=255, backend=backend)
    with pytest.raises(ValueError, match="pass ignore_index"):
        pdcr_ext.foreground_ratios(labels, box, 2, backend=backend)
    with pytest.raises(ValueError, match="ignore_index=1 is a class index"):
        pdcr_ext.foreground_ratios(labels, box, 2, ignore_index=1, backend=backend)


def test_the_native_op_checks_labels_on_the_cpu_with_ignore_index():
    labels = torch.tensor([[[0, 255, 3]]])
    box = torch.tensor([[[0, 0, 0, 2]]])
    with pytest.raises(RuntimeError, match=r"or equal ignore_index=255, found 3"):
        torch.ops.pdcr.foreground_ratios(labels, box, 2, False, 255)
    ok = torch.ops.pdcr.foreground_ratios(labels.clamp_max(255) * (labels != 3), box, 2, True, 255)
    torch.testing.assert_close(ok, torch.tensor([[[1.0, 0.0]]]))


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_label_dtypes_the_kernels_do_not_dispatch_are_refused(dtype):
    labels = torch.zeros(1, 8, 8, dtype=dtype)
    boxes = torch.tensor([[0, 0, 3, 3]])
    with pytest.raises(ValueError, match=r"labels must be uint8, int8, int16, int32 or int64, got torch.uint"):
        pdcr_ext.foreground_ratios(labels, boxes, 2)
    loss = pdcr_ext.PDCRLoss(2, samples=(4,))
    with pytest.raises(ValueError, match=r"labels must be uint8, int8, int16, int32 or int64"):
        loss([torch.randn(1, 4, 4, 4)], labels)
    if pdcr_ext.native_available:
        with pytest.raises(RuntimeError, match=r"labels must be uint8, int8, int16, int32 or int64"):
            torch.ops.pdcr.foreground_ratios(labels, boxes[None], 2, False)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_every_dispatched_label_dtype_is_accepted(dtype):
    labels = torch.tensor([[[0, 1], [1, 1]]]).to(dtype)
    got = pdcr_ext.foreground_ratios(labels, torch.tensor([[0, 0, 1, 1]]), 2)
    torch.testing.assert_close(got, torch.tensor([[[0.25, 0.75]]]))
