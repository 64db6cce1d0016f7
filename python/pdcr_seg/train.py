"""One training run, in named steps: set_up, then per epoch train_epoch (train_step per batch),
validate and end_epoch (history, best epoch, checkpoint), then test.

The paper's recipe (Section V-A): cross-entropy (optionally MONAI's DiceCELoss), + 0.01 x eq. 12
when PDCR is on; Adam, learning rate 1e-3, cosine schedule, weight decay 1e-5; the augmentations
of data/transforms.py. One loop serves one process and torchrun's several (DDP).

Where the rules live: the run directory (a new folder per run, nothing overwritten, atomic
writes) in rundir.py; what a checkpoint keeps and how --resume continues exactly in resume.py.

A run directory gets:
    config.yaml            the resolved settings
    checkpoint_last.pt     model, optimizer, scheduler, progress, every random state: --resume
    checkpoint_best.pt     the epoch with the best validation Dice
    summary.json           settings, parameters, FLOPs, per-epoch losses and metrics, "test"
    progress.png           loss and Dice curves
    overlays/*.png         image | ground truth | prediction | UAFR uncertainty (test tiles)
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from monai.data.utils import worker_init_fn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    def tqdm(iterable, **_):
        return iterable

from . import distributed, figures, rundir
from .balance import gradient_balance, summarize_measurements, weight_for_ratio
from .config import ConfigError, TrainConfig
from .data import DataBundle, build_datasets
from .evaluate import (RunError, build_run, evaluate, example_size, inference_roi, model_options, segment,
                       uncertainty_layer)
from .metrics import batch_dice
from .resume import check_same_run, load_checkpoint, restore, state_of
from .models import MODELS, build_model
from .models.complexity import model_complexity


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how to continue it."""


@dataclass
class Progress:
    """Where a run stands: what checkpoint_last.pt continues from."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimisation steps done
    history: list = field(default_factory=list)  # one record per epoch done
    best_epoch: int | None = None  # the epoch of checkpoint_best.pt
    best_dice: float | None = None  # its validation Dice (None: not defined yet)
    pdcr_weight: float | None = None  # the PDCR weight --pdcr-target-ratio set (None: not set yet)
    calibration_ratios: list = field(default_factory=list)  # gradient ratios measured for it so far
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # ties the checkpoints to this run

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Run:
    """Everything a run holds while it trains."""

    cfg: TrainConfig
    ctx: distributed.Context
    out: Path
    bundle: DataBundle
    model: nn.Module  # what trains: the model, DDP-wrapped under torchrun
    module: nn.Module  # the model itself (its state dict is the checkpoint's)
    handle: object  # pdcr_ext.PDCRHandle (PDCR's loss and terms, UAFR's maps), or None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    seg_loss: object  # (logits, labels) -> scalar
    sampler: DistributedSampler | None
    drop_last: bool
    total_steps: int
    complexity: dict
    roi: tuple | None  # sliding-window size (volumes) or None
    progress: Progress = field(default_factory=Progress)

    @property
    def finished(self) -> bool:
        cfg, progress = self.cfg, self.progress
        return progress.epoch >= cfg.epochs or (cfg.max_steps is not None and progress.step >= cfg.max_steps)

    @property
    def amp(self):
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Runs `cfg` to the end; returns the summary (written to OUT/summary.json by rank 0).

    `resume`: continue the run in cfg.out. `overwrite`: replace the run in cfg.out (else a
    non-empty cfg.out is refused). Ctrl-C raises Interrupted, whose message says how to resume.
    """
    cfg.validate()
    ctx = distributed.setup(cfg.device)
    run = None
    try:
        run = set_up(cfg, ctx, resume=resume, overwrite=overwrite)
        while not run.finished:
            numbers = train_epoch(run)
            end_epoch(run, numbers, validate(run))
        return test(run)
    except KeyboardInterrupt:
        raise Interrupted(_how_to_continue(cfg, run)) from None
    finally:
        distributed.teardown(ctx)


def _how_to_continue(cfg: TrainConfig, run: Run | None) -> str:
    if run is None or not (run.out / "checkpoint_last.pt").is_file():
        return f"interrupted while setting up; nothing was written to {cfg.out}"
    if run.finished:
        return f"interrupted while testing; test again with: pdcr-seg train --resume --out {run.out}"
    p = run.progress
    return (f"interrupted in epoch {p.epoch + 1} of {cfg.epochs} (step {p.step}); continue with: "
            f"pdcr-seg train --resume --out {run.out}")


# ---- set-up -------------------------------------------------------------------------------------

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


def check_model_fits(cfg: TrainConfig) -> bool:
    """Refuses, before any image is read, a model that cannot be built or cannot take the run's
    input size: the model is built on the meta device (no memory), and a narrow copy of it (width
    8 at most: the strides, not the widths, decide which sizes fit) runs on one input of the
    run's size. Returns whether the model has BatchNorm layers. Draws from torch's generator
    (the copy's weights): call it before seeding."""
    size = example_size(cfg)
    option = "--patch-size" if cfg.dims == 3 else "--image-size"
    shown = " ".join(map(str, size)) if cfg.dims == 3 else str(cfg.image_size)
    build = lambda width: build_model(cfg.model, 1, cfg.num_classes or 2, width, spatial_dims=cfg.dims,
                                      **model_options(cfg))
    try:
        with torch.device("meta"):
            batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build(cfg.width).modules())
        probe = build(min(cfg.width or 8, 8) if cfg.model in MODELS else cfg.width).eval()
    except ValueError as error:  # the model's own checks (width, dimensions)
        raise ConfigError(f"--model {cfg.model}: {error}") from None

    def runs_at(shape) -> str | None:
        try:
            with torch.no_grad():
                logits = probe(torch.zeros(1, 1, *shape))
        except Exception as error:  # a stride that does not divide the size, a map shrunk to nothing
            return (str(error).splitlines() or [type(error).__name__])[0]
        return None if tuple(logits.shape[2:]) == tuple(shape) else f"its output is {tuple(logits.shape[2:])}"

    problem = runs_at(size)
    if problem is not None:
        hint = ""
        for multiple in (8, 16, 32, 64):
            fixed = tuple(multiple * math.ceil(s / multiple) for s in size)
            if runs_at(fixed) is None:
                hint = f"; {' '.join(map(str, fixed)) if cfg.dims == 3 else fixed[0]} works"
                break
        raise ConfigError(f"{option} {shown} does not fit --model {cfg.model} ({problem[:120]}){hint}")
    return batch_norm


def check_batches(cfg: TrainConfig, per_rank: int, batch_norm: bool, distributed: bool = False) -> bool:
    """Whether the last partial batch is dropped; a BatchNorm model never gets a batch of one."""
    if batch_norm and cfg.batch_size == 1:
        raise ConfigError(f"--batch-size 1: {cfg.model} has BatchNorm, whose training statistics need at "
                          "least 2 images a batch; use --batch-size 2 or more")
    if batch_norm and per_rank == 1:
        raise ConfigError(f"the training split has 1 image{' per process' if distributed else ''}: "
                          f"{cfg.model} has BatchNorm, whose training statistics need at least 2 images a batch")
    return per_rank > cfg.batch_size  # drop the last partial batch; a split smaller than a batch is one batch


def set_up(cfg: TrainConfig, ctx: distributed.Context, *, resume: bool, overwrite: bool) -> Run:
    """Checks everything that can be checked, then builds the run; only its last part writes to
    the run folder (rundir.prepare), so that a refused run changes nothing of an earlier one."""
    out = Path(cfg.out) if cfg.out else rundir.new_run_folder(cfg.model)
    cfg.out = str(out)
    rundir.check_run_folder(out, resume=resume, overwrite=overwrite)
    saved = load_checkpoint(out / "checkpoint_last.pt") if resume else None
    if saved is not None:
        check_same_run(saved["config"], cfg, out)
    batch_norm = check_model_fits(cfg)
    seed_everything(cfg.seed)
    bundle = build_datasets(cfg.data, image_size=cfg.image_size, seed=cfg.seed, fraction=cfg.fraction,
                            augment=cfg.augment, num_classes=cfg.num_classes, dims=cfg.dims,
                            patch_size=cfg.patch_size, fold=cfg.fold,
                            **({"samples_per_epoch": cfg.samples_per_epoch} if cfg.dims == 3 else {}))
    sampler = DistributedSampler(bundle.train, shuffle=True, seed=cfg.seed) if ctx.distributed else None
    per_rank = len(sampler) if sampler else len(bundle.train)  # what each process's loader sees
    drop_last = check_batches(cfg, per_rank, batch_norm, ctx.distributed)
    steps_per_epoch = per_rank // cfg.batch_size if drop_last else 1
    total_steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.epochs * steps_per_epoch,
                                                                                  cfg.max_steps)

    model, handle = build_run(cfg, bundle.in_channels, bundle.num_classes, torch.device("cpu"))
    complexity = model_complexity(model, (1, bundle.in_channels, *example_size(cfg)))
    projections = 0 if handle is None or handle.pdcr is None else sum(p.numel() for p in handle.pdcr.parameters())
    complexity["parameters_inference"] = complexity["parameters"] - projections  # PDCR trains only
    model.to(ctx.device)
    if cfg.sync_bn:
        if not ctx.distributed:
            raise ConfigError("--sync-bn needs several processes (torchrun)")
        if ctx.device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    module = model
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    run = Run(cfg, ctx, out, bundle, model, module, handle, optimizer, scheduler, segmentation_loss(cfg), sampler,
              drop_last, total_steps, complexity, inference_roi(cfg))
    run.progress.run_id = distributed.broadcast(ctx, run.progress.run_id)  # one id for all processes
    notes = list(bundle.notes)
    if saved is not None:
        notes += restore(run, saved)
        if run.progress.pdcr_weight is not None:  # the weight --pdcr-target-ratio set, as it was
            run.handle.pdcr.weight = run.progress.pdcr_weight

    # Everything is checked: from here on the run folder changes.
    if ctx.is_main:
        rundir.prepare(out, overwrite=overwrite)
        rundir.write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        print(f"run: {out}" + (f" (resumed from checkpoint_last.pt: {run.progress.epoch} epochs, "
                               f"{run.progress.step} steps done)" if resume else ""), flush=True)
        print(f"data: {bundle.description}", flush=True)
        for note in notes:
            print(f"note: {note}", flush=True)
        print(f"model: {cfg.model} width {cfg.width or 'default'}: {complexity['parameters_inference'] / 1e6:.2f} M "
              f"parameters, {complexity['macs'] / 1e9:.2f} GMACs at {'x'.join(map(str, example_size(cfg)))}"
              + (f"; PDCR layers {handle.pdcr_layers}" if handle and handle.pdcr else "")
              + (f"; UAFR layers {handle.uafr_layers}" if handle and handle.uafr_layers else ""), flush=True)
        if not resume:
            rundir.save_checkpoint(out / "checkpoint_last.pt", state_of(run))  # resumable from the start
    distributed.barrier(ctx)
    return run


# ---- one epoch ----------------------------------------------------------------------------------

def epoch_loader(run: Run) -> DataLoader:
    """The training batches of the current epoch, in an order fixed by (seed, epoch)."""
    cfg, epoch = run.cfg, run.progress.epoch
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    order = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    # worker processes re-seed the augmentation (MONAI's worker_init_fn) from the loader's base
    # seed, drawn from torch's generator: else every worker would repeat the same draws
    return DataLoader(run.bundle.train, batch_size=cfg.batch_size, drop_last=run.drop_last,
                      sampler=run.sampler or RandomSampler(run.bundle.train, generator=order),
                      num_workers=cfg.workers, worker_init_fn=worker_init_fn if cfg.workers else None)


def calibrating(run: Run) -> bool:
    """Whether this step measures the gradient ratio for --pdcr-target-ratio (weight not set yet)."""
    return run.cfg.pdcr and run.cfg.pdcr_target_ratio is not None and run.progress.pdcr_weight is None


def measures_balance(run: Run) -> bool:
    """Whether this step measures the gradient balance: with PDCR, at step 0 and every
    --balance-every steps, and at every step of the --pdcr-target-ratio calibration."""
    cfg, step = run.cfg, run.progress.step
    return cfg.pdcr and (calibrating(run) or (cfg.balance_every > 0 and step % cfg.balance_every == 0))


def train_step(run: Run, batch: dict) -> dict:
    """One optimisation step on one batch.

    Returns this step's numbers, which train_epoch averages over the epoch into the history as
    train_<name>: loss (the total), seg (the segmentation loss), pdcr (weight x eq. 12), dice
    (of the batch), and terms (each PDCR layer's and pair's term, a dict). A new per-step
    measurement is one more entry here. On a step that measures the gradient balance
    (measures_balance), "balance" holds the step, the gradient norms of the segmentation loss
    and of PDCR on the parameters both reach, their ratio and the PDCR weight; train_epoch lists
    these rather than averaging them. The measurement leaves .grad exactly as the plain backward
    does (pdcr_seg.balance), so it never changes what the run trains.
    """
    cfg, ctx = run.cfg, run.ctx
    images = batch["image"].to(ctx.device, non_blocking=True)
    labels = batch["label"].to(ctx.device, non_blocking=True)
    with run.amp:
        logits = run.model(images)
        seg = run.seg_loss(logits.float(), labels)
        pdcr = run.handle.loss(labels) if cfg.pdcr else torch.zeros((), device=ctx.device)
    loss = seg + pdcr
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss is {float(loss)} at step {run.progress.step + 1} (segmentation "
                                 f"{float(seg)}, PDCR {float(pdcr)}); lower --lr or --pdcr-weight")
    run.optimizer.zero_grad(set_to_none=True)
    balance = None
    if measures_balance(run):
        # instead of loss.backward(): the same .grad; a calibration step measures PDCR at the
        # configured weight but steps with the segmentation loss alone, so that the weight the
        # ratio has not set yet never trains the model (at 0.01, PDCR's gradient is ~100x the
        # segmentation loss's: five such steps at the start would be a run of their own)
        calibration = calibrating(run)
        measured = gradient_balance(run.model, seg, pdcr, step_with_pdcr=not calibration)
        balance = {"step": run.progress.step, "seg_norm": measured.seg_norm, "pdcr_norm": measured.pdcr_norm,
                   "ratio": measured.ratio, "pdcr_weight": run.handle.pdcr.weight, "calibration": calibration}
    else:
        loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    if balance is not None and calibrating(run):
        calibrate(run, balance["ratio"])
    run.progress.step += 1
    return {
        "loss": float(loss.detach()), "seg": float(seg.detach()), "pdcr": float(pdcr.detach()),
        "dice": batch_dice(logits.detach().float(), labels, run.bundle.num_classes, cfg.ignore_index),
        "terms": {name: float(value) for name, value in run.handle.terms.items()} if cfg.pdcr else {},
        "balance": balance,
    }


def calibrate(run: Run, ratio: float) -> None:
    """--pdcr-target-ratio: keeps the ratio measured at the configured weight; after
    --pdcr-calibration-steps of them, sets the weight to weight x target / their median for the
    rest of the run (progress.pdcr_weight: in the checkpoint, so a resumed run keeps it)."""
    cfg, progress = run.cfg, run.progress
    progress.calibration_ratios.append(ratio)
    if len(progress.calibration_ratios) < cfg.pdcr_calibration_steps:
        return
    weight = weight_for_ratio(cfg.pdcr_weight, progress.calibration_ratios, cfg.pdcr_target_ratio)
    progress.pdcr_weight = distributed.broadcast(run.ctx, weight)  # one weight in every process
    run.handle.pdcr.weight = progress.pdcr_weight
    if run.ctx.is_main:
        tqdm.write(f"PDCR weight {progress.pdcr_weight:.4g} from now on: ||grad PDCR|| / ||grad seg|| had median "
                   f"{float(np.median(progress.calibration_ratios)):.4g} over steps 0-{progress.step} "
                   f"at weight {cfg.pdcr_weight:g}; target {cfg.pdcr_target_ratio:g}")


def train_epoch(run: Run) -> dict:
    """Trains one epoch; returns the epoch means of train_step's numbers (over ranks), the
    steps taken and the seconds per step."""
    cfg, ctx = run.cfg, run.ctx
    sums: dict[str, float] = {}
    term_sums: dict[str, float] = {}
    measurements: list[dict] = []  # the gradient balance of the steps that measured it
    steps = 0
    run.model.train()
    started = time.perf_counter()
    bar = tqdm(epoch_loader(run), desc=f"epoch {run.progress.epoch + 1}/{cfg.epochs}", disable=not ctx.is_main,
               leave=False, dynamic_ncols=True)
    try:
        for batch in bar:
            numbers = train_step(run, batch)
            steps += 1
            for name, value in numbers["terms"].items():
                term_sums[name] = term_sums.get(name, 0.0) + value
            if numbers["balance"] is not None:
                measurements.append(numbers["balance"])
            for name, value in numbers.items():
                if name not in ("terms", "balance"):
                    sums[name] = sums.get(name, 0.0) + value
            if ctx.is_main:
                shown = {"loss": f"{numbers['loss']:.3g}", "ce": f"{numbers['seg']:.3f}"}
                if cfg.pdcr:
                    shown["pdcr"] = f"{numbers['pdcr']:.3g}"
                    shown.update({name: f"{v:.4g}" for name, v in numbers["terms"].items()})
                    if measurements:  # the latest measured ||grad PDCR|| / ||grad seg|| (* calibration)
                        latest = measurements[-1]
                        shown["grad ratio"] = f"{latest['ratio']:.3g}" + ("*" if latest["calibration"] else "")
                shown["dice"] = f"{numbers['dice']:.3f}"
                bar.set_postfix(shown, refresh=False)
            if cfg.max_steps is not None and run.progress.step >= cfg.max_steps:
                break
    finally:
        bar.close()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    n = max(steps, 1)
    return {
        "steps": steps,
        "seconds_per_step": (time.perf_counter() - started) / n,
        "means": {name: distributed.mean(ctx, value / n) for name, value in sums.items()},
        "terms": {name: distributed.mean(ctx, value / n) for name, value in term_sums.items()},
        "balance": measurements,  # the same numbers in every process (gradient_balance averages over them)
    }


# ---- validation and the end of an epoch ---------------------------------------------------------

def validate(run: Run) -> dict:
    """Metrics of the model on the validation split (metrics.summarize's dict)."""
    return evaluate(run.module, run.bundle.val, run.bundle.num_classes, run.ctx, batch_size=run.cfg.batch_size,
                    ignore_index=run.cfg.ignore_index, amp=run.cfg.amp, roi=run.roi, per_item=False)


def end_epoch(run: Run, numbers: dict, val: dict) -> None:
    """Records the epoch, keeps the best one (the highest validation Dice; while no epoch has a
    defined Dice, the latest), writes the checkpoints and prints the epoch's line."""
    cfg, progress = run.cfg, run.progress
    epoch = progress.epoch
    record = {
        "epoch": epoch, "steps": numbers["steps"], "step": progress.step,
        **{f"train_{name}": value for name, value in numbers["means"].items()},
        "train_terms": numbers["terms"],
        "seconds_per_step": numbers["seconds_per_step"],
        "lr": run.scheduler.get_last_lr()[0],
        "val": val,
    }
    if cfg.pdcr:  # the gradient balance of the epoch: count, mean, median, every measurement
        record["balance"] = summarize_measurements(numbers["balance"])
    for name in ("loss", "seg", "pdcr"):  # an epoch cut to no step by --max-steps still has them
        record.setdefault(f"train_{name}", 0.0)
    progress.history.append(record)
    defined = not math.isnan(val["dice"])
    improved = (defined and (progress.best_dice is None or val["dice"] > progress.best_dice)) or \
               (not defined and progress.best_dice is None)
    if improved:
        progress.best_epoch, progress.best_dice = epoch, (val["dice"] if defined else None)
    progress.epoch += 1
    if run.ctx.is_main:
        state = state_of(run)
        rundir.save_checkpoint(run.out / "checkpoint_last.pt", state)
        if improved:
            rundir.save_checkpoint(run.out / "checkpoint_best.pt", state)
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4g} (CE {record['train_seg']:.4f}"
              + (f", PDCR {record['train_pdcr']:.4g}" if cfg.pdcr else "")
              + f"), val Dice {figures.fmt(val['dice'])} Jaccard {figures.fmt(val['jaccard'])}"
              f" HD95 {figures.fmt(val['hd95'], 2)}"
              + (f", grad ratio {record['balance']['ratio_median']:.3g} (median of {record['balance']['count']})"
                 if cfg.pdcr and record["balance"]["count"] else "")
              + f", {record['seconds_per_step']:.3f} s/step", flush=True)
    distributed.barrier(run.ctx)


# ---- test ---------------------------------------------------------------------------------------

def test(run: Run) -> dict:
    """Tests this run's best checkpoint, writes summary.json, progress.png and overlays/."""
    cfg, ctx, progress, bundle = run.cfg, run.ctx, run.progress, run.bundle
    best_path = run.out / "checkpoint_best.pt"
    best = load_checkpoint(best_path) if best_path.is_file() else None
    if best is None or best.get("run_id") != progress.run_id:
        raise RunError(f"{best_path} is missing or belongs to another run; this run's test needs its own")
    run.module.load_state_dict(best["model"])
    test_metrics = evaluate(run.module, bundle.test, bundle.num_classes, ctx, batch_size=cfg.batch_size,
                            ignore_index=cfg.ignore_index, amp=cfg.amp, roi=run.roi)
    history = progress.history
    step_times = [h["seconds_per_step"] for h in history[1:]] or [h["seconds_per_step"] for h in history]
    summary = {
        "config": cfg.to_dict(),
        "run_id": progress.run_id,
        "data": bundle.description,
        "data_notes": list(bundle.notes),
        "num_classes": bundle.num_classes,
        "class_names": list(bundle.class_names),
        "complexity": run.complexity,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "epochs": history,
        "best_epoch": progress.best_epoch,
        "steps": progress.step,
        "seconds_per_step": float(np.median(step_times)) if step_times else None,
        **(pdcr_summary(cfg, progress) if cfg.pdcr else {}),
        "test": {key: test_metrics[key] for key in ("dice", "jaccard", "accuracy", "hd95", "dice_per_class",
                                                    "jaccard_per_class", "hd95_per_class", "hd95_undefined",
                                                    "images", "per_image", "per_volume") if key in test_metrics},
    }
    if ctx.is_main:
        out = run.out
        rundir.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        title = f"{cfg.model} on {cfg.data}" + (" + PDCR" if cfg.pdcr else "") + (" + UAFR" if cfg.uafr else "")
        seg_name = "Dice + cross-entropy" if cfg.dice_loss else "cross-entropy"
        rundir.atomic_write(out / "progress.png", lambda file: figures.progress(history, file, title, seg_name))
        write_overlays(run.module, run.handle, bundle.test, bundle.num_classes, ctx.device, out / "overlays",
                       cfg.overlays, title, roi=run.roi, class_names=bundle.class_names)
        best_epoch = "-" if progress.best_epoch is None else progress.best_epoch + 1
        print(f"test ({test_metrics['images']} images, best epoch {best_epoch}): "
              f"Dice {figures.fmt(test_metrics['dice'])} Jaccard {figures.fmt(test_metrics['jaccard'])} "
              f"accuracy {figures.fmt(test_metrics['accuracy'])} HD95 {figures.fmt(test_metrics['hd95'], 2)}",
              flush=True)
        print(f"wrote {out}/: summary.json, progress.png, overlays/, checkpoint_best.pt", flush=True)
    return summary


def pdcr_summary(cfg: TrainConfig, progress: Progress) -> dict:
    """summary.json's "gradient_balance" (the run's measurements at the weight it trained with:
    count, mean, median, as summarize_measurements; the first measurement of all, at step 0) and
    "pdcr_weight" (configured, the target ratio and what it set)."""
    measured = [m for h in progress.history for m in h.get("balance", {}).get("values", [])]
    balance = {"every": cfg.balance_every, **summarize_measurements(measured)}
    balance.pop("values")  # they are in the epochs' records
    balance["first"] = measured[0] if measured else None
    weight = {"configured": cfg.pdcr_weight, "target_ratio": cfg.pdcr_target_ratio,
              "in_force": cfg.pdcr_weight if progress.pdcr_weight is None else progress.pdcr_weight}
    if cfg.pdcr_target_ratio is not None:
        ratios = progress.calibration_ratios
        weight.update(calibration_steps=cfg.pdcr_calibration_steps, calibration_ratios=list(ratios),
                      calibration_median=float(np.median(ratios)) if ratios else None,
                      calibrated=progress.pdcr_weight is not None)
    return {"gradient_balance": balance, "pdcr_weight": weight}


def write_overlays(model: nn.Module, handle, dataset, num_classes: int, device: torch.device,
                   folder: Path, count: int, title: str = "", roi=None, class_names=None) -> list[Path]:
    """The first `count` items of `dataset`: image | truth | prediction | UAFR uncertainty (for
    volumes, three slices of each), each written atomically."""
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
                          title=f"{title} — {item['name']}", num_classes=num_classes, class_names=class_names)
            draw = figures.volume_overlay if item["image"].dim() == 4 else figures.overlay  # (C, D, H, W): a volume
            rundir.atomic_write(path, lambda file: draw(item["image"].numpy(), item["label"][0].numpy(),
                                                        prediction.numpy(), file, **kwargs))
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
