"""Benchmark of UAFR's re-weighting step (eqs. 13-15): the fused native op against the eager
formula (softmax, log, sum, multiply), forward and forward+backward, on feature maps of the
paper's sizes (512 x 512 inputs, 4 images per GPU as in the paper's 64 on 16 GPUs, M = 2).

    python benchmarks/bench_uafr.py [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pdcr_ext  # noqa: E402
from bench_ops import machine_name, sync  # noqa: E402

SHAPES = [(4, 64, 128, 128), (4, 128, 64, 64), (4, 256, 32, 32), (4, 728, 32, 32)]


def median_ms(fn, device, rounds=7, min_time=0.1):
    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    reps = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
    times = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    rows = []
    for B, C, H, W in SHAPES:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, C, H, W, generator=g).to(args.device).requires_grad_()
        z = torch.randn(B, 2, H, W, generator=g).to(args.device).requires_grad_()
        result = {"shape": [B, C, H, W], "M": 2}
        for backend in ("native", "reference"):
            def fwd():
                with torch.no_grad():
                    pdcr_ext.uafr_reweight(q, z, backend=backend)

            def fwd_bwd():
                out, _ = pdcr_ext.uafr_reweight(q, z, backend=backend)
                out.sum().backward()

            result[backend] = {"forward_ms": median_ms(fwd, args.device),
                               "forward_backward_ms": median_ms(fwd_bwd, args.device)}
        rows.append(result)
    lines = ["| feature map (B, C, H, W), M=2 | fused fwd / fwd+bwd ms | eager fwd / fwd+bwd ms | speed-up fwd / fwd+bwd |",
             "|---|---|---|---|"]
    for r in rows:
        n, e = r["native"], r["reference"]
        lines.append(f"| {tuple(r['shape'])} | {n['forward_ms']:.3g} / {n['forward_backward_ms']:.3g} | "
                     f"{e['forward_ms']:.3g} / {e['forward_backward_ms']:.3g} | "
                     f"{e['forward_ms'] / n['forward_ms']:.1f}× / {e['forward_backward_ms'] / n['forward_backward_ms']:.1f}× |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_name(args.device)
    info = {"machine": machine, "device": args.device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    (out / f"uafr-{machine}.json").write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    (out / f"uafr-{machine}.md").write_text(f"Measured {info['date']} on {machine} ({args.device}), "
                                            f"torch {info['torch']}, {info['threads']} threads.\n\n{text}\n")


if __name__ == "__main__":
    main()
