"""A real image: nuclei from the 2018 Data Science Bowl (BBBC038), as shipped with stardist.

stardist's package data holds ``data/images/img2d.tif`` (512 x 512 uint16, fluorescence) and
``mask2d.tif`` (an instance labelling, 0 = background). The mask becomes binary: 0 background,
1 nucleus. Intensities are normalised per image (percentiles 1 and 99.8 to 0 and 1, clipped),
a preprocessing step that uses no label.

Split by region, so that no test pixel is ever seen in training (tiles of one image would
otherwise leak through overlap). The image is cut into three disjoint rectangles, in
(row, column) pixel coordinates, half-open::

        cols 0                384   512
    rows 0 +-------------------+-----+
           |                   |     |
           |      train        | val |
           |    384 x 384      |     |
       384 +-------------------+-----+
           |        test  128 x 512  |
       512 +-------------------------+

Tiles are cut only inside their region. Training tiles overlap (stride a quarter of the tile:
81 tiles of 128 px; augmentation adds more variety). Val and test tiles form a grid covering
their region (3 and 4 tiles of 128 px); where a region is not a multiple of the tile, the last
row / column of tiles is moved back to the region's edge and overlaps its neighbour.

The tile cut from the image is ``min(image_size, 128)`` px (128 = the smallest region side);
for a larger ``image_size`` that tile is resized up to ``image_size`` (bilinear / nearest), so
every size works and the regions never change.

stardist itself is never imported (it needs TensorFlow); only its files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import DataError, DataUnavailable, RawSplits
from .transforms import percentile_normalise, resize_pair

IMAGE_SHAPE = (512, 512)
MAX_TILE = 128  # the smallest region side


class Box(NamedTuple):
    """A rectangle of pixels, half-open: rows ``r0 <= r < r1``, columns ``c0 <= c < c1``."""

    r0: int
    r1: int
    c0: int
    c1: int

    def crop(self, array: np.ndarray) -> np.ndarray:
        """``array[..., r0:r1, c0:c1]``."""
        return array[..., self.r0:self.r1, self.c0:self.c1]

    def contains(self, other: "Box") -> bool:
        rows = self.r0 <= other.r0 and other.r1 <= self.r1
        return rows and self.c0 <= other.c0 and other.c1 <= self.c1


REGIONS = {
    "train": Box(0, 384, 0, 384),
    "val": Box(0, 384, 384, 512),
    "test": Box(384, 512, 0, 512),
}


def data_dir() -> Path:
    """stardist's ``data/images`` folder, found without importing stardist; else DataUnavailable."""
    install = "install its data with: pip install --no-deps stardist"
    try:
        spec = importlib.util.find_spec("stardist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"nuclei: the stardist package is not installed; {install}")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / "images"
        if (folder / "img2d.tif").is_file() and (folder / "mask2d.tif").is_file():
            return folder
    raise DataUnavailable(
        f"nuclei: stardist has no data/images/img2d.tif and mask2d.tif; {install}"
    )


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The whole image and mask: (512, 512) float32 in [0, 1] and (512, 512) int64 in {0, 1}."""
    import tifffile

    folder = data_dir()
    try:
        image = tifffile.imread(folder / "img2d.tif")
        mask = tifffile.imread(folder / "mask2d.tif")
    except Exception as err:  # a damaged install: say which file, in one line
        raise DataError(f"nuclei: cannot read {folder}/img2d.tif or mask2d.tif: {err}") from None
    if image.shape != IMAGE_SHAPE or mask.shape != IMAGE_SHAPE:
        raise DataError(
            f"nuclei: expected a 512x512 image and mask in {folder}, "
            f"got {image.shape} and {mask.shape}"
        )
    return percentile_normalise(image), (mask > 0).astype(np.int64)


def _starts(lo: int, hi: int, tile: int, stride: int) -> list[int]:
    """Tile starts from ``lo`` every ``stride``, the last moved back so the tile ends at ``hi``."""
    starts = list(range(lo, hi - tile + 1, stride))
    if starts[-1] + tile < hi:
        starts.append(hi - tile)
    return starts


def tile_boxes(image_size: int = 128) -> dict[str, list[Box]]:
    """Each split's tiles, in item order: ``min(image_size, 128)`` px boxes inside its region."""
    tile = min(image_size, MAX_TILE)
    boxes = {}
    for split, region in REGIONS.items():
        stride = max(1, tile // 4) if split == "train" else tile
        boxes[split] = [
            Box(r, r + tile, c, c + tile)
            for r in _starts(region.r0, region.r1, tile, stride)
            for c in _starts(region.c0, region.c1, tile, stride)
        ]
    return boxes


def make_nuclei(
    *, image_size: int = 128, seed: int = 0, num_classes: int | None = None
) -> RawSplits:
    """The nuclei splits: 1-channel tiles, 2 classes ("background", "nucleus"). ``seed`` unused."""
    del seed  # the tiles are fixed; the seed only drives augmentation (in build_datasets)
    if num_classes not in (None, 2):
        raise DataError(f"nuclei: the labels are binary (2 classes), got num_classes={num_classes}")
    image, mask = load_nuclei()
    splits = {}
    for split, boxes in tile_boxes(image_size).items():
        items = []
        for box in boxes:
            tile_image, tile_label = resize_pair(
                np.ascontiguousarray(box.crop(image)[None]),
                np.ascontiguousarray(box.crop(mask)[None]),
                image_size,
            )
            name = f"nuclei_{split}_r{box.r0:03d}_c{box.c0:03d}"
            items.append({"image": tile_image, "label": tile_label, "name": name})
        splits[split] = items
    tile = min(image_size, MAX_TILE)
    resized = f", {tile} px tiles resized" if tile != image_size else ""
    return RawSplits(
        **splits,
        in_channels=1,
        num_classes=2,
        class_names=("background", "nucleus"),
        description=f"nuclei (DSB 2018 image from stardist, split by region{resized})",
    )
