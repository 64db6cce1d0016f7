"""The reference is the oracle: check it against the paper's formulas written as plain loops."""

import math

import torch

import pdcr_reference as ref
from helpers import random_features, random_ratios


def loop_dragsaw(rows, phi_rows, cols, phi_cols, tau):
    """Eq. 9 for one patch size, literally: sum_j -log(exp(s_ij w_ij/tau) / sum_n exp(s_in (1-w_in)/tau))."""
    N, K, M = rows.shape[0], cols.shape[0], phi_rows.shape[1]

    def sim(a, b):  # eq. 8 with the 1e-8 floor on the norms
        return float(a @ b) / (max(float(a.norm()), 1e-8) * max(float(b.norm()), 1e-8))

    def aff(p, q):  # eq. 3
        return 1 - sum(abs(float(p[m] - q[m])) for m in range(M)) / M

    out = []
    for i in range(N):
        denominator = sum(
            math.exp(sim(rows[i], cols[n]) * (1 - aff(phi_rows[i], phi_cols[n])) / tau) for n in range(K)
        )
        total = 0.0
        for j in range(K):
            numerator = math.exp(sim(rows[i], cols[j]) * aff(phi_rows[i], phi_cols[j]) / tau)
            total += -math.log(numerator / denominator)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_dragsaw_row_loss_matches_the_paper_written_as_loops():
    g = torch.Generator().manual_seed(1)
    B, N, K, C, P, M = 2, 5, 4, 3, 2, 3
    rows, cols = random_features(B, N, C, generator=g), random_features(B, K, C, generator=g)
    phi_rows, phi_cols = random_ratios(B, P, N, M, generator=g), random_ratios(B, P, K, M, generator=g)
    got = ref.dragsaw_row_loss(rows, phi_rows, cols, phi_cols, tau=0.7)
    for b in range(B):
        for k in range(P):
            want = loop_dragsaw(rows[b], phi_rows[b, k], cols[b], phi_cols[b, k], 0.7)
            torch.testing.assert_close(got[b, k], want, rtol=1e-12, atol=1e-12)


def test_eq12_sums_single_and_cross_layer_terms():
    g = torch.Generator().manual_seed(2)
    feats = [random_features(1, n, 4, generator=g) for n in (6, 3)]
    phis = [random_ratios(1, 2, n, 2, generator=g) for n in (6, 3)]
    total = ref.dragsaw_loss_eq12(feats, phis, [(0, 1)], tau=0.5)
    want = (
        ref.dragsaw_row_loss(feats[0], phis[0], feats[0], phis[0], 0.5).sum()
        + ref.dragsaw_row_loss(feats[1], phis[1], feats[1], phis[1], 0.5).sum()
        + ref.dragsaw_row_loss(feats[0], phis[0], feats[1], phis[1], 0.5).sum()
    )
    torch.testing.assert_close(total, want)


def test_affinity_is_one_for_identical_patches_and_zero_for_opposite_ones():
    phi = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]]])  # (1, 1, 3, 2)
    w = ref.affinity(phi, phi)[0, 0]
    assert torch.allclose(w.diagonal(), torch.ones(3))
    assert w[0, 1] == 0  # all class 0 vs all class 1
    assert w[0, 2] == 0.5


def test_foreground_ratios_count_pixels_per_class():
    labels = torch.tensor([[[0, 1, 1], [2, 1, 0]]])  # (1, 2, 3)
    boxes = torch.tensor([[[0, 0, 1, 1], [0, 1, 0, 2], [-1, -1, 0, 0], [5, 5, 6, 6]]])
    box = ref.foreground_ratios(labels, boxes, 3, area="box")
    inside = ref.foreground_ratios(labels, boxes, 3, area="inside")
    torch.testing.assert_close(box[0, 0], torch.tensor([1 / 4, 2 / 4, 1 / 4]))
    torch.testing.assert_close(box[0, 1], torch.tensor([0.0, 1.0, 0.0]))
    # a 2x2 box with one pixel inside: eq. 4 with the full area r^2 vs the inside area
    torch.testing.assert_close(box[0, 2], torch.tensor([1 / 4, 0.0, 0.0]))
    torch.testing.assert_close(inside[0, 2], torch.tensor([1.0, 0.0, 0.0]))
    # entirely outside: no pixel of any class, and no 0/0
    assert torch.equal(box[0, 3], torch.zeros(3)) and torch.equal(inside[0, 3], torch.zeros(3))


def test_receptive_field_equations_agree_with_each_other():
    layers = [ref.LayerSpec(3, 1, 1, 2), ref.LayerSpec(2, 2, 0), ref.LayerSpec(5, 3, 2, 1)]
    for x in range(4):
        assert ref.rf_end(x, layers) - ref.rf_start(x, layers) + 1 == ref.rf_size(layers)


def test_incremental_composition_folds_to_eqs_5_to_7():
    layers = [ref.LayerSpec(7, 2, 3), ref.LayerSpec(3, 2, 1, 1), ref.LayerSpec(3, 1, 2, 2)]
    geometry = (1, 1, 0)
    for layer in layers:
        geometry = ref.rf_compose(geometry, layer)
    assert geometry == ref.rf_geometry(layers)
