"""The experiment figures: sweep.png, ablation.png, limited_data.png, embedding.png, uncertainty.png;
and the separability numbers (Fisher ratio) over every seed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .figures import _image, plt


def sweep(tables: dict, path: Path) -> None:
    """The weight sweep: each PDCR arm's paired difference to the baseline (mean and 95 %
    t-interval over seeds) in test Dice and HD95, against the gradient ratio it trained with
    (median of its measured ||grad PDCR|| / ||grad seg||, mean over seeds; log axis). One column
    per data set; the paper's fixed weight drawn as a square."""
    tables = {title: table for title, table in tables.items() if len(table) > 1}
    if not tables:
        return
    fig, axes = plt.subplots(2, len(tables), figsize=(4.6 * len(tables), 6.4), squeeze=False)
    for column, (title, table) in enumerate(tables.items()):
        for row, (metric, name) in enumerate((("dice", "Δ test Dice"), ("hd95", "Δ test HD95 (px)"))):
            ax = axes[row, column]
            drawn = 0
            for e in table[1:]:
                d, ratio = e.get(f"{metric}_vs_baseline"), e["grad_ratio"][0]
                if not d or d["n"] < 1 or math.isnan(d["mean"]) or not (ratio > 0 and math.isfinite(ratio)):
                    continue
                drawn += 1
                paper = e["target_ratio"] is None
                half = 0.0 if math.isnan(d["high"]) else d["high"] - d["mean"]
                ax.errorbar([ratio], [d["mean"]], yerr=[half], fmt="s" if paper else "o", capsize=3,
                            color="tab:orange" if paper else ("tab:red" if d.get("p_holm", 1) < 0.05 else "tab:blue"))
                label = f"w {e['pdcr_weight'][0]:.2g}" if paper else f"R {e['target_ratio']:g}"
                ax.annotate(label, (ratio, d["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if not drawn:
                ax.text(0.5, 0.5, "no arm has this difference defined", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8, color="0.4")
            ax.axhline(0, color="0.4", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_ylabel(name + " vs baseline", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(title, fontsize=9)
            else:
                ax.set_xlabel("‖∇PDCR‖ / ‖∇seg‖ while training (median)", fontsize=8)
    fig.suptitle("PDCR weight sweep: circles set by the gradient ratio R (red: Holm p < 0.05), "
                 "square the paper's weight; bars 95 % t-intervals over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        for i, e in enumerate(table[1:], start=1):  # * where the seed-paired Holm-adjusted p < 0.05
            d = e.get("dice_vs_baseline")
            if d and d["n"] > 1 and d.get("p_holm", 1.0) < 0.05:
                ax.text(i, means[i] + sds[i], "*", ha="center", va="bottom")
        ax.set_xticks(range(len(table)), names, rotation=35, ha="right", fontsize=8)
        low = min(m - s for m, s in zip(means, sds))
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(m + s for m, s in zip(means, sds)) + 0.03))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("test Dice (mean ± sd over seeds; * Holm p < 0.05)", fontsize=8)
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


# The layers of the separability check, by encoder stage index: stage 3 carries a PDCR term under
# every preset; stage 1 carries none (PDCR's gradient reaches it only through stage 2).
SEPARABILITY_LAYERS = {2: "PDCR term", 0: "no PDCR term: sanity check"}


def hidden_vectors(checkpoint: Path, layer_indices=(2,), tiles: int = 16) -> dict:
    """Per encoder stage `index + 1` of `layer_indices`: (its name, vectors (n, C) at every
    position of up to `tiles` test items, the foreground share (n,) of the image cell each
    position covers). Items with foreground come first (lung-ct's test patient has many slices
    without tumour)."""
    from .data import build_datasets
    from .evaluate import load_run

    model, _, cfg, state = load_run(checkpoint, torch.device("cpu"))
    layers = {index: model.paper_layers.encoder[index] for index in layer_indices}
    bundle = build_datasets(cfg.data, image_size=cfg.image_size, seed=cfg.seed, augment=False, fold=cfg.fold)
    modules = dict(model.named_modules())
    captured = {}
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: captured.update({name: o}))
             for name in layers.values()]
    items = [bundle.test[i] for i in range(len(bundle.test))]
    items = sorted(items, key=lambda item: not bool((item["label"] > 0).any()))[:tiles]  # stable: foreground first
    found = {name: ([], []) for name in layers.values()}
    with torch.no_grad():
        for item in items:
            model(item["image"][None])
            foreground = (item["label"][0] > 0).float()[None, None]
            for name, (vectors, shares) in found.items():
                feature = captured[name][0]  # (C, h, w)
                C, h, w = feature.shape
                share = torch.nn.functional.adaptive_avg_pool2d(foreground, (h, w))[0, 0]
                vectors.append(feature.reshape(C, -1).T)
                shares.append(share.reshape(-1))
    for hook in hooks:
        hook.remove()
    return {index: (name, torch.cat(found[name][0]).numpy(), torch.cat(found[name][1]).numpy())
            for index, name in layers.items()}


def separation(vectors: np.ndarray, shares: np.ndarray) -> float:
    """Fisher's ratio of the pure-background (share 0) and pure-foreground (share 1) cells:
    squared distance of their means over the sum of their mean variances, in the full space."""
    bg, fg = vectors[shares == 0], vectors[shares == 1]
    if len(bg) < 2 or len(fg) < 2:
        return math.nan
    between = float(((bg.mean(0) - fg.mean(0)) ** 2).sum())
    within = float(bg.var(0).sum() + fg.var(0).sum())
    return between / within if within > 0 else math.nan


def embedding(checkpoints: dict[str, Path], path: Path, seed: int | None = None) -> dict[str, float]:
    """PCA (t-SNE when scikit-learn is installed) of encoder-stage-3 vectors of the test tiles,
    coloured by the foreground share of each position's cell, one panel per arm (Fig. 8)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4.6 * len(checkpoints), 4.2), squeeze=False)
    scores = {}
    for ax, (arm, checkpoint) in zip(axes[0], checkpoints.items()):
        layer, vectors, shares = hidden_vectors(checkpoint, (2,))[2]
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
        seeded = "" if seed is None else f", seed {seed}"
        ax.set_title(f"{arm}{seeded}: {layer} ({method}); Fisher ratio {scores[arm]:.2f}", fontsize=9)
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


def separability(checkpoints: dict[str, dict[int, Path]]) -> dict:
    """Fisher ratios at SEPARABILITY_LAYERS of every arm's run of every seed:
    {layer label: {arm: {"mean_sd": (mean, sd, n) over seeds, "per_seed": {seed: ratio}}}}."""
    from .stats import mean_sd

    out: dict = {}
    for arm, by_seed in checkpoints.items():
        for seed, checkpoint in sorted(by_seed.items()):
            for index, (layer, vectors, shares) in hidden_vectors(checkpoint, tuple(SEPARABILITY_LAYERS)).items():
                label = f"{layer} ({SEPARABILITY_LAYERS[index]})"
                out.setdefault(label, {}).setdefault(arm, {"per_seed": {}})["per_seed"][seed] = separation(vectors, shares)
    for per_arm in out.values():
        for entry in per_arm.values():
            entry["mean_sd"] = mean_sd(list(entry["per_seed"].values()))
    return out


def write_all(plan: dict, runs, rows, tables: dict, limited: dict, folder: Path) -> dict:
    """Every figure the plan's finished runs allow; returns the separability numbers by data set
    (baseline and H-PDCR of the ablation studies, every seed)."""
    sweep({k: v for k, v in tables.items() if k.startswith("sweep")}, folder / "sweep.png")
    ablation({k: v for k, v in tables.items() if k.startswith("ablation")}, folder / "ablation.png")
    limited_data(limited, folder / "limited_data.png")
    done = [r for r in runs if (Path(r.config.out) / "checkpoint_best.pt").is_file() and r.fraction == 1.0
            and r.model == plan.get("settings", {}).get("model", "unet")]

    def checkpoints(data: str, arm: str) -> dict[int, Path]:
        return {r.seed: Path(r.config.out) / "checkpoint_best.pt" for r in done if r.data == data and r.arm == arm}

    scores, pictured = {}, False
    ablation_data = [data for study in plan["studies"] if study["name"] == "ablation" for data in study["data"]]
    for data in dict.fromkeys(ablation_data):
        pdcr_arm = next((arm for arm in ("H-PDCR", "H-PDCR + UAFR") if checkpoints(data, arm)), None)
        if not checkpoints(data, "baseline") or pdcr_arm is None:
            continue
        found = {"baseline": checkpoints(data, "baseline"), pdcr_arm: checkpoints(data, pdcr_arm)}
        scores[data] = separability(found)
        common = set(found["baseline"]) & set(found[pdcr_arm])
        if not pictured and common:  # the picture: the first data set, the first seed both arms have
            seed = min(common)
            embedding({arm: by_seed[seed] for arm, by_seed in found.items()}, folder / "embedding.png", seed)
            pictured = True
    both = next((r for arm in ("H-PDCR + UAFR", "UAFR") for r in done if r.arm == arm), None)
    if both is not None:
        uncertainty(Path(both.config.out) / "checkpoint_best.pt", folder / "uncertainty.png")
    return scores
