"""Small models for the plug-in tests: an encoder-decoder with skip connections, a residual
encoder, and a UNet of the usual widths for parameter counts."""

import torch
from torch import nn


def conv_block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class EncoderDecoder(nn.Module):
    """Three encoder stages, two decoder stages with concatenated skips, a 1x1 head."""

    def __init__(self, in_channels=3, num_classes=2, width=8):
        super().__init__()
        w = width
        self.enc1 = conv_block(in_channels, w)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_block(w, 2 * w))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), conv_block(2 * w, 4 * w))
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = conv_block(4 * w + 2 * w, 2 * w)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = conv_block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class ResidualEncoder(nn.Module):
    """Stem, two residual blocks (one with a strided 1x1 shortcut), for receptive-field tracing."""

    def __init__(self, channels=4):
        super().__init__()
        c = channels
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.block1_a = nn.Conv2d(c, c, 3, padding=1)
        self.block1_b = nn.Conv2d(c, c, 3, padding=1)
        self.block2_a = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.block2_b = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.block2_short = nn.Conv2d(c, c, 1, stride=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block1_b(self.block1_a(x))
        x = self.block2_short(x) + self.block2_b(self.block2_a(x))
        return self.pool(x)


class UNet(nn.Module):
    """The usual UNet (Ronneberger et al.) with base width 64: 31 M parameters."""

    def __init__(self, in_channels=3, num_classes=2, base=64):
        super().__init__()
        widths = [base * 2**i for i in range(5)]
        self.down = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            self.down.append(nn.Sequential(*( [nn.MaxPool2d(2)] if i else []), conv_block(c, w), conv_block(w, w)))
            c = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(nn.Sequential(conv_block(2 * w, w), conv_block(w, w)))
            c = w
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x):
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)
