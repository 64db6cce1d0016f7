"""receptive_field_of: traced geometry against the gradient probe and VGG-16."""

import pytest
import torch
from torch import nn

import pdcr_ext
from models import EncoderDecoder, ResidualEncoder
from test_geometry import VGG16_POOL5


def probe_extent(model, layer, input_shape, position):
    """Bounding box (lo per axis, hi per axis) of the input pixels (voxels) that reach one output
    position of `layer`, 2-D or 3-D: backward of a one-hot gradient with every weight set positive
    (so no path cancels another). Also returns the layer's output size."""
    import copy

    model = copy.deepcopy(model).double().eval()
    for name, module in list(model.named_modules()):  # max pooling passes one pixel back: use the
        for child_name, child in list(module.named_children()):  # whole window (same geometry)
            if isinstance(child, (nn.MaxPool2d, nn.MaxPool3d)) and child.dilation == 1:
                average = nn.AvgPool2d if isinstance(child, nn.MaxPool2d) else nn.AvgPool3d
                setattr(module, child_name, average(child.kernel_size, child.stride, child.padding))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.1)
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    x = torch.zeros(input_shape, dtype=torch.float64, requires_grad=True)
    model(x)
    handle.remove()
    out = captured["out"]
    seed = torch.zeros_like(out)
    seed[(0, slice(None)) + tuple(position)] = 1
    out.backward(seed)
    reached = torch.nonzero(x.grad[0].abs().sum(0))
    return tuple(reached.min(0).values.tolist()) + tuple(reached.max(0).values.tolist()), out.shape[2:]


def vgg16_features():
    layers, c = [], 3
    for k, s, p in VGG16_POOL5:
        if k == 3:
            layers += [nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(inplace=True)]
            c = 8
        else:
            layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def test_vgg16_pool5_traced():
    model = vgg16_features()
    assert pdcr_ext.receptive_field_of(model, str(len(model) - 1), (3, 224, 224)) == (212, 32, -90)


@pytest.mark.parametrize("model,layer,shape", [
    (EncoderDecoder(), "enc2", (1, 3, 48, 40)),
    (EncoderDecoder(), "enc3", (1, 3, 64, 56)),
    (ResidualEncoder(), "block2_b", (1, 1, 45, 37)),
    (ResidualEncoder(), "pool", (1, 1, 61, 53)),
])
def test_traced_fields_match_the_gradient_probe(model, layer, shape):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rf = pdcr_ext.receptive_field_of(model, layer, shape)
    # residual blocks reach their later layers by several paths, and say so
    assert bool(caught) == isinstance(model, ResidualEncoder)
    _, (h, w) = probe_extent(model, layer, shape, (0, 0))
    checked = 0
    for i in range(h):
        for j in range(w):
            box = pdcr_ext.rf_boxes(rf, torch.tensor([[i, j]]))[0].tolist()
            if box[0] < 0 or box[1] < 0 or box[2] >= shape[2] or box[3] >= shape[3]:
                continue  # the probe sees only the part inside the image
            assert probe_extent(model, layer, shape, (i, j))[0] == tuple(box), (layer, i, j, rf)
            checked += 1
    assert checked > 0


def test_residual_paths_are_reported():
    rf, paths = pdcr_ext.receptive_field_of(ResidualEncoder(), "block2_b", (1, 1, 32, 32), return_paths=True)
    assert len(paths) == 2 and rf == max(paths, key=lambda r: r.size)


def test_decoder_layers_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="hierarchical"):
        pdcr_ext.receptive_field_of(EncoderDecoder(), "dec2", (1, 3, 32, 32))


def test_unknown_layer_and_bad_output():
    with pytest.raises(ValueError, match="enc4.*close names|not a module"):
        pdcr_ext.receptive_field_of(EncoderDecoder(), "enc4", (1, 3, 32, 32))
    with pytest.raises(ValueError, match="input_size"):
        pdcr_ext.receptive_field_of(EncoderDecoder(), "enc2", (1, 1, 3, 32, 32))


def test_input_size_as_image_size():
    """(H, W), as most people give it: the channels come from the first convolution."""
    model = EncoderDecoder()
    assert pdcr_ext.receptive_field_of(model, "enc3", (48, 40)) == pdcr_ext.receptive_field_of(model, "enc3", (3, 48, 40))
