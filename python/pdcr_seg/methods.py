"""PDCR and UAFR on a pdcr_seg model, from a TrainConfig: which layers, how many samples.

The layer choice defaults to the paper's main setting (Section V-A; the model's ``paper_layers``):
``pdcr_preset="paper"``: H-PDCR on encoder stages 2-4 with N = 128, 64, 32, on every decoder
stage with N = 8 (the paper's "128, 64, 32, 8, 8, 8, 8, 8") and the cross-layer pair (2, 3);
``pdcr_preset="encoder"``: encoder stages 2-4 and the pair only (``pdcr_decoder`` adds the decoder
to it). RF-PDCR (``pdcr_mode="receptive_field"``) takes encoder stages 2-4 under either preset:
receptive fields are an encoder's, and the paper's RF-PDCR experiments are encoder-only. UAFR on
every encoder and decoder stage. ``pdcr_dense`` samples every position of each PDCR layer instead.
"""

from __future__ import annotations

import torch
from torch import nn

import pdcr_ext
from pdcr_ext.loss import PAPER_SAMPLES

from .config import ConfigError, TrainConfig

DENSE = 1 << 30  # more than any layer's h * w: PDCRLoss takes min(N, h w), i.e. every position


def pdcr_layers(model: nn.Module, cfg: TrainConfig) -> tuple[list[str], list[tuple[str, str]]]:
    """The PDCR layers and cross-layer pairs of `model` under `cfg`."""
    paper = getattr(model, "paper_layers", None)
    if paper is None and cfg.pdcr_layers is None:
        raise ConfigError(f"model {cfg.model} names no paper layers: give --pdcr-layers")
    if cfg.pdcr_layers is not None:
        layers = list(cfg.pdcr_layers)
    else:
        # RF-PDCR is defined on the encoder: both presets give its stages 2-4 there
        preset = cfg.pdcr_preset if cfg.pdcr_mode == "hierarchical" else "encoder"
        layers = list(paper.pdcr_layers(preset))
        if cfg.pdcr_decoder:
            layers += [name for name in paper.decoder if name not in layers]
    if cfg.pdcr_cross is not None:
        cross = [tuple(pair) for pair in cfg.pdcr_cross]
    elif cfg.pdcr_mode == "hierarchical" and paper is not None:
        cross = [pair for pair in paper.cross if all(name in layers for name in pair)]
    else:
        cross = []
    return layers, cross


def uafr_layers(model: nn.Module, cfg: TrainConfig) -> list[str]:
    if cfg.uafr_layers is not None:
        return list(cfg.uafr_layers)
    paper = getattr(model, "paper_layers", None)
    if paper is None:
        raise ConfigError(f"model {cfg.model} names no paper layers: give --uafr-layers")
    return list(paper.uafr_layers())


def samples(layers: list[str], cfg: TrainConfig) -> tuple[int, ...]:
    """N per PDCR layer: the given values, the last repeating (as PDCRLoss's `samples`), or the
    paper's 128, 64, 32, then 8."""
    if cfg.pdcr_dense:
        return (DENSE,) * len(layers)
    values = PAPER_SAMPLES if cfg.pdcr_samples is None else tuple(cfg.pdcr_samples)
    if cfg.pdcr_samples is not None and len(values) > len(layers):
        raise ConfigError(f"--pdcr-samples gives {len(values)} values for {len(layers)} layers")
    return tuple(values[min(i, len(values) - 1)] for i in range(len(layers)))


def attach_methods(model: nn.Module, cfg: TrainConfig, num_classes: int,
                   example_input: torch.Tensor) -> pdcr_ext.PDCRHandle | None:
    """pdcr_ext.attach with the layers and settings of `cfg`; None when neither method is on."""
    if not (cfg.pdcr or cfg.uafr):
        return None
    names, cross = pdcr_layers(model, cfg) if cfg.pdcr else ([], [])
    options = {}
    if cfg.pdcr:  # every value that changes the loss comes from the config (config.py: versions)
        options = dict(mode=cfg.pdcr_mode, samples=samples(names, cfg), weight=cfg.pdcr_weight, tau=cfg.pdcr_tau,
                       patch_reduction=cfg.pdcr_patch_reduction, pair_reduction=cfg.pdcr_pair_reduction,
                       cross_samples=cfg.pdcr_cross_samples, ignore_index=cfg.ignore_index)
    hidden = "wide" if cfg.uafr_hidden is None else cfg.uafr_hidden  # pdcr_ext.UAFR's name for min(C, 64)
    try:
        return pdcr_ext.attach(model, pdcr_layers=names, cross_layers=cross,
                               uafr_layers=uafr_layers(model, cfg) if cfg.uafr else [],
                               num_classes=num_classes, example_input=example_input,
                               uafr_options={"hidden_channels": hidden}, **options)
    except ValueError as error:  # an unknown layer name, a layer without a (B, C, h, w) output
        raise ConfigError(str(error)) from None
