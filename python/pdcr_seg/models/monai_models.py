"""MONAI 2-D segmentation networks with the PaperLayers of their stages.

MONAI's networks are used as they are; what this module adds is the names of their encoder and
decoder stages, read from their module names, so that PDCR and UAFR can attach to them:

* ``monai.BasicUNet`` (features (32, 32, 64, 128, 256, 32) scaled by width / 32; width None keeps
  MONAI's default):

      conv_0 (B, w, H, W)  down_1 (B, w, H/2, W/2)  down_2 (B, 2w, H/4, W/4)
      down_3 (B, 4w, H/8, W/8)  down_4 (B, 8w, H/16, W/16)
      upcat_4 (B, 4w, H/8, W/8) ... upcat_1 (B, w, H, W)

  PDCR on down_1..down_3 (encoder stages 2-4), cross pair (down_1, down_2).

* ``monai.UNet`` (channels (w, 2w, 4w, 8w, 16w), strides (2, 2, 2, 2), w = width, default 64, so
  that w is the first stage's channels as for the other models; ``channels``, ``strides``,
  ``num_res_units`` ... pass through). MONAI builds it recursively, every level a
  Sequential(down, SkipConnection(next level), up), so the stages are

      encoder  model.0, model.1.submodule.0, model.1.submodule.1.submodule.0, ..., the bottom
      decoder  the up layers, deepest first, without the top one (``model.2``: its output is
               the logits, not a feature map)

  MONAI's first down layer already has stride 2: encoder stage k is at stride 2^k.

* ``monai.DynUNet``, the nnU-Net architecture (the paper's 3-D backbone): filters (w, 2w, 4w, 8w,
  8w) with w = width (default 32, nnU-Net's), 3x3(x3) kernels, strides planned from the training
  patch as nnU-Net does (halve each axis while it keeps >= 4 voxels, at most 5 stages; (1, 2, 2,
  2, 2) without a patch size); stages ``input_block``, ``downsamples.0``.., ``bottleneck``
  (encoder) and ``upsamples.0``.. (decoder, deepest first).

Each builder takes ``spatial_dims`` (2 by default, 3 for volumes). Any other ``monai.<ClassName>``
of monai.networks.nets is built with spatial_dims, in_channels, out_channels and the options, but
only when ``paper_layers=PaperLayers(...)`` names its stages.
"""

from __future__ import annotations

from torch import nn

from .layers import PaperLayers

KNOWN = ("BasicUNet", "UNet", "DynUNet")  # classes whose stage names are derived here


def _paper_layers(encoder: list[str], decoder: list[str]) -> PaperLayers:
    """Encoder stages 2-4 for PDCR, (2, 3) for the cross-layer term (fewer on shallow nets)."""
    pdcr = tuple(encoder[1:4])
    return PaperLayers(encoder=tuple(encoder), decoder=tuple(decoder), pdcr=pdcr,
                       cross=((pdcr[0], pdcr[1]),) if len(pdcr) >= 2 else ())


def basic_unet(in_channels: int, num_classes: int, width: int | None = None, spatial_dims: int = 2,
               **options) -> nn.Module:
    from monai.networks.nets import BasicUNet

    if width is not None and "features" not in options:
        options["features"] = tuple(max(1, round(f * width / 32)) for f in (32, 32, 64, 128, 256, 32))
    model = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **options)
    model.paper_layers = _paper_layers(
        ["conv_0", "down_1", "down_2", "down_3", "down_4"],
        ["upcat_4", "upcat_3", "upcat_2", "upcat_1"])
    return model


def unet_stage_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Encoder (shallow to deep) and decoder (deep to shallow, top excluded) of a monai UNet."""
    from monai.networks.layers.simplelayers import SkipConnection

    encoder, ups = [], []
    prefix, level = "model", model.model
    # every level but the bottom is Sequential(down, SkipConnection(next level), up)
    while isinstance(level, nn.Sequential) and len(level) == 3 and isinstance(level[1], SkipConnection):
        encoder.append(f"{prefix}.0")
        ups.append(f"{prefix}.2")
        prefix, level = f"{prefix}.1.submodule", level[1].submodule
    encoder.append(prefix)  # the bottom layer
    return encoder, ups[1:][::-1]


def monai_unet(in_channels: int, num_classes: int, width: int | None = None, spatial_dims: int = 2,
               **options) -> nn.Module:
    from monai.networks.nets import UNet

    w = 64 if width is None else width
    options.setdefault("channels", tuple(w * 2**i for i in range(5)))
    options.setdefault("strides", (2,) * (len(options["channels"]) - 1))
    model = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **options)
    model.paper_layers = _paper_layers(*unet_stage_names(model))
    return model


def plan_strides(input_size, levels: int = 5, smallest: int = 4) -> list:
    """nnU-Net's rule for a patch: halve every axis that stays >= `smallest` voxels, level by
    level (anisotropic strides where an axis is short), at most `levels` stages."""
    size, strides = list(input_size), [1]
    while len(strides) < levels:
        step = [2 if s // 2 >= smallest else 1 for s in size]
        if all(v == 1 for v in step):
            break
        size = [s // v for s, v in zip(size, step)]
        strides.append(step if len(set(step)) > 1 else step[0])
    return strides


def dyn_unet(in_channels: int, num_classes: int, width: int | None = None, spatial_dims: int = 2,
             input_size=None, **options) -> nn.Module:
    """MONAI's DynUNet, the nnU-Net architecture: one stage per stride; the strides planned from
    `input_size` (the training patch) as nnU-Net does, unless given."""
    from monai.networks.nets import DynUNet

    w = 32 if width is None else width
    default = plan_strides(input_size) if input_size is not None else (1, 2, 2, 2, 2)
    strides = list(options.pop("strides", default))
    filters = [min(w * 2**i, 8 * w) for i in range(len(strides))]  # nnU-Net caps the widths
    options.setdefault("kernel_size", [3] * len(strides))
    options.setdefault("upsample_kernel_size", strides[1:])
    options.setdefault("filters", filters)
    model = DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                    strides=strides, **options)
    levels = len(strides)
    encoder = ["input_block"] + [f"downsamples.{i}" for i in range(levels - 2)] + ["bottleneck"]
    decoder = [f"upsamples.{i}" for i in range(levels - 1)]
    model.paper_layers = _paper_layers(encoder, decoder)
    return model


def build_monai(class_name: str, in_channels: int, num_classes: int, width: int | None = None,
                **options) -> nn.Module:
    """monai.networks.nets.<class_name> as a 2-D network with ``model.paper_layers``.

    ``paper_layers=PaperLayers(...)`` in the options replaces the derived stage names (and is
    required for classes other than BasicUNet and UNet).
    """
    import monai.networks.nets as nets

    paper_layers = options.pop("paper_layers", None)
    input_size = options.pop("input_size", None)
    if class_name == "DynUNet":
        options["input_size"] = input_size
    builder = {"BasicUNet": basic_unet, "UNet": monai_unet, "DynUNet": dyn_unet}.get(class_name)
    if builder is not None:
        model = builder(in_channels, num_classes, width, **options)
    else:
        cls = getattr(nets, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"monai.networks.nets has no network {class_name!r}")
        if paper_layers is None:
            raise ValueError(
                f"monai.{class_name}: its stage names are not known here (known: "
                f"{', '.join('monai.' + k for k in KNOWN)}); give them with "
                f"paper_layers=PaperLayers(encoder=..., decoder=..., pdcr=..., cross=...) naming "
                f"modules of model.named_modules()")
        if width is not None:
            raise ValueError(f"monai.{class_name}: width is only understood for "
                             f"{', '.join('monai.' + k for k in KNOWN)}; give the sizes as options")
        options.setdefault("spatial_dims", 2)
        model = cls(in_channels=in_channels, out_channels=num_classes, **options)
    if paper_layers is not None:
        if not isinstance(paper_layers, PaperLayers):
            raise ValueError(f"paper_layers must be a PaperLayers, got {type(paper_layers).__name__}")
        names = dict(model.named_modules())
        named = (paper_layers.encoder + paper_layers.decoder + paper_layers.pdcr
                 + tuple(n for pair in paper_layers.cross for n in pair) + paper_layers.uafr_layers())
        unknown = sorted({n for n in named if n not in names or n == ""})
        if unknown:
            raise ValueError(f"monai.{class_name}: paper_layers names no module of the model: {unknown}")
        model.paper_layers = paper_layers
    return model
