"""Grid sampling of feature positions (the paper's "grid-sampling" of N vectors per layer), on
2-D maps and 3-D volumes."""

from __future__ import annotations

import math

import torch


def _grid_shape(size: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Cells per axis of a grid with at least n cells, cells about square (cubic) on the map,
    within it, and at least two bands on each axis that has two pixels (no single row, column
    or slice). In 2-D: rows = round(sqrt(n H / W)), cols = ceil(n / rows), then the rules."""
    dims = len(size)
    scale = (n / math.prod(size)) ** (1 / dims)
    counts = [min(s, max(1, round(s * scale))) for s in size[:-1]]
    if n >= 2:
        counts = [max(c, min(2, s)) for c, s in zip(counts, size)]
    last = min(size[-1], max(1, math.ceil(n / math.prod(counts))))
    if n >= 2 and last < min(2, size[-1]):
        last = min(2, size[-1])
        # the other axes again, as a grid of the cells one band of the last axis must hold
        need = math.ceil(n / last)
        counts = [min(size[0], need)] if dims == 2 else list(_grid_shape(size[:-1], need))
    counts.append(last)
    axis = 0
    while math.prod(counts) < n:  # an axis hit its extent: grow the others (n <= prod(size) bounds this)
        if counts[axis] < size[axis]:
            counts[axis] += 1
        else:
            axis += 1
    return tuple(counts)


def grid_positions(height, width, n: int | None = None, *, jitter: bool = False,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """n distinct positions spread over every axis of a map: ``grid_positions(height, width, n)``
    on a 2-D map, ``grid_positions((depth, height, width), n)`` on a volume.

    The map is cut into a grid of about-square (about-cubic) cells, their counts per axis in
    proportion to the map's sides; n cells spread evenly over it are chosen and each gives its
    centre, or a uniformly random pixel of the cell when ``jitter`` is true (drawn from
    ``generator``). Cells are disjoint, so positions are distinct, and every band of every axis is
    used when n fills the grid: no diagonal or single-column collapse, on square and non-square
    maps alike.

    Returns:
        LongTensor (n, 2) of (row, col), or (n, 3) of (depth, row, col), on `device` (a jitter
        `generator` must be on it too).
    """
    if isinstance(height, (tuple, list)):
        size, n = tuple(height), width
        names = ("depth", "height", "width")[3 - len(size):] if len(size) in (2, 3) else ()
        if not names:
            raise ValueError(f"the map's size must have 2 or 3 axes, got {size!r}")
    else:
        size, names = (height, width), ("height", "width")
    for name, value in list(zip(names, size)) + [("n", n)]:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if min(size) < 1:
        raise ValueError(f"{' and '.join(names)} must be >= 1, got {' x '.join(map(str, size))}")
    total = math.prod(size)
    if n < 0 or n > total:
        raise ValueError(f"n must lie in [0, {' * '.join(names)} = {total}], got {n}")
    if n == 0:
        return torch.empty((0, len(size)), dtype=torch.long, device=device)
    counts = _grid_shape(size, n)
    cells = math.prod(counts)
    # computed on `device` from the start: no host-to-device copy (CUDA graphs, no stalls)
    cell = (torch.arange(n, dtype=torch.long, device=device) * cells) // n  # n distinct, evenly spread
    u = torch.rand((len(size), n), generator=generator, dtype=torch.float64, device=device) if jitter else None
    coordinates = []
    for axis in range(len(size) - 1, -1, -1):  # row-major: the last axis varies fastest
        band = cell % counts[axis]
        cell = cell // counts[axis]
        # band b spans [b*S//count, (b+1)*S//count): never empty, since count <= S
        lo = band * size[axis] // counts[axis]
        hi = (band + 1) * size[axis] // counts[axis]
        if jitter:
            coordinates.append(lo + torch.minimum((u[axis] * (hi - lo)).long(), hi - lo - 1))
        else:
            coordinates.append((lo + hi - 1) // 2)
    return torch.stack(coordinates[::-1], dim=1)
