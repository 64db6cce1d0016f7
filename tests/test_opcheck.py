"""torch.library.opcheck of every op, and the loss under torch.compile."""

import pytest
import torch

import pdcr_ext
from conftest import requires_native
from helpers import random_features, random_ratios

pytestmark = requires_native


def _dragsaw_args(requires_grad, dtype=torch.float32, same=False):
    g = torch.Generator().manual_seed(0)
    rows = random_features(2, 9, 6, dtype=dtype, generator=g).requires_grad_(requires_grad)
    cols = rows if same else random_features(2, 7, 6, dtype=dtype, generator=g).requires_grad_(requires_grad)
    phi_rows = random_ratios(2, 3, 9, 2, generator=g)
    phi_cols = phi_rows if same else random_ratios(2, 3, 7, 2, generator=g)
    return rows, phi_rows, cols, phi_cols


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("same", [False, True])
def test_opcheck_dragsaw_loss(requires_grad, same):
    torch.library.opcheck(torch.ops.pdcr.dragsaw_loss.default,
                          (*_dragsaw_args(requires_grad, same=same), 0.5))


def test_opcheck_dragsaw_loss_backward():
    rows, phi_rows, cols, phi_cols = _dragsaw_args(False)
    loss, lse = torch.ops.pdcr.dragsaw_loss(rows, phi_rows, cols, phi_cols, 0.5)
    grad = torch.randn_like(loss)
    torch.library.opcheck(torch.ops.pdcr.dragsaw_loss_backward.default,
                          (grad, rows, phi_rows, cols, phi_cols, lse, 0.5))


def test_opcheck_dragsaw_loss_half():
    torch.library.opcheck(torch.ops.pdcr.dragsaw_loss.default,
                          (*_dragsaw_args(False, dtype=torch.bfloat16), 0.5))


def test_opcheck_foreground_ratios():
    labels = torch.randint(0, 3, (2, 11, 7))
    boxes = torch.randint(-3, 5, (2, 6, 2))
    boxes = torch.cat([boxes, boxes + torch.randint(0, 6, (2, 6, 2))], dim=-1)
    for inside in (False, True):
        torch.library.opcheck(torch.ops.pdcr.foreground_ratios.default, (labels, boxes, 3, inside))
        torch.library.opcheck(torch.ops.pdcr.foreground_ratios.default, (labels, boxes, 3, inside, 255))
    volume = torch.randint(0, 3, (2, 5, 11, 7))
    cubes = torch.cat([boxes[..., :1], boxes[..., :2], boxes[..., 2:3], boxes[..., 2:]], dim=-1)
    torch.library.opcheck(torch.ops.pdcr.foreground_ratios.default, (volume, cubes, 3, True, -1))


def test_opcheck_rf_boxes():
    positions = torch.randint(0, 10, (3, 5, 2))
    torch.library.opcheck(torch.ops.pdcr.rf_boxes.default, (positions, [7, 5], [2, 3], [-3, 1]))
    positions = torch.randint(0, 10, (4, 3))
    torch.library.opcheck(torch.ops.pdcr.rf_boxes.default, (positions, [3, 7, 5], [1, 2, 3], [0, -3, 1]))


def test_torch_compile_fullgraph_matches_eager():
    rows, phi_rows, cols, phi_cols = _dragsaw_args(True)

    def step(r, c):
        return pdcr_ext.dragsaw_loss(r, phi_rows, c, phi_cols, tau=0.3) * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager = step(rows, cols)
    eager.backward()
    grads = rows.grad.clone(), cols.grad.clone()
    rows.grad = cols.grad = None
    out = compiled(rows, cols)
    out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(rows.grad, grads[0])
    torch.testing.assert_close(cols.grad, grads[1])
