"""Figures of a run: training curves (progress.png) and overlays (the paper's Fig. 9).

matplotlib with the Agg backend: files only, no screen needed.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis; a single epoch centred, not on a 0.96-1.04 axis."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)


def _single_value_range(ax, values: list[float], *, from_zero: bool) -> None:
    """A y range for one point: from 0 (losses) or +-10 % around it, not matplotlib's +-4 %."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) == 1 and finite[0] != 0:
        v = finite[0]
        ax.set_ylim((0, 1.25 * v) if from_zero and v > 0 else (v - 0.1 * abs(v), v + 0.1 * abs(v)))


def progress(history: list[dict], path, title: str = "", seg_name: str = "cross-entropy") -> None:
    """progress_figure saved as a PNG at `path` (a file name or a binary file object)."""
    fig = progress_figure(history, title, seg_name)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def progress_figure(history: list[dict], title: str = "", seg_name: str = "cross-entropy"):
    """Training curves per epoch, each on its own axis: the segmentation loss; the PDCR loss
    (weight x eq. 12: thousands next to a cross-entropy below 1, hence its own panel); each PDCR
    term relative to its first epoch (their sizes differ by orders of magnitude and include a
    constant, so their change is what to read; from 2 epochs on); the gradient balance
    ||grad PDCR|| / ||grad seg|| of every measured step, on a log axis against the step (when
    measured); validation Dice and Jaccard."""
    epochs = [h["epoch"] + 1 for h in history]
    terms = sorted({name for h in history for name in h.get("train_terms", {})})
    has_pdcr = bool(terms) or any(h.get("train_pdcr") for h in history)
    measured = [m for h in history for m in h.get("balance", {}).get("values", [])]
    kinds = (["seg"] + (["pdcr"] if has_pdcr else []) + (["terms"] if terms and len(history) > 1 else [])
             + (["balance"] if measured else []) + ["val"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.9 * len(kinds), 3.5), layout="constrained", squeeze=False)
    for kind, ax in zip(kinds, axes[0]):
        if kind == "balance":
            _balance_panel(ax, measured, "CE" if seg_name == "cross-entropy" else seg_name)
            continue
        _epoch_axis(ax, epochs)
        if kind == "seg":
            values = [h["train_seg"] for h in history]
            ax.plot(epochs, values, "o-", color="tab:orange", markersize=4)
            ax.set_title("segmentation loss (training)", fontsize=9)
            ax.set_ylabel(seg_name)
            if len(history) > 1:
                ax.set_ylim(bottom=0)
            _single_value_range(ax, values, from_zero=True)
        elif kind == "pdcr":
            values = [h.get("train_pdcr", 0.0) for h in history]
            ax.plot(epochs, values, "o-", color="tab:purple", markersize=4)
            ax.set_title("PDCR loss (training)", fontsize=9)
            ax.set_ylabel("weight × eq. 12")
            _single_value_range(ax, values, from_zero=False)
        elif kind == "terms":
            for name in terms:
                values = [h["train_terms"].get(name) for h in history]
                first = next((v for v in values if v), None)
                if first:
                    ax.plot(epochs, [100 * v / first if v is not None else None for v in values], "o-",
                            markersize=3, label=name)
            ax.set_title("PDCR terms (training)", fontsize=9)
            ax.set_ylabel("% of epoch 1")
            ax.legend(fontsize=7)
        else:
            dice = [h["val"]["dice"] for h in history]
            ax.plot(epochs, dice, "o-", color="tab:green", label="Dice", markersize=4)
            ax.plot(epochs, [h["val"]["jaccard"] for h in history], "s--", color="tab:olive", label="Jaccard",
                    markersize=4)
            ax.set_title("validation (foreground)", fontsize=9)
            ax.set_ylabel("score")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=8, loc="lower right")
            if all(d is None or math.isnan(d) for d in dice):
                ax.text(0.5, 0.5, "undefined: no foreground\nin the validation images", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8, color="0.4")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _balance_panel(ax, measured: list[dict], seg: str = "CE") -> None:
    """||grad PDCR|| / ||grad seg|| against the step, log axis; a line at 1 (the two level), and
    where --pdcr-target-ratio changed the weight, a mark."""
    steps = [m["step"] for m in measured]
    ratios = [m["ratio"] if m["ratio"] > 0 and math.isfinite(m["ratio"]) else float("nan") for m in measured]
    ax.plot(steps, ratios, "o-", color="tab:red", markersize=3, linewidth=1)
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    weights = [m["pdcr_weight"] for m in measured]
    for before, after, step in zip(weights, weights[1:], steps):
        if after != before:  # set after `step` (the last one measured at the old weight)
            ax.axvline(step + 0.5, color="tab:blue", linewidth=0.8, linestyle="--",
                       label=f"weight {before:.3g} → {after:.3g}")
            ax.legend(fontsize=7)
    ax.set_title("gradient balance (shared weights)", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(f"‖∇ PDCR‖ / ‖∇ {seg}‖")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(steps) == 1:
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
    ax.grid(alpha=0.3, which="both")


def class_colours(num_classes: int) -> list[tuple[float, float, float]]:
    """Display colours of the classes 1..M-1 (overlays and predict's palette masks): one gold
    for a binary task, matplotlib's tab10 (then tab20) for more classes."""
    if num_classes <= 2:
        return [matplotlib.colors.to_rgb("gold")]
    table = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"]
    return [table(i % table.N)[:3] for i in range(num_classes - 1)]


def _class_style(num_classes: int) -> dict:
    colours = ListedColormap([(0, 0, 0)] + class_colours(num_classes))
    return dict(cmap=colours, norm=BoundaryNorm(np.arange(-0.5, num_classes), num_classes),
                interpolation="nearest")


def _class_legend(fig, num_classes: int, class_names) -> None:
    """A legend of the foreground classes' colours below the panels (more than one class)."""
    if num_classes <= 2:
        return
    names = list(class_names or []) or [f"class {c}" for c in range(num_classes)]
    handles = [Patch(color=colour, alpha=0.7, label=f"{c + 1}: {names[c + 1] if c + 1 < len(names) else c + 1}")
               for c, colour in enumerate(class_colours(num_classes))]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def _image(array: np.ndarray) -> np.ndarray:
    """(C, H, W) -> something imshow takes: RGB (H, W, 3) for three channels, else the first
    channel in grey (H, W) (one modality of a multi-modal scan), scaled to [0, 1]."""
    array = np.asarray(array, dtype=np.float32)
    array = np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]
    lo, hi = float(array.min()), float(array.max())
    return (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)


def overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, path, **options) -> None:
    """overlay_figure saved as a PNG at `path` (a file name or a binary file object)."""
    fig = overlay_figure(image, label, prediction, **options)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def overlay_figure(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                   uncertainty: np.ndarray | None = None, uncertainty_name: str = "", title: str = "",
                   num_classes: int = 2, class_names=None):
    """Image | ground truth | prediction | UAFR's uncertainty map, side by side (Fig. 9).

    image (C, H, W); label, prediction (H, W) integer; uncertainty (h, w) in [0, 1] (the layer's
    resolution, shown stretched over the image) or None. Contours of the ground truth are drawn
    on the prediction panel, so that misses and false positives stand out. With more than two
    classes a legend names each class's colour.
    """
    panels = 4 if uncertainty is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.7 if num_classes > 2 else 3.5),
                             layout="constrained")
    shown = _image(image)
    cmap = "gray" if shown.ndim == 2 else None
    axes[0].imshow(shown, cmap=cmap)
    axes[0].set_title("image", fontsize=9)
    classes = _class_style(num_classes)
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
    _class_legend(fig, num_classes, class_names)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def volume_overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, path,
                   uncertainty: np.ndarray | None = None, uncertainty_name: str = "", title: str = "",
                   num_classes: int = 2, slices: int = 3, class_names=None) -> None:
    """A volume as `slices` rows of overlay panels, slices along the first axis at 1/4, 1/2 and
    3/4 of the depth: image | truth | prediction (truth edge in red) | UAFR's uncertainty.

    image (C, D, H, W); label, prediction (D, H, W); uncertainty (D, H, W) or None.
    """
    depth = label.shape[0]
    picks = sorted({min(depth - 1, max(0, round(depth * (i + 1) / (slices + 1)))) for i in range(slices)})
    panels = 4 if uncertainty is not None else 3
    H, W = label.shape[1:]
    panel = 3.0 if W >= H else 3.0 * W / H  # panels keep the slice's aspect ratio
    fig, axes = plt.subplots(len(picks), panels, squeeze=False, layout="constrained",
                             figsize=(panel * panels + 0.8, panel * H / W * len(picks) + 0.9))
    classes = _class_style(num_classes)
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
    _class_legend(fig, num_classes, class_names)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
