"""The paper's UNet (Table IV: 17.3 M parameters at base width 64).

Ronneberger et al.'s encoder-decoder with the variant that has 17.3 M parameters for 3 input
channels and 2 classes: bilinear upsampling instead of transposed convolutions, and the deepest
stage and every decoder stage at half width, so that the concatenated skip and the upsampled
map have equal channels. Stages are named ``enc1``..``enc5`` and ``dec4``..``dec1`` (dec4 is the
deepest decoder stage), the names PDCR and UAFR attach to. ``spatial_dims=3`` makes the same
network of 3-D convolutions (trilinear upsampling) for volumes.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import PaperLayers


def double_conv(c_in: int, c_out: int, c_mid: int | None = None, spatial_dims: int = 2) -> nn.Sequential:
    """(3x3 conv, BN, ReLU) twice: the UNet stage (3x3x3 in 3-D)."""
    c_mid = c_mid or c_out
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(
        conv(c_in, c_mid, 3, padding=1, bias=False), norm(c_mid), nn.ReLU(inplace=True),
        conv(c_mid, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True),
    )


class DecoderStage(nn.Module):
    """x2 upsampling of the deeper map (bilinear / trilinear), concatenation with the skip, a
    double conv."""

    def __init__(self, c_in: int, c_out: int, spatial_dims: int = 2):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear" if spatial_dims == 2 else "trilinear",
                              align_corners=True)
        self.conv = double_conv(c_in, c_out, c_in // 2, spatial_dims)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = self.up(deep)
        # odd sizes: pad the upsampled map to the skip's size (the far side gets the extra pixel)
        pad = []
        for axis in range(skip.dim() - 1, 1, -1):  # F.pad lists the last axis first
            d = skip.shape[axis] - deep.shape[axis]
            pad += [d // 2, d - d // 2]
        if any(pad):
            deep = nn.functional.pad(deep, pad)
        return self.conv(torch.cat([skip, deep], dim=1))


class UNet(nn.Module):
    """UNet. (B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W any size (and
    (B, C, D, H, W) volumes with spatial_dims=3).

    Args:
        in_channels, num_classes: image channels and classes.
        width: base width (64 in the paper; smaller for quick runs).
        spatial_dims: 2 for images, 3 for volumes ((B, C, D, H, W); each axis a multiple of 16).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 64, spatial_dims: int = 2):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        w = [width * 2**i for i in range(4)]  # 64, 128, 256, 512
        pool, conv = (nn.MaxPool2d, nn.Conv2d) if spatial_dims == 2 else (nn.MaxPool3d, nn.Conv3d)
        d = spatial_dims
        self.enc1 = double_conv(in_channels, w[0], spatial_dims=d)
        self.enc2 = nn.Sequential(pool(2), double_conv(w[0], w[1], spatial_dims=d))
        self.enc3 = nn.Sequential(pool(2), double_conv(w[1], w[2], spatial_dims=d))
        self.enc4 = nn.Sequential(pool(2), double_conv(w[2], w[3], spatial_dims=d))
        self.enc5 = nn.Sequential(pool(2), double_conv(w[3], w[3], spatial_dims=d))  # 1024 // 2
        self.dec4 = DecoderStage(2 * w[3], w[2], d)
        self.dec3 = DecoderStage(2 * w[2], w[1], d)
        self.dec2 = DecoderStage(2 * w[1], w[0], d)
        self.dec1 = DecoderStage(2 * w[0], w[0], d)
        self.head = conv(w[0], num_classes, 1)
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
