"""Receptive fields (eqs. 5-7): against the gradient probe, VGG-16 and the reference."""

import random

import pytest
import torch
from torch import nn

import pdcr_ext
import pdcr_reference as ref

VGG16_POOL5 = (
    [(3, 1, 1)] * 2 + [(2, 2, 0)] + [(3, 1, 1)] * 2 + [(2, 2, 0)] + [(3, 1, 1)] * 3 + [(2, 2, 0)]
    + [(3, 1, 1)] * 3 + [(2, 2, 0)] + [(3, 1, 1)] * 3 + [(2, 2, 0)]
)


def test_vgg16_pool5_as_published():
    # Araujo et al., Distill 2019 (the paper's reference [14]): r = 212, stride 32, offset -90
    assert pdcr_ext.receptive_field(VGG16_POOL5) == (212, 32, -90)


def test_vgg16_pool5_from_modules():
    layers = []
    for k, s, p in VGG16_POOL5:
        if k == 3:
            layers += [nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.ReLU()]
        else:
            layers.append(nn.MaxPool2d(2, 2))
    assert pdcr_ext.receptive_field([nn.Sequential(*layers)]) == (212, 32, -90)


def probe_box(specs, height, width, position):
    """Bounding box of the input pixels that reach one output position: back-propagate a one-hot
    gradient through convolutions of positive weights with each layer's geometry."""
    layers = [nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d, bias=False) for k, s, p, d in specs]
    for layer in layers:
        nn.init.constant_(layer.weight, 1.0)
    x = torch.zeros(1, 1, height, width, dtype=torch.float64, requires_grad=True)
    out = nn.Sequential(*layers).double()(x)
    seed = torch.zeros_like(out)
    seed[0, 0, position[0], position[1]] = 1
    out.backward(seed)
    ys, xs = torch.nonzero(x.grad[0, 0], as_tuple=True)
    return (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())), out.shape[-2:]


@pytest.mark.parametrize("seed", range(12))
def test_random_stacks_match_the_gradient_probe(seed):
    rng = random.Random(seed)
    specs = []
    for _ in range(rng.randint(1, 5)):
        k, s, d = rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 3)
        specs.append((k, s, rng.randint(0, (d * (k - 1)) // 2), d))
    rf = pdcr_ext.receptive_field(specs)
    size, stride, offset = rf
    H, W = 3 * size + 40, 2 * size + 53  # non-square
    _, (h, w) = probe_box(specs, H, W, (0, 0))
    checked = 0
    for i in range(h):
        for j in range(w):
            box = pdcr_ext.rf_boxes(rf, torch.tensor([[i, j]]))[0].tolist()
            if box[0] < 0 or box[1] < 0 or box[2] >= H or box[3] >= W:
                continue  # the probe only sees the part inside the image
            if (i + j) % 7:  # a spread-out subset keeps the test fast
                continue
            assert probe_box(specs, H, W, (i, j))[0] == tuple(box), (specs, i, j)
            checked += 1
    assert checked > 0


def test_modules_give_the_same_geometry_as_their_specs():
    modules = [
        nn.Conv2d(3, 8, 7, stride=2, padding=3),
        nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.AvgPool2d(2),
    ]
    specs = [(7, 2, 3), (3, 2, 1), (3, 1, 2, 2), (2, 2, 0)]
    assert pdcr_ext.receptive_field(modules) == pdcr_ext.receptive_field(specs)


def test_non_square_kernels_give_pairs():
    rf = pdcr_ext.receptive_field([nn.Conv2d(1, 1, (3, 1), padding=(1, 0)), nn.MaxPool2d((2, 1))])
    assert rf == ((4, 1), (2, 1), (-1, 0))
    boxes = pdcr_ext.rf_boxes(rf, torch.tensor([[2, 5]]))
    assert boxes.tolist() == [[3, 5, 6, 5]]


def test_same_padding_and_empty_stack():
    assert pdcr_ext.receptive_field([nn.Conv2d(1, 1, 5, padding="same")]) == (5, 1, -2)
    assert pdcr_ext.receptive_field([]) == (1, 1, 0)


def test_rf_boxes_native_matches_reference():
    rf = pdcr_ext.receptive_field(VGG16_POOL5)
    positions = torch.randint(0, 20, (50, 2))
    want = ref.rf_boxes(positions, *rf)
    torch.testing.assert_close(pdcr_ext.rf_boxes(rf, positions), want)
    assert pdcr_ext.rf_boxes(rf, positions).dtype == torch.long


def test_patch_boxes_are_centred():
    centers = torch.tensor([[10, 20], [0, 0]])
    assert pdcr_ext.patch_boxes(centers, 5).tolist() == [[8, 18, 12, 22], [-2, -2, 2, 2]]
    assert pdcr_ext.patch_boxes(centers, 4).tolist() == [[9, 19, 12, 22], [-1, -1, 2, 2]]
    assert pdcr_ext.patch_boxes(centers, 1).tolist() == [[10, 20, 10, 20], [0, 0, 0, 0]]


def test_unknown_module_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"layers\[1\].*Upsample"):
        pdcr_ext.receptive_field([nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2)])
    with pytest.raises(ValueError, match=r"layers\[0\]"):
        pdcr_ext.receptive_field([(3, 0, 1)])
