"""Writes pdcr_loss_case.pt: PDCRLoss values and gradients on a fixed input, computed with the
per-layer, per-patch-size ratio calls of commit 77093d8 (before the one-pass ratio change). The
test test_pdcr_loss.py::test_stored_case checks that later versions give the same numbers.

Run from the repository root: .venv/bin/python tests/data/make_pdcr_loss_case.py
"""

import os

import torch

import pdcr_ext

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pdcr_loss_case.pt")


def case_inputs():
    g = torch.Generator().manual_seed(1234)
    features = [torch.randn(3, 6, 16, 12, generator=g, dtype=torch.float64),
                torch.randn(3, 10, 8, 6, generator=g, dtype=torch.float64)]
    labels = torch.randint(0, 3, (3, 64, 48), generator=g)
    labels[0] = 0  # a one-class image
    return features, labels


# the settings of commit 77093d8, pinned because the defaults changed since (tau 0.5 -> 1.0, the
# cross-layer pair from each layer's own N to 32 x 32); pair_reduction="mean" with
# patch_reduction="mean" divides by P*N*K, as "mean" alone did then
STORED_SETTINGS = dict(tau=0.5, patch_reduction="mean", pair_reduction="mean", cross_samples=None)


def case_loss(mode: str, **extra) -> pdcr_ext.PDCRLoss:
    """The stored case's PDCRLoss of one mode (extra: settings whose defaults changed since)."""
    kwargs = dict(samples=(40, 20), weight=1.0, reduction="none", **extra)
    if mode == "hierarchical":
        kwargs.update(cross_layers=[(0, 1)], in_channels=[6, 10])
    else:
        kwargs.update(mode=mode, receptive_fields=[(9, 4, -3), (21, 8, -7)])
    return pdcr_ext.PDCRLoss(3, **kwargs).double()


def main():
    features, labels = case_inputs()
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in case_loss("hierarchical", **STORED_SETTINGS).state_dict().items()}
    out = {"state": state, "features": features, "labels": labels}
    for mode in ("hierarchical", "receptive_field"):
        module = case_loss(mode, **STORED_SETTINGS)
        if mode == "hierarchical":
            module.load_state_dict(state)
        feats = [f.clone().requires_grad_() for f in features]
        value = module(feats, labels)
        value.sum().backward()
        out[mode] = {"value": value.detach(), "grads": [f.grad for f in feats],
                     "terms": {k: v.clone() for k, v in module.terms.items()}}
    torch.save(out, OUT)
    print("wrote", OUT, {m: out[m]["value"] for m in ("hierarchical", "receptive_field")})


if __name__ == "__main__":
    main()
