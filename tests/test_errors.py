"""Bad input gets a clear error that names the argument, from the public API and from the ops."""

import pytest
import torch

import pdcr_ext
from conftest import requires_native

rows = torch.randn(2, 5, 4)
phi = torch.rand(2, 3, 5, 2)
cols = torch.randn(2, 6, 4)
phi_cols = torch.rand(2, 3, 6, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rows=torch.randn(5, 4)), "rows must have shape"),
        (dict(rows=torch.randint(0, 3, (2, 5, 4))), "rows must be float"),
        (dict(phi_rows=torch.rand(2, 3, 4, 2)), "phi_rows must have shape"),
        (dict(phi_rows=torch.rand(3, 5, 2)), "phi_rows must have shape"),
        (dict(cols=cols), "cols was given without phi_cols"),
        (dict(phi_cols=phi_cols), "phi_cols was given without cols"),
        (dict(cols=torch.randn(3, 6, 4), phi_cols=phi_cols), "cols must have shape"),
        (dict(cols=torch.randn(2, 6, 5), phi_cols=phi_cols), "cols must have shape"),
        (dict(cols=cols.double(), phi_cols=phi_cols), "cols dtype"),
        (dict(cols=cols, phi_cols=torch.rand(2, 3, 5, 2)), "phi_cols must have shape"),
        (dict(cols=cols, phi_cols=torch.rand(2, 2, 6, 2)), "phi_cols has P=2"),
        (dict(cols=cols, phi_cols=torch.rand(2, 3, 6, 3)), "phi_cols has M=3"),
        (dict(tau=0.0), "tau"),
        (dict(tau=-1.0), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(tau=float("inf")), "tau"),
        (dict(tau="warm"), "tau"),
        (dict(reduction="avg"), "reduction"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_dragsaw_loss_arguments(kwargs, match):
    args = dict(rows=rows, phi_rows=phi)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pdcr_ext.dragsaw_loss(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="device"):
        pdcr_ext.dragsaw_loss(rows.cuda(), phi)


def test_devices_are_compared_by_the_public_api():
    meta = torch.empty(2, 3, 5, 2, device="meta")
    with pytest.raises(ValueError, match="phi_rows is on meta"):
        pdcr_ext.dragsaw_loss(rows, meta)


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.rand(1, 4, 4), torch.tensor([[0, 0, 1, 1]]), 2), "labels must be an integer"),
        ((torch.zeros(4, 4, dtype=torch.long), torch.tensor([[0, 0, 1, 1]]), 2), "labels must have shape"),
        ((torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([0, 0, 1, 1]), 2), "boxes must have shape"),
        ((torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([[0.0, 0, 1, 1]]), 2), "boxes must be an integer"),
        ((torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([[2, 0, 1, 1]]), 2), "boxes must have end >= start"),
        ((torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(3, 1, 4, dtype=torch.long), 2), "boxes batch"),
        ((torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([[0, 0, 1, 1]]), 0), "num_classes"),
    ],
)
def test_foreground_ratio_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        pdcr_ext.foreground_ratios(*args)
    with pytest.raises(ValueError, match="area"):
        pdcr_ext.foreground_ratios(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[0, 0, 0, 0]]), 2,
                                   area="full")


def test_geometry_arguments():
    with pytest.raises(ValueError, match="positions"):
        pdcr_ext.rf_boxes((3, 1, 0), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be an integer"):
        pdcr_ext.rf_boxes((3, 1, 0), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="size"):
        pdcr_ext.patch_boxes(torch.zeros(4, 2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="rf must"):
        pdcr_ext.rf_boxes((0, 1, 0), torch.zeros(4, 2, dtype=torch.long))


@requires_native
@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.randn(5, 4), phi, rows, phi, 0.5), "rows must have shape"),
        ((rows, phi, cols, phi, 0.5), "phi_cols must have shape"),
        ((rows, phi, rows, phi, 0.0), "tau must be finite"),
        ((rows, phi, rows.double(), phi, 0.5), "cols dtype"),
        ((rows.int(), phi, rows.int(), phi, 0.5), "rows must be float16"),
    ],
)
def test_op_checks_name_the_argument(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.pdcr.dragsaw_loss(*args)


@requires_native
def test_ratio_op_checks_name_the_argument():
    labels = torch.tensor([[[0, 5]]])
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, num_classes=2\), found 5"):
        torch.ops.pdcr.foreground_ratios(labels, torch.tensor([[[0, 0, 0, 1]]]), 2, False)
    with pytest.raises(RuntimeError, match="boxes must have end >= start"):
        torch.ops.pdcr.foreground_ratios(labels * 0, torch.tensor([[[1, 0, 0, 1]]]), 2, False)
    with pytest.raises(RuntimeError, match="boxes must be int64"):
        torch.ops.pdcr.foreground_ratios(labels * 0, torch.tensor([[[0, 0, 0, 1]]], dtype=torch.int32), 2, False)
