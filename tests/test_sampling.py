"""Grid sampling of feature positions: distinct, spread over both axes, any map shape."""

import pytest
import torch

import pdcr_ext


@pytest.mark.parametrize("h,w,n", [(64, 64, 128), (32, 32, 64), (16, 16, 32), (8, 8, 8),
                                   (7, 13, 20), (100, 3, 30), (1, 50, 17), (5, 5, 25), (128, 96, 128)])
@pytest.mark.parametrize("jitter", [False, True])
def test_positions_are_distinct_in_range_and_spread(h, w, n, jitter):
    g = torch.Generator().manual_seed(0)
    pos = pdcr_ext.grid_positions(h, w, n, jitter=jitter, generator=g)
    assert pos.shape == (n, 2) and pos.dtype == torch.long
    assert (pos[:, 0] >= 0).all() and (pos[:, 0] < h).all()
    assert (pos[:, 1] >= 0).all() and (pos[:, 1] < w).all()
    assert len({tuple(p) for p in pos.tolist()}) == n
    rows, cols = pos[:, 0].unique().numel(), pos[:, 1].unique().numel()
    # never a diagonal (rows == cols == n) nor a single row or column, unless the map forces it
    assert rows * cols >= n
    if h > 1 and w > 1 and n >= 4:
        assert rows > 1 and cols > 1
        assert not (rows == n and cols == n)
    # both halves of both axes are visited
    if n >= 4:
        assert (pos[:, 0] < h / 2).any() and (pos[:, 0] >= (h - 1) / 2).any()
        assert (pos[:, 1] < w / 2).any() and (pos[:, 1] >= (w - 1) / 2).any()


def test_jitter_is_reproducible_from_the_generator_and_varies():
    a = pdcr_ext.grid_positions(40, 40, 64, jitter=True, generator=torch.Generator().manual_seed(3))
    b = pdcr_ext.grid_positions(40, 40, 64, jitter=True, generator=torch.Generator().manual_seed(3))
    c = pdcr_ext.grid_positions(40, 40, 64, jitter=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_map_and_empty_request():
    pos = pdcr_ext.grid_positions(4, 6, 24)
    assert sorted(map(tuple, pos.tolist())) == [(i, j) for i in range(4) for j in range(6)]
    assert pdcr_ext.grid_positions(4, 6, 0).shape == (0, 2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n must"):
        pdcr_ext.grid_positions(4, 4, 17)
    with pytest.raises(ValueError, match="height"):
        pdcr_ext.grid_positions(0, 4, 1)
    with pytest.raises(ValueError, match="width"):
        pdcr_ext.grid_positions(4, 2.5, 1)
