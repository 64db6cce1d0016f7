"""The paper's metrics (MONAI's Dice, Jaccard, HD95; pixel accuracy) against hand-computed values."""

import math

import pytest
import torch

from pdcr_seg.metrics import batch_dice, per_image_metrics, summarize


def _square(size, top, left, side):
    m = torch.zeros(size, size, dtype=torch.long)
    m[top:top + side, left:left + side] = 1
    return m


def test_dice_jaccard_accuracy_hd95_by_hand():
    label = _square(10, 2, 2, 4)  # 16 foreground pixels
    prediction = _square(10, 2, 2, 4)
    prediction[2:6, 6] = 1  # 4 false positives beside it
    (row,) = per_image_metrics(prediction[None], label[None], 2)
    tp, fp, fn = 16, 4, 0
    assert row["dice"][1] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 32 / 36
    assert row["jaccard"][1] == pytest.approx(tp / (tp + fp + fn))  # 16 / 20
    assert row["accuracy"] == pytest.approx(96 / 100)
    # background: 84 true pixels, 80 of them predicted background
    assert row["dice"][0] == pytest.approx(2 * 80 / (80 + 84))
    # HD95 (MONAI: symmetric, 95th percentile of the surface distances): the extra column is 1
    # pixel away from the truth's edge, every other surface point 0
    assert 0 < row["hd95"][1] <= 1.0 + 1e-6


def test_empty_masks_follow_the_stated_conventions():
    empty = torch.zeros(8, 8, dtype=torch.long)
    square = _square(8, 2, 2, 3)
    rows = per_image_metrics(torch.stack([square, empty, square]), torch.stack([empty, square, square]), 2)
    # 1) no foreground in the truth: no Dice / Jaccard / HD95 for it, whatever the prediction
    assert math.isnan(rows[0]["dice"][1]) and math.isnan(rows[0]["jaccard"][1]) and math.isnan(rows[0]["hd95"][1])
    # 2) foreground missed entirely: Dice = Jaccard = 0, HD95 undefined (NaN, never inf)
    assert rows[1]["dice"][1] == 0 and rows[1]["jaccard"][1] == 0 and math.isnan(rows[1]["hd95"][1])
    # 3) perfect
    assert rows[2]["dice"][1] == 1 and rows[2]["hd95"][1] == 0
    summary = summarize(rows, 2)
    assert summary["dice"] == pytest.approx(0.5)  # mean of 0 and 1; image 1 left out
    assert summary["hd95"] == 0 and summary["hd95_undefined"] == 1
    assert summary["accuracy"] == pytest.approx((55 / 64 + 55 / 64 + 1) / 3)


def test_ignore_index_pixels_are_left_out():
    label = _square(6, 0, 0, 3)
    label[5, :] = 255
    prediction = label.clone()
    prediction[5, :] = 1  # whatever is predicted on unlabelled pixels does not count
    (row,) = per_image_metrics(prediction[None], label[None], 2, ignore_index=255)
    assert row["dice"][1] == 1 and row["accuracy"] == 1


def test_volumes_and_the_batch_dice():
    label = torch.zeros(1, 4, 6, 6, dtype=torch.long)
    label[0, 1:3, 1:4, 1:4] = 1
    (row,) = per_image_metrics(label.clone(), label, 2)
    assert row["dice"][1] == 1 and row["accuracy"] == 1
    logits = torch.stack([1 - label, label], 1).float()  # argmax = label
    assert batch_dice(logits, label[:, None], 2) == 1.0
