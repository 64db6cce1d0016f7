"""Inference and evaluation: logits of a batch, metrics over a dataset, a trained run reloaded.

A run is rebuilt from its checkpoint exactly as it was trained (model, then PDCR's projections
and UAFR through pdcr_ext.attach), so that the state dict matches and UAFR re-weights at test
time as in training; PDCR itself only acts in training (handle.loss is never called here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import distributed
from .config import ConfigError, TrainConfig, from_dict
from .methods import attach_methods
from .metrics import per_image_metrics, summarize
from .models import build_model


class RunError(ValueError):
    """A checkpoint that cannot be used; one line naming the problem."""


def predict_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> logits (B, M, *S) in float32, model in eval mode, no gradients."""
    with torch.no_grad():
        return model(images).float()


def evaluate(model: nn.Module, dataset, num_classes: int, ctx: distributed.Context, *,
             batch_size: int = 8, ignore_index: int | None = None, amp: bool = False) -> dict:
    """Metrics of `model` on every item of `dataset`, as metrics.summarize gives them.

    Under DDP each rank evaluates every world_size-th item and the per-image rows are gathered,
    so every rank returns the same summary (over the whole dataset, each item once).
    """
    was_training = model.training
    model.eval()
    rows = []
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp)
    try:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start:start + batch_size]]
            images = torch.stack([item["image"] for item in items]).to(ctx.device)
            labels = torch.stack([item["label"] for item in items]).to(ctx.device)
            with autocast:
                logits = predict_logits(model, images)
            rows += per_image_metrics(logits.argmax(1).cpu(), labels[:, 0].cpu(), num_classes, ignore_index)
    finally:
        model.train(was_training)
    rows = distributed.gather(ctx, rows)
    return summarize(rows, num_classes)


def build_run(cfg: TrainConfig, in_channels: int, num_classes: int, device: torch.device):
    """The model of a run and its PDCR/UAFR handle (or None), on `device`."""
    try:
        model = build_model(cfg.model, in_channels, num_classes, cfg.width)
    except ValueError as error:  # an unknown model name, a bad width
        raise ConfigError(str(error)) from None
    example = torch.zeros(2, in_channels, cfg.image_size, cfg.image_size)
    handle = attach_methods(model, cfg, num_classes, example)
    return model.to(device), handle


def load_run(checkpoint: str | Path, device: torch.device):
    """(model in eval mode, handle, config, checkpoint dict) of a saved checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise RunError(f"checkpoint {path} cannot be read: {error}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise RunError(f"{path} is not a pdcr-seg checkpoint")
    cfg = from_dict(state["config"])
    data = state["data"]
    model, handle = build_run(cfg, data["in_channels"], data["num_classes"], device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, handle, cfg, state


def uncertainty_layer(model: nn.Module, handle) -> str | None:
    """The UAFR layer whose map the figures show: encoder stage 2 (the paper's Fig. 9) when it
    has UAFR, else the first UAFR layer; None without UAFR."""
    if handle is None or not handle.uafr_layers:
        return None
    paper = getattr(model, "paper_layers", None)
    if paper is not None and len(paper.encoder) > 1 and paper.encoder[1] in handle.uafr_layers:
        return paper.encoder[1]
    return handle.uafr_layers[0]
