"""attach(model, ...): hooks, submodules, removal, errors; parameter counts as in Table IV."""

import pytest
import torch
from torch import nn

import pdcr_ext
from models import EncoderDecoder, UNet


def test_attach_collects_features_reweights_and_restores():
    torch.manual_seed(0)
    model = EncoderDecoder()
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    before_out = model(x)
    before_keys = set(model.state_dict())
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "dec2"], uafr_layers=["enc3", "dec2"], num_classes=3,
                             samples=(16, 8), example_input=torch.zeros(2, 3, 32, 32))
    keys = set(model.state_dict())
    assert before_keys < keys and any(k.startswith("pdcr_plugin.uafr.enc3") for k in keys)
    assert handle.uafr["enc3"].num_maps == 3
    out = model(x)
    assert out.shape == before_out.shape and not torch.allclose(out, before_out)  # UAFR acts
    u = handle.uncertainty
    assert u["enc3"].shape == (2, 8, 8) and u["dec2"].shape == (2, 16, 16)
    loss = handle.loss(torch.randint(0, 3, (2, 32, 32)))
    assert loss.ndim == 0 and set(handle.terms) == {"enc2", "dec2"}
    handle.remove()
    assert set(model.state_dict()) == before_keys
    torch.testing.assert_close(model(x), before_out)


def test_plugin_parameters_reach_the_optimizer():
    model = EncoderDecoder()
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[(0, 1)], uafr_layers=["enc2"],
                             num_classes=2, example_input=torch.zeros(2, 3, 32, 32))
    params = {id(p) for p in model.parameters()}
    assert all(id(p) in params for p in handle.pdcr.parameters())
    assert all(id(p) in params for p in handle.uafr["enc2"].parameters())


def test_receptive_field_mode_traces_the_fields():
    model = EncoderDecoder()
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], num_classes=2, mode="receptive_field",
                             samples=10, example_input=torch.zeros(1, 3, 64, 64))
    assert handle.pdcr.receptive_fields == [pdcr_ext.receptive_field_of(model, n, (1, 3, 64, 64)) for n in ("enc2", "enc3")]
    model(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(handle.loss(torch.randint(0, 2, (2, 64, 64))))


def test_clear_errors():
    model = EncoderDecoder()
    with pytest.raises(ValueError, match="unknown layer 'enc9'"):
        pdcr_ext.attach(model, pdcr_layers=["enc9"], example_input=torch.zeros(1, 3, 32, 32))

    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).flatten(1)

    wrapper = nn.Sequential(TupleOut())
    with pytest.raises(ValueError, match="must output a \\(B, C, h, w\\) tensor"):
        pdcr_ext.attach(wrapper, pdcr_layers=["0"], example_input=torch.zeros(1, 3, 8, 8))
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2"], example_input=torch.zeros(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="call the model before"):
        handle.loss(torch.zeros(1, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="already has"):
        pdcr_ext.attach(model, pdcr_layers=["enc2"], example_input=torch.zeros(1, 3, 32, 32))
    handle.remove()
    with pytest.raises(ValueError, match="cross_layers pair"):
        pdcr_ext.attach(model, pdcr_layers=["enc2"], cross_layers=[("enc2", "enc3")],
                        example_input=torch.zeros(1, 3, 32, 32))


def test_parameter_counts_like_table_iv(capsys):
    """UAFR on every encoder and decoder stage of a UNet (base 64) and PDCR's projections, as the
    paper's Table IV reports them (PDCR adds parameters only for cross-layer projections, and only
    during training)."""
    model = UNet()
    base = sum(p.numel() for p in model.parameters())
    stages = [f"down.{i}" for i in range(5)] + [f"dec.{i}" for i in range(4)]
    handle = pdcr_ext.attach(model, pdcr_layers=["down.1", "down.2", "down.3"], cross_layers=[(1, 2)],
                             uafr_layers=stages, num_classes=2, example_input=torch.zeros(1, 3, 64, 64))
    uafr = sum(p.numel() for m in handle.uafr.values() for p in m.parameters())
    pdcr = sum(p.numel() for p in handle.pdcr.parameters())
    widths = [64, 128, 256, 512, 1024, 512, 256, 128, 64]
    # the authors' head: 3x3 conv C -> 16 (no bias), BN(16), 1x1 conv 16 -> 2 (with bias)
    expected_uafr = sum(c * 16 * 9 + 2 * 16 + 16 * 2 + 2 for c in widths)
    assert uafr == expected_uafr
    assert pdcr == (256 * 32 + 32) + (512 * 32 + 32)
    assert sum(p.numel() for p in model.parameters()) == base + uafr + pdcr
    with capsys.disabled():
        print(f"\nUNet (base 64): {base / 1e6:.1f} M parameters; +UAFR on 9 stages: {uafr / 1e6:.2f} M "
              f"(paper's Table IV: +1.5 M on its UNet); +H-PDCR cross-layer projections: {pdcr / 1e3:.1f} K "
              "(training only)")


def test_monai_basic_unet_attaches_and_trains():
    """A third-party model as a user has it: MONAI's BasicUNet, layers by name, labels in
    MONAI's (B, 1, H, W) convention with unlabelled pixels, two training steps."""
    BasicUNet = pytest.importorskip("monai.networks.nets").BasicUNet

    torch.manual_seed(0)
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(8, 8, 16, 16, 32, 8))
    handle = pdcr_ext.attach(model, pdcr_layers=["down_1", "down_2", "down_3"],
                             cross_layers=[("down_1", "down_2")],
                             uafr_layers=["conv_0", "down_1", "down_2", "upcat_2", "upcat_1"],
                             num_classes=2, ignore_index=255, samples={"down_1": 32, "down_2": 16, "down_3": 8},
                             example_input=torch.zeros(1, 1, 64, 64))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.randn(2, 1, 64, 64)
    labels = (images > 0.5).long()
    labels[..., :8, :] = 255  # unlabelled rows
    before = [p.detach().clone() for p in handle.pdcr.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits, labels[:, 0], ignore_index=255) + handle.loss(labels)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert set(handle.terms) == {"down_1", "down_2", "down_3", "down_1~down_2"}
    assert all(not torch.equal(b, p) for b, p in zip(before, handle.pdcr.parameters()))
    assert handle.uncertainty["down_2"].shape == (2, 16, 16)
    handle.remove()


def test_segmentation_models_pytorch_when_installed():
    pytest.importorskip("segmentation_models_pytorch", reason=(
        "segmentation_models_pytorch needs torchvision, whose wheels need a CUDA build of torch: "
        "it cannot be installed beside the CPU build the tests use"))
    import segmentation_models_pytorch as smp

    model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)
    example = torch.zeros(2, 3, 64, 64)
    handle = pdcr_ext.attach(model, pdcr_layers=["encoder.layer2", "decoder.blocks.1"],
                             uafr_layers=["encoder.layer2"], num_classes=2, samples=8, example_input=example)
    model(example.normal_())
    assert torch.isfinite(handle.loss(torch.randint(0, 2, (2, 64, 64))))
    handle.remove()
