"""PDCR's gradient next to cross-entropy's, and what measuring it costs (pdcr_seg.balance).

1. At initialisation: ||grad PDCR|| / ||grad CE|| on the parameters both reach
   (pdcr_seg.balance.gradient_balance) for pdcr_seg's UNet on 64-pixel nuclei tiles, batches of
   4, under the earlier defaults and the current ones, and the PDCR weight that would put the
   ratio at 1 (the gradient is linear in the weight). Mean and range over `--seeds` initialisations
   x `--batches` batches.
2. The cost of a measured step: seconds of an ordinary step (forward, CE + PDCR, backward, Adam)
   and of a measured one (gradient_balance instead of backward), in interleaved rounds, and the
   smallest interval k between measured steps that keeps the average cost within 5 %.

    python benchmarks/bench_grad_balance.py [--width 8] [--size 64] [--batch 4] [--seeds 3]
        [--batches 3] [--rounds 5] [--steps 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
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
from pdcr_seg.balance import gradient_balance  # noqa: E402
from pdcr_seg.data import build_datasets  # noqa: E402
from pdcr_seg.models import build_model  # noqa: E402

# PDCR settings compared (weight 0.01 in all: the paper's)
SETTINGS = {
    # before: encoder stages 2-4 + the pair, the patch series summed, tau 0.5, the pair at each
    # layer's own N (128 x 64)
    "earlier defaults (encoder, k-sum, tau 0.5)": dict(
        preset="encoder", options=dict(tau=0.5, patch_reduction="sum", cross_samples=None)),
    "current defaults, encoder preset": dict(preset="encoder", options={}),
    "current defaults (paper preset: + decoder)": dict(preset="paper", options={}),
}
WEIGHT = 0.01


def batches(size: int, batch: int, count: int):
    """The first `count` batches of nuclei training tiles, in order, without augmentation."""
    bundle = build_datasets("nuclei", image_size=size, seed=0, augment=False)
    items = [bundle.train[i] for i in range(count * batch)]
    for b in range(count):
        chunk = items[b * batch:(b + 1) * batch]
        yield torch.stack([it["image"] for it in chunk]), torch.stack([it["label"] for it in chunk])


def build(setting: dict, width: int, seed: int, in_channels: int, size: int):
    torch.manual_seed(seed)
    model = build_model("unet", in_channels, 2, width=width)
    layers = model.paper_layers
    handle = pdcr_ext.attach(model, pdcr_layers=list(layers.pdcr_layers(setting["preset"])),
                             cross_layers=list(layers.cross), num_classes=2, weight=WEIGHT,
                             example_input=torch.zeros(2, in_channels, size, size), **setting["options"])
    return model, handle


def ratios_at_init(args, data):
    rows = []
    for name, setting in SETTINGS.items():
        values = []
        for seed in range(args.seeds):
            for images, labels in data:
                model, handle = build(setting, args.width, seed, images.shape[1], args.size)
                model.train()
                seg = F.cross_entropy(model(images), labels[:, 0])
                balance = gradient_balance(model, seg, handle.loss(labels))
                values.append(balance.ratio)
        mean = statistics.fmean(values)
        rows.append({"setting": name, "ratios": values, "mean": mean, "min": min(values), "max": max(values),
                     "weight_for_ratio_1": WEIGHT / mean, "shared_parameters": balance.elements})
        print(f"{name}: ratio {mean:.4g} (range {min(values):.4g}-{max(values):.4g}); "
              f"weight for ratio 1: {WEIGHT / mean:.3g}", flush=True)
    return rows


def step_costs(args, data):
    """Seconds of an ordinary and of a measured step, interleaved rounds, paper preset."""
    images, labels = data[0]
    model, handle = build(SETTINGS["current defaults (paper preset: + decoder)"], args.width, 0,
                          images.shape[1], args.size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)

    def step(measured: bool):
        optimizer.zero_grad(set_to_none=True)
        seg = F.cross_entropy(model(images), labels[:, 0])
        pdcr = handle.loss(labels)
        if measured:
            gradient_balance(model, seg, pdcr)
        else:
            (seg + pdcr).backward()
        optimizer.step()

    for measured in (False, True, False, True):  # warm-up
        step(measured)
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for measured in (False, True):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(measured)
            times[measured].append((time.perf_counter() - start) / args.steps)
    plain, measured = statistics.median(times[False]), statistics.median(times[True])
    extra = (measured - plain) / plain
    k = max(1, math.ceil(extra / 0.05))
    print(f"ordinary step {plain * 1e3:.1f} ms, measured step {measured * 1e3:.1f} ms (+{100 * extra:.1f} %); "
          f"measuring every k >= {k} steps keeps the average within 5 %", flush=True)
    return {"ordinary_s": plain, "measured_s": measured, "extra_percent": 100 * extra, "k_for_5_percent": k,
            "all_ordinary_s": times[False], "all_measured_s": times[True]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per kind and round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    data = list(batches(args.size, args.batch, args.batches))
    info = {"machine": machine_name("cpu"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "model": f"pdcr_seg UNet width {args.width}",
            "data": f"nuclei training tiles {args.size} px, batches of {args.batch}, no augmentation",
            "seeds": args.seeds, "batches": args.batches, "weight": WEIGHT}
    ratios = ratios_at_init(args, data)
    cost = step_costs(args, data)
    lines = [
        f"Measured {info['date']} on {info['machine']}, torch {info['torch']}, {info['threads']} threads; "
        f"{info['model']}, {info['data']}; PDCR weight {WEIGHT}; {args.seeds} seeds x {args.batches} batches.",
        "",
        "| PDCR setting | ‖∇PDCR‖ / ‖∇CE‖ at init (mean, range) | weight for ratio 1 |",
        "|---|---|---|",
    ]
    lines += [f"| {r['setting']} | {r['mean']:.3g} ({r['min']:.3g}–{r['max']:.3g}) | {r['weight_for_ratio_1']:.2g} |"
              for r in ratios]
    lines += ["", f"Ordinary step {cost['ordinary_s'] * 1e3:.1f} ms, measured step {cost['measured_s'] * 1e3:.1f} ms "
                  f"(+{cost['extra_percent']:.1f} %): measuring once every {cost['k_for_5_percent']} steps or more rarely "
                  f"keeps the average cost within 5 % (median of {args.rounds} rounds of {args.steps} steps)."]
    text = "\n".join(lines)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"grad-balance-{info['machine']}"
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "ratios": ratios, "cost": cost}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"\nwrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
