"""FCN-8s (Long et al.) on a VGG-16 encoder with batch norm (Table IV: 18.6 M parameters).

Encoder: five VGG-16 blocks of 2, 2, 3, 3, 3 (3x3 conv, BN, ReLU) at widths 64, 128, 256, 512,
512, each ending with a 2x2 max pool, then the convolutionised fully connected layers "fc6"
(3x3) and "fc7" (1x1). The original fc6 is a 7x7 conv to 4096 channels (103 M parameters on its
own); the paper does not give its FCN's fc sizes, so here fc6/fc7 have 728 channels at width 64,
the size that brings the model (3 input channels, 2 classes) to Table IV's 18.6 M.

Decoder (the "8s" skip fusion): class scores of fc7 at stride 32 are upsampled x2 by a learned
transposed convolution (bilinear at initialisation) and added to the scores of the stride-16
pool4 map (``dec4``), the result upsampled x2 and added to the scores of the stride-8 pool3 map
(``dec3``), then bilinearly upsampled x8 to the input size.

Stage names (what PDCR and UAFR attach to), with shapes for an input (B, C_in, H, W), w = width:

    enc1 (B, w, H/2, W/2)      enc2 (B, 2w, H/4, W/4)     enc3 (B, 4w, H/8, W/8)
    enc4 (B, 8w, H/16, W/16)   enc5 (B, 8w, H/32, W/32)   fc   (B, F, H/32, W/32)
    dec4 (B, M, H/16, W/16)    dec3 (B, M, H/8, W/8)

with M = num_classes and F = fc_channels (728 * w / 64).

dec<k> is the decoder stage that merges encoder stage k, as in the UNet. H and W must be
multiples of 32.

At 3 x 384 x 512 this FCN has 60.9 G multiply-adds, Table IV says 76.5 G: the parameters pin the
fc sizes but not where the paper's FCN spends the remaining compute (the VGG encoder alone is
60.1 G), which the paper does not say.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PaperLayers

FC_CHANNELS = 728  # at width 64: total 18.61 M parameters for 3 -> 2 channels


def vgg_block(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    """`convs` x (3x3 conv, BN, ReLU), then a 2x2 max pool (VGG puts the pool at the block's end)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """Weights (channels, channels, size, size) of a transposed conv that upsamples bilinearly."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    # on the CPU even under `with torch.device("meta")`: copy_ into a meta weight is then free
    t = torch.arange(size, dtype=torch.float32, device="cpu")
    filt = 1 - (t - center).abs() / factor
    weight = torch.zeros(channels, channels, size, size, device="cpu")
    for c in range(channels):  # class c upsamples into class c only
        weight[c, c] = filt[:, None] * filt[None, :]
    return weight


class FuseStage(nn.Module):
    """x2 upsampling of the deeper scores (learned, bilinear at start) plus the skip's scores."""

    def __init__(self, num_classes: int, skip_channels: int):
        super().__init__()
        # kernel 4, stride 2, padding 1 gives exactly twice the size, so no cropping is needed
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(num_classes, 4))
        self.score = nn.Conv2d(skip_channels, num_classes, 1)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(deep) + self.score(skip)


class FCN(nn.Module):
    """FCN-8s. (B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W multiples of 32.

    Args:
        in_channels, num_classes: image channels and classes.
        width: base width (64 in the paper; smaller for quick runs); every width scales with it.
        fc_channels: channels of fc6/fc7 (default 728 * width / 64, see the module docstring).
        dropout: dropout after fc6 and fc7 (0.5 as in FCN).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 64,
                 fc_channels: int | None = None, dropout: float = 0.5):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width, 8 * width]  # 64, 128, 256, 512, 512
        fc = fc_channels or max(1, round(FC_CHANNELS * width / 64))
        self.enc1 = vgg_block(in_channels, w[0], 2)
        self.enc2 = vgg_block(w[0], w[1], 2)
        self.enc3 = vgg_block(w[1], w[2], 3)  # pool3: stride 8
        self.enc4 = vgg_block(w[2], w[3], 3)  # pool4: stride 16
        self.enc5 = vgg_block(w[3], w[4], 3)  # pool5: stride 32
        self.fc = nn.Sequential(  # fc6, fc7 as convolutions
            nn.Conv2d(w[4], fc, 3, padding=1, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc, fc, 1, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.score = nn.Conv2d(fc, num_classes, 1)  # scores at stride 32
        self.dec4 = FuseStage(num_classes, w[3])  # + pool4 scores: stride 16
        self.dec3 = FuseStage(num_classes, w[2])  # + pool3 scores: stride 8
        self.paper_layers = PaperLayers(
            encoder=("enc1", "enc2", "enc3", "enc4", "enc5", "fc"),
            decoder=("dec4", "dec3"),
            pdcr=("enc2", "enc3", "enc4"),
            cross=(("enc2", "enc3"),),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        e5 = self.enc5(e4)
        s = self.score(self.fc(e5))
        s = self.dec4(s, e4)
        s = self.dec3(s, e3)
        # FCN's last x8 upsampling is a fixed bilinear kernel: plain interpolation does the same
        return F.interpolate(s, size=size, mode="bilinear", align_corners=False)
