"""The paper's metrics: Dice (DI), Jaccard (JA), pixel accuracy (AC) and HD95, per image.

Dice, Jaccard and the 95th-percentile Hausdorff distance are MONAI's (DiceMetric, MeanIoU,
HausdorffDistanceMetric(percentile=95)) on one-hot maps; pixel accuracy is the fraction of
correctly labelled pixels (MONAI's ConfusionMatrixMetric "accuracy" is per class one-vs-rest,
not the paper's AC). Every metric is computed per image and class, then averaged over images.

What happens with empty masks (MONAI's conventions, kept as they are):

- an image whose ground truth has no pixel of class c has no Dice, Jaccard or HD95 for class c
  (NaN, left out of the mean over images), whatever the prediction: a false positive there shows
  only in accuracy and in the other classes' scores;
- a class present in the ground truth but absent from the prediction has Dice = Jaccard = 0 and
  no HD95 (the distance to an empty set is undefined: NaN, left out). ``hd95_undefined`` counts
  those image-class pairs, so that a mean HD95 over fewer images is not mistaken for a better one.

The summary values ``dice``, ``jaccard`` and ``hd95`` average the foreground classes 1..M-1 (for
two classes: the lesion / nucleus class, as the paper reports); ``*_per_class`` keeps every class,
background included. HD95 is in pixels (voxels in 3-D).

Per item: ``image_rows`` gives each test item's foreground Dice, Jaccard, HD95 and accuracy by
name (the unit a paired per-image test needs); ``volume_rows`` stacks the slices of a volume
(items named ``<volume>_slice<k>``, e.g. lung-ct's 2-D ``pat_1_slice017``) back into it and
scores each volume in 3-D, HD95 in mm when the slices carry their spacing.
"""

from __future__ import annotations

import math
import re
import warnings

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from monai.networks.utils import one_hot


SLICE_NAME = re.compile(r"^(?P<volume>.+)_slice(?P<index>\d+)$")  # a slice of a volume: pat_1_slice017


def per_image_metrics(prediction: torch.Tensor, label: torch.Tensor, num_classes: int,
                      ignore_index: int | None = None, spacing=None) -> list[dict]:
    """Metrics of each image of a batch.

    Args:
        prediction: (B, *S) integer class map (argmax of the logits), S = (H, W) or (D, H, W).
        label: the ground truth (B, *S).
        num_classes: M.
        ignore_index: pixels with this label are left out (they count for no class and are not
            in the accuracy).
        spacing: the pixel (voxel) size per spatial axis, for HD95 in those units; None: pixels.

    Returns:
        one dict per image: dice, jaccard, hd95 (lists of M floats, NaN where undefined) and
        accuracy (float).
    """
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ")
    prediction, label = prediction[:, None].long(), label[:, None].long()  # MONAI's (B, 1, *S)
    valid = torch.ones_like(label, dtype=torch.bool) if ignore_index is None else label != ignore_index
    label = torch.where(valid, label, torch.zeros_like(label))
    prediction = torch.where(valid, prediction, torch.zeros_like(prediction))
    pred_1h = one_hot(prediction, num_classes) * valid
    label_1h = one_hot(label, num_classes) * valid
    with warnings.catch_warnings():  # MONAI warns on every empty mask: the NaNs say it already
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=True, reduction="none")(pred_1h, label_1h)
        jaccard = MeanIoU(include_background=True, reduction="none")(pred_1h, label_1h)
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            pred_1h, label_1h, spacing=spacing)
    # undefined distances (a mask empty on either side) are NaN, whatever MONAI's version returns
    hd95 = torch.where(torch.isfinite(hd95), hd95, torch.full_like(hd95, float("nan")))
    correct = ((prediction == label) & valid).flatten(1).sum(1)
    counted = valid.flatten(1).sum(1).clamp_min(1)
    accuracy = (correct.double() / counted.double()).tolist()
    rows = []
    for b in range(prediction.shape[0]):
        rows.append({"dice": dice[b].tolist(), "jaccard": jaccard[b].tolist(), "hd95": hd95[b].tolist(),
                     "accuracy": accuracy[b]})
    return rows


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(rows: list[dict], num_classes: int) -> dict:
    """Mean over images of per_image_metrics rows: the summary and the per-class values."""
    out: dict = {"images": len(rows)}
    foreground = range(1, num_classes) if num_classes > 1 else range(num_classes)
    for name in ("dice", "jaccard", "hd95"):
        per_class = [_nanmean([r[name][c] for r in rows]) for c in range(num_classes)]
        out[f"{name}_per_class"] = per_class
        out[name] = _nanmean([per_class[c] for c in foreground])
    out["accuracy"] = _nanmean([r["accuracy"] for r in rows])
    out["hd95_undefined"] = sum(
        1 for r in rows for c in foreground if math.isnan(r["hd95"][c]) and not math.isnan(r["dice"][c]))
    return out


def _foreground(values: list[float], num_classes: int) -> float:
    return _nanmean(values[1:] if num_classes > 1 else values)


def image_rows(rows: list[dict], num_classes: int) -> list[dict]:
    """One row per item of per_image_metrics rows that carry a "name": its foreground Dice,
    Jaccard, HD95 (NaN where undefined, as in the rows) and accuracy."""
    return [{"name": r["name"], "dice": _foreground(r["dice"], num_classes),
             "jaccard": _foreground(r["jaccard"], num_classes), "hd95": _foreground(r["hd95"], num_classes),
             "accuracy": r["accuracy"]} for r in rows]


def volume_rows(slices: list[tuple], num_classes: int, ignore_index: int | None = None) -> list[dict]:
    """Each volume's metrics from its slices, stacked in slice order.

    slices: (name "<volume>_slice<k>", prediction (H, W), label (H, W), spacing (dz, dy, dx) in mm
    or None) per slice. Returns image_rows-like rows, one per volume, with "slices" (how many)
    and HD95 in mm when the slices carry a spacing ("hd95_unit": "mm"), else in voxels.
    """
    volumes: dict[str, list] = {}
    for name, prediction, label, spacing in slices:
        match = SLICE_NAME.match(name)
        volumes.setdefault(match["volume"], []).append((int(match["index"]), prediction, label, spacing))
    out = []
    for volume, parts in sorted(volumes.items()):
        parts.sort(key=lambda part: part[0])
        prediction = torch.stack([torch.as_tensor(part[1]) for part in parts])[None]  # (1, D, H, W)
        label = torch.stack([torch.as_tensor(part[2]) for part in parts])[None]
        spacing = parts[0][3]
        (row,) = per_image_metrics(prediction, label, num_classes, ignore_index,
                                   spacing=None if spacing is None else [float(v) for v in spacing])
        (scored,) = image_rows([{**row, "name": volume}], num_classes)
        out.append({**scored, "slices": len(parts), "hd95_unit": "voxels" if spacing is None else "mm"})
    return out


def batch_dice(logits: torch.Tensor, label: torch.Tensor, num_classes: int,
               ignore_index: int | None = None) -> float:
    """Foreground Dice of a training batch, for the progress bar (Dice only: HD95 is slow).
    logits (B, M, *S), label (B, 1, *S)."""
    prediction, label = logits.argmax(1, keepdim=True), label.long()
    valid = torch.ones_like(label, dtype=torch.bool) if ignore_index is None else label != ignore_index
    label = torch.where(valid, label, torch.zeros_like(label))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=False, reduction="none")(
            one_hot(prediction, num_classes) * valid, one_hot(label, num_classes) * valid)  # (B, M-1)
    return float(dice.nanmean()) if not dice.isnan().all() else float("nan")
