"""The experiment figures: ablation.png, limited_data.png, embedding.png, uncertainty.png."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .figures import _image, plt


def ablation(tables: dict, path: Path) -> None:
    """Test Dice per arm (mean ± sd over seeds), one panel per data set and model."""
    if not tables:
        return
    fig, axes = plt.subplots(1, len(tables), figsize=(4.3 * len(tables), 3.8), squeeze=False)
    for ax, (title, table) in zip(axes[0], tables.items()):
        names = [e["arm"] for e in table]
        means = [e["dice"][0] for e in table]
        sds = [0 if math.isnan(e["dice"][1]) else e["dice"][1] for e in table]
        colors = ["0.6"] + [f"C{i}" for i in range(len(table) - 1)]
        ax.bar(range(len(table)), means, yerr=sds, capsize=3, color=colors)
        for i, e in enumerate(table[1:], start=1):
            d = e.get(f"dice_vs_{table[0]['arm']}")
            if d and d["n"] > 1 and not (d["low"] <= 0 <= d["high"]):
                ax.text(i, means[i] + sds[i], "*", ha="center", va="bottom")
        ax.set_xticks(range(len(table)), names, rotation=35, ha="right", fontsize=8)
        low = min(m - s for m, s in zip(means, sds))
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(m + s for m, s in zip(means, sds)) + 0.03))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("test Dice (mean ± sd over seeds)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def limited_data(limited: dict, path: Path) -> None:
    """Test Dice against the fraction of the training split, per arm, with sd error bars."""
    if not limited:
        return
    series: dict[tuple[str, str], list] = {}
    for key, table in limited.items():
        data, fraction = key.rsplit(" ", 1)
        for e in table:
            series.setdefault((data, e["arm"]), []).append((float(fraction), *e["dice"][:2]))
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for (data, arm), points in sorted(series.items()):
        points.sort()
        x = [100 * p[0] for p in points]
        ax.errorbar(x, [p[1] for p in points], yerr=[0 if math.isnan(p[2]) else p[2] for p in points],
                    marker="o", capsize=3, label=f"{arm} ({data})")
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100], ["10 %", "25 %", "50 %", "100 %"])
    ax.set_xlabel("training data used")
    ax.set_ylabel("test Dice (mean ± sd over seeds)")
    ax.set_title("limited data (the paper's Fig. 7)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hidden_vectors(checkpoint: Path, layer_index: int = 2, tiles: int = 16):
    """Vectors of encoder stage `layer_index + 1` at every position of the first test tiles, and
    the foreground share of the image cell each position covers. (n, C), (n,)."""
    from .data import build_datasets
    from .evaluate import load_run

    model, _, cfg, state = load_run(checkpoint, torch.device("cpu"))
    layer = model.paper_layers.encoder[layer_index]
    bundle = build_datasets(cfg.data, image_size=cfg.image_size, seed=cfg.seed, augment=False, fold=cfg.fold)
    captured = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.update(out=o))
    vectors, shares = [], []
    with torch.no_grad():
        for index in range(min(tiles, len(bundle.test))):
            item = bundle.test[index]
            model(item["image"][None])
            feature = captured["out"][0]  # (C, h, w)
            C, h, w = feature.shape
            foreground = (item["label"][0] > 0).float()[None, None]
            share = torch.nn.functional.adaptive_avg_pool2d(foreground, (h, w))[0, 0]
            vectors.append(feature.reshape(C, -1).T)
            shares.append(share.reshape(-1))
    hook.remove()
    return torch.cat(vectors).numpy(), torch.cat(shares).numpy(), layer


def separation(vectors: np.ndarray, shares: np.ndarray) -> float:
    """Fisher's ratio of the pure-background (share 0) and pure-foreground (share 1) cells:
    squared distance of their means over the sum of their mean variances, in the full space."""
    bg, fg = vectors[shares == 0], vectors[shares == 1]
    if len(bg) < 2 or len(fg) < 2:
        return math.nan
    between = float(((bg.mean(0) - fg.mean(0)) ** 2).sum())
    within = float(bg.var(0).sum() + fg.var(0).sum())
    return between / within if within > 0 else math.nan


def embedding(checkpoints: dict[str, Path], path: Path) -> dict[str, float]:
    """PCA (t-SNE when scikit-learn is installed) of encoder-stage-3 vectors of the test tiles,
    coloured by the foreground share of each position's cell, one panel per arm (Fig. 8)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4.6 * len(checkpoints), 4.2), squeeze=False)
    scores = {}
    for ax, (arm, checkpoint) in zip(axes[0], checkpoints.items()):
        vectors, shares, layer = hidden_vectors(checkpoint)
        scores[arm] = separation(vectors, shares)
        centred = vectors - vectors.mean(0)
        if TSNE is not None:
            points = TSNE(2, init="pca", random_state=0).fit_transform(centred)
            method = "t-SNE"
        else:
            _, _, v = np.linalg.svd(centred, full_matrices=False)
            points = centred @ v[:2].T
            method = "PCA"
        order = np.argsort(np.abs(shares - 0.5))[::-1]  # boundary cells drawn last, on top
        sc = ax.scatter(points[order, 0], points[order, 1], c=shares[order], cmap="coolwarm", s=4, vmin=0, vmax=1)
        ax.set_title(f"{arm}: {layer} ({method}); Fisher ratio {scores[arm]:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="foreground share of the cell")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return scores


def uncertainty(checkpoint: Path, path: Path, tiles: int = 3) -> None:
    """Test tiles of a UAFR run: image | truth | prediction | U of encoder stage 2 (Fig. 9)."""
    from .data import build_datasets
    from .evaluate import load_run, predict_logits, uncertainty_layer

    model, handle, cfg, _ = load_run(checkpoint, torch.device("cpu"))
    layer = uncertainty_layer(model, handle)
    bundle = build_datasets(cfg.data, image_size=cfg.image_size, seed=cfg.seed, augment=False, fold=cfg.fold)
    count = min(tiles, len(bundle.test))
    fig, axes = plt.subplots(count, 4, figsize=(11, 2.9 * count), squeeze=False)
    for row in range(count):
        item = bundle.test[row]
        prediction = predict_logits(model, item["image"][None]).argmax(1)[0].numpy()
        u = handle.uncertainty[layer][0].float().numpy()
        image = _image(item["image"].numpy())
        cmap = "gray" if image.ndim == 2 else None
        label = item["label"][0].numpy()
        H, W = label.shape
        axes[row, 0].imshow(image, cmap=cmap)
        axes[row, 1].imshow(label, cmap="viridis", interpolation="nearest")
        axes[row, 2].imshow(prediction, cmap="viridis", interpolation="nearest")
        im = axes[row, 3].imshow(u, cmap="magma", vmin=0, vmax=1, extent=(0, W, H, 0))
        axes[row, 3].contour(label > 0, levels=[0.5], colors="cyan", linewidths=0.6)
        for ax, name in zip(axes[row], ("image", "ground truth", "prediction", f"U ({layer}), truth edge in cyan")):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[:, 3].tolist(), fraction=0.04)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_all(plan: dict, runs, rows, tables: dict, limited: dict, folder: Path) -> dict:
    """Every figure the plan's finished runs allow; returns the embedding separation scores."""
    ablation({k: v for k, v in tables.items() if k.startswith("ablation")}, folder / "ablation.png")
    limited_data(limited, folder / "limited_data.png")
    done = {r.key: r for r in runs if (Path(r.config.out) / "checkpoint_best.pt").is_file()}

    def first(arm: str):
        for run in done.values():
            if run.arm == arm and run.seed == plan["seeds"][0] and run.fraction == 1.0 and run.study == "ablation" \
                    and run.model == plan.get("settings", {}).get("model", "unet"):
                return Path(run.config.out) / "checkpoint_best.pt"
        return None

    scores = {}
    baseline = first("baseline")
    pdcr_arm = next((arm for arm in ("H-PDCR", "H-PDCR + UAFR") if first(arm)), None)
    if baseline and pdcr_arm:
        scores = embedding({"baseline": baseline, pdcr_arm: first(pdcr_arm)}, folder / "embedding.png")
    both = first("H-PDCR + UAFR") or first("UAFR")
    if both:
        uncertainty(both, folder / "uncertainty.png")
    return scores
