"""Figures a person reads at a glance: labelled axes, whole epochs, one epoch drawn sensibly, the
PDCR loss on its own axis, a legend for several classes, titles that do not overlap."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pdcr_seg import figures


def epoch(i: int, seg: float, pdcr: float = 0.0, dice: float = 0.5) -> dict:
    terms = {"enc2": 2e5 - i, "enc3": 4e4 - i} if pdcr else {}
    return {"epoch": i, "train_seg": seg, "train_pdcr": pdcr, "train_terms": terms,
            "val": {"dice": dice, "jaccard": dice * 0.8}}


def axes_by_title(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes}


def test_progress_labels_every_axis_and_keeps_pdcr_on_its_own():
    history = [epoch(i, 0.66 - 0.05 * i, 3700 - 10 * i, 0.5 + 0.05 * i) for i in range(7)]
    fig = figures.progress_figure(history, "unet on nuclei + PDCR")
    panels = axes_by_title(fig)
    assert set(panels) == {"segmentation loss (training)", "PDCR loss (training)", "PDCR terms (training)",
                           "validation (foreground)"}
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel(), ax.get_title()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks  # whole epochs only
    seg, pdcr = panels["segmentation loss (training)"], panels["PDCR loss (training)"]
    assert seg.get_ylim()[1] < 1 and pdcr.get_ylim()[0] > 3000  # each on its own scale
    plt.close(fig)


def test_one_epoch_is_a_readable_point_not_a_tiny_axis():
    fig = figures.progress_figure([epoch(0, 0.66, 3700, 0.7)])
    panels = axes_by_title(fig)
    assert "PDCR terms (training)" not in panels  # relative change needs two epochs
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1] and ax.get_xlim() == (0, 2)
    low, high = panels["segmentation loss (training)"].get_ylim()
    assert low == 0 and high > 0.66 * 1.2  # not matplotlib's 0.96-1.04 of the value
    low, high = panels["PDCR loss (training)"].get_ylim()
    assert high - low > 0.15 * 3700
    plt.close(fig)


def test_an_undefined_validation_dice_says_so():
    fig = figures.progress_figure([epoch(0, 0.5, dice=math.nan), epoch(1, 0.4, dice=math.nan)])
    texts = [t.get_text() for t in axes_by_title(fig)["validation (foreground)"].texts]
    assert any("undefined" in t for t in texts)
    plt.close(fig)


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("num_classes", [2, 4])
def test_overlay_titles_do_not_overlap_and_several_classes_get_a_legend(num_classes):
    rng = np.random.default_rng(0)
    label = rng.integers(0, num_classes, (32, 32))
    fig = figures.overlay_figure(rng.random((3, 32, 32)), label, label, uncertainty=rng.random((8, 8)),
                                 uncertainty_name="enc2", title="a long title of the run — ISIC_0000000",
                                 num_classes=num_classes,
                                 class_names=("background",) + tuple(f"organ{c}" for c in range(1, num_classes)))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_title():
            assert not _boxes_overlap(title, ax.title.get_window_extent(renderer)), ax.get_title()
    legends = fig.legends
    if num_classes == 2:
        assert not legends
    else:
        labels = [t.get_text() for t in legends[0].get_texts()]
        assert labels == [f"{c}: organ{c}" for c in range(1, num_classes)]
        legend = legends[0].get_window_extent(renderer)
        assert not any(_boxes_overlap(legend, ax.get_window_extent(renderer)) for ax in fig.axes[:3])
    plt.close(fig)


def test_class_colours_match_the_legend_and_differ():
    colours = figures.class_colours(5)
    assert len(colours) == 4 and len(set(colours)) == 4
