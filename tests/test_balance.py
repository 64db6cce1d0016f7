"""pdcr_seg.balance: the segmentation and PDCR gradient norms on the parameters both reach."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pdcr_ext
from models import EncoderDecoder
from pdcr_seg.balance import gradient_balance, shared_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def _step(model, handle, seed=0):
    """One forward of a float64 encoder-decoder with PDCR on enc2, enc3 and their pair."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    labels = (images[:, :1] > 0.2).long()
    logits = model(images)
    return F.cross_entropy(logits, labels[:, 0]), handle.loss(labels)


def _model(uafr=("enc1", "dec2")):
    torch.manual_seed(0)
    model = EncoderDecoder(width=4)
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[("enc2", "enc3")],
                             uafr_layers=list(uafr), num_classes=2, samples=(24, 12), cross_samples=8,
                             example_input=torch.zeros(2, 3, 32, 32))
    return model.double(), handle


def test_grad_is_the_total_losss_gradient():
    """After the call .grad is what (seg + pdcr).backward() gives on an identical model (float64)."""
    model, handle = _model()
    seg, pdcr = _step(model, handle)
    balance = gradient_balance(model, seg, pdcr)
    assert balance.parameters > 0
    twin, twin_handle = _model()  # the same weights: an ordinary step
    twin_seg, twin_pdcr = _step(twin, twin_handle)
    (twin_seg + twin_pdcr).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)  # the same backward


def test_shared_parameters_are_those_both_losses_reach():
    """PDCR on enc2, enc3: it reaches enc1-enc3 (and UAFR on enc1), not the decoder, the head or
    UAFR on dec2; its own projections are left out."""
    model, handle = _model()
    seg, pdcr = _step(model, handle)
    names = {id(p): n for n, p in model.named_parameters()}
    shared = {names[id(p)] for p in shared_parameters(model, seg, pdcr)}
    want = {n for n, _ in model.named_parameters()
            if n.split(".")[0] in ("enc1", "enc2", "enc3") or n.startswith("pdcr_plugin.uafr.enc1.")}
    assert shared == want
    assert any(n.startswith("pdcr_plugin.pdcr.projections.") for n in names.values())  # present, left out
    # exclude= removes more
    enc1 = [p for n, p in model.named_parameters() if n.startswith("enc1.")]
    fewer = {names[id(p)] for p in shared_parameters(model, seg, pdcr, exclude=enc1)}
    assert fewer == {n for n in want if not n.startswith("enc1.")}


def test_ratio_matches_a_hand_computation():
    model, handle = _model()
    seg, pdcr = _step(model, handle)
    shared = shared_parameters(model, seg, pdcr)
    g_seg = torch.autograd.grad(seg, shared, retain_graph=True)
    g_pdcr = torch.autograd.grad(pdcr, shared, retain_graph=True)
    seg_norm = torch.cat([g.reshape(-1) for g in g_seg]).norm().item()
    pdcr_norm = torch.cat([g.reshape(-1) for g in g_pdcr]).norm().item()
    balance = gradient_balance(model, seg, pdcr)
    assert balance.parameters == len(shared) and balance.elements == sum(p.numel() for p in shared)
    assert balance.seg_norm == pytest.approx(seg_norm, rel=1e-10)
    assert balance.pdcr_norm == pytest.approx(pdcr_norm, rel=1e-10)
    assert balance.ratio == pytest.approx(pdcr_norm / seg_norm, rel=1e-10)
    assert balance.ratio > 1  # eq. 12's pair sums: PDCR's gradient dwarfs cross-entropy's at weight 0.01


def test_a_measurement_that_does_not_step_with_pdcr_leaves_the_segmentation_gradient():
    """step_with_pdcr=False (a --pdcr-target-ratio calibration step): the same norms, and .grad is
    seg.backward()'s; PDCR's own projections get zeros, not None (every parameter is reached)."""
    model, handle = _model()
    seg, pdcr = _step(model, handle)
    measured = gradient_balance(model, seg, pdcr, step_with_pdcr=False)
    twin, twin_handle = _model()
    twin_seg, twin_pdcr = _step(twin, twin_handle)
    stepping = gradient_balance(twin, twin_seg, twin_pdcr)  # norms of the ordinary measurement
    assert measured.seg_norm == pytest.approx(stepping.seg_norm, rel=1e-10)
    assert measured.pdcr_norm == pytest.approx(stepping.pdcr_norm, rel=1e-10)
    plain, plain_handle = _model()
    plain_seg, _ = _step(plain, plain_handle)
    plain_seg.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        if q.grad is None:  # only PDCR reaches it (its projections): a zero gradient
            assert p.grad is not None and not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-15, msg=name)


def test_gradients_already_in_grad_are_kept_apart():
    """.grad accumulates as backward() does; the norms are of this step's gradients only."""
    model, handle = _model()
    seg, pdcr = _step(model, handle)
    first = gradient_balance(model, seg, pdcr)
    kept = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    seg, pdcr = _step(model, handle)
    second = gradient_balance(model, seg, pdcr)  # the same weights and batch: the same gradient
    assert second.seg_norm == pytest.approx(first.seg_norm, rel=1e-9)
    assert second.pdcr_norm == pytest.approx(first.pdcr_norm, rel=1e-9)
    for n, p in model.named_parameters():
        if n in kept:
            torch.testing.assert_close(p.grad, 2 * kept[n])


def test_bad_losses_are_named():
    model, handle = _model()
    seg, pdcr = _step(model, handle)
    with pytest.raises(ValueError, match="pdcr_loss"):
        gradient_balance(model, seg, pdcr.detach())
    with pytest.raises(ValueError, match="seg_loss"):
        gradient_balance(model, torch.zeros(2, requires_grad=True).sum(0, keepdim=True).expand(2), pdcr)
    with pytest.raises(ValueError, match="no parameter"):
        gradient_balance(model, seg, (torch.ones(1, dtype=torch.float64, requires_grad=True) * 2).sum())


WORKER = r"""
import json, sys
import torch, torch.distributed as dist, torch.nn.functional as F
import pdcr_ext
from pdcr_seg.balance import gradient_balance, shared_parameters
from pdcr_seg.models import build_model

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = build_model("unet", 1, 2, width=4)
handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[("enc2", "enc3")],
                         num_classes=2, samples=(16, 8), example_input=torch.zeros(2, 1, 32, 32))
model.double()
ddp = torch.nn.parallel.DistributedDataParallel(model)
g = torch.Generator().manual_seed(100 + rank)
images = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
labels = (images > 0.3).long()
seg = F.cross_entropy(ddp(images), labels[:, 0])
pdcr = handle.loss(labels)
shared = shared_parameters(model, seg, pdcr)
g_seg = torch.autograd.grad(seg, shared, retain_graph=True)  # this rank's own gradients
g_pdcr = torch.autograd.grad(pdcr, shared, retain_graph=True)
balance = gradient_balance(ddp, seg, pdcr)
local = {"seg": [g.tolist() for g in g_seg], "pdcr": [g.tolist() for g in g_pdcr],
         "grad": [p.grad.tolist() for p in shared]}
everyone = [None, None]
dist.all_gather_object(everyone, local)
if rank == 0:
    json.dump({"balance": balance.__dict__, "ranks": everyone}, open(sys.argv[1], "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_under_ddp_the_norms_are_of_the_averaged_gradients(tmp_path):
    """Under DistributedDataParallel .grad is averaged over the processes by the backward; the
    norms are those of the averaged segmentation and PDCR gradients (2 CPU processes, gloo)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), str(report_path)]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                            timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    a, b = report["ranks"]
    mean = {key: [(torch.tensor(x, dtype=torch.float64) + torch.tensor(y, dtype=torch.float64)) / 2
                  for x, y in zip(a[key], b[key])] for key in ("seg", "pdcr")}
    seg_norm = torch.cat([g.reshape(-1) for g in mean["seg"]]).norm().item()
    pdcr_norm = torch.cat([g.reshape(-1) for g in mean["pdcr"]]).norm().item()
    assert report["balance"]["seg_norm"] == pytest.approx(seg_norm, rel=1e-9)
    assert report["balance"]["pdcr_norm"] == pytest.approx(pdcr_norm, rel=1e-9)
    for grad, s, p in zip(a["grad"], mean["seg"], mean["pdcr"]):  # .grad: DDP's averaged total
        torch.testing.assert_close(torch.tensor(grad, dtype=torch.float64), s + p)
