"""Augmentation and typing of segmentation items, with MONAI dictionary transforms.

An item is a dict ``{"image": (C, H, W) float32, "label": (1, H, W) int64, "name": str}``,
MONAI's channel-first convention. The data sources build items as numpy arrays; the transforms
here turn them into plain ``torch.Tensor`` (no MetaTensor: models and losses downstream never
need the metadata, and plain tensors keep ``torch`` ops and collation cheap).

Training augmentation is the paper's (Section V-A): random scaling 0.8-1.2, rotation -90..90
degrees, shear -20..20 degrees, shift 0.1 of the image size, random flips of both axes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, RandAffined, RandFlipd, RandRotate90d, RandSpatialCropd

KEYS = ("image", "label")

# Section V-A of the paper.
SCALE = (0.8, 1.2)
ROTATE_DEG = 90.0
SHEAR_DEG = 20.0
SHIFT = 0.1


def _typed() -> EnsureTyped:
    """Plain tensors of the item's dtypes: image float32, label int64."""
    return EnsureTyped(
        keys=KEYS, data_type="tensor", dtype=(torch.float32, torch.int64), track_meta=False
    )


def train_transforms(seed: int = 0, image_size: int = 128) -> Compose:
    """The paper's augmentation as a seeded MONAI ``Compose`` over ``image`` and ``label``.

    The image is resampled bilinearly and the label with nearest neighbour, so labels stay
    integers of the original class set. Padding is ``reflection`` for both: the area an affine
    brings in from outside is a mirror of real image and real label, so no class is invented
    and no black border (which the model could learn as a cue) appears.

    ``seed`` fixes the random state: two Composes built with one seed produce the same sequence
    of augmentations. (With DataLoader workers, use ``monai.data.DataLoader``, whose worker
    init re-seeds each worker; a plain DataLoader would repeat one sequence in every worker.)
    ``image_size`` turns the paper's relative shift (0.1 of the size) into pixels.

    Draws: one rotation angle; a scale per axis (0.8-1.2 each, as Keras' ``zoom_range``); two
    shear factors in +-tan(20 deg) (MONAI shears by factors, not angles); a shift per axis; then
    each axis flipped with probability 1/2. The affine applies to every item (prob 1).
    """
    # MONAI's ranges are per spatial axis (H, W), each a (low, high) to draw from uniformly.
    shift = (-SHIFT * image_size, SHIFT * image_size)
    shear = (-math.tan(math.radians(SHEAR_DEG)), math.tan(math.radians(SHEAR_DEG)))  # factors
    scale = (SCALE[0] - 1.0, SCALE[1] - 1.0)  # MONAI adds 1 to the drawn value
    compose = Compose([
        _typed(),
        RandAffined(
            keys=KEYS,
            prob=1.0,
            rotate_range=((-math.radians(ROTATE_DEG), math.radians(ROTATE_DEG)),),  # one angle
            shear_range=(shear, shear),
            translate_range=(shift, shift),
            scale_range=(scale, scale),  # each axis on its own, as Keras' zoom_range does
            mode=("bilinear", "nearest"),
            padding_mode="reflection",
        ),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
        _typed(),  # the affine resamples the label in float; back to int64, no metadata
    ])
    compose.set_random_state(seed=seed)
    return compose


def volume_train_transforms(seed: int, patch_size) -> Compose:
    """Patch-based training on volumes (nnU-Net's way, the paper's 3-D pipeline): a random crop of
    `patch_size` (D, H, W) from the item's volume, flips on every axis, a quarter turn in the
    (H, W) plane when the patch is square there (a turn of a non-square crop would change its
    shape), and random scaling 0.8-1.2 (the paper's range) with a small rotation (+-15 degrees
    about each axis) on half of the crops. Seeded like train_transforms."""
    angle = math.radians(15.0)
    turn = [RandRotate90d(keys=KEYS, prob=0.5, spatial_axes=(1, 2))] if patch_size[1] == patch_size[2] else []
    compose = Compose([
        _typed(),
        RandSpatialCropd(keys=KEYS, roi_size=tuple(patch_size), random_size=False),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=2),
        *turn,
        RandAffined(keys=KEYS, prob=0.5, rotate_range=((-angle, angle),) * 3,
                    scale_range=((SCALE[0] - 1.0, SCALE[1] - 1.0),) * 3, mode=("bilinear", "nearest"),
                    padding_mode="reflection"),
        _typed(),
    ])
    compose.set_random_state(seed=seed)
    return compose


def eval_transforms() -> Compose:
    """No augmentation: only the conversion of the item's arrays to typed plain tensors."""
    return Compose([_typed()])


def percentile_normalise(image: np.ndarray, low: float = 1.0, high: float = 99.8, *,
                         reference: np.ndarray | None = None) -> np.ndarray:
    """Maps the ``low``..``high`` percentiles of ``reference`` to 0..1 in ``image``, clipped;
    returns float32 of ``image``'s shape.

    ``reference``: the pixels the percentiles are taken from, e.g. the training region only, so
    that no validation or test pixel shapes the training inputs; None: ``image`` itself. Robust to
    a few saturated or dark pixels (the usual microscopy normalisation). A constant reference maps
    to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image if reference is None else np.asarray(reference, np.float32), (low, high))
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize_pair(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resizes an item's arrays to ``size`` x ``size``; a no-op for arrays of that size already.

    ``image``: (C, h, w) float32 -> (C, size, size) float32, bilinear, anti-aliased when it
    shrinks (so a large photograph does not alias into moire). ``label``: (1, h, w) integer ->
    (1, size, size) int64, nearest neighbour ("nearest-exact": pixel centres, no half-pixel shift),
    so only the label's own values appear.

    torch's ``interpolate`` rather than MONAI's ``Resize``: its anti-aliasing is a separable
    triangle filter, ~10x faster than MONAI's Gaussian pre-smoothing on a 1024x768 photograph,
    which matters when a folder of ISIC images is read at start-up.
    """
    if image.shape[-2:] == (size, size) and label.shape[-2:] == (size, size):
        return image, label.astype(np.int64, copy=False)
    spatial = (size, size)
    image = torch.from_numpy(image)[None]
    label = torch.from_numpy(label.astype(np.float32))[None]
    image = F.interpolate(image, spatial, mode="bilinear", antialias=True)[0]
    label = F.interpolate(label, spatial, mode="nearest-exact")[0]
    return image.numpy(), label.round().long().numpy()
