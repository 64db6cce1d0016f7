"""One training run: data, model (+ PDCR and UAFR), the loop, validation, checkpoints, figures.

The paper's recipe (Section V-A): cross-entropy (optionally MONAI's DiceCELoss), + 0.01 x eq. 12
when PDCR is on; Adam, learning rate 1e-3, cosine schedule, weight decay 1e-5; the augmentations
of data/transforms.py. One loop serves one process and torchrun's several (DDP).

A run directory gets:
    config.yaml            the resolved settings
    checkpoint_last.pt     model, optimizer, scheduler, epoch, step, RNG states: --resume
    checkpoint_best.pt     the epoch with the best validation Dice
    summary.json           settings, parameters, FLOPs, per-epoch losses and metrics, "test"
    progress.png           loss and Dice curves
    overlays/*.png         image | ground truth | prediction | UAFR uncertainty (test tiles)
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from monai.data.utils import worker_init_fn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    def tqdm(iterable, **_):
        return iterable

from . import distributed, figures
from .config import ConfigError, TrainConfig, save_yaml
from .data import build_datasets
from .evaluate import build_run, evaluate, example_size, inference_roi, segment, uncertainty_layer
from .metrics import batch_dice
from .models.complexity import model_complexity


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def segmentation_loss(cfg: TrainConfig):
    """logits (B, M, *S), labels (B, 1, *S) -> scalar. Cross-entropy, or MONAI's DiceCELoss."""
    if cfg.dice_loss:
        if cfg.ignore_index is not None:
            raise ConfigError("--dice-loss does not support --ignore-index (MONAI's DiceCELoss has none)")
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda logits, labels: dice_ce(logits, labels)
    ignore = -100 if cfg.ignore_index is None else cfg.ignore_index
    return lambda logits, labels: F.cross_entropy(logits, labels[:, 0], ignore_index=ignore)


def random_transforms(dataset) -> list:
    """The randomised MONAI transforms of a dataset, whose states a checkpoint keeps."""
    transform = getattr(dataset, "transform", None)
    return [t for t in getattr(transform, "transforms", []) if hasattr(t, "R")]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never a half-written checkpoint


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Runs `cfg` to the end; returns the summary (written to OUT/summary.json by rank 0)."""
    cfg.validate()
    ctx = distributed.setup(cfg.device)
    try:
        return _train(cfg, ctx, resume)
    finally:
        distributed.teardown(ctx)


def _train(cfg: TrainConfig, ctx: distributed.Context, resume: bool) -> dict:
    out = Path(cfg.out)
    last_path, best_path = out / "checkpoint_last.pt", out / "checkpoint_best.pt"
    if resume and not last_path.is_file():
        raise ConfigError(f"--resume: {last_path} does not exist")
    seed_everything(cfg.seed)
    bundle = build_datasets(cfg.data, image_size=cfg.image_size, seed=cfg.seed, fraction=cfg.fraction,
                            augment=cfg.augment, num_classes=cfg.num_classes, dims=cfg.dims,
                            patch_size=cfg.patch_size, fold=cfg.fold,
                            **({"samples_per_epoch": cfg.samples_per_epoch} if cfg.dims == 3 else {}))
    roi = inference_roi(cfg)
    num_classes = bundle.num_classes
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        print(f"data: {bundle.description}", flush=True)

    model, handle = build_run(cfg, bundle.in_channels, num_classes, torch.device("cpu"))
    size = example_size(cfg)
    complexity = model_complexity(model, (1, bundle.in_channels, *size))
    projections = 0 if handle is None or handle.pdcr is None else sum(p.numel() for p in handle.pdcr.parameters())
    complexity["parameters_inference"] = complexity["parameters"] - projections  # PDCR trains only
    model.to(ctx.device)
    if ctx.is_main:
        print(f"model: {cfg.model} width {cfg.width or 'default'}: {complexity['parameters_inference'] / 1e6:.2f} M "
              f"parameters, {complexity['macs'] / 1e9:.2f} GMACs at {'x'.join(map(str, size))}"
              + (f"; PDCR layers {handle.pdcr_layers}" if handle and handle.pdcr else "")
              + (f"; UAFR layers {handle.uafr_layers}" if handle and handle.uafr_layers else ""), flush=True)
    if cfg.sync_bn:
        if not ctx.distributed:
            raise ConfigError("--sync-bn needs several processes (torchrun)")
        if ctx.device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    module = _unwrap(model)

    sampler = DistributedSampler(bundle.train, shuffle=True, seed=cfg.seed) if ctx.distributed else None
    per_rank = len(sampler) if sampler else len(bundle.train)  # what each process's loader sees
    drop_last = per_rank > cfg.batch_size  # no batch of one (BatchNorm needs two values), never none
    steps_per_epoch = per_rank // cfg.batch_size if drop_last else 1
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    seg_loss = segmentation_loss(cfg)

    start_epoch, step, history = 0, 0, []
    best = {"dice": -math.inf, "epoch": None}
    augmenters = random_transforms(bundle.train)
    if resume:
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = max(total_steps, 1)  # the schedule of this invocation's epochs / max_steps
        start_epoch, step, history, best = state["epoch"], state["step"], state["history"], state["best"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        for transform, augment_state in zip(augmenters, rng["augment"]):
            transform.R.set_state(augment_state)
        if ctx.is_main:
            print(f"resumed from {last_path}: epoch {start_epoch}, step {step}", flush=True)

    def checkpoint(epoch_done: int) -> dict:
        return {
            "config": cfg.to_dict(), "model": module.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch_done, "step": step, "history": history,
            "best": best,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "augment": [t.R.get_state() for t in augmenters]},
            "data": {"in_channels": bundle.in_channels, "num_classes": num_classes,
                     "class_names": list(bundle.class_names), "description": bundle.description},
            "complexity": complexity,
        }

    amp = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.amp)
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        if sampler is not None:
            sampler.set_epoch(epoch)
        order = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)  # the same order on resume
        # worker processes re-seed the augmentation (MONAI's worker_init_fn): else every worker
        # would repeat the same draws
        loader = DataLoader(bundle.train, batch_size=cfg.batch_size, drop_last=drop_last,
                            sampler=sampler or RandomSampler(bundle.train, generator=order),
                            num_workers=cfg.workers, worker_init_fn=worker_init_fn if cfg.workers else None)
        model.train()
        sums = {"loss": 0.0, "seg": 0.0, "pdcr": 0.0}
        term_sums: dict[str, float] = {}
        steps_this_epoch = 0
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not ctx.is_main, leave=False,
                   dynamic_ncols=True)
        for batch in bar:
            images = batch["image"].to(ctx.device, non_blocking=True)
            labels = batch["label"].to(ctx.device, non_blocking=True)
            with amp:
                logits = model(images)
                seg = seg_loss(logits.float(), labels)
                pdcr = handle.loss(labels) if cfg.pdcr else torch.zeros((), device=ctx.device)
            loss = seg + pdcr
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is {float(loss)} at step {step} "
                                         f"(segmentation {float(seg)}, PDCR {float(pdcr)})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            steps_this_epoch += 1
            sums["loss"] += float(loss.detach())
            sums["seg"] += float(seg.detach())
            sums["pdcr"] += float(pdcr.detach())
            terms = handle.terms if cfg.pdcr else {}
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(value)
            if ctx.is_main:
                shown = {"loss": f"{float(loss.detach()):.3g}", "ce": f"{float(seg.detach()):.3f}"}
                if cfg.pdcr:
                    shown["pdcr"] = f"{float(pdcr.detach()):.3g}"
                    shown.update({name: f"{float(v):.4g}" for name, v in terms.items()})
                shown["dice"] = f"{batch_dice(logits.detach().float(), labels, num_classes, cfg.ignore_index):.3f}"
                bar.set_postfix(shown, refresh=False)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - started
        val = evaluate(module, bundle.val, num_classes, ctx, batch_size=cfg.batch_size,
                       ignore_index=cfg.ignore_index, amp=cfg.amp, roi=roi)
        n = max(steps_this_epoch, 1)
        record = {
            "epoch": epoch, "steps": steps_this_epoch, "step": step,
            "train_loss": distributed.mean(ctx, sums["loss"] / n),
            "train_seg": distributed.mean(ctx, sums["seg"] / n),
            "train_pdcr": distributed.mean(ctx, sums["pdcr"] / n),
            "train_terms": {k: distributed.mean(ctx, v / n) for k, v in term_sums.items()},
            "seconds_per_step": train_seconds / n,
            "lr": scheduler.get_last_lr()[0],
            "val": val,
        }
        history.append(record)
        improved = not math.isnan(val["dice"]) and val["dice"] > best["dice"]
        if improved:
            best = {"dice": val["dice"], "epoch": epoch}
        if ctx.is_main:
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4g} (CE {record['train_seg']:.4f}"
                  + (f", PDCR {record['train_pdcr']:.4g}" if cfg.pdcr else "")
                  + f"), val Dice {figures.fmt(val['dice'])} Jaccard {figures.fmt(val['jaccard'])}"
                  f" HD95 {figures.fmt(val['hd95'], 2)}, {record['seconds_per_step']:.3f} s/step", flush=True)
            state = checkpoint(epoch + 1)
            _save(last_path, state)
            if improved or not best_path.exists():
                _save(best_path, state)
        distributed.barrier(ctx)

    # test with the best epoch's weights
    best_state = torch.load(best_path, map_location="cpu", weights_only=False)
    module.load_state_dict(best_state["model"])
    test = evaluate(module, bundle.test, num_classes, ctx, batch_size=cfg.batch_size,
                    ignore_index=cfg.ignore_index, amp=cfg.amp, roi=roi)
    step_times = [h["seconds_per_step"] for h in history[1:]] or [h["seconds_per_step"] for h in history]
    summary = {
        "config": cfg.to_dict(),
        "data": bundle.description,
        "num_classes": num_classes,
        "class_names": list(bundle.class_names),
        "complexity": complexity,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "epochs": history,
        "best_epoch": best["epoch"],
        "steps": step,
        "seconds_per_step": float(np.median(step_times)) if step_times else None,
        "test": {key: test[key] for key in ("dice", "jaccard", "accuracy", "hd95", "dice_per_class",
                                            "jaccard_per_class", "hd95_per_class", "hd95_undefined", "images")},
    }
    if ctx.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        title = f"{cfg.model} on {cfg.data}" + (" + PDCR" if cfg.pdcr else "") + (" + UAFR" if cfg.uafr else "")
        figures.progress(history, out / "progress.png", title)
        write_overlays(module, handle, bundle.test, num_classes, ctx.device, out / "overlays", cfg.overlays, title,
                       roi=roi)
        print(f"test ({test['images']} images, best epoch {best['epoch'] + 1 if best['epoch'] is not None else '-'}): "
              f"Dice {figures.fmt(test['dice'])} Jaccard {figures.fmt(test['jaccard'])} "
              f"accuracy {figures.fmt(test['accuracy'])} HD95 {figures.fmt(test['hd95'], 2)}", flush=True)
        print(f"wrote {out}/: summary.json, progress.png, overlays/, checkpoint_best.pt", flush=True)
    return summary


def write_overlays(model: nn.Module, handle, dataset, num_classes: int, device: torch.device,
                   folder: Path, count: int, title: str = "", roi=None) -> list[Path]:
    """The first `count` items of `dataset`: image | truth | prediction | UAFR uncertainty (for
    volumes, three slices of each)."""
    layer = uncertainty_layer(model, handle)
    paths = []
    was_training = model.training
    model.eval()
    try:
        for index in range(min(count, len(dataset))):
            item = dataset[index]
            prediction, u = segment(model, handle, layer, item["image"].to(device), roi)
            path = folder / f"{index:02d}_{item['name']}.png".replace("/", "_")
            kwargs = dict(uncertainty=None if u is None else u.numpy(), uncertainty_name=layer or "",
                          title=f"{title} — {item['name']}", num_classes=num_classes)
            if item["image"].dim() == 4:  # (C, D, H, W)
                figures.volume_overlay(item["image"].numpy(), item["label"][0].numpy(), prediction.numpy(), path,
                                       **kwargs)
            else:
                figures.overlay(item["image"].numpy(), item["label"][0].numpy(), prediction.numpy(), path, **kwargs)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
