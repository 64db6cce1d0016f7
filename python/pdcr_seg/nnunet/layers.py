"""The paper's layers on the networks nnU-Net builds from its plans: one table, by module name.

nnU-Net's UNets (dynamic_network_architectures' ``PlainConvUNet``, ``ResidualEncoderUNet`` and
``ResidualUNet``, for ``2d``, ``3d_fullres`` and ``3d_lowres``) name their stages alike:

    encoder.stages.0 .. encoder.stages.{S-1}   shallow (full resolution) to deep (the bottleneck)
    decoder.stages.0 .. decoder.stages.{S-2}   deep to shallow (the last one at full resolution)

The paper's "stage k" of the encoder (1-based, stage 1 at full resolution, as everywhere in
pdcr_seg) is ``encoder.stages.{k-1}``. Its main setting (Section V-A: "H-PDCR is equipped at
encoder, decoder and cross-layers ... N is set to 128, 64, 32, 8, 8, 8, 8, 8"; Section V-C, Fig. 5,
Tables VI and VII for the choice of layers):

    =========================  ==========================================  ===============
    paper                       nnU-Net module                              N (PDCR)
    =========================  ==========================================  ===============
    PDCR, encoder stage 2       encoder.stages.1                            128
    PDCR, encoder stage 3       encoder.stages.2                            64
    PDCR, encoder stage 4       encoder.stages.3                            32
    PDCR, every decoder stage   decoder.stages.0 .. decoder.stages.{S-2}    8 each
    PDCR cross-layer pair       (encoder.stages.1, encoder.stages.2)        32 x 32
    UAFR                        every encoder.stages.i and decoder.stages.j
    =========================  ==========================================  ===============

A stage's output is the feature map after its convolutions (nnU-Net's skip connection for the
encoder, the input of the segmentation head for the decoder): UAFR re-weights it there, and PDCR
reads it after UAFR's re-weighting. Shallower networks (fewer than 4 encoder stages) get the stages
that exist. The N of a decoder stage is capped at its number of positions by PDCRLoss.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pdcr_ext.loss import PAPER_SAMPLES

ENCODER, DECODER = "encoder.stages", "decoder.stages"


@dataclass(frozen=True)
class NnunetLayers:
    """Module names of one nnU-Net network for pdcr_ext.attach."""

    encoder: tuple[str, ...]  # every encoder stage, shallow to deep
    decoder: tuple[str, ...]  # every decoder stage, deep to shallow
    pdcr: tuple[str, ...]  # encoder stages 2-4, then every decoder stage
    cross: tuple[tuple[str, str], ...]  # encoder stages (2, 3)
    samples: dict  # N of each PDCR layer, by name

    @property
    def uafr(self) -> tuple[str, ...]:
        return self.encoder + self.decoder


def _stages(network: nn.Module, prefix: str) -> list[str]:
    modules = dict(network.named_modules())
    stages = modules.get(prefix)
    if not isinstance(stages, (nn.Sequential, nn.ModuleList)) or len(stages) == 0:
        raise ValueError(f"{type(network).__name__} has no {prefix!r} (nnU-Net's UNets have "
                         f"encoder.stages and decoder.stages); its PDCR/UAFR layers must be named by hand")
    return [f"{prefix}.{i}" for i in range(len(stages))]


def nnunet_layers(network: nn.Module) -> NnunetLayers:
    """The paper's layers on an nnU-Net network (the table of this module's docstring)."""
    encoder, decoder = _stages(network, ENCODER), _stages(network, DECODER)
    central = encoder[1:4]  # paper's encoder stages 2, 3, 4
    samples = {name: PAPER_SAMPLES[i] for i, name in enumerate(central)}
    samples.update({name: PAPER_SAMPLES[-1] for name in decoder})  # 8 each
    cross = ((central[0], central[1]),) if len(central) >= 2 else ()
    return NnunetLayers(encoder=tuple(encoder), decoder=tuple(decoder), pdcr=tuple(central + decoder),
                        cross=cross, samples=samples)
