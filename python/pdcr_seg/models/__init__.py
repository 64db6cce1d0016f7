"""Segmentation models of the paper (Table IV) and MONAI's, built by name.

    model = build_model("deeplabv3plus", in_channels=3, num_classes=2)
    pl = model.paper_layers
    handle = pdcr_ext.attach(model, pdcr_layers=pl.pdcr, cross_layers=pl.cross,
                             uafr_layers=pl.uafr_layers(), num_classes=2, example_input=x)

Names (``MODELS``), parameters at the default width for 3 input channels and 2 classes:

    unet                 the paper's UNet                          17.26 M (Table IV: 17.3 M)
    fcn                  FCN-8s, VGG-16 encoder                    18.61 M (Table IV: 18.6 M)
    deeplabv3plus        DeepLabV3+, aligned Xception (the paper)  54.70 M (Table IV: 54.7 M)
    deeplabv3plus_resnet DeepLabV3+, ResNet-50                     40.35 M
    monai.BasicUNet      MONAI's BasicUNet (width None: MONAI's 32)  1.98 M
    monai.UNet           MONAI's UNet, channels 64..1024           10.55 M
    monai.DynUNet        MONAI's DynUNet (the nnU-Net architecture), filters 32..256 at width 32
    monai.<ClassName>    another network of monai.networks.nets, given paper_layers=PaperLayers(...)

Volumes: ``spatial_dims=3`` builds unet, monai.BasicUNet, monai.UNet and monai.DynUNet of 3-D
convolutions ((B, C, D, H, W) in and out); FCN and DeepLabV3+ are 2-D only, as in the paper.

``width`` is the channels of the first encoder stage and scales every other width (default 64,
the paper's size; None keeps each model's default). Every model carries ``model.paper_layers``
(a PaperLayers of names of ``model.named_modules()``, each outputting (B, C, h, w)), takes
(B, in_channels, H, W) with H, W multiples of 32 and returns logits (B, num_classes, H, W).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .deeplab import DeepLabV3Plus
from .fcn import FCN
from .layers import PaperLayers
from .monai_models import build_monai
from .unet import UNet

__all__ = ["MODELS", "VOLUME_MODELS", "build_model", "PaperLayers", "UNet", "FCN", "DeepLabV3Plus"]


def _paper(cls, **fixed) -> Callable[..., nn.Module]:
    def build(in_channels, num_classes, width=None, **options):
        return cls(in_channels=in_channels, num_classes=num_classes,
                   width=64 if width is None else width, **fixed, **options)
    build.__doc__ = cls.__doc__
    return build


def _monai(class_name: str) -> Callable[..., nn.Module]:
    def build(in_channels, num_classes, width=None, **options):
        return build_monai(class_name, in_channels, num_classes, width, **options)
    return build


# name -> builder(in_channels, num_classes, width=None, **options)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": _paper(UNet),
    "fcn": _paper(FCN),
    "deeplabv3plus": _paper(DeepLabV3Plus, backbone="xception"),
    "deeplabv3plus_resnet": _paper(DeepLabV3Plus, backbone="resnet"),
    "monai.BasicUNet": _monai("BasicUNet"),
    "monai.UNet": _monai("UNet"),
    "monai.DynUNet": _monai("DynUNet"),
}
VOLUME_MODELS = ("unet", "monai.BasicUNet", "monai.UNet", "monai.DynUNet")


def build_model(name: str, in_channels: int = 3, num_classes: int = 2, width: int | None = None,
                spatial_dims: int = 2, **options) -> nn.Module:
    """The model called `name` (see MODELS; or monai.<ClassName> with paper_layers=...).

    Args:
        name: a key of MODELS, or "monai.<ClassName>" of monai.networks.nets.
        in_channels, num_classes: image channels and classes (logit maps).
        width: channels of the first encoder stage (None: the model's default, 64 for the
            paper's models).
        spatial_dims: 2 (images) or 3 (volumes: unet and the MONAI networks).
        **options: passed to the model's constructor (e.g. FCN's fc_channels, DeepLabV3+'s
            middle_blocks, MONAI's own arguments, paper_layers for MONAI networks).

    Raises:
        ValueError: unknown name, or bad sizes.
    """
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be None or an int >= 1, got {width!r}")
    builder = MODELS.get(name)
    if builder is None and isinstance(name, str) and name.startswith("monai."):
        builder = _monai(name[len("monai."):])
    if builder is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}, "
                         f"or monai.<ClassName> with paper_layers=PaperLayers(...)")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if spatial_dims == 3:
        if not (name in VOLUME_MODELS or name.startswith("monai.")):
            raise ValueError(f"{name} is a 2-D model; for volumes use {', '.join(VOLUME_MODELS)}")
        options["spatial_dims"] = 3
    return builder(in_channels, num_classes, width, **options)
