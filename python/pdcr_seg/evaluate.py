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
from .config import ConfigError, TrainConfig, from_run
from .methods import attach_methods
from .metrics import SLICE_NAME, image_rows, per_image_metrics, summarize, volume_rows
from .models import build_model


class RunError(ValueError):
    """A checkpoint that cannot be used; one line naming the problem."""


def predict_logits(model: nn.Module, images: torch.Tensor, roi=None) -> torch.Tensor:
    """(B, C, *S) -> logits (B, M, *S) in float32, no gradients. With `roi` (a patch size), by
    MONAI's sliding_window_inference with 50 % overlap and Gaussian weighting (nnU-Net's; the
    paper's 3-D test setting), so that volumes of any size are segmented patch by patch."""
    with torch.no_grad():
        return _windows(images, roi, lambda x: model(x).float())


def _windows(images: torch.Tensor, roi, predictor) -> torch.Tensor:
    """predictor(images), or stitched from sliding windows of size `roi` (50 % overlap, Gaussian)."""
    if roi is None:
        return predictor(images)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(images, tuple(roi), sw_batch_size=4, predictor=predictor, overlap=0.5,
                                    mode="gaussian")


def segment(model: nn.Module, handle, layer: str | None, image: torch.Tensor, roi=None):
    """One item: (prediction (*S) int64, UAFR's uncertainty of `layer` resized to (*S) or None).

    image (C, *S). With `roi` the uncertainty is stitched by the same sliding windows as the
    logits (each window's map upsampled to the window), so a volume gets one map.
    """
    import torch.nn.functional as F

    def predictor(x):
        logits = model(x).float()
        if layer is None:
            return logits
        u = handle.uncertainty[layer][:, None].float()
        mode = "bilinear" if u.dim() == 4 else "trilinear"
        return torch.cat([logits, F.interpolate(u, size=x.shape[2:], mode=mode, align_corners=False)], 1)

    with torch.no_grad():
        out = _windows(image[None], roi, predictor)
    logits = out[:, :-1] if layer is not None else out
    return logits.argmax(1)[0].cpu(), (out[0, -1].clamp(0, 1).cpu() if layer is not None else None)


def inference_roi(cfg: TrainConfig):
    """The sliding-window size of a run: its training patch for volumes, None for images."""
    return example_size(cfg) if cfg.dims == 3 else None


def evaluate(model: nn.Module, dataset, num_classes: int, ctx: distributed.Context, *,
             batch_size: int = 8, ignore_index: int | None = None, amp: bool = False, roi=None,
             per_item: bool = True) -> dict:
    """Metrics of `model` on every item of `dataset`, as metrics.summarize gives them, plus
    "per_image": each item's scores by name (metrics.image_rows), and where the items are slices
    of volumes (named "<volume>_slice<k>": lung-ct in 2-D), "per_volume": each volume's scores
    in 3-D from its stacked slices (metrics.volume_rows; lung-ct: per patient). `per_item=False`:
    the summary only (validation, every epoch).

    Under DDP each rank evaluates every world_size-th item and the per-image rows are gathered,
    so every rank returns the same summary (over the whole dataset, each item once). With `roi`
    (volumes) each item is segmented by sliding windows, one volume at a time.
    """
    if roi is not None:
        batch_size = 1  # volumes may differ in size
    was_training = model.training
    model.eval()
    rows, slices = [], []
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp)
    try:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start:start + batch_size]]
            images = torch.stack([item["image"] for item in items]).to(ctx.device)
            labels = torch.stack([item["label"] for item in items]).to(ctx.device)
            with autocast:
                logits = predict_logits(model, images, roi)
            prediction = logits.argmax(1).cpu()
            scores = per_image_metrics(prediction, labels[:, 0].cpu(), num_classes, ignore_index)
            for j, (item, row) in enumerate(zip(items, scores)):
                rows.append({**row, "name": item["name"], "index": indices[start + j]})
                if per_item and SLICE_NAME.match(item["name"]):  # kept to be stacked into its volume
                    slices.append((item["name"], prediction[j], item["label"][0], item.get("spacing")))
    finally:
        model.train(was_training)
    rows = sorted(distributed.gather(ctx, rows), key=lambda row: row["index"])
    result = summarize(rows, num_classes)
    if not per_item:
        return result
    result["per_image"] = image_rows(rows, num_classes)
    slices = distributed.gather(ctx, slices)
    if slices:
        result["per_volume"] = volume_rows(slices, num_classes, ignore_index)
    return result


def build_run(cfg: TrainConfig, in_channels: int, num_classes: int, device: torch.device):
    """The model of a run and its PDCR/UAFR handle (or None), on `device`."""
    try:
        model = build_model(cfg.model, in_channels, num_classes, cfg.width, spatial_dims=cfg.dims,
                            **model_options(cfg))
    except ValueError as error:  # an unknown model name, a bad width, a 2-D model for volumes
        raise ConfigError(str(error)) from None
    example = torch.zeros(2, in_channels, *example_size(cfg))
    handle = attach_methods(model, cfg, num_classes, example)
    return model.to(device), handle


def model_options(cfg: TrainConfig) -> dict:
    """Options build_model needs beyond the config's own: DynUNet plans its strides from the patch."""
    return {"input_size": example_size(cfg)} if cfg.model == "monai.DynUNet" else {}


def example_size(cfg: TrainConfig) -> tuple[int, ...]:
    """The spatial size of one training input: the tile (2-D) or the patch (3-D)."""
    return tuple(cfg.patch_size) if cfg.dims == 3 else (cfg.image_size, cfg.image_size)


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
    cfg = from_run(state["config"], source=f"{path}'s config")  # an older run with its own values
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
