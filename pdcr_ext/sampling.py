"""Grid sampling of feature positions (the paper's "grid-sampling" of N vectors per layer)."""

from __future__ import annotations

import math

import torch


def _grid_shape(height: int, width: int, n: int) -> tuple[int, int]:
    """Rows x cols of a grid with at least n cells, cells about square on the map, within it,
    and at least two bands on each axis that has two pixels (no single row or column)."""
    rows = min(height, max(1, round(math.sqrt(n * height / width))))
    if n >= 2:
        rows = max(rows, min(2, height))
    cols = min(width, max(1, math.ceil(n / rows)))
    if n >= 2 and cols < min(2, width):
        cols = min(2, width)
        rows = min(height, math.ceil(n / cols))
    while rows * cols < n:  # cols hit the width: add rows (n <= height * width bounds this)
        rows += 1
    return rows, cols


def grid_positions(height: int, width: int, n: int, *, jitter: bool = False,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """n distinct (row, col) positions spread over both axes of a height x width map.

    The map is cut into a grid of about-square cells (rows/cols in proportion to the map's
    sides); n cells spread evenly over it are chosen and each gives its centre, or a uniformly
    random pixel of the cell when ``jitter`` is true (drawn from ``generator``). Cells are disjoint,
    so positions are distinct, and every grid row and column band is used when n fills the grid:
    no diagonal or single-column collapse, on square and non-square maps alike.

    Returns:
        LongTensor (n, 2) of (row, col) on `device` (a jitter `generator` must be on it too).
    """
    for name, value in (("height", height), ("width", width), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if n < 0 or n > height * width:
        raise ValueError(f"n must lie in [0, height*width = {height * width}], got {n}")
    if n == 0:
        return torch.empty((0, 2), dtype=torch.long, device=device)
    rows, cols = _grid_shape(height, width, n)
    # computed on `device` from the start: no host-to-device copy (CUDA graphs, no stalls)
    cell = (torch.arange(n, dtype=torch.long, device=device) * (rows * cols)) // n  # n distinct, evenly spread
    cell_row, cell_col = cell // cols, cell % cols
    # Cell (a, b) spans map rows [a*H//rows, (a+1)*H//rows) and columns likewise: never empty,
    # since rows <= H and cols <= W.
    r0, r1 = cell_row * height // rows, (cell_row + 1) * height // rows
    c0, c1 = cell_col * width // cols, (cell_col + 1) * width // cols
    if jitter:
        u = torch.rand((2, n), generator=generator, dtype=torch.float64, device=device)
        r = r0 + torch.minimum((u[0] * (r1 - r0)).long(), r1 - r0 - 1)
        c = c0 + torch.minimum((u[1] * (c1 - c0)).long(), c1 - c0 - 1)
    else:
        r, c = (r0 + r1 - 1) // 2, (c0 + c1 - 1) // 2
    return torch.stack([r, c], dim=1)
