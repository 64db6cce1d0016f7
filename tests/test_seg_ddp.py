"""Training beyond one process: DistributedDataParallel with 2 CPU processes (gloo, loopback)."""

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

# One step of a UNet with PDCR and UAFR under DDP; every rank sees different images. DDP must
# see the plug-in's parameters (UAFR heads, PDCR's projections, which are used after forward):
# their gradients are averaged, so every rank holds the same gradients after backward.
WORKER = r"""
import json, os, sys
import torch, torch.distributed as dist, torch.nn.functional as F
import pdcr_ext
from pdcr_seg.models import build_model

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = build_model("unet", 1, 2, width=4)
handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[("enc2", "enc3")],
                         uafr_layers=["enc2", "dec2"], num_classes=2, samples=(16, 8),
                         example_input=torch.zeros(2, 1, 32, 32))
ddp = torch.nn.parallel.DistributedDataParallel(model)
g = torch.Generator().manual_seed(100 + rank)
images = torch.randn(2, 1, 32, 32, generator=g)
labels = (images > 0.3).long()
loss = F.cross_entropy(ddp(images), labels[:, 0]) + handle.loss(labels)
loss.backward()
grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
everyone, losses = [None, None], [None, None]
dist.all_gather_object(everyone, grads)
dist.all_gather_object(losses, float(loss.detach()))
if rank == 0:
    a, b = everyone
    report = {
        "params": sum(1 for _ in model.parameters()),
        "with_grad": len(a),
        "plugin": sorted(n for n in a if n.startswith("pdcr_plugin")),
        "max_difference": max(float((a[n] - b[n]).abs().max()) for n in a),
        "losses": losses,
    }
    json.dump(report, open(sys.argv[1], "w"))
dist.barrier()  # as pdcr_seg's teardown: gloo can abort a rank whose peer tears down first
dist.destroy_process_group()
"""


def _torchrun(args, tmp_path, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_gradients_agree_across_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    report_path = tmp_path / "report.json"
    result = _torchrun([str(script), str(report_path)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["with_grad"] == report["params"]  # every parameter, the plug-in's included
    assert any(".pdcr.projections." in n for n in report["plugin"]) and any(".uafr." in n for n in report["plugin"])
    assert report["losses"][0] != report["losses"][1]  # the ranks saw different images...
    assert report["max_difference"] < 1e-6  # ...and hold the same, averaged gradients


def test_torchrun_trains_through_the_cli(tmp_path):
    out = tmp_path / "run"
    result = _torchrun(["-m", "pdcr_seg", "train", "--data", "synthetic", "--fraction", "0.2", "--model", "unet",
                        "--width", "4", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
                        "--max-steps", "2", "--pdcr", "--uafr", "--overlays", "1", "--device", "cpu",
                        "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["test"]["images"] == 32  # each test image counted once over the two ranks
    assert result.stdout.count("wrote ") == 1  # only rank 0 writes
