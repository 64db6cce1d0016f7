"""Which of a model's modules the paper regularises and re-weights (Section V-C).

Every model of pdcr_seg carries a ``PaperLayers`` under ``model.paper_layers``: names of
``model.named_modules()`` that ``pdcr_ext.attach`` takes. The paper's findings: RF-PDCR and
H-PDCR at the central encoder layers 2-4 (Fig. 5, Table VII), cross-layer on the adjacent layers
2-3, H-PDCR also in the decoder (Table VI), UAFR on every encoder and decoder stage but not on the
ASPP neck of DeepLabV3+.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PaperLayers:
    encoder: tuple[str, ...]  # every encoder stage, shallow to deep
    decoder: tuple[str, ...]  # every decoder stage, deep to shallow
    pdcr: tuple[str, ...]  # encoder stages 2-4
    cross: tuple[tuple[str, str], ...]  # adjacent encoder stages 2-3
    uafr: tuple[str, ...] = field(default=())  # default: encoder + decoder

    def uafr_layers(self) -> tuple[str, ...]:
        return self.uafr or self.encoder + self.decoder
