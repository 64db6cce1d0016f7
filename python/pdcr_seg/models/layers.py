"""Which of a model's modules the paper regularises and re-weights (Sections V-A and V-C).

Every model of pdcr_seg carries a ``PaperLayers`` under ``model.paper_layers``: names of
``model.named_modules()`` that ``pdcr_ext.attach`` takes. The paper's main setting (Section V-A):
"H-PDCR is equipped at encoder, decoder and cross-layers ... N is set to 128, 64, 32, 8, 8, 8, 8,
8": encoder stages 2-4 (N = 128, 64, 32), every decoder stage (N = 8) and the adjacent
cross-layer pair (2, 3); UAFR on every encoder and decoder stage but not on the ASPP neck of
DeepLabV3+. The ablations behind it: RF-PDCR and H-PDCR at the central encoder layers 2-4 (Fig. 5,
Table VII), cross-layer best on the adjacent layers 2-3, H-PDCR also in the decoder (Table VI).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# PDCR layer presets: "paper" is Section V-A's main setting (encoder stages 2-4, the decoder
# stages, the pair (2, 3)); "encoder" leaves the decoder out (encoder stages 2-4 and the pair).
PDCR_PRESETS = ("paper", "encoder")


@dataclass(frozen=True)
class PaperLayers:
    encoder: tuple[str, ...]  # every encoder stage, shallow to deep
    decoder: tuple[str, ...]  # every decoder stage, deep to shallow
    pdcr: tuple[str, ...]  # encoder stages 2-4
    cross: tuple[tuple[str, str], ...]  # adjacent encoder stages 2-3
    uafr: tuple[str, ...] = field(default=())  # default: encoder + decoder

    def uafr_layers(self) -> tuple[str, ...]:
        return self.uafr or self.encoder + self.decoder

    def pdcr_layers(self, preset: str = "paper") -> tuple[str, ...]:
        """PDCR's layers under a preset of PDCR_PRESETS, in the order of N = 128, 64, 32, 8, ...:
        "paper" encoder stages 2-4 then the decoder stages, "encoder" stages 2-4 only."""
        if preset not in PDCR_PRESETS:
            raise ValueError(f"PDCR preset must be one of {', '.join(PDCR_PRESETS)}, got {preset!r}")
        if preset == "encoder":
            return self.pdcr
        return self.pdcr + tuple(name for name in self.decoder if name not in self.pdcr)
