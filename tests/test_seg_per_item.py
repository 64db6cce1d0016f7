"""Per-item test metrics: every test image by name, and the slices of a volume stacked back into
it (lung-ct in 2-D: per patient), against hand values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pdcr_seg import distributed
from pdcr_seg.evaluate import evaluate
from pdcr_seg.metrics import image_rows, per_image_metrics, volume_rows


def test_image_rows_average_the_foreground_classes_by_name():
    label = torch.tensor([[[0, 1, 2, 2]], [[0, 0, 0, 0]]])  # (2, 1, 4): image b has no foreground
    prediction = torch.tensor([[[0, 1, 2, 0]], [[0, 1, 0, 0]]])
    rows = per_image_metrics(prediction, label, 3)
    a, b = image_rows([{**r, "name": n} for r, n in zip(rows, ("a", "b"))], 3)
    assert a["name"] == "a" and a["dice"] == pytest.approx((1.0 + 2 / 3) / 2)  # class 1: 1, class 2: 2*1/(1+2)
    assert a["accuracy"] == pytest.approx(3 / 4)
    assert b["name"] == "b" and math.isnan(b["dice"]) and math.isnan(b["hd95"])  # no foreground: undefined


def _slice(mask_rows, size=6):
    m = torch.zeros(size, size, dtype=torch.long)
    for r in mask_rows:
        m[r, 2:4] = 1
    return m


def test_volume_rows_stack_slices_in_order_with_hd95_in_mm():
    spacing = (3.0, 0.5, 0.5)
    empty, full = _slice([]), _slice([2, 3])
    # volume p: truth on slices 1 and 2 (8 voxels), prediction on slice 1 only (4): Dice 2*4/(8+4)
    # volume q: truth on slice 0, prediction one slice further (z = 1): Dice 0, every distance 3 mm
    slices = [("p_slice002", empty, full, spacing), ("p_slice000", empty, empty, spacing),
              ("p_slice001", full, full, spacing),
              ("q_slice001", full, empty, spacing), ("q_slice000", empty, full, spacing)]
    p, q = volume_rows(slices, 2)
    assert (p["name"], p["slices"], q["name"], q["slices"]) == ("p", 3, "q", 2)
    assert p["dice"] == pytest.approx(2 * 4 / (8 + 4)) and q["dice"] == 0.0
    assert q["hd95"] == pytest.approx(3.0) and q["hd95_unit"] == "mm"
    # p: the missed slice's surface is 3 mm from the predicted one; MONAI's HD95 of the stack
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    pred = torch.stack([empty, full, empty])[None, None]
    truth = torch.stack([empty, full, full])[None, None]
    want = compute_hausdorff_distance(one_hot(pred, 2), one_hot(truth, 2), percentile=95, spacing=list(spacing))
    assert p["hd95"] == pytest.approx(float(want[0, 0]))
    (unit,) = volume_rows([(n, pr, la, None) for n, pr, la, _ in slices[3:]], 2)
    assert unit["hd95"] == pytest.approx(1.0) and unit["hd95_unit"] == "voxels"


class _Echo(nn.Module):
    """A 'model' whose logits are its input: the prediction is the argmax of the image's channels."""

    def forward(self, x):
        return x


def test_evaluate_gives_per_image_and_per_volume_rows_and_validation_skips_them():
    truth = [_slice([]), _slice([2, 3]), _slice([2, 3])]
    guess = [_slice([]), _slice([2, 3]), _slice([])]
    items = [{"image": torch.nn.functional.one_hot(g, 2).permute(2, 0, 1).float(), "label": t[None],
              "name": f"pat_7_slice{k:03d}", "spacing": (3.0, 1.0, 1.0)} for k, (g, t) in enumerate(zip(guess, truth))]
    ctx = distributed.Context(0, 1, 0, torch.device("cpu"))
    result = evaluate(_Echo(), items, 2, ctx, batch_size=2)
    assert [r["name"] for r in result["per_image"]] == ["pat_7_slice000", "pat_7_slice001", "pat_7_slice002"]
    assert [r["dice"] for r in result["per_image"]][1:] == [1.0, 0.0] and math.isnan(result["per_image"][0]["dice"])
    assert result["dice"] == pytest.approx(0.5)  # the mean over images with foreground
    (patient,) = result["per_volume"]
    assert patient["name"] == "pat_7" and patient["slices"] == 3 and patient["dice"] == pytest.approx(2 * 4 / 12)
    assert patient["hd95"] == pytest.approx(3.0) and patient["hd95_unit"] == "mm"
    summary_only = evaluate(_Echo(), items, 2, ctx, per_item=False)
    assert "per_image" not in summary_only and "per_volume" not in summary_only
