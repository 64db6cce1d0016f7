"""Volumes (3-D): the nuclei volume shipped with stardist, and Decathlon-style NIfTI folders.

Items are dicts ``{"image": float32 (C, D, H, W), "label": int64 (1, D, H, W), "name": str}``.
Training is patch-based, as in nnU-Net (the paper's 3-D pipeline): every access to a training
volume returns a random crop of ``patch_size`` (MONAI's RandSpatialCropd), then the augmentation
of ``volume_train_transforms``; the training split lists its volumes ``samples_per_epoch / volumes``
times (``RawSplits.repeat``, applied after ``--fraction`` chose the volumes), so that an epoch is
a number of crops rather than one pass over a handful of volumes. Validation and test items are whole volumes, segmented with MONAI's
``sliding_window_inference`` (50 % overlap, the paper's setting; evaluate.py).

* ``nuclei``: ``stardist/data/images/img3d.tif`` and ``mask3d.tif`` (31 x 61 x 57 voxels, about 50
  nuclei; the mask is an instance labelling, 0 = background), binary foreground, intensities
  normalised by percentiles 1 and 99.8 of the training rows. Split by region along the rows so
  that no test voxel is seen in training: rows 0-36 train, 37-44 validation, 45-60 test
  (half-open: [0, 37), [37, 45), [45, 61)), every slice and column. 13 of the 51 nuclei have
  voxels in more than one split (10 in all three: the validation slab is 8 rows, about one
  nucleus); a guard band that separated them would take most of the 61 rows, so there is none.
* ``folder:PATH`` (Decathlon layout): ``PATH/imagesTr/*.nii.gz`` with ``PATH/labelsTr/`` of the same
  names (MSD's multi-modal 4-D images become channels); intensities z-normalised per channel
  (nnU-Net's, the paper's "z-normalization"); a seeded 70 / 10 / 20 split. Volumes keep their
  voxel grid (no resampling to isotropic spacing: state it if your data need it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import DataError, RawSplits
from .nuclei import data_dir, straddling
from .transforms import percentile_normalise

NUCLEI_ROWS = {"train": (0, 37), "val": (37, 45), "test": (45, 61)}


def load_nuclei_volume() -> tuple[np.ndarray, np.ndarray]:
    """(image (31, 61, 57) float32 in [0, 1] (percentiles of the training rows), binary label
    (31, 61, 57) int64)."""
    return _image_and_label(*read_nuclei_volume())


def _image_and_label(raw: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r0, r1 = NUCLEI_ROWS["train"]
    return percentile_normalise(raw, reference=raw[:, r0:r1]), (instances > 0).astype(np.int64)


def read_nuclei_volume() -> tuple[np.ndarray, np.ndarray]:
    """The raw volume and its instance mask (31, 61, 57), ids 0 = background."""
    import tifffile

    folder = data_dir()
    try:
        image = tifffile.imread(folder / "img3d.tif")
        mask = tifffile.imread(folder / "mask3d.tif")
    except Exception as error:  # a damaged install
        raise DataError(f"cannot read the nuclei volume in {folder}: {error}") from None
    if image.shape != mask.shape or image.ndim != 3:
        raise DataError(f"nuclei volume: image {image.shape} and mask {mask.shape} must be equal 3-D shapes")
    return image, mask


def _check_patch(patch_size, shape, name: str) -> None:
    if any(p > s for p, s in zip(patch_size, shape)):
        raise DataError(f"{name}: --patch-size {tuple(patch_size)} is larger than the training region "
                        f"{tuple(shape)}; give a smaller patch")


def make_nuclei_volume(*, patch_size, seed: int, samples_per_epoch: int = 32,
                       num_classes: int | None = None) -> RawSplits:
    del seed  # the regions are fixed; the seed drives crops and augmentation
    if num_classes not in (None, 2):
        raise DataError(f"nuclei: the labels are binary (2 classes), got num_classes={num_classes}")
    raw, instances = read_nuclei_volume()
    image, label = _image_and_label(raw, instances)
    slabs = [(slice(None), slice(r0, r1)) for r0, r1 in NUCLEI_ROWS.values()]
    splits = {}
    for split, (r0, r1) in NUCLEI_ROWS.items():
        item = {"image": image[None, :, r0:r1].copy(), "label": label[None, :, r0:r1].copy(),
                "name": f"nuclei3d_{split}_rows{r0:02d}-{r1:02d}"}
        splits[split] = [item]
    _check_patch(patch_size, splits["train"][0]["image"].shape[1:], "nuclei")
    return RawSplits(**splits, in_channels=1, num_classes=2, class_names=("background", "nucleus"),
                     description=f"nuclei volume (stardist, 31x61x57, split by rows: {straddling(instances, slabs)} of "
                                 f"{len(np.unique(instances)) - 1} nuclei in more than one split; percentiles of "
                                 f"the training rows)", repeat=samples_per_epoch)


def _nifti(path: Path) -> np.ndarray:
    import nibabel

    try:
        return np.asarray(nibabel.load(str(path)).dataobj)
    except Exception as error:
        raise DataError(f"cannot read {path}: {error}") from None


def make_decathlon(path: str, *, patch_size, seed: int, samples_per_epoch: int = 32,
                   num_classes: int | None = None) -> RawSplits:
    root = Path(path)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not root.is_dir():
        raise DataError(f"no such folder: {str(root)!r}")
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise DataError(f"{root} must hold imagesTr/ and labelsTr/ (the Decathlon layout) for 3-D data")
    images = sorted(p for p in images_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))
    if not images:
        raise DataError(f"{images_dir} holds no .nii.gz volumes")
    missing = [p.name for p in images if not (labels_dir / p.name).is_file()]
    if missing:
        raise DataError(f"{len(missing)} volumes have no label in {labels_dir}: {', '.join(missing[:3])}")
    items, top = [], 0
    for image_path in images:
        image = _nifti(image_path).astype(np.float32)
        label = _nifti(labels_dir / image_path.name)
        # NIfTI arrays are (x, y, z[, modality]); here (C, z, y, x): depth first, as the patches,
        # the in-plane turns and the slice overlays expect
        if image.ndim == 4:
            image = image.transpose(3, 2, 1, 0)
        elif image.ndim == 3:
            image = image.transpose(2, 1, 0)[None]
        else:
            raise DataError(f"{image_path.name}: expected a 3-D or 4-D volume, got shape {image.shape}")
        if label.ndim != 3 or label.shape[::-1] != image.shape[1:]:
            raise DataError(f"label {image_path.name} is {label.shape[::-1]} but its volume is {image.shape[1:]}")
        label = label.transpose(2, 1, 0)
        if np.any(label != np.round(label)) or label.min() < 0:
            raise DataError(f"label {image_path.name} must hold non-negative integers")
        label = label.astype(np.int64)
        top = max(top, int(label.max()))
        mean = image.mean(axis=(1, 2, 3), keepdims=True)
        std = image.std(axis=(1, 2, 3), keepdims=True)
        image = ((image - mean) / np.where(std > 0, std, 1)).astype(np.float32)
        items.append({"image": image, "label": label[None], "name": image_path.name.split(".")[0]})
    classes = top + 1 if num_classes is None else num_classes
    if top >= classes:
        raise DataError(f"label values go up to {top}, but num_classes is {classes}")
    channels = {item["image"].shape[0] for item in items}
    if len(channels) != 1:
        raise DataError(f"the volumes have different channel counts: {sorted(channels)}")
    order = np.random.default_rng([seed, 0xDEC]).permutation(len(items))
    n_test, n_val = max(1, round(0.2 * len(items))), max(1, round(0.1 * len(items)))
    if len(items) < 3:
        raise DataError(f"{images_dir} holds {len(items)} volumes; a train / val / test split needs 3")
    test = [items[i] for i in order[:n_test]]
    val = [items[i] for i in order[n_test:n_test + n_val]]
    train = [items[i] for i in order[n_test + n_val:]]
    for item in train:
        _check_patch(patch_size, item["image"].shape[1:], item["name"])
    return RawSplits(train=train, val=val, test=test, in_channels=channels.pop(), num_classes=classes,
                     class_names=("background",) + tuple(f"class{c}" for c in range(1, classes)),
                     description=f"Decathlon folder {root} ({len(items)} volumes)",
                     repeat=max(1, samples_per_epoch // len(train)))
