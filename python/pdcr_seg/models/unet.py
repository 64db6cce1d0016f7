"""The paper's UNet (Table IV: 17.3 M parameters at base width 64).

Ronneberger et al.'s encoder-decoder with the variant that has 17.3 M parameters for 3 input
channels and 2 classes: bilinear upsampling instead of transposed convolutions, and the deepest
stage and every decoder stage at half width, so that the concatenated skip and the upsampled
map have equal channels. Stages are named ``enc1``..``enc5`` and ``dec4``..``dec1`` (dec4 is the
deepest decoder stage), the names PDCR and UAFR attach to.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import PaperLayers


def double_conv(c_in: int, c_out: int, c_mid: int | None = None) -> nn.Sequential:
    """(3x3 conv, BN, ReLU) twice: the UNet stage."""
    c_mid = c_mid or c_out
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 3, padding=1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class DecoderStage(nn.Module):
    """Bilinear x2 upsampling of the deeper map, concatenation with the skip, a double conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = double_conv(c_in, c_out, c_in // 2)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = self.up(deep)
        # odd sizes: pad the upsampled map to the skip's size (bottom/right)
        dy, dx = skip.shape[-2] - deep.shape[-2], skip.shape[-1] - deep.shape[-1]
        if dy or dx:
            deep = nn.functional.pad(deep, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
        return self.conv(torch.cat([skip, deep], dim=1))


class UNet(nn.Module):
    """UNet. (B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W any size.

    Args:
        in_channels, num_classes: image channels and classes.
        width: base width (64 in the paper; smaller for quick runs).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 64):
        super().__init__()
        w = [width * 2**i for i in range(4)]  # 64, 128, 256, 512
        self.enc1 = double_conv(in_channels, w[0])
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), double_conv(w[0], w[1]))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), double_conv(w[1], w[2]))
        self.enc4 = nn.Sequential(nn.MaxPool2d(2), double_conv(w[2], w[3]))
        self.enc5 = nn.Sequential(nn.MaxPool2d(2), double_conv(w[3], w[3]))  # 1024 // 2
        self.dec4 = DecoderStage(2 * w[3], w[2])
        self.dec3 = DecoderStage(2 * w[2], w[1])
        self.dec2 = DecoderStage(2 * w[1], w[0])
        self.dec1 = DecoderStage(2 * w[0], w[0])
        self.head = nn.Conv2d(w[0], num_classes, 1)
        self.paper_layers = PaperLayers(
            encoder=("enc1", "enc2", "enc3", "enc4", "enc5"),
            decoder=("dec4", "dec3", "dec2", "dec1"),
            pdcr=("enc2", "enc3", "enc4"),
            cross=(("enc2", "enc3"),),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        e5 = self.enc5(e4)
        d = self.dec4(e5, e4)
        d = self.dec3(d, e3)
        d = self.dec2(d, e2)
        d = self.dec1(d, e1)
        return self.head(d)
