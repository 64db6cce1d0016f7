"""A real image: nuclei from the 2018 Data Science Bowl (BBBC038), as shipped with stardist.

stardist's package data holds ``data/images/img2d.tif`` (512 x 512 uint16, fluorescence) and
``mask2d.tif`` (an instance labelling of 125 nuclei, 0 = background). The mask becomes binary:
0 background, 1 nucleus. Intensities are normalised by percentiles 1 and 99.8 to 0 and 1,
clipped, with the percentiles taken from the training region only: no validation or test pixel
shapes the inputs (a step that uses no label).

Split by region, so that no test pixel is ever seen in training (tiles of one image would
otherwise leak through overlap). The image is cut into three disjoint rectangles, in
(row, column) pixel coordinates, half-open, with a guard band that belongs to no split::

        cols 0            352 384   512
    rows 0 +---------------+---+-----+
           |               | g |     |
           |    train      | u | val |
           |   352 x 352   | a |     |
       352 +---------------+ r |     |
           |     guard       d |     |
       384 +-------------------+-----+
           |        test  128 x 512  |
       512 +-------------------------+

Without the band (train rows and columns 0-383), 10 of the 125 nuclei would lie partly in
training and partly in validation (5) or test (5). 32 px is the smallest band, in steps of 8 px,
that leaves no nucleus in two splits (``straddling`` counts them; validation and test share
none); it costs 16 % of the training pixels and leaves validation and test as they were.

Tiles are cut only inside their region. Training tiles overlap (stride a quarter of the tile:
64 tiles of 128 px; augmentation adds more variety). Val and test tiles form a grid covering
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


GUARD = 32  # px between the training region and the others (module docstring)
REGIONS = {
    "train": Box(0, 384 - GUARD, 0, 384 - GUARD),
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


def read_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The raw image and its instance mask: (512, 512) uint16 and (512, 512) integer ids (0 = none)."""
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
    return image, mask


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The whole image and mask: (512, 512) float32 in [0, 1] (percentiles of the training region)
    and (512, 512) int64 in {0, 1}."""
    return _image_and_label(*read_nuclei())


def _image_and_label(raw: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return percentile_normalise(raw, reference=REGIONS["train"].crop(raw)), (instances > 0).astype(np.int64)


def straddling(instances: np.ndarray, regions: list[np.ndarray]) -> int:
    """How many objects of ``instances`` (integer ids, 0 = background) have pixels in more than
    one of ``regions`` (boolean masks of ``instances``' shape, or index tuples into it)."""
    seen = [set(np.unique(instances[region]).tolist()) - {0} for region in regions]
    ids = set().union(*seen)
    return sum(1 for i in ids if sum(i in s for s in seen) > 1)


def region_masks(regions: dict[str, Box]) -> list[np.ndarray]:
    """Each region as a boolean (512, 512) mask."""
    masks = []
    for box in regions.values():
        mask = np.zeros(IMAGE_SHAPE, bool)
        box.crop(mask)[...] = True
        masks.append(mask)
    return masks


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
    raw, instances = read_nuclei()
    image, mask = _image_and_label(raw, instances)
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
    no_guard = dict(REGIONS, train=Box(0, 384, 0, 384))
    return RawSplits(
        **splits,
        in_channels=1,
        num_classes=2,
        class_names=("background", "nucleus"),
        description=(f"nuclei (DSB 2018 image from stardist, split by region with a {GUARD} px guard band: "
                     f"{straddling(instances, region_masks(REGIONS))} of {len(np.unique(instances)) - 1} nuclei "
                     f"in two splits, {straddling(instances, region_masks(no_guard))} without the band; "
                     f"percentiles of the training region{resized})"),
    )
