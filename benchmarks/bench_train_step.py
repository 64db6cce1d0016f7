"""Training-step benchmark: seconds per step of the paper's UNet with and without PDCR and UAFR.

Arms, each on its own copy of the same model, timed in interleaved rounds (every round runs every
arm, so that drift in the machine's speed hits them alike):

    baseline            cross-entropy only
    +PDCR (native)      + H-PDCR in the paper's main setting (Section V-A): enc2-4 at N = 128 / 64
                        / 32, the four decoder stages at N = 8, the cross-layer pair enc2-enc3
                        (32 x 32), patches 5 / 7 / 9, fused native kernels
    +PDCR (reference)   the same loss through the pure-PyTorch reference
    +UAFR               UAFR on every encoder and decoder stage (the default head: 16 hidden
                        channels, the authors')
    +UAFR (wide)        the same with the wide head (min(C, 64) hidden channels)
    +both (native)      PDCR (native) and UAFR

A step is zero_grad, forward, loss, backward, optimizer step (Adam). Prints a table and writes
<out>/train-step-<machine>[-amp].json and .md.

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--batch B] [--size S] [--width W]
        [--amp] [--rounds R] [--steps K] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pdcr_ext  # noqa: E402
from bench_ops import machine_name  # noqa: E402
from pdcr_seg.models.unet import UNet  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in the dev requirements
    def tqdm(iterable, **_):
        return iterable

ARMS = ("baseline", "+PDCR (native)", "+PDCR (reference)", "+UAFR", "+UAFR (wide)", "+both (native)")


def build_arm(arm: str, base: torch.nn.Module, example: torch.Tensor):
    """(model, handle or None) for one arm; the model is a deep copy of `base`."""
    model = copy.deepcopy(base)
    layers = model.paper_layers
    pdcr = "PDCR" in arm or "both" in arm
    uafr = "UAFR" in arm or "both" in arm
    if not (pdcr or uafr):
        return model, None
    handle = pdcr_ext.attach(
        model,
        pdcr_layers=list(layers.pdcr_layers("paper")) if pdcr else [],
        cross_layers=list(layers.cross) if pdcr else [],
        uafr_layers=list(layers.uafr_layers()) if uafr else [],
        num_classes=2,
        example_input=example[:1],
        uafr_options={"hidden_channels": "wide"} if "wide" in arm else None,
        backend="reference" if "reference" in arm else "auto",
    )
    return model, handle


def make_step(model, handle, images, labels, amp_dtype):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    autocast = (lambda: torch.autocast(images.device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            if handle is not None and handle.pdcr is not None:
                loss = loss + handle.loss(labels)
        loss.backward()
        optimizer.step()

    return step


def pdcr_call_seconds(model, handle, images, labels, device, repeats=20):
    """Median seconds of the PDCR term alone (forward + backward) on the model's features: the
    part of the step that PDCR adds, measured without the step's noise."""
    with torch.no_grad():
        model(images)
    features = [handle._features[name].detach().clone().requires_grad_() for name in handle.pdcr_layers]
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        handle.pdcr(features, labels).backward()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA, 2 on the CPU")
    parser.add_argument("--size", type=int, default=None, help="image side; default 256 on CUDA, 128 on the CPU")
    parser.add_argument("--width", type=int, default=64, help="UNet base width (the paper's: 64)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per arm and round")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    B = args.batch or (8 if cuda else 2)
    S = args.size or (256 if cuda else 128)
    steps = args.steps or (10 if cuda else 2)
    arms = [a for a in ARMS if a in args.arms.split(",")]
    torch.manual_seed(0)
    base = UNet(3, 2, width=args.width).to(device)
    images = torch.randn(B, 3, S, S, device=device)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    labels = (((yy - S / 2) ** 2 + (xx - S / 3) ** 2) < (S / 4) ** 2).long().expand(B, S, S).contiguous().to(device)
    amp_dtype = torch.bfloat16 if args.amp else None

    steps_by_arm, call_seconds = {}, {}
    for arm in arms:
        model, handle = build_arm(arm, base, images)
        steps_by_arm[arm] = make_step(model, handle, images, labels, amp_dtype)
        if handle is not None and handle.pdcr is not None:
            call_seconds[arm] = pdcr_call_seconds(model, handle, images, labels, device)
        for _ in range(2):  # warm-up: allocator, kernels, the native library's scratch
            steps_by_arm[arm]()
    times = {arm: [] for arm in arms}
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        for arm in arms:
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                steps_by_arm[arm]()
            sync(device)
            times[arm].append((time.perf_counter() - start) / steps)

    info = {
        "machine": machine_name(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "model": f"UNet width {args.width} ({sum(p.numel() for p in base.parameters()) / 1e6:.1f} M parameters)",
        "batch": B,
        "image": [S, S],
        "amp": "bfloat16" if args.amp else None,
        "rounds": args.rounds,
        "steps_per_round": steps,
    }
    base_time = statistics.median(times["baseline"]) if "baseline" in times else None
    uafr_time = statistics.median(times["+UAFR"]) if "+UAFR" in times else None
    rows = []
    for arm in arms:
        median = statistics.median(times[arm])
        reference = uafr_time if arm == "+both (native)" and uafr_time else base_time
        over = None if reference is None else 100 * (median - reference) / reference
        call = call_seconds.get(arm)
        rows.append({"arm": arm, "median_s": median, "all_s": times[arm],
                     "overhead_percent": over, "pdcr_call_s": call,
                     "pdcr_call_percent_of_baseline": None if call is None or not base_time else 100 * call / base_time,
                     "overhead_vs": "+UAFR" if arm == "+both (native)" and uafr_time else "baseline"})
    lines = [
        f"Measured {info['date']} on {info['machine']} ({args.device}), torch {info['torch']}, "
        f"{info['threads']} threads; {info['model']}, batch {B}, {S}x{S}, "
        f"{'bf16 autocast' if args.amp else 'float32'}; median of {args.rounds} rounds of {steps} steps.",
        "",
        "| arm | s / step | step time added | PDCR term alone (fwd+bwd) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        added = "—" if r["arm"] == "baseline" or r["overhead_percent"] is None else (
            f"{r['overhead_percent']:+.1f} % vs {r['overhead_vs']}")
        call = "—" if r["pdcr_call_s"] is None else f"{1e3 * r['pdcr_call_s']:.3g} ms" + (
            "" if r["pdcr_call_percent_of_baseline"] is None else f" ({r['pdcr_call_percent_of_baseline']:.2f} % of baseline)")
        lines.append(f"| {r['arm']} | {r['median_s']:.4g} | {added} | {call} |")
    text = "\n".join(lines)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"train-step-{info['machine']}" + ("-amp" if args.amp else "")
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"\nwrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
