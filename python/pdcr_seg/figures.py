"""Figures of a run: training curves (progress.png) and overlays (the paper's Fig. 9).

matplotlib with the Agg backend: files only, no screen needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def progress(history: list[dict], path: str | Path, title: str = "") -> None:
    """Training curves per epoch: the segmentation loss; each PDCR term relative to its first
    epoch (their sizes differ by orders of magnitude and include a constant, so their change is
    what to read); validation Dice and Jaccard."""
    epochs = [h["epoch"] + 1 for h in history]
    terms = sorted({name for h in history for name in h.get("train_terms", {})})
    panels = 3 if terms else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    seg = axes[0]
    seg.plot(epochs, [h["train_seg"] for h in history], "o-", color="tab:orange")
    seg.set_title("segmentation loss (training)", fontsize=9)
    seg.set_xlabel("epoch")
    if all(h["train_seg"] > 0 for h in history):
        seg.set_yscale("log")
    seg.grid(alpha=0.3)
    if terms:
        pdcr = axes[1]
        for name in terms:
            values = [h["train_terms"].get(name) for h in history]
            first = next((v for v in values if v), None)
            if first:
                pdcr.plot(epochs, [100 * v / first if v is not None else None for v in values], "o-",
                          markersize=3, label=name)
        pdcr.set_title("PDCR terms (% of the first epoch)", fontsize=9)
        pdcr.set_xlabel("epoch")
        pdcr.legend(fontsize=7)
        pdcr.grid(alpha=0.3)
    val = axes[-1]
    val.plot(epochs, [h["val"]["dice"] for h in history], "o-", color="tab:green", label="Dice")
    val.plot(epochs, [h["val"]["jaccard"] for h in history], "s--", color="tab:olive", label="Jaccard")
    val.set_title("validation (foreground)", fontsize=9)
    val.set_xlabel("epoch")
    val.set_ylim(0, 1)
    val.legend(fontsize=8)
    val.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _image(array: np.ndarray) -> np.ndarray:
    """(C, H, W) -> something imshow takes: RGB (H, W, 3) for three channels, else the first
    channel in grey (H, W) (one modality of a multi-modal scan), scaled to [0, 1]."""
    array = np.asarray(array, dtype=np.float32)
    array = np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]
    lo, hi = float(array.min()), float(array.max())
    return (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)


def overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, path: str | Path,
            uncertainty: np.ndarray | None = None, uncertainty_name: str = "", title: str = "",
            num_classes: int = 2) -> None:
    """Image | ground truth | prediction | UAFR's uncertainty map, side by side (Fig. 9).

    image (C, H, W); label, prediction (H, W) integer; uncertainty (h, w) in [0, 1] (the layer's
    resolution, shown stretched over the image) or None. Contours of the ground truth are drawn
    on the prediction panel, so that misses and false positives stand out.
    """
    panels = 4 if uncertainty is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4))
    shown = _image(image)
    cmap = "gray" if shown.ndim == 2 else None
    axes[0].imshow(shown, cmap=cmap)
    axes[0].set_title("image", fontsize=9)
    classes = dict(cmap="viridis", vmin=0, vmax=max(num_classes - 1, 1), interpolation="nearest")
    axes[1].imshow(shown, cmap=cmap)
    axes[1].imshow(np.ma.masked_equal(label, 0), alpha=0.55, **classes)
    axes[1].set_title("ground truth", fontsize=9)
    axes[2].imshow(shown, cmap=cmap)
    axes[2].imshow(np.ma.masked_equal(prediction, 0), alpha=0.55, **classes)
    for c in range(1, num_classes):
        if (label == c).any():
            axes[2].contour(label == c, levels=[0.5], colors="red", linewidths=0.8)
    axes[2].set_title("prediction (red: ground-truth edge)", fontsize=9)
    if uncertainty is not None:
        H, W = label.shape
        im = axes[3].imshow(uncertainty, cmap="magma", vmin=0, vmax=1, extent=(0, W, H, 0))
        axes[3].set_title(f"UAFR uncertainty U ({uncertainty_name})", fontsize=9)
        fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def volume_overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, path: str | Path,
                   uncertainty: np.ndarray | None = None, uncertainty_name: str = "", title: str = "",
                   num_classes: int = 2, slices: int = 3) -> None:
    """A volume as `slices` rows of overlay panels, slices along the first axis at 1/4, 1/2 and
    3/4 of the depth: image | truth | prediction (truth edge in red) | UAFR's uncertainty.

    image (C, D, H, W); label, prediction (D, H, W); uncertainty (D, H, W) or None.
    """
    depth = label.shape[0]
    picks = sorted({min(depth - 1, max(0, round(depth * (i + 1) / (slices + 1)))) for i in range(slices)})
    panels = 4 if uncertainty is not None else 3
    H, W = label.shape[1:]
    panel = 3.0 if W >= H else 3.0 * W / H  # panels keep the slice's aspect ratio
    fig, axes = plt.subplots(len(picks), panels, squeeze=False,
                             figsize=(panel * panels + 0.8, panel * H / W * len(picks) + 0.9))
    classes = dict(cmap="viridis", vmin=0, vmax=max(num_classes - 1, 1), interpolation="nearest")
    for row, z in enumerate(picks):
        shown = _image(image[:, z])
        cmap = "gray" if shown.ndim == 2 else None
        axes[row, 0].imshow(shown, cmap=cmap)
        axes[row, 0].set_ylabel(f"slice {z}", fontsize=8)
        axes[row, 1].imshow(shown, cmap=cmap)
        axes[row, 1].imshow(np.ma.masked_equal(label[z], 0), alpha=0.55, **classes)
        axes[row, 2].imshow(shown, cmap=cmap)
        axes[row, 2].imshow(np.ma.masked_equal(prediction[z], 0), alpha=0.55, **classes)
        for c in range(1, num_classes):
            if (label[z] == c).any():
                axes[row, 2].contour(label[z] == c, levels=[0.5], colors="red", linewidths=0.8)
        if uncertainty is not None:
            im = axes[row, 3].imshow(uncertainty[z], cmap="magma", vmin=0, vmax=1)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], ("image", "ground truth", "prediction (red: truth edge)",
                                  f"UAFR uncertainty U ({uncertainty_name})")):
        ax.set_title(name, fontsize=9)
    if uncertainty is not None:
        fig.colorbar(im, ax=axes[:, 3].tolist(), fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
