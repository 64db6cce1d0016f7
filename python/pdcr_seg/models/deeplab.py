"""DeepLabV3+ (Chen et al., 2018) at output stride 16, the paper's main model (Table IV: 54.7 M).

Backbone -> ASPP neck -> decoder with the stride-4 low-level skip -> bilinear upsampling:

* ASPP: a 1x1 conv and three atrous 3x3 convs (rates 6, 12, 18) plus image pooling, each to 256
  channels (BN, ReLU), concatenated and projected by a 1x1 conv to 256 (dropout 0.5).
* Decoder: the stride-4 backbone map reduced by a 1x1 conv to 48 channels, concatenated with the
  ASPP output upsampled x4, two 3x3 convs to 256, a 1x1 classifier, x4 bilinear to the input.
* Backbones (written here, nothing is downloaded):
  - ``xception`` (the paper's): the aligned Xception of DeepLabV3+ (Xception-65): entry flow,
    16 middle-flow blocks, exit flow, every conv after the stem depthwise-separable, the exit
    flow's stride replaced by dilation 2 for output stride 16. With it the model has 54.7 M
    parameters for 3 input channels and 2 classes, Table IV's figure (the layout of the common
    PyTorch DeepLabV3+ implementation, BN between depthwise and pointwise convs included).
  - ``resnet``: ResNet-50 bottlenecks (3, 4, 6, 3 blocks), the last stage dilated (40.3 M).

Stage names (what PDCR and UAFR attach to), shapes for an input (B, C_in, H, W), w = width:

    stage   xception                   resnet
    enc1    (B, w, H/2, W/2)           (B, w, H/2, W/2)       stem
    enc2    (B, 2w, H/4, W/4)          (B, 4w, H/4, W/4)      the low-level skip
    enc3    (B, 4w, H/8, W/8)          (B, 8w, H/8, W/8)
    enc4    (B, 728w/64, H/16, W/16)   (B, 16w, H/16, W/16)   xception: block3 + middle flow
    enc5    (B, 32w, H/16, W/16)       (B, 32w, H/16, W/16)   dilated
    aspp    (B, 4w, H/16, W/16)        the neck: PDCR/UAFR defaults leave it alone (Section V-C)
    dec2    (B, 4w, H/4, W/4)          the decoder stage (merges enc2, hence the name, as in UNet)

(w = 64: Xception widths 64, 128, 256, 728, 2048.) BatchNorm in the image-pooling branch sees one
value per channel and image, so training needs batches of 2 or more (as in torchvision).
H and W must be multiples of 16 (32 for the other models of pdcr_seg).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PaperLayers


def scaled(channels: int, width: int) -> int:
    """The paper's channel count at base width 64, scaled to `width`."""
    return max(1, round(channels * width / 64))


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


# ---------------------------------------------------------------------------------------------
# Aligned Xception
# ---------------------------------------------------------------------------------------------

class SeparableConv2d(nn.Module):
    """3x3 depthwise conv, BN, 1x1 pointwise conv (no ReLU in between, as in DeepLabV3+)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride, padding=dilation, dilation=dilation,
                                   groups=c_in, bias=False)
        self.bn = nn.BatchNorm2d(c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.bn(self.depthwise(x)))


class XceptionBlock(nn.Module):
    """Residual block of `reps` (ReLU, separable conv, BN) units, optionally a strided last unit.

    The shortcut is the identity, or a strided 1x1 conv + BN when channels or size change.
    Args follow DeepLabV3+'s Xception: grow_first puts the channel change on the first unit
    (else on the last), start_with_relu=False drops the leading ReLU (after a ReLU'd stage),
    extra_unit appends one more unit at `stride` (entry flow's downsampling, exit flow's last).
    """

    def __init__(self, c_in: int, c_out: int, reps: int, stride: int = 1, dilation: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True, extra_unit: bool = False):
        super().__init__()
        if c_in != c_out or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.skip = nn.Identity()
        channels = [c_in] + [c_out if grow_first else c_in] * (reps - 1) + [c_out]
        units: list[nn.Module] = []
        for a, b in zip(channels[:-1], channels[1:]):
            # not in place: the block's input is also the shortcut's (and may be a hooked stage output)
            units += [nn.ReLU(inplace=False), SeparableConv2d(a, b, 1, dilation), nn.BatchNorm2d(b)]
        if stride != 1 or extra_unit:
            units += [nn.ReLU(inplace=True), SeparableConv2d(c_out, c_out, stride, 1 if stride != 1 else dilation),
                      nn.BatchNorm2d(c_out)]
        if not start_with_relu:
            units = units[1:]
        self.units = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x) + self.skip(x)


def aligned_xception(in_channels: int = 3, width: int = 64, middle_blocks: int = 16):
    """Xception-65 as in DeepLabV3+ at output stride 16: the five stages and their channels."""
    c = lambda n: scaled(n, width)  # noqa: E731
    enc1 = nn.Sequential(conv_bn_relu(in_channels, c(32), stride=2), conv_bn_relu(c(32), c(64)))
    # entry flow; the ReLU after block1 makes the low-level skip, so block2 starts without one
    enc2 = nn.Sequential(XceptionBlock(c(64), c(128), 2, stride=2, start_with_relu=False),
                         nn.ReLU(inplace=True))
    enc3 = XceptionBlock(c(128), c(256), 2, stride=2, start_with_relu=False)
    enc4 = nn.Sequential(
        XceptionBlock(c(256), c(728), 2, stride=2),  # end of the entry flow
        *[XceptionBlock(c(728), c(728), 3) for _ in range(middle_blocks)],  # middle flow
    )
    # exit flow; output stride 16: its stride-2 unit becomes stride 1, what follows dilation 2
    enc5 = nn.Sequential(
        XceptionBlock(c(728), c(1024), 2, grow_first=False, extra_unit=True),
        nn.ReLU(inplace=True),
        SeparableConv2d(c(1024), c(1536), dilation=2), nn.BatchNorm2d(c(1536)), nn.ReLU(inplace=True),
        SeparableConv2d(c(1536), c(1536), dilation=2), nn.BatchNorm2d(c(1536)), nn.ReLU(inplace=True),
        SeparableConv2d(c(1536), c(2048), dilation=2), nn.BatchNorm2d(c(2048)), nn.ReLU(inplace=True),
    )
    return [enc1, enc2, enc3, enc4, enc5], [c(64), c(128), c(256), c(728), c(2048)]


# ---------------------------------------------------------------------------------------------
# ResNet-50
# ---------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride/dilation), 1x1 expand x4, plus the (projected) shortcut, ReLU."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = conv_bn_relu(c_in, planes, 1)
        self.conv2 = conv_bn_relu(planes, planes, 3, stride, dilation)
        self.conv3 = nn.Sequential(nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        if c_in != c_out or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.skip(x))


def resnet_stage(c_in: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    layers = [Bottleneck(c_in, planes, stride, dilation)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet50(in_channels: int = 3, width: int = 64, blocks=(3, 4, 6, 3)):
    """ResNet-50 at output stride 16 (the last stage dilated): the five stages and their channels."""
    p = [scaled(n, width) for n in (64, 128, 256, 512)]
    e = Bottleneck.expansion
    stages = [
        conv_bn_relu(in_channels, p[0], 7, stride=2),  # stem, stride 2
        nn.Sequential(nn.MaxPool2d(3, 2, padding=1), resnet_stage(p[0], p[0], blocks[0])),
        resnet_stage(p[0] * e, p[1], blocks[1], stride=2),
        resnet_stage(p[1] * e, p[2], blocks[2], stride=2),
        resnet_stage(p[2] * e, p[3], blocks[3], dilation=2),  # stride -> dilation
    ]
    return stages, [p[0], p[0] * e, p[1] * e, p[2] * e, p[3] * e]


# ---------------------------------------------------------------------------------------------
# DeepLabV3+
# ---------------------------------------------------------------------------------------------

class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: (B, C, h, w) -> (B, c_out, h, w)."""

    def __init__(self, c_in: int, c_out: int, rates=(6, 12, 18), dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(c_in, c_out, 1)] + [conv_bn_relu(c_in, c_out, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(c_in, c_out, 1))
        self.project = nn.Sequential(conv_bn_relu((len(rates) + 2) * c_out, c_out, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, dim=1))


class DecoderStage(nn.Module):
    """DeepLabV3+ decoder: upsample the neck to the skip, concat its 1x1-reduced channels, 2 convs."""

    def __init__(self, c_deep: int, c_skip: int, c_reduced: int, c_out: int):
        super().__init__()
        self.reduce = conv_bn_relu(c_skip, c_reduced, 1)
        self.conv = nn.Sequential(conv_bn_relu(c_deep + c_reduced, c_out), nn.Dropout(0.5),
                                  conv_bn_relu(c_out, c_out), nn.Dropout(0.1))

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([deep, self.reduce(skip)], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+, output stride 16. (B, in_channels, H, W) -> logits (B, num_classes, H, W).

    Args:
        in_channels, num_classes: image channels and classes.
        width: base width (64 in the paper); the backbone, ASPP (256) and decoder (48, 256) widths
            scale with it.
        backbone: "xception" (the paper's) or "resnet" (ResNet-50).
        middle_blocks: Xception middle-flow blocks (16 in Xception-65).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 64,
                 backbone: str = "xception", middle_blocks: int = 16):
        super().__init__()
        if backbone == "xception":
            stages, chans = aligned_xception(in_channels, width, middle_blocks)
        elif backbone == "resnet":
            stages, chans = resnet50(in_channels, width)
        else:
            raise ValueError(f"backbone must be 'xception' or 'resnet', got {backbone!r}")
        # the backbone's stages are the model's enc1..enc5, named as in the other models
        self.enc1, self.enc2, self.enc3, self.enc4, self.enc5 = stages
        neck = scaled(256, width)
        self.aspp = ASPP(chans[4], neck)
        self.dec2 = DecoderStage(neck, chans[1], scaled(48, width), neck)
        self.head = nn.Conv2d(neck, num_classes, 1)
        self.paper_layers = PaperLayers(
            encoder=("enc1", "enc2", "enc3", "enc4", "enc5"),
            decoder=("dec2",),
            pdcr=("enc2", "enc3", "enc4"),
            cross=(("enc2", "enc3"),),
            # the default UAFR layers (encoder + decoder) leave out the ASPP neck, as the paper does
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)  # stride 4: the low-level skip
        e5 = self.enc5(self.enc4(self.enc3(e2)))  # stride 16
        d = self.dec2(self.aspp(e5), e2)
        return F.interpolate(self.head(d), size=x.shape[-2:], mode="bilinear", align_corners=False)
