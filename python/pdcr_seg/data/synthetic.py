"""Synthetic lesions with the ambiguity PDCR and UAFR target, generated from a seed.

Each image holds one lesion-like shape: a radius that varies with angle by a sum of random
harmonics (irregular outline), blended into the background over a few pixels (blurred boundary).
Inside and outside share the same kind of texture; the lesion differs only by a small darkening
and a coarser texture scale, not by a clean contrast. A smooth intensity drift across the image
(comparable to the lesion's shift) and multiplicative speckle make a pixel's class uncertain
from its intensity alone, so a model has to use context — and boundaries are ambiguous.

Classes: 0 background, 1 lesion; with ``num_classes`` = K > 2, classes 2..K-1 are nested cores
(each a shrunken, again irregular copy of the outline, a little darker again).
Images: 1 channel (grey) or 3 (a skin-like colour, the lesion tinted brown).

Every image comes from its own random stream ``(seed, split, index)``, so an image does not
depend on how many others are generated: the same seed gives identical data, and ``n_train``
can change without changing the val / test images.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from . import DataError, RawSplits

SPLITS = ("train", "val", "test")

# Intensity model, in units of the [0, 1] image.
BASE = 0.55  # mean background level
TEXTURE = 0.10  # std of the texture, inside and outside
SHIFT = (0.05, 0.10)  # lesion darkening: below one texture std, so no clean contrast
DRIFT = 0.12  # largest change of the drift across the image
SPECKLE = 0.08  # std of the multiplicative noise
SKIN = np.array([1.0, 0.78, 0.66], np.float32)  # 3-channel gains of the background
TINT = np.array([-0.02, -0.05, -0.06], np.float32)  # extra colour of the lesion (browner)


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smoothed white noise of unit std: a texture with grain ``sigma`` pixels, (size, size)."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    field = gaussian_filter(noise, sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _outline(
    rng: np.random.Generator, theta: np.ndarray, radius: float, roughness: float
) -> np.ndarray:
    """Radius at each angle: ``radius * (1 + sum_k a_k cos(k theta + phi_k))``, k = 2..6.

    Amplitudes fall as 1/k (smooth but irregular); the radius is kept above a third of the mean,
    so the shape stays one connected blob.
    """
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.normal(0.0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return radius * np.maximum(r, 0.33)


def _soft(distance: np.ndarray, width: float) -> np.ndarray:
    """Blend weight from a signed distance (positive inside): a sigmoid ``width`` pixels wide."""
    return 1.0 / (1.0 + np.exp(-np.clip(distance / width, -30, 30)))


def synthetic_item(
    rng: np.random.Generator, size: int, num_classes: int = 2, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One image, (channels, size, size) float32 in [0, 1], and its label, (1, size, size) int64."""
    scale = size / 128.0  # sizes below are in pixels of a 128 image
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    rho = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)

    outline = _outline(rng, theta, rng.uniform(0.13, 0.27) * size, roughness=0.35)
    width = rng.uniform(1.0, 3.0) * scale  # boundary blur
    alpha = _soft(outline - rho, width)
    label = (rho < outline).astype(np.int64)
    darkening = rng.uniform(*SHIFT) * alpha
    for c in range(2, num_classes):  # nested cores, each smaller than the one it sits in
        core = outline * (1.0 - 0.6 * (c - 1) / (num_classes - 2)) * _outline(rng, theta, 1.0, 0.15)
        core = np.minimum(core, outline * 0.9 ** (c - 1))
        label[rho < core] = c
        darkening += rng.uniform(*SHIFT) * 0.8 * _soft(core - rho, width)

    # Same kind of texture inside and out; the lesion's grain is coarser.
    fine = _texture(rng, size, rng.uniform(0.8, 1.6) * scale)
    coarse = _texture(rng, size, rng.uniform(2.2, 3.5) * scale)
    texture = TEXTURE * ((1 - alpha) * fine + alpha * coarse)

    gy, gx = rng.normal(0.0, 1.0, 2)
    tilt = (gy * (yy - size / 2) + gx * (xx - size / 2)) / (size * max(np.hypot(gy, gx), 1e-6))
    drift = DRIFT * tilt  # a plane across the image, up to DRIFT end to end

    base = BASE + texture - darkening + drift
    if channels == 1:
        image = base[None]
    else:
        lesion = alpha[None] * TINT[:, None, None]
        image = base[None] * SKIN[:, None, None] + lesion
    image = image * (1.0 + SPECKLE * rng.standard_normal(image.shape).astype(np.float32))
    return np.clip(image, 0.0, 1.0).astype(np.float32), label[None]


def make_synthetic(
    *,
    image_size: int = 128,
    seed: int = 0,
    num_classes: int | None = None,
    channels: int = 1,
    n_train: int = 96,
    n_val: int = 16,
    n_test: int = 32,
) -> RawSplits:
    """The synthetic train / val / test splits (96 / 16 / 32 by default); fast (~2 ms an image)."""
    num_classes = 2 if num_classes is None else int(num_classes)
    if not 2 <= num_classes <= 6:
        raise DataError(f"synthetic: num_classes must be 2..6, got {num_classes}")
    if channels not in (1, 3):
        raise DataError(f"synthetic: channels must be 1 or 3, got {channels!r}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(not isinstance(n, (int, np.integer)) or n < 1 for n in counts.values()):
        raise DataError(f"synthetic: n_train, n_val, n_test must be positive integers: {counts}")

    splits = {}
    for s, split in enumerate(SPLITS):
        items = []
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, s, i])
            image, label = synthetic_item(rng, image_size, num_classes, channels)
            items.append({"image": image, "label": label, "name": f"synthetic_{split}_{i:04d}"})
        splits[split] = items

    cores = ("core",) if num_classes == 3 else tuple(f"core{c - 1}" for c in range(2, num_classes))
    names = ("background", "lesion") + cores
    return RawSplits(
        **splits,
        in_channels=channels,
        num_classes=num_classes,
        class_names=names,
        description=f"synthetic lesions (seed {seed})",
    )
