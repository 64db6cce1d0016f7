"""Volumes: 3-D foreground ratios and the dragsaw loss at an nnU-Net-like layer, native vs reference.

    ratios  labels (B, 128, 128, 128) with M = 4 classes (as the Decathlon brain-tumour task) and
            N boxes of the H-PDCR cube series (5, 7, 9 voxels): the native integral volume
            against the reference's direct count
    loss    a layer of 32 x 32 x 32 positions and C = 64 channels (nnU-Net's second stage on a
            128^3 patch), P = 3, M = 4: N = 4096 sampled positions (native and reference), and
            every position, N = 32768 (native only: the reference's N x N matrices would need
            about 50 GB)

Each case runs in a fresh subprocess, which reports its median time over repeats and the rise of
its peak resident set during one call (so native scratch memory counts). Prints a table and writes
<out>/volumes-<machine>.json and .md.

    python benchmarks/bench_volumes.py [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ops import machine_name  # noqa: E402

CASES = [
    # (name, kind, backend, sizes)
    ("ratios N=3072", "ratios", "native", {"B": 1, "S": 128, "N": 1024, "M": 4}),
    ("ratios N=3072", "ratios", "reference", {"B": 1, "S": 128, "N": 1024, "M": 4}),
    ("loss N=4096", "loss", "native", {"B": 2, "N": 4096, "C": 64, "P": 3, "M": 4}),
    ("loss N=4096", "loss", "reference", {"B": 2, "N": 4096, "C": 64, "P": 3, "M": 4}),
    ("loss N=32768 (dense)", "loss", "native", {"B": 1, "N": 32768, "C": 64, "P": 3, "M": 4}),
]

SNIPPET = r"""
import json, statistics, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/python")
import torch, pdcr_ext
kind, backend, s, device, repeats = {kind!r}, {backend!r}, {sizes!r}, {device!r}, {repeats}
g = torch.Generator().manual_seed(0)
if kind == "ratios":
    labels = torch.randint(0, s["M"], (s["B"], s["S"], s["S"], s["S"]), generator=g).to(device)
    centres = torch.randint(0, s["S"], (s["N"], 3), generator=g).to(device)
    boxes = torch.cat([pdcr_ext.patch_boxes(centres, size) for size in (5, 7, 9)])  # the cube series
    def call():
        pdcr_ext.foreground_ratios(labels, boxes, s["M"], backend=backend)
else:
    rows = torch.randn(s["B"], s["N"], s["C"], generator=g).to(device).requires_grad_()
    raw = torch.rand(s["B"], s["P"], s["N"], s["M"] + 1, generator=g)
    phi = (raw / raw.sum(-1, keepdim=True))[..., :s["M"]].contiguous().to(device)
    def call():
        pdcr_ext.dragsaw_loss(rows, phi, backend=backend).backward()
def sync():
    if device == "cuda":
        torch.cuda.synchronize()
def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
call()  # warm-up (allocator, native scratch)
sync()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set
    before = rss_kb("VmRSS:") * 1024
times = []
for _ in range(repeats):
    sync()
    t = time.perf_counter()
    call()
    sync()
    times.append(time.perf_counter() - t)
peak = (torch.cuda.max_memory_allocated() if device == "cuda" else rss_kb("VmHWM:") * 1024) - before
print(json.dumps({{"seconds": statistics.median(times), "peak_bytes": peak}}))
"""


def run_case(kind, backend, sizes, device, repeats):
    code = SNIPPET.format(root=str(ROOT), kind=kind, backend=backend, sizes=sizes, device=device, repeats=repeats)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
        return {"error": tail[0][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    results = []
    for name, kind, backend, sizes in CASES:
        repeats = 1 if (backend == "reference" or sizes["N"] > 10000) else 5
        r = run_case(kind, backend, sizes, args.device, repeats)
        results.append({"name": name, "kind": kind, "backend": backend, "sizes": sizes, **r})
        shown = r.get("error") or f"{1e3 * r['seconds']:.4g} ms, peak {r['peak_bytes'] / 2**20:.1f} MB"
        print(f"{name:22s} {backend:9s} {shown}", flush=True)
    info = {"machine": machine_name(args.device), "device": args.device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    lines = [f"Measured {info['date']} on {info['machine']} ({args.device}), torch {info['torch']}, "
             f"{info['threads']} threads.", "",
             "| case | sizes | native ms | reference ms | native vs reference | peak MB native / reference |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in results):
        by = {r["backend"]: r for r in results if r["name"] == name}
        nat, ref = by.get("native", {}), by.get("reference", {})
        ms = lambda r: f"{1e3 * r['seconds']:.4g}" if "seconds" in r else ("—" if not r else "failed")  # noqa: E731
        mb = lambda r: f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else "—"  # noqa: E731
        ratio = f"{ref['seconds'] / nat['seconds']:.1f}× faster" if "seconds" in nat and "seconds" in ref else "not run"
        sizes = ", ".join(f"{k}={v}" for k, v in (nat or ref)["sizes"].items())
        lines.append(f"| {name} | {sizes} | {ms(nat)} | {ms(ref)} | {ratio} | {mb(nat)} / {mb(ref)} |")
    text = "\n".join(lines)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"volumes-{info['machine']}"
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"\nwrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
