"""pdcr_seg.models: shapes, Table IV sizes, the paper's layer names, PDCR/UAFR on every model,
complexity counts. Small widths and 64-pixel images keep the file fast on a CPU."""

import math
import warnings

import pytest
import torch
from torch import nn

import pdcr_ext
from pdcr_seg.models import MODELS, PaperLayers, build_model
from pdcr_seg.models.complexity import format_table, model_complexity

NAMES = list(MODELS)
WIDTH = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def small(name, in_channels=3, num_classes=2):
    torch.manual_seed(0)
    return build_model(name, in_channels=in_channels, num_classes=num_classes, width=WIDTH)


def all_names(pl: PaperLayers):
    return set(pl.encoder + pl.decoder + pl.pdcr + pl.uafr_layers()) | {n for pair in pl.cross for n in pair}


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_non_square(name):
    model = small(name, in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 64, 96)
    out = model(x)
    assert out.shape == (2, 3, 64, 96)
    out.square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert not dead, f"parameters without gradient: {dead[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_paper_layers_name_4d_stages(name):
    model = small(name)
    pl = model.paper_layers
    assert isinstance(pl, PaperLayers)
    assert len(pl.encoder) >= 4 and pl.decoder
    assert pl.pdcr == pl.encoder[1:4]  # encoder stages 2-4
    assert pl.cross == ((pl.encoder[1], pl.encoder[2]),)
    assert set(pl.uafr_layers()) == set(pl.encoder + pl.decoder)
    if name.startswith("deeplab"):
        assert "aspp" in dict(model.named_modules()) and "aspp" not in pl.uafr_layers()
    modules = dict(model.named_modules())
    outputs = {}
    hooks = []
    for layer in all_names(pl):
        assert layer in modules and layer != "", layer
        hooks.append(modules[layer].register_forward_hook(
            lambda m, i, o, layer=layer: outputs.setdefault(layer, o)))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 96))
    for hook in hooks:
        hook.remove()
    for layer, out in outputs.items():
        assert isinstance(out, torch.Tensor) and out.dim() == 4, layer
        # non-square input: every stage keeps the aspect ratio at a power-of-two stride
        stride_h, stride_w = 64 / out.shape[2], 96 / out.shape[3]
        assert stride_h == stride_w and math.log2(stride_h).is_integer(), (layer, tuple(out.shape))
    strides = [64 // outputs[layer].shape[2] for layer in pl.encoder]
    assert strides == sorted(strides)  # shallow to deep


@pytest.mark.parametrize("name,expected", [("unet", 17.3e6), ("fcn", 18.6e6), ("deeplabv3plus", 54.7e6)])
def test_parameters_at_width_64_match_table_iv(name, expected):
    with torch.device("meta"):  # no memory, no initialisation cost
        model = build_model(name, in_channels=3, num_classes=2)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.05, count


@pytest.mark.parametrize("name", NAMES)
def test_pdcr_presets(name):
    """--pdcr is the paper's main setting (Section V-A): encoder stages 2-4, every decoder stage,
    the pair (2, 3), N = 128, 64, 32 then 8; the "encoder" preset leaves the decoder out."""
    from pdcr_seg.config import TrainConfig
    from pdcr_seg.methods import pdcr_layers, samples

    pl = small(name).paper_layers
    assert pl.pdcr_layers("paper") == pl.pdcr + pl.decoder and pl.pdcr_layers("encoder") == pl.pdcr
    with pytest.raises(ValueError, match="preset"):
        pl.pdcr_layers("decoder")
    model = small(name)
    layers, cross = pdcr_layers(model, TrainConfig(model=name, pdcr=True))
    assert layers == list(pl.pdcr + pl.decoder) and cross == list(pl.cross)
    assert samples(layers, TrainConfig()) == (128, 64, 32) + (8,) * len(pl.decoder)
    assert samples(layers, TrainConfig(pdcr_samples=[16, 8, 4])) == (16, 8) + (4,) * (1 + len(pl.decoder))
    assert pdcr_layers(model, TrainConfig(model=name, pdcr=True, pdcr_preset="encoder")) == (list(pl.pdcr), list(pl.cross))
    assert samples(list(pl.pdcr), TrainConfig()) == (128, 64, 32)
    # RF-PDCR is an encoder method: the paper preset gives encoder stages 2-4 there, no pair
    assert pdcr_layers(model, TrainConfig(model=name, pdcr=True, pdcr_mode="receptive_field")) == (list(pl.pdcr), [])


@pytest.mark.parametrize("name", NAMES)
def test_attach_pdcr_uafr_and_train_step(name):
    model = small(name)
    pl = model.paper_layers
    handle = pdcr_ext.attach(model, pdcr_layers=list(pl.pdcr_layers("paper")), cross_layers=list(pl.cross),
                             uafr_layers=list(pl.uafr_layers()), num_classes=2,
                             example_input=torch.zeros(1, 3, 64, 64), samples=(16, 8, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 16:48, 20:52] = 1  # a lesion-like blob: both classes present
    model.train()
    logits = model(x)
    assert logits.shape == (2, 2, 64, 64)
    pdcr = handle.loss(labels)
    loss = nn.functional.cross_entropy(logits, labels) + pdcr
    assert torch.isfinite(loss) and torch.isfinite(pdcr)
    before = [p.detach().clone() for p in handle.container.parameters()]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # the plug-in's own parameters (UAFR, cross-layer projections) are trained too
    assert any(not torch.equal(a, p) for a, p in zip(before, handle.container.parameters()))
    handle.remove()
    assert model(x).shape == (2, 2, 64, 64)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown model 'segnet'.*unet.*deeplabv3plus"):
        build_model("segnet", 3, 2)
    with pytest.raises(ValueError, match="paper_layers"):
        build_model("monai.SegResNet", 3, 2)
    with pytest.raises(ValueError, match="no network"):
        build_model("monai.NoSuchNet", 3, 2)
    with pytest.raises(ValueError, match="width"):
        build_model("unet", 3, 2, width=0)


def test_other_monai_network_with_given_layers():
    pl = PaperLayers(encoder=("convInit", "down_layers.0", "down_layers.1", "down_layers.2"),
                     decoder=("up_layers.0", "up_layers.1"),
                     pdcr=("down_layers.0", "down_layers.1", "down_layers.2"),
                     cross=(("down_layers.0", "down_layers.1"),))
    model = build_model("monai.SegResNet", 3, 2, paper_layers=pl, init_filters=8, blocks_down=(1, 1, 1, 1))
    assert model.paper_layers is pl
    assert model(torch.zeros(1, 3, 32, 64)).shape == (1, 2, 32, 64)
    bad = PaperLayers(encoder=("nope",), decoder=(), pdcr=(), cross=())
    with pytest.raises(ValueError, match="nope"):
        build_model("monai.SegResNet", 3, 2, paper_layers=bad, init_filters=8)


def test_complexity_counts_multiply_adds():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    result = model_complexity(conv, (3, 8, 10))
    assert result == {"parameters": 4 * 3 * 9, "macs": 4 * 3 * 9 * 8 * 10, "flops": 2 * 4 * 3 * 9 * 8 * 10}

    model = small("unet").train()
    result = model_complexity(model, (1, 3, 64, 96))
    assert model.training  # training mode restored
    assert result["parameters"] > 0 and result["macs"] > 0 and result["flops"] == 2 * result["macs"]
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    model.eval()
    model_complexity(model, (3, 64, 64))
    assert not model.training

    table = format_table([{"name": "unet", **result}], (3, 64, 96))
    assert "unet" in table and "GMACs @ 3x64x96" in table and f"{result['parameters'] / 1e6:.2f}" in table


def test_models_table_shows_both_uafr_heads():
    """`pdcr-seg models`: UAFR's cost with the default head (the authors' 16 hidden channels) and
    the wide one (min(C, 64)), each against the model alone."""
    from pdcr_seg.models.complexity import paper_table

    lines = paper_table(["unet"], input_shape=(3, 64, 64), width=WIDTH).splitlines()
    assert "+UAFR (16) GMACs" in lines[0] and "+UAFR (wide) GMACs" in lines[0]
    cells = lines[2].split()
    assert cells[0] == "unet"
    base, narrow, wide = float(cells[1]), float(cells[3]), float(cells[5])
    assert base < narrow < wide  # width 8: C <= 64 everywhere, so wide is min(C, 64) = C > 16 deeper


@pytest.mark.parametrize("name", NAMES)
def test_receptive_fields_of_pdcr_layers_can_be_traced(name):
    """RF-PDCR (the paper's encoder mode) needs the fields of the PDCR layers traced."""
    model = small(name)
    modules = dict(model.named_modules())
    sizes = []
    for layer in model.paper_layers.pdcr:
        out = {}
        hook = modules[layer].register_forward_hook(lambda m, i, o: out.setdefault("x", o))
        with warnings.catch_warnings():  # residual paths of different fields warn; expected here
            warnings.simplefilter("ignore")
            field = pdcr_ext.receptive_field_of(model, layer, (1, 3, 64, 64))
        hook.remove()
        assert field.stride == 64 // out["x"].shape[2], (layer, field)
        sizes.append(field.size)
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
