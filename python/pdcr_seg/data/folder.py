"""Images with masks from a folder: ``folder:PATH``.

Two layouts, found anywhere under PATH:

- ISIC 2016 / 2017: ``ISIC_0000000.jpg`` with ``ISIC_0000000_Segmentation.png``, in one folder or
  in sibling folders (``ISBI2016_ISIC_Part1_Training_Data`` / ``..._Training_GroundTruth``).
- Generic: a folder ``images/`` beside a folder ``masks/``; a mask has its image's stem (or the
  stem + ``_mask`` / ``_Segmentation``); png, jpg or tif.

Split: a pair belongs to the split its folders name (a word ``train``/``training``,
``val``/``validation``, ``test``/``testing`` in a folder name below PATH: ``PATH/train/images``,
``ISBI2016_ISIC_Part1_Test_Data``). With train and test folders and no val folder, val is a seeded
1/8 of train. With no such folders, a seeded 70 / 10 / 20 split of all pairs.

Images are resized to ``image_size`` square (bilinear, anti-aliased; masks nearest). 8-bit images
scale to [0, 1] by /255, others by their 1 and 99.8 percentiles; grey images are repeated to 3
channels when others are colour. Mask values: if every mask holds only 0 and 255, the masks are
binary (255 -> 1); otherwise the values are class indices, ``num_classes`` given or inferred as
max + 1 (a guess above 64 classes is refused: that is an anti-aliased or JPEG-damaged binary mask
far more often than a 64-class task; pass ``num_classes`` to insist).

Everything is read, checked and resized once, when the datasets are built (in threads: image
decoding releases the GIL), so a bad file fails at once, naming the file.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import DataError, RawSplits
from .transforms import percentile_normalise, resize_pair

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
ISIC_MASK_SUFFIX = "_segmentation"
MASK_SUFFIXES = ("", "_mask", "_segmentation")  # generic layout: mask stem = image stem + these
SPLIT_WORDS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
MAX_INFERRED_CLASSES = 64


@dataclass
class Pair:
    image: Path
    mask: Path
    name: str  # the image's stem
    split: str | None  # "train" / "val" / "test" from the folder names, None if they name none


# ---- finding the pairs --------------------------------------------------------------------------

def _split_of(path: Path, root: Path) -> str | None:
    """The split the folders between ``root`` and ``path`` name, the deepest one winning."""
    for folder in reversed(path.relative_to(root).parts[:-1]):
        for word in re.split(r"[^a-z0-9]+", folder.lower()):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return None


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in files
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    )


def _is_dir_named(path: Path, name: str) -> bool:
    return path.is_dir() and path.name.lower() == name


def _missing(root: Path, images: list[Path]) -> DataError:
    shown = ", ".join(str(p.relative_to(root)) for p in images[:3])
    more = f" and {len(images) - 3} more" if len(images) > 3 else ""
    return DataError(f"{len(images)} image(s) in {root} have no mask: {shown}{more}")


def _generic_pairs(root: Path, image_dirs: list[Path]) -> list[Pair]:
    pairs, missing = [], []
    for image_dir in image_dirs:
        mask_dir = next(d for d in image_dir.parent.iterdir() if _is_dir_named(d, "masks"))
        masks = {p.stem.lower(): p for p in _image_files(mask_dir, recursive=False)}
        for image in _image_files(image_dir, recursive=False):
            stems = [image.stem.lower() + suffix for suffix in MASK_SUFFIXES]
            mask = next((masks[stem] for stem in stems if stem in masks), None)
            if mask is None:
                missing.append(image)
            else:
                pairs.append(Pair(image, mask, image.stem, _split_of(image, root)))
    if missing:
        raise _missing(root, missing)
    return pairs


def _isic_pairs(root: Path, files: list[Path]) -> list[Pair]:
    masks = {
        p.stem.lower()[: -len(ISIC_MASK_SUFFIX)]: p
        for p in files if p.stem.lower().endswith(ISIC_MASK_SUFFIX)
    }
    # Only JPEGs are ISIC images: ISIC 2017 also ships *_superpixels.png beside them.
    images = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg")]
    missing = [p for p in images if p.stem.lower() not in masks]
    if missing:
        raise _missing(root, missing)
    return [Pair(p, masks[p.stem.lower()], p.stem, _split_of(p, root)) for p in images]


def find_pairs(root: Path) -> tuple[str, list[Pair]]:
    """The layout ("generic" or "ISIC") and the image/mask pairs under ``root``, sorted by path."""
    image_dirs = sorted(
        d for d in [root, *root.rglob("*")]
        if _is_dir_named(d, "images") and any(_is_dir_named(s, "masks") for s in d.parent.iterdir())
    )
    if image_dirs:
        layout, pairs = "generic", _generic_pairs(root, image_dirs)
    else:
        layout, pairs = "ISIC", _isic_pairs(root, _image_files(root, recursive=True))
    if not pairs:
        raise DataError(
            f"no images found in {root}: expected ISIC_*.jpg with ISIC_*_Segmentation.png, "
            "or folders images/ and masks/"
        )
    return layout, sorted(pairs, key=lambda p: str(p.image))


# ---- reading ------------------------------------------------------------------------------------

def _read(path: Path, *, mask: bool) -> np.ndarray:
    """The file's pixels as an array (h, w) or (h, w, c); DataError if it cannot be decoded.

    A palette ("P") image is an image's colours, but a mask's class indices: only images convert.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "CMYK", "YCbCr") or (im.mode == "P" and not mask):
                im = im.convert("RGB")
            return np.asarray(im)
    except Exception as err:  # PIL / tifffile raise many types for a damaged file
        reason = (str(err).splitlines() or [""])[0]
        raise DataError(f"cannot read {path}: {type(err).__name__}: {reason}") from None


def read_image(path: Path) -> np.ndarray:
    """An image as (C, h, w) float32 in [0, 1], C = 1 or 3."""
    a = _read(path, mask=False)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = np.moveaxis(a[..., :3], -1, 0)
    elif a.ndim == 3 and a.shape[0] in (1, 3):
        pass  # already channel-first (a tif)
    elif a.ndim == 2:
        a = a[None]
    else:
        raise DataError(f"image {path} has shape {a.shape}; expected grey or RGB")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == bool:
        return a.astype(np.float32)
    return percentile_normalise(a)


def read_mask(path: Path) -> np.ndarray:
    """A mask as (h, w) int64 of its stored values (no mapping yet)."""
    a = _read(path, mask=True)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        if any(not np.array_equal(a[..., 0], a[..., c]) for c in range(1, min(a.shape[-1], 3))):
            raise DataError(f"mask {path} is a colour image; expected one value (class) per pixel")
        a = a[..., 0]
    if a.ndim != 2:
        raise DataError(f"mask {path} has shape {a.shape}; expected a single-channel image")
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        if not np.all(a == np.round(a)):
            raise DataError(f"mask {path} holds non-integer values; expected class indices")
    if a.min() < 0:
        raise DataError(f"mask {path} holds negative value {int(a.min())}; expected class indices")
    return a.astype(np.int64)


def _values(mask: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a non-negative integer mask (bincount: ~10x np.unique)."""
    if mask.max() < 1 << 16:
        return np.flatnonzero(np.bincount(mask.ravel()))
    return np.unique(mask)


@dataclass
class Loaded:
    pair: Pair
    image: np.ndarray  # (C, S, S) float32
    label: np.ndarray  # (1, S, S) int64, the mask's stored values
    values: np.ndarray  # the distinct values of the full-size mask


def _load_pair(pair: Pair, image_size: int) -> Loaded:
    """Reads, checks and resizes one pair."""
    image, mask = read_image(pair.image), read_mask(pair.mask)
    if image.shape[1:] != mask.shape:
        (h, w), (mh, mw) = image.shape[1:], mask.shape
        raise DataError(
            f"mask {pair.mask} is {mw}x{mh} but its image {pair.image.name} is {w}x{h}"
        )
    values = _values(mask)
    image, label = resize_pair(image, mask[None], image_size)
    return Loaded(pair, image, label, values)


# ---- building the splits ------------------------------------------------------------------------

def _split(pairs: list[Pair], seed: int, root: Path) -> dict[str, list[Pair]]:
    """Pairs by split: from folder names where they name splits, else seeded 70 / 10 / 20."""
    named = {p.split for p in pairs} - {None}
    if named:
        unnamed = [p for p in pairs if p.split is None]
        if unnamed:
            raise DataError(
                f"{unnamed[0].image} is in no train/val/test folder, but other images in {root} are"
            )
        if not {"train", "test"} <= named:
            found = "/".join(sorted(named))
            raise DataError(f"{root} has {found} folders; expected at least train and test")
        splits = {s: [p for p in pairs if p.split == s] for s in ("train", "val", "test")}
        if not splits["val"]:
            train = splits["train"]
            if len(train) < 2:
                raise DataError(f"{root}: need at least 2 training pairs to take validation from")
            order = np.random.default_rng([seed, 0xFA1]).permutation(len(train))
            n_val = max(1, round(len(train) / 8))
            splits["val"] = [train[i] for i in sorted(order[:n_val])]
            splits["train"] = [train[i] for i in sorted(order[n_val:])]
        return splits
    if len(pairs) < 3:
        raise DataError(
            f"{root}: found {len(pairs)} image/mask pair(s); need at least 3 to split 70/10/20"
        )
    order = np.random.default_rng([seed, 0xFA2]).permutation(len(pairs))
    n_test, n_val = max(1, round(0.2 * len(pairs))), max(1, round(0.1 * len(pairs)))
    chosen = {
        "test": order[:n_test],
        "val": order[n_test:n_test + n_val],
        "train": order[n_test + n_val:],
    }
    return {s: [pairs[i] for i in sorted(chosen[s])] for s in ("train", "val", "test")}


def _classes(loaded: list[Loaded], num_classes: int | None) -> tuple[bool, int]:
    """Whether the masks are 0/255 binary, and the number of classes.

    DataError for a value >= num_classes (naming the first such mask) and for an inferred count
    above MAX_INFERRED_CLASSES.
    """
    every = set(np.concatenate([item.values for item in loaded]).tolist())
    binary = every <= {0, 255}
    top = 1 if binary else max(every)
    if num_classes is None:
        num_classes = max(2, top + 1)
        if num_classes > MAX_INFERRED_CLASSES:
            worst = next(item for item in loaded if item.values[-1] == top)
            raise DataError(
                f"mask {worst.pair.mask} holds value {top} and the masks are not all 0/255; "
                "pass num_classes if they really are class indices (anti-aliased or JPEG masks?)"
            )
    if top >= num_classes:
        bad = next(item for item in loaded if item.values[-1] >= num_classes)
        raise DataError(
            f"mask {bad.pair.mask} holds label value {int(bad.values[-1])} "
            f">= num_classes={num_classes}"
        )
    return binary, num_classes


def make_folder(
    *, path: str, image_size: int = 128, seed: int = 0, num_classes: int | None = None
) -> RawSplits:
    """The splits of the images and masks under ``path`` (see the module doc for the rules)."""
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise DataError(f"no such folder: {path!r}")
    layout, pairs = find_pairs(root)
    splits = _split(pairs, seed, root)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        loaded = {
            split: list(pool.map(lambda pair: _load_pair(pair, image_size), group))
            for split, group in splits.items()
        }
    everything = [item for items in loaded.values() for item in items]
    binary, num_classes = _classes(everything, num_classes)
    in_channels = max(item.image.shape[0] for item in everything)

    def as_item(item: Loaded) -> dict:
        return {
            "image": np.repeat(item.image, in_channels // item.image.shape[0], axis=0),  # grey->RGB
            "label": (item.label == 255).astype(np.int64) if binary else item.label,
            "name": item.pair.name,
        }

    if num_classes == 2:
        names = ("background", "lesion" if layout == "ISIC" else "foreground")
    else:
        names = ("background",) + tuple(f"class{c}" for c in range(1, num_classes))
    rule = "split by folder" if pairs[0].split else f"seeded 70/10/20 split (seed {seed})"
    return RawSplits(
        **{split: [as_item(item) for item in items] for split, items in loaded.items()},
        in_channels=in_channels,
        num_classes=num_classes,
        class_names=names,
        description=f"folder {root} ({layout} layout, {rule}{', masks 0/255' if binary else ''})",
    )
