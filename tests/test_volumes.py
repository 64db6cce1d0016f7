"""3-D data (the paper's nnU-Net experiments): geometry, sampling, PDCRLoss and UAFR on volumes,
and the plug-in on MONAI's 3-D networks."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pdcr_ext
import pdcr_reference as ref
from test_trace import probe_extent


pytestmark = pytest.mark.usefixtures("one_thread")


class Small3D(nn.Module):
    """Two stages of 3-D convolutions and poolings (anisotropic kernels and strides included)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                                    nn.MaxPool3d((1, 2, 2)))
        self.stage2 = nn.Sequential(nn.Conv3d(4, 6, (3, 5, 3), stride=(2, 1, 1), padding=(1, 2, 0), dilation=(1, 1, 2)),
                                    nn.ReLU(), nn.AvgPool3d(2, padding=1))

    def forward(self, x):
        return self.stage2(self.stage1(x))


def test_traced_3d_receptive_fields_match_the_gradient_probe():
    model = Small3D()
    shape = (1, 1, 20, 24, 28)
    rf = pdcr_ext.receptive_field_of(model, "stage2", shape)
    assert rf == pdcr_ext.receptive_field(
        [nn.Conv3d(1, 1, 3, padding=1), nn.MaxPool3d((1, 2, 2)),
         nn.Conv3d(1, 1, (3, 5, 3), stride=(2, 1, 1), padding=(1, 2, 0), dilation=(1, 1, 2)),
         nn.AvgPool3d(2, padding=1)])
    _, size = probe_extent(model, "stage2", shape, (0, 0, 0))
    checked = 0
    for position in [(d, h, w) for d in range(size[0]) for h in range(size[1]) for w in range(size[2])]:
        box = pdcr_ext.rf_boxes(rf, torch.tensor([position]))[0].tolist()
        if min(box[:3]) < 0 or box[3] >= shape[2] or box[4] >= shape[3] or box[5] >= shape[4]:
            continue
        assert probe_extent(model, "stage2", shape, position)[0] == tuple(box), position
        checked += 1
        if checked == 6:
            break
    assert checked > 0


def test_receptive_field_specs_per_axis():
    rf = pdcr_ext.receptive_field([((1, 3, 3), (1, 2, 2), (0, 1, 1)), (3, 1, 1)])
    assert rf == ((3, 7, 7), (1, 2, 2), (-1, -3, -3))
    assert pdcr_ext.receptive_field([(3, 2, 1)], spatial_dims=3).per_axis(3) == ((3,) * 3, (2,) * 3, (-1,) * 3)
    with pytest.raises(ValueError, match="mix"):
        pdcr_ext.receptive_field([((3, 3), 1, 1), ((3, 3, 3), 1, 1)])


def test_3d_boxes_native_match_the_reference():
    positions = torch.randint(0, 20, (17, 3))
    got = pdcr_ext.rf_boxes(((5, 7, 9), (1, 2, 4), (-2, -3, 0)), positions)
    want = ref.rf_boxes(positions, (5, 7, 9), (1, 2, 4), (-2, -3, 0))
    assert torch.equal(got, want) and got.shape == (17, 6)
    cubes = pdcr_ext.patch_boxes(positions, 5)
    assert torch.equal(cubes[:, 3:] - cubes[:, :3], torch.full((17, 3), 4))
    assert torch.equal(cubes[:, :3] + 2, positions)


@pytest.mark.parametrize("shape,n", [((4, 6, 8), 20), ((2, 9, 5), 90), ((7, 7, 7), 1), ((1, 16, 16), 40), ((5, 3, 2), 30)])
def test_grid_positions_in_3d_are_distinct_and_spread(shape, n):
    pos = pdcr_ext.grid_positions(shape, n)
    assert pos.shape == (n, 3) and len({tuple(p) for p in pos.tolist()}) == n
    for axis, extent in enumerate(shape):
        assert 0 <= pos[:, axis].min() and pos[:, axis].max() < extent
        if n >= 8 and extent >= 2:  # no single slice, row or column
            assert len(set(pos[:, axis].tolist())) >= 2
    jittered = pdcr_ext.grid_positions(shape, n, jitter=True, generator=torch.Generator().manual_seed(0))
    assert len({tuple(p) for p in jittered.tolist()}) == n


def _labels_3d(B, D, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    centre = torch.rand(B, 3, generator=g) * torch.tensor([D, H, W])
    d = ((zz - centre[:, 0, None, None, None]) ** 2 + (yy - centre[:, 1, None, None, None]) ** 2
         + (xx - centre[:, 2, None, None, None]) ** 2)
    return (d < (0.3 * min(D, H, W)) ** 2).long()


def test_3d_loss_is_eq9_on_the_sampled_cubes():
    torch.manual_seed(0)
    feature = torch.randn(2, 5, 4, 6, 8, dtype=torch.float64)
    labels = _labels_3d(2, 16, 24, 32)
    loss = pdcr_ext.PDCRLoss(2, samples=20, weight=1.0, reduction="sum", position_encoding="normalized")
    total = loss([feature], labels[:, None])  # MONAI's (B, 1, D, H, W)
    pos = pdcr_ext.grid_positions((4, 6, 8), 20)
    centres = pos * 4 + 2  # every axis has stride 4 here
    phi = torch.stack([ref.foreground_ratios(labels, pdcr_ext.patch_boxes(centres, s).expand(2, -1, -1), 2)
                       for s in (5, 7, 9)], 1).double()
    box = pdcr_ext.patch_boxes(centres, 7).double()  # (z0, y0, x0, z1, y1, x1)
    code = box[:, [2, 5, 1, 4, 0, 3]] / torch.tensor([32.0, 32, 24, 24, 16, 16])  # x, y, z; normalised
    rows = torch.cat([feature[:, :, pos[:, 0], pos[:, 1], pos[:, 2]].transpose(1, 2), code.expand(2, -1, -1)], -1)
    # the defaults: tau 1, the patch series averaged (Section V-C2 (3))
    torch.testing.assert_close(total, ref.dragsaw_row_loss(rows, phi, rows, phi, 1.0).sum() / 3)


def test_3d_cross_layer_and_receptive_field_modes_train():
    feats = [torch.randn(2, 4, 8, 8, 8, requires_grad=True), torch.randn(2, 6, 4, 4, 4, requires_grad=True)]
    labels = _labels_3d(2, 16, 16, 16)
    hier = pdcr_ext.PDCRLoss(2, samples=(32, 16), cross_layers=[(0, 1)], in_channels=[4, 6], ignore_index=9)
    value = hier(feats, labels)
    value.backward()
    assert torch.isfinite(value) and all(f.grad.abs().sum() > 0 for f in feats)
    rf = pdcr_ext.PDCRLoss(2, mode="receptive_field", samples=16,
                           receptive_fields=[(5, 2, -2), ((3, 9, 9), 4, (-1, -4, -4))])
    assert torch.isfinite(rf([f.detach() for f in feats], labels))
    with pytest.raises(ValueError, match=r"labels must have shape \(B, D, H, W\)"):
        hier(feats, labels[:, 0])


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_uafr_in_3d_is_eqs_13_to_15(backend):
    torch.manual_seed(0)
    q = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    out, u = pdcr_ext.uafr_reweight(q, z, backend=backend)
    a = torch.softmax(z, 1)
    want_u = -(a * torch.log2(a)).sum(1) / 1.0  # log2(M) = 1 for M = 2
    torch.testing.assert_close(u, want_u.detach())
    torch.testing.assert_close(out, q * (1 + (1 - want_u[:, None])))
    assert torch.autograd.gradcheck(lambda q, z: pdcr_ext.uafr_reweight(q, z, backend=backend)[0], (q, z))


def test_uafr_module_spatial_dims_3():
    module = pdcr_ext.UAFR(6, num_maps=3, spatial_dims=3)
    assert isinstance(module.head[0], nn.Conv3d)
    out = module(torch.randn(2, 6, 4, 8, 8))
    assert out.shape == (2, 6, 4, 8, 8) and module.uncertainty.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"spatial_dims=3"):
        module(torch.randn(2, 6, 8, 8))


def _train_two_steps(model, names, cross, uafr, example):
    handle = pdcr_ext.attach(model, pdcr_layers=names, cross_layers=cross, uafr_layers=uafr, num_classes=2,
                             samples=(32, 16, 8), example_input=example)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.randn(2, *example.shape[1:])
    labels = (images > 0.5).long()
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels[:, 0]) + handle.loss(labels)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    return handle


def test_monai_dynunet_the_nnunet_architecture_attaches_and_trains():
    DynUNet = pytest.importorskip("monai.networks.nets").DynUNet

    torch.manual_seed(0)
    model = DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3],
                    strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2], filters=[4, 8, 8, 16])
    names = ["downsamples.0", "downsamples.1", "bottleneck"]
    rf = pdcr_ext.receptive_field_of(model, "downsamples.1", (16, 16, 16))
    assert rf.stride == 4  # two stride-2 stages
    handle = _train_two_steps(model, names, [("downsamples.0", "downsamples.1")],
                              ["input_block", "downsamples.0", "upsamples.0"], torch.zeros(1, 1, 16, 16, 16))
    assert set(handle.terms) == {"downsamples.0", "downsamples.1", "bottleneck", "downsamples.0~downsamples.1"}
    assert handle.uncertainty["downsamples.0"].shape == (2, 8, 8, 8)
    assert isinstance(handle.uafr["upsamples.0"].head[0], nn.Conv3d)


def test_monai_basic_unet_3d_attaches_and_trains():
    BasicUNet = pytest.importorskip("monai.networks.nets").BasicUNet

    torch.manual_seed(0)
    model = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    example = torch.zeros(1, 1, 32, 32, 32)  # four halvings leave 2^3 for its instance norms
    layers = [layer.name for layer in pdcr_ext.list_layers(model, example)]
    assert {"down_1", "down_2", "down_3", "upcat_1"} <= set(layers)
    handle = _train_two_steps(model, ["down_1", "down_2", "down_3"], [("down_1", "down_2")],
                              ["conv_0", "down_1", "upcat_1"], example)
    assert len(handle.terms) == 4


def test_rf_mode_traces_3d_fields_through_attach():
    model = Small3D()
    handle = pdcr_ext.attach(model, pdcr_layers=["stage1", "stage2"], mode="receptive_field", samples=10,
                             example_input=torch.zeros(1, 1, 12, 16, 16))
    assert handle.pdcr.receptive_fields[1] == pdcr_ext.receptive_field_of(model, "stage2", (1, 1, 12, 16, 16))
    model(torch.randn(2, 1, 12, 16, 16))
    assert torch.isfinite(handle.loss(torch.randint(0, 2, (2, 12, 16, 16))))


def test_random_3d_stacks_match_the_reference_geometry():
    rng = random.Random(3)
    for _ in range(5):
        specs = [((rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 4)), rng.randint(1, 2), 0)
                 for _ in range(rng.randint(1, 3))]
        rf = pdcr_ext.receptive_field(specs)
        sizes, strides, offsets = rf.per_axis(3)
        for axis in range(3):
            size, jump, offset = ref.rf_geometry([ref.LayerSpec(k[axis], s, p) for k, s, p in specs])
            assert (sizes[axis], strides[axis], offsets[axis]) == (size, jump, offset)
