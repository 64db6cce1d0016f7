"""PDCRLoss: eq. 12 from features and labels — semantics, training behaviour, edge cases."""

import pytest
import torch

import pdcr_ext
import pdcr_reference as ref
from models import EncoderDecoder


def _labels(B, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    centres = torch.rand(B, 2, generator=g) * torch.tensor([H, W])
    radius = (0.2 + 0.2 * torch.rand(B, generator=g)) * min(H, W)
    d = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return (d < radius[:, None, None] ** 2).long()


def test_single_layer_term_is_eq9_on_the_sampled_patches():
    torch.manual_seed(0)
    feature = torch.randn(2, 6, 8, 10, dtype=torch.float64)
    labels = _labels(2, 32, 40)
    loss = pdcr_ext.PDCRLoss(2, samples=12, weight=1.0, reduction="sum", position_encoding=False)
    total = loss([feature], labels)
    # the same by hand: grid positions, centred patches 5/7/9, ratios, eq. 9 summed over the
    # pairs and averaged over the patch series (Section V-C2 (3)), tau = 1 (the authors')
    pos = pdcr_ext.grid_positions(8, 10, 12)
    centres = torch.stack([((2 * pos[:, 0] + 1) * 32) // 16, ((2 * pos[:, 1] + 1) * 40) // 20], 1)
    phi = torch.stack([ref.foreground_ratios(labels, pdcr_ext.patch_boxes(centres, s).expand(2, -1, -1), 2)
                       for s in (5, 7, 9)], 1).double()
    rows = feature[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
    want = ref.dragsaw_row_loss(rows, phi, rows, phi, 1.0).sum() / 3
    torch.testing.assert_close(total, want)


def test_position_encoding_appends_the_normalised_box():
    feature = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    with_code = pdcr_ext.PDCRLoss(2, samples=16, weight=1.0, reduction="sum")
    pos = pdcr_ext.grid_positions(4, 4, 16)
    centres = pos * 4 + 2
    box = pdcr_ext.patch_boxes(centres, 7).double() / 16
    rows = torch.cat([feature[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2), box[None]], -1)
    phi = torch.zeros(1, 3, 16, 2, dtype=torch.float64)
    for k, s in enumerate((5, 7, 9)):
        phi[0, k] = ref.foreground_ratios(labels, pdcr_ext.patch_boxes(centres, s)[None], 2)[0].double()
    want = ref.dragsaw_row_loss(rows, phi, rows, phi, 1.0).sum() / 3
    torch.testing.assert_close(with_code([feature], labels), want)


def test_per_image_losses_do_not_depend_on_the_batch():
    torch.manual_seed(1)
    feats = [torch.randn(4, 8, 16, 12), torch.randn(4, 16, 8, 6)]
    labels = _labels(4, 64, 48)
    loss = pdcr_ext.PDCRLoss(2, samples=(40, 20), cross_layers=[(0, 1)], in_channels=[8, 16], reduction="none")
    batch = loss(feats, labels)
    assert batch.shape == (4,)
    for b in range(4):
        alone = loss([f[b:b + 1] for f in feats], labels[b:b + 1])
        torch.testing.assert_close(batch[b:b + 1], alone)


def test_one_class_masks_and_empty_batches_give_finite_values():
    loss = pdcr_ext.PDCRLoss(3, samples=(30, 10), cross_layers=[(0, 1)], in_channels=[4, 4])
    feats = [torch.randn(2, 4, 12, 12, requires_grad=True), torch.randn(2, 4, 6, 6, requires_grad=True)]
    for labels in (torch.zeros(2, 48, 48, dtype=torch.long), torch.full((2, 48, 48), 2)):
        value = loss(feats, labels)
        value.backward()
        assert torch.isfinite(value) and all(torch.isfinite(f.grad).all() for f in feats)
    empty = loss([f[:0] for f in feats], torch.zeros(0, 48, 48, dtype=torch.long))
    assert empty.item() == 0


def test_receptive_field_mode_uses_the_traced_fields():
    model = EncoderDecoder()
    rf = pdcr_ext.receptive_field_of(model, "enc3", (1, 3, 64, 64))
    feature = torch.randn(2, 32, 16, 16, dtype=torch.float64)
    labels = _labels(2, 64, 64)
    loss = pdcr_ext.PDCRLoss(2, mode="receptive_field", receptive_fields=[rf], samples=20, weight=1.0,
                             reduction="sum", position_encoding=False)
    pos = pdcr_ext.grid_positions(16, 16, 20)
    phi = ref.foreground_ratios(labels, pdcr_ext.rf_boxes(rf, pos).expand(2, -1, -1), 2)[:, None].double()
    rows = feature[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
    torch.testing.assert_close(loss([feature], labels), ref.dragsaw_row_loss(rows, phi, rows, phi, 1.0).sum())


def test_projections_are_parameters_that_the_optimizer_updates():
    loss = pdcr_ext.PDCRLoss(2, samples=(20, 10), cross_layers=[(0, 1)], in_channels=[8, 16], weight=1.0)
    names = [n for n, _ in loss.named_parameters()]
    assert names == ["projections.0.weight", "projections.0.bias", "projections.1.weight", "projections.1.bias"]
    assert loss.projections["0"].weight.shape == (32, 8, 1, 1)
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    before = [p.detach().clone() for p in loss.parameters()]
    loss([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)], _labels(2, 32, 32)).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, loss.parameters()))


def test_training_lowers_the_pdcr_term_and_reaches_the_encoder():
    torch.manual_seed(0)
    model = EncoderDecoder(width=8)
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[("enc2", "enc3")],
                             num_classes=2, samples=(48, 24), weight=1.0, example_input=torch.zeros(2, 3, 32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randn(8, 3, 32, 32)
    y = _labels(8, 32, 32, seed=3)
    x[:, 0] += 2.0 * y  # the label is visible in the image
    values = []
    for step in range(40):
        opt.zero_grad()
        model(x)
        pdcr = handle.loss(y)
        pdcr.backward()
        if step == 0:
            grad = model.enc1[0].weight.grad
            assert grad is not None and grad.abs().sum() > 0  # the first encoder layer learns from PDCR
        opt.step()
        values.append(pdcr.item())
    # most of the term is the floor of about K log K per row that no feature removes (and tau = 1
    # scales the part features can change by 1/tau): 5 % of the total is a clear drop
    assert sum(values[-5:]) / 5 < 0.95 * sum(values[:5]) / 5, values


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="receptive_fields"):
        pdcr_ext.PDCRLoss(2, mode="receptive_field")
    with pytest.raises(ValueError, match="in_channels"):
        pdcr_ext.PDCRLoss(2, cross_layers=[(0, 1)])
    with pytest.raises(ValueError, match="hierarchical"):
        pdcr_ext.PDCRLoss(2, mode="receptive_field", receptive_fields=[(3, 1, -1)] * 2, cross_layers=[(0, 1)],
                          in_channels=[4, 4])
    loss = pdcr_ext.PDCRLoss(2, samples=4)
    with pytest.raises(ValueError, match="labels"):
        loss([torch.randn(1, 3, 4, 4)], torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match=r"features\[0\]"):
        loss([torch.randn(3, 4, 4)], torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        loss([torch.randn(2, 3, 4, 4)], torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="samples"):
        pdcr_ext.PDCRLoss(2, samples=0)


def test_stored_case_is_unchanged():
    """The values and gradients computed before the one-pass ratio change (tests/data)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "data"))
    from make_pdcr_loss_case import OUT, STORED_SETTINGS, case_inputs, case_loss

    case = torch.load(OUT)
    features, labels = case_inputs()
    for stored, fresh in zip(case["features"], features):
        assert torch.equal(stored, fresh)
    for mode in ("hierarchical", "receptive_field"):
        module = case_loss(mode, **STORED_SETTINGS)  # the settings the case was stored with
        if mode == "hierarchical":
            module.load_state_dict(case["state"])
        feats = [f.clone().requires_grad_() for f in features]
        value = module(feats, labels)
        value.sum().backward()
        torch.testing.assert_close(value, case[mode]["value"], rtol=1e-12, atol=1e-12)
        for f, grad in zip(feats, case[mode]["grads"]):
            torch.testing.assert_close(f.grad, grad, rtol=1e-10, atol=1e-14)


def test_one_ratio_call_per_forward(monkeypatch):
    """Every layer and patch size from one integral image of the labels."""
    import pdcr_ext.loss as loss_module

    calls = []
    original = loss_module.ratios_unchecked
    monkeypatch.setattr(loss_module, "ratios_unchecked", lambda *a: calls.append(a[1].shape) or original(*a))
    loss = pdcr_ext.PDCRLoss(2, samples=(20, 10, 5), cross_layers=[(0, 1)], in_channels=[4, 4, 4])
    loss([torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)], _labels(2, 32, 32))
    assert calls == [(2, 3 * (20 + 10 + 5 + 32 + 32), 4)]  # the cross pair: 32 positions on each layer


def test_monai_label_shape_gives_the_same_loss():
    feats = [torch.randn(2, 4, 8, 8)]
    labels = _labels(2, 32, 32)
    loss = pdcr_ext.PDCRLoss(2, samples=16)
    torch.testing.assert_close(loss(feats, labels[:, None]), loss(feats, labels))


def test_pair_reduction_sum_is_eq12_and_mean_divides_by_the_pairs():
    torch.manual_seed(0)
    feats = [torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 6, 4, 4, dtype=torch.float64)]
    labels = _labels(3, 32, 32)
    common = dict(samples=(16, 8), patch_sizes=(3, 5), cross_layers=[(0, 1)], in_channels=[4, 6], weight=1.0,
                  position_encoding=False, reduction="sum", cross_samples=None)
    paper = pdcr_ext.PDCRLoss(2, pair_reduction="sum", **common).double()
    mean = pdcr_ext.PDCRLoss(2, pair_reduction="mean", **common).double()
    mean.load_state_dict(paper.state_dict())
    total = paper(feats, labels)
    mean(feats, labels)
    for name, value in paper.terms.items():
        N, K = {"layer0": 16, "layer1": 8, "layer0~layer1": 16}[name], {"layer0": 16, "layer1": 8, "layer0~layer1": 8}[name]
        torch.testing.assert_close(mean.terms[name], value / (N * K))
    # eq. 12 by hand: the single-layer sums (the cross term needs the projections: from .terms)
    single = sum(paper.terms[n] for n in ("layer0", "layer1")) * 3
    torch.testing.assert_close(total, single + paper.terms["layer0~layer1"] * 3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_patch_series_is_averaged_over_its_sizes(reduction):
    """Section V-C2 (3): the loss of each patch size of the series first, then their average
    (patch_reduction="mean", the default); "sum" is eq. 12's k-sum as printed. Two layers and a
    cross-layer pair, the same sampled positions for every size."""
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 16, 16, dtype=torch.float64), torch.randn(2, 6, 8, 8, dtype=torch.float64)]
    labels = _labels(2, 64, 64)
    # position_encoding=False: the code is the middle patch of the series, which differs between
    # a one-size series and the three-size one
    common = dict(samples=(40, 20), cross_layers=[(0, 1)], in_channels=[4, 6], weight=1.0, reduction="none",
                  position_encoding=False)
    series = pdcr_ext.PDCRLoss(2, patch_sizes=(5, 7, 9), patch_reduction=reduction, **common).double()
    singles = [pdcr_ext.PDCRLoss(2, patch_sizes=(size,), **common).double() for size in (5, 7, 9)]
    for single in singles:
        single.load_state_dict(series.state_dict())  # the same cross-layer projections
    got = series(feats, labels)
    per_size = torch.stack([single(feats, labels) for single in singles])
    want = per_size.mean(0) if reduction == "mean" else per_size.sum(0)
    torch.testing.assert_close(got, want)
    for name in series.terms:
        parts = torch.stack([single.terms[name] for single in singles])
        torch.testing.assert_close(series.terms[name], parts.mean() if reduction == "mean" else parts.sum())


def test_cross_layer_pair_samples_its_own_positions():
    """By default a cross-layer pair takes 32 positions on each of its layers (the authors'),
    whatever N the single-layer terms use; cross_samples=None uses each layer's own N."""
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 16, 16, dtype=torch.float64), torch.randn(2, 6, 8, 8, dtype=torch.float64)]
    labels = _labels(2, 64, 64)
    common = dict(cross_layers=[(0, 1)], in_channels=[4, 6], weight=1.0)
    default = pdcr_ext.PDCRLoss(2, samples=(40, 20), **common).double()
    assert default.cross_samples == 32
    own = pdcr_ext.PDCRLoss(2, samples=(32, 32), cross_samples=None, **common).double()
    wide = pdcr_ext.PDCRLoss(2, samples=(40, 20), cross_samples=None, **common).double()
    own.load_state_dict(default.state_dict())
    wide.load_state_dict(default.state_dict())
    for module in (default, own, wide):
        module(feats, labels)
    torch.testing.assert_close(default.terms["layer0~layer1"], own.terms["layer0~layer1"])
    torch.testing.assert_close(default.terms["layer0"], wide.terms["layer0"])  # single layers: their own N
    assert not torch.allclose(default.terms["layer0~layer1"], wide.terms["layer0~layer1"])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="cross_samples"):
            pdcr_ext.PDCRLoss(2, cross_samples=bad)


def test_defaults_are_the_papers_setting():
    """0.01 x eq. 12 (pairs summed, the patch series averaged), tau 1, images averaged."""
    feats = [torch.randn(2, 4, 8, 8, dtype=torch.float64)]
    labels = _labels(2, 32, 32)
    default = pdcr_ext.PDCRLoss(2, samples=16)
    assert (default.weight, default.tau, default.patch_reduction, default.pair_reduction, default.reduction,
            default.cross_samples) == (0.01, 1.0, "mean", "sum", "mean", 32)
    per_image = pdcr_ext.PDCRLoss(2, samples=16, weight=1.0, reduction="none")(feats, labels)
    torch.testing.assert_close(default(feats, labels), 0.01 * per_image.mean())
    with pytest.raises(ValueError, match="patch_reduction"):
        pdcr_ext.PDCRLoss(2, patch_reduction="max")


def test_position_encodings():
    feature = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    labels = torch.zeros(1, 16, 32, dtype=torch.long)  # non-square: H = 16, W = 32
    pos = pdcr_ext.grid_positions(4, 4, 16)
    centres = torch.stack([pos[:, 0] * 4 + 2, pos[:, 1] * 8 + 4], 1)
    box = pdcr_ext.patch_boxes(centres, 7).double()  # (y0, x0, y1, x1)
    pixels = box[:, [1, 3, 0, 2]]  # the paper's (x_min, x_max, y_min, y_max)
    normalized = pixels / torch.tensor([32.0, 32.0, 16.0, 16.0])
    rows = feature[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
    phi = torch.stack([ref.foreground_ratios(labels, pdcr_ext.patch_boxes(centres, s)[None], 2)
                       for s in (5, 7, 9)], 1).double()
    for encoding, code in (("normalized", normalized), ("pixels", pixels), (False, None)):
        vectors = rows if code is None else torch.cat([rows, code[None]], -1)
        want = ref.dragsaw_row_loss(vectors, phi, vectors, phi, 1.0).sum() / 3
        got = pdcr_ext.PDCRLoss(2, samples=16, weight=1.0, position_encoding=encoding)([feature], labels)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="position_encoding"):
        pdcr_ext.PDCRLoss(2, position_encoding="raw")


def test_ignore_index_in_the_loss():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 8, 8, dtype=torch.float64)]
    labels = _labels(2, 32, 32)
    labels[:, :4] = 255
    loss = pdcr_ext.PDCRLoss(2, samples=16, weight=1.0, ignore_index=255, position_encoding=False)
    pos = pdcr_ext.grid_positions(8, 8, 16)
    centres = pos * 4 + 2
    phi = torch.stack([ref.foreground_ratios(labels, pdcr_ext.patch_boxes(centres, s).expand(2, -1, -1), 2, "box", 255)
                       for s in (5, 7, 9)], 1).double()
    rows = feats[0][:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
    want = ref.dragsaw_row_loss(rows, phi, rows, phi, 1.0).sum() / 3 / 2
    torch.testing.assert_close(loss(feats, labels), want)
    with pytest.raises(ValueError, match="pass ignore_index"):
        pdcr_ext.PDCRLoss(2, samples=16)(feats, labels)


def test_terms_are_keyed_by_layer_names_and_samples_by_name():
    loss = pdcr_ext.PDCRLoss(2, samples={"enc3": 8, "enc2": 16}, layer_names=["enc2", "enc3"],
                             cross_layers=[(0, 1)], in_channels=[4, 4])
    assert loss.samples == (16, 8)
    loss([torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)], _labels(1, 32, 32))
    assert list(loss.terms) == ["enc2", "enc3", "enc2~enc3"]
    with pytest.raises(ValueError, match="missing \\['enc3'\\]"):
        pdcr_ext.PDCRLoss(2, samples={"enc2": 16}, layer_names=["enc2", "enc3"])


def test_torch_compile_fullgraph_matches_eager():
    loss = pdcr_ext.PDCRLoss(2, samples=(16, 8), cross_layers=[(0, 1)], in_channels=[4, 8])
    feats = [torch.randn(2, 4, 16, 16, requires_grad=True), torch.randn(2, 8, 8, 8, requires_grad=True)]
    labels = _labels(2, 64, 64)[:, None]
    eager = loss(feats, labels)
    eager.backward()
    grads = [f.grad.clone() for f in feats]
    for f in feats:
        f.grad = None
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(feats, labels)
    out.backward()
    torch.testing.assert_close(out, eager)
    for f, g in zip(feats, grads):
        torch.testing.assert_close(f.grad, g)
    bad = labels.clone()
    bad[0, 0, 0, 0] = 7  # validation still runs inside the graph (torch._assert_async)
    with pytest.raises(RuntimeError, match="labels must lie"):
        compiled(feats, bad)
