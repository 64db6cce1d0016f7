"""Images with masks from a folder: ``folder:PATH``.

Layouts, found anywhere under PATH:

- ISIC: ``ISIC_0000000.jpg`` with ``ISIC_0000000_Segmentation.png`` (or ``.jpg``, or ISIC 2018's
  ``_segmentation.png``), in one folder or in sibling folders (``ISBI2016_ISIC_Part1_Training_Data``
  / ``..._Training_GroundTruth``, ``ISIC2018_Task1-2_Training_Input`` / ``..._GroundTruth``).
  ISIC 2017's ``*_superpixels.png`` are not images of the set.
- Image and mask folders side by side: ``images/`` + ``masks/`` (Kvasir-SEG), ``img/`` +
  ``mask_jpg/`` (the authors' repository), ``train_images/`` + ``train_masks/``: a folder named
  with an image word (images, image, imgs, img) beside one named the same with a mask word (masks,
  mask, labels, gt, groundtruth) in its place; a file format word (jpg, png, ...) may follow. A
  mask has its image's stem, or the stem + ``_mask`` / ``_Segmentation``; png, jpg or tif.

macOS's ``._*`` files and ``__MACOSX`` folders (and every other hidden file) are ignored.

Split: a pair belongs to the split its folders name (a word ``train``/``training``,
``val``/``validation``, ``test``/``testing`` in a folder name below PATH: ``PATH/train/images``,
``ISBI2016_ISIC_Part1_Test_Data``). Missing splits are drawn from the training folders, seeded,
with a note saying so: no val folder, a seeded 1/8 of train; no test folder (the authors'
repository has train and val), a seeded 1/5 of train; training folders only (an ISIC 2018
download of the training data), a seeded 70 / 10 / 20 split of them. With no split folders at
all, a seeded 70 / 10 / 20 split of all pairs.

Images are read in the orientation their EXIF tag gives (as a viewer shows them), resized to
``image_size`` square (bilinear, anti-aliased; masks nearest). 8-bit images scale to [0, 1] by
/255, others by their 1 and 99.8 percentiles; grey images are repeated to 3 channels when others
are colour.

Mask values, decided over all masks together:

- binary: every mask holds only 0 and one other value, 1 or 255 (a mix of 0/1 and 0/255 masks
  too, with a note): foreground = not 0;
- near-binary: values above 64 that cluster at 0 and the maximum (a JPEG's compression noise, an
  anti-aliased edge: at least 95 % of the pixels within a quarter of the maximum of either end):
  thresholded at half the maximum, with a note (``num_classes`` other than 2 is then refused: it
  would make every grey level a class);
- otherwise class indices, ``num_classes`` given or inferred as max + 1 (a guess above 64
  classes is refused: pass ``num_classes`` to insist).

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
ISIC_NOT_IMAGES = ("_segmentation", "_superpixels")
MASK_SUFFIXES = ("", "_mask", "_segmentation")  # side-by-side folders: mask stem = image stem + these
IMAGE_DIR_WORDS = {"images", "image", "imgs", "img"}
MASK_DIR_WORDS = {"masks", "mask", "labels", "gt", "groundtruth"}
FORMAT_WORDS = {"png", "jpg", "jpeg", "tif", "tiff"}
SPLIT_WORDS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
MAX_INFERRED_CLASSES = 64
NEAR_BINARY_SHARE = 0.95  # of the pixels within a quarter of the maximum of 0 or of the maximum


@dataclass
class Pair:
    image: Path
    mask: Path
    name: str  # the image's stem
    split: str | None  # "train" / "val" / "test" from the folder names, None if they name none


# ---- finding the pairs --------------------------------------------------------------------------

def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def _split_of(path: Path, root: Path) -> str | None:
    """The split the folders between ``root`` and ``path`` name, the deepest one winning."""
    for folder in reversed(path.relative_to(root).parts[:-1]):
        for word in _words(folder):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return None


def hidden(path: Path, root: Path | None = None) -> bool:
    """macOS's ``._*`` files, ``__MACOSX`` folders, other hidden files: never data."""
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTS and not hidden(p, folder) and p.is_file())


def _folder_key(folder: Path, words: set[str]) -> tuple[str, ...] | None:
    """The folder's name without its image / mask word and format words, or None if it has none
    of `words` (``train_images`` -> ("train",), ``mask_jpg`` -> ())."""
    parts = _words(folder.name)
    if not words & set(parts):
        return None
    return tuple(w for w in parts if w not in words and w not in FORMAT_WORDS)


def _image_mask_folders(root: Path) -> list[tuple[Path, Path]]:
    """Every (image folder, mask folder) pair of siblings under ``root``."""
    found = []
    for folder in sorted(d for d in [root, *root.rglob("*")] if d.is_dir() and not hidden(d, root)):
        key = _folder_key(folder, IMAGE_DIR_WORDS)
        if key is None or folder == root:
            continue
        masks = [s for s in sorted(folder.parent.iterdir())
                 if s.is_dir() and s != folder and _folder_key(s, MASK_DIR_WORDS) == key]
        if masks:
            found.append((folder, masks[0]))
    return found


def _missing(root: Path, images: list[Path]) -> DataError:
    shown = ", ".join(str(p.relative_to(root)) for p in images[:3])
    more = f" and {len(images) - 3} more" if len(images) > 3 else ""
    return DataError(f"{len(images)} image(s) in {root} have no mask: {shown}{more}")


def _generic_pairs(root: Path, folders: list[tuple[Path, Path]]) -> list[Pair]:
    pairs, missing = [], []
    for image_dir, mask_dir in folders:
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
    masks: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: p.suffix.lower() != ".png"):  # a PNG mask wins over a JPEG one
        if p.stem.lower().endswith(ISIC_MASK_SUFFIX):
            masks.setdefault(p.stem.lower()[: -len(ISIC_MASK_SUFFIX)], p)
    images = [p for p in files if not p.stem.lower().endswith(ISIC_NOT_IMAGES)]
    missing = [p for p in images if p.stem.lower() not in masks]
    if missing:
        raise _missing(root, missing)
    return [Pair(p, masks[p.stem.lower()], p.stem, _split_of(p, root)) for p in images]


def find_pairs(root: Path) -> tuple[str, list[Pair]]:
    """The layout ("images/masks" or "ISIC") and the image/mask pairs under ``root``, sorted by path."""
    folders = _image_mask_folders(root)
    if folders:
        layout, pairs = "images/masks", _generic_pairs(root, folders)
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
    A JPEG's (or PNG's) EXIF orientation is applied, so that the array is what a viewer shows.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
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


def _values(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values of a non-negative integer mask and their pixel counts
    (bincount: ~10x np.unique)."""
    if mask.max() < 1 << 16:
        counts = np.bincount(mask.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


@dataclass
class Loaded:
    pair: Pair
    image: np.ndarray  # (C, S, S) float32
    label: np.ndarray  # (1, S, S) int64, the mask's stored values
    values: np.ndarray  # the distinct values of the full-size mask, sorted
    counts: np.ndarray  # how many pixels hold each of them


def _load_pair(pair: Pair, image_size: int) -> Loaded:
    """Reads, checks and resizes one pair."""
    image, mask = read_image(pair.image), read_mask(pair.mask)
    if image.shape[1:] != mask.shape:
        (h, w), (mh, mw) = image.shape[1:], mask.shape
        raise DataError(
            f"mask {pair.mask} is {mw}x{mh} but its image {pair.image.name} is {w}x{h}"
        )
    values, counts = _values(mask)
    image, label = resize_pair(image, mask[None], image_size)
    return Loaded(pair, image, label, values, counts)


# ---- building the splits ------------------------------------------------------------------------

def _seeded_part(pairs: list[Pair], share: float, seed: int, salt: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded `share` of `pairs` (at least one) and the rest, both in their order."""
    order = np.random.default_rng([seed, salt]).permutation(len(pairs))
    n = max(1, round(share * len(pairs)))
    return [pairs[i] for i in sorted(order[:n])], [pairs[i] for i in sorted(order[n:])]


def _split_70_10_20(pairs: list[Pair], seed: int, root: Path) -> dict[str, list[Pair]]:
    if len(pairs) < 3:
        raise DataError(f"{root}: found {len(pairs)} image/mask pair(s); need at least 3 to split 70/10/20")
    order = np.random.default_rng([seed, 0xFA2]).permutation(len(pairs))
    n_test, n_val = max(1, round(0.2 * len(pairs))), max(1, round(0.1 * len(pairs)))
    chosen = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {s: [pairs[i] for i in sorted(chosen[s])] for s in ("train", "val", "test")}


def _split(pairs: list[Pair], seed: int, root: Path) -> tuple[dict[str, list[Pair]], str, list[str]]:
    """Pairs by split (from folder names where they name splits, missing splits drawn from train,
    else seeded 70 / 10 / 20), how they were split, and notes on what was drawn."""
    named = {p.split for p in pairs} - {None}
    if not named:
        return _split_70_10_20(pairs, seed, root), f"seeded 70/10/20 split (seed {seed})", []
    unnamed = [p for p in pairs if p.split is None]
    if unnamed:
        raise DataError(f"{unnamed[0].image} is in no train/val/test folder, but other images in {root} are")
    if "train" not in named:
        raise DataError(f"{root} has {'/'.join(sorted(named))} folders but no train folder to train on")
    splits = {s: [p for p in pairs if p.split == s] for s in ("train", "val", "test")}
    train = splits["train"]
    if not splits["val"] and not splits["test"]:
        note = (f"{root} has only training folders ({len(train)} pairs): split 70/10/20 into train, val and "
                f"test, seeded (seed {seed})")
        return _split_70_10_20(train, seed, root), "training folders split 70/10/20", [note]
    notes = []
    if not splits["test"]:  # the authors' repository: train and val folders
        if len(train) < 2:
            raise DataError(f"{root}: need at least 2 training pairs to take a test split from")
        splits["test"], splits["train"] = _seeded_part(train, 0.2, seed, 0xFA3)
        notes.append(f"{root} has no test folder: the test split is a seeded fifth of the training folder "
                     f"({len(splits['test'])} pairs, seed {seed}); val is the val folder")
    if not splits["val"]:
        if len(splits["train"]) < 2:
            raise DataError(f"{root}: need at least 2 training pairs to take validation from")
        splits["val"], splits["train"] = _seeded_part(splits["train"], 1 / 8, seed, 0xFA1)
        notes.append(f"{root} has no val folder: validation is a seeded eighth of the training folder "
                     f"({len(splits['val'])} pairs, seed {seed})")
    return splits, "split by folder", notes


@dataclass
class Masks:
    """How the stored mask values become classes (decided over every mask: `read_masks_as`)."""

    kind: str  # "binary" (not 0 -> 1), "threshold" (> half of `top` -> 1) or "indices"
    num_classes: int
    top: int = 0  # the largest value of any mask
    note: str = ""

    def classes(self, label: np.ndarray) -> np.ndarray:
        if self.kind == "binary":
            return (label > 0).astype(np.int64)
        if self.kind == "threshold":
            return (2 * label > self.top).astype(np.int64)
        return label


def read_masks_as(loaded: list[Loaded], num_classes: int | None, root: Path) -> Masks:
    """Binary, near-binary (thresholded) or class-index masks (see the module doc).

    DataError for a value >= num_classes (naming the first such mask), for near-binary masks
    with num_classes > 2, and for an inferred count above MAX_INFERRED_CLASSES.
    """
    every = set(np.concatenate([item.values for item in loaded]).tolist())
    top = max(every)
    binary = all(set(item.values.tolist()) <= {0, 1} or set(item.values.tolist()) <= {0, 255} for item in loaded)
    if num_classes in (None, 2) and binary and 255 in every:
        ones = sum(1 for item in loaded if item.values[-1] == 1)
        note = ""
        if ones:  # 0/1 and 0/255 masks in one set: both binary
            note = (f"masks in {root} mix 0/1 ({ones}) and 0/255 ({sum(1 for i in loaded if i.values[-1] == 255)}) "
                    "binary masks: read both as background / foreground")
        return Masks("binary", 2, top, note)
    if top > MAX_INFERRED_CLASSES:
        near = sum(int(item.counts[(4 * item.values <= top) | (4 * item.values >= 3 * top)].sum()) for item in loaded)
        share = near / sum(int(item.counts.sum()) for item in loaded)
        if share >= NEAR_BINARY_SHARE:
            if num_classes not in (None, 2):
                raise DataError(f"masks in {root} are near-binary ({100 * share:.1f} % of pixels near 0 or {top}: "
                                f"JPEG or anti-aliased); num_classes={num_classes} would make every grey level a "
                                "class: leave it out (or give 2)")
            note = (f"masks in {root} are near-binary (JPEG or anti-aliased: {100 * share:.1f} % of pixels near 0 "
                    f"or {top}): thresholded at half the maximum (foreground > {top / 2:g})")
            return Masks("threshold", 2, top, note)
        if num_classes is None:
            worst = next(item for item in loaded if item.values[-1] == top)
            raise DataError(
                f"mask {worst.pair.mask} holds value {top}, and the masks are neither binary nor near-binary "
                f"(only {100 * share:.0f} % of pixels near 0 or {top}): if the values are class indices, "
                "pass num_classes"
            )
    if num_classes is None:
        num_classes = max(2, top + 1)
    if top >= num_classes:
        bad = next(item for item in loaded if item.values[-1] >= num_classes)
        raise DataError(
            f"mask {bad.pair.mask} holds label value {int(bad.values[-1])} "
            f">= num_classes={num_classes}"
        )
    return Masks("indices", num_classes, top)


def make_folder(
    *, path: str, image_size: int = 128, seed: int = 0, num_classes: int | None = None
) -> RawSplits:
    """The splits of the images and masks under ``path`` (see the module doc for the rules)."""
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise DataError(f"no such folder: {path!r}")
    layout, pairs = find_pairs(root)
    splits, rule, notes = _split(pairs, seed, root)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        loaded = {
            split: list(pool.map(lambda pair: _load_pair(pair, image_size), group))
            for split, group in splits.items()
        }
    everything = [item for items in loaded.values() for item in items]
    masks = read_masks_as(everything, num_classes, root)
    in_channels = max(item.image.shape[0] for item in everything)

    def as_item(item: Loaded) -> dict:
        return {
            "image": np.repeat(item.image, in_channels // item.image.shape[0], axis=0),  # grey->RGB
            "label": masks.classes(item.label),
            "name": item.pair.name,
        }

    if masks.num_classes == 2:
        names = ("background", "lesion" if layout == "ISIC" else "foreground")
    else:
        names = ("background",) + tuple(f"class{c}" for c in range(1, masks.num_classes))
    kind = {"binary": f", masks 0/{masks.top}", "threshold": f", masks thresholded at {masks.top / 2:g}",
            "indices": ""}[masks.kind]
    return RawSplits(
        **{split: [as_item(item) for item in items] for split, items in loaded.items()},
        in_channels=in_channels,
        num_classes=masks.num_classes,
        class_names=names,
        description=f"folder {root} ({layout} layout, {rule}{kind})",
        notes=tuple(notes + ([masks.note] if masks.note else [])),
    )
