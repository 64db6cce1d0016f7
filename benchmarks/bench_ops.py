"""Benchmark of the fused dragsaw loss: native vs reference, with scaled_dot_product_attention as the
speed anchor (H = P heads, same B, N and head dim C), all timed in the same run.

Prints a table and writes <out>/<machine>.json (and a Markdown copy of the table).

    python benchmarks/bench_ops.py [--device cpu|cuda] [--groups ...] [--quick] [--out DIR]

Times are medians over interleaved rounds (native, reference and SDPA take turns, so that drift in
the machine's speed hits all three alike); each round times a batch of calls between two device
synchronisations. Peak memory: on the CPU, the rise of a fresh subprocess's peak resident set
during one forward+backward (so the native op's scratch memory counts); on CUDA,
torch.cuda.max_memory_allocated during one forward+backward in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pdcr_ext  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in the dev requirements
    def tqdm(iterable, **_):
        return iterable


@dataclass
class Config:
    name: str
    group: str
    B: int
    N: int
    C: int
    P: int = 3
    M: int = 2
    methods: tuple = ("native", "reference", "sdpa")
    dtype: str = "float32"


CONFIGS = [
    # the paper's layers (B=16; N = 128, 64, 32 vectors of C = 64, 128, 256 channels; P=3; M=2)
    Config("paper N=128", "paper", 16, 128, 64),
    Config("paper N=64", "paper", 16, 64, 128),
    Config("paper N=32", "paper", 16, 32, 256),
    # CPU: dense sampling, and a map of 32768 positions (native only: the reference is O(N^2))
    Config("dense", "dense", 2, 4096, 64),
    Config("huge", "huge", 1, 32768, 32, methods=("native",)),
    # GPU: against SDPA at the sizes of the CUDA issue, both backward variants, float32 and bf16
    *[
        Config(f"{name} {dtype}", "gpu-sdpa", B, N, 64, dtype=dtype,
               methods=("native", "native-split", "reference", "sdpa"))
        for name, B, N in (("sdpa-a", 4, 4096), ("sdpa-b", 1, 16384))
        for dtype in ("float32", "bfloat16")
    ],
    Config("memory", "gpu-memory", 8, 16384, 64, methods=("native", "reference")),
]

DEFAULT_GROUPS = {"cpu": "paper,dense,huge", "cuda": "paper,gpu-sdpa,gpu-memory"}


def machine_name(device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name} {os.cpu_count()}c"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def step_fns(method, cfg: Config, device):
    """(forward, (prepare_backward, backward), forward_backward) callables on fresh inputs."""
    dtype = getattr(torch, cfg.dtype)
    g = torch.Generator().manual_seed(0)
    B, N, C, P, M = cfg.B, cfg.N, cfg.C, cfg.P, cfg.M
    if method == "sdpa":
        q, k, v = [torch.randn(B, P, N, C, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]

        def forward():
            return F.scaled_dot_product_attention(q, k, v).float().sum()
    else:
        rows = torch.randn(B, N, C, generator=g).to(device, dtype).requires_grad_()
        raw = torch.rand(B, P, N, M + 1, generator=g)
        phi = (raw / raw.sum(-1, keepdim=True))[..., :M].contiguous().to(device)
        backend = "reference" if method == "reference" else "native"

        def forward():
            return pdcr_ext.dragsaw_loss(rows, phi, tau=0.5, backend=backend)

    def fwd():
        with torch.no_grad():
            forward()

    state = {}

    def prepare_bwd():
        state["loss"] = forward()

    def bwd():
        state["loss"].backward(retain_graph=True)

    def fwd_bwd():
        forward().backward()

    return fwd, (prepare_bwd, bwd), fwd_bwd


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_per_call(fn, reps, device):
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def set_variant(method):
    """native: the default (atomic) CUDA backward; native-split: the deterministic one."""
    if torch.cuda.is_available() and pdcr_ext.has_cuda_kernels:
        pdcr_ext._ops._C.set_cuda_backward("split" if method == "native-split" else "atomic")


def cuda_peak_bytes(fwd_bwd):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_config(cfg: Config, device, rounds, min_time):
    fns, reps, failed = {}, {}, {}
    for method in cfg.methods:
        set_variant(method)
        try:
            fns[method] = step_fns(method, cfg, device)
            fb = fns[method][2]
            fb()
            fb()
            one = time_per_call(fb, 1, device)
            reps[method] = max(1, min(500, int(min_time / max(one, 1e-7))))
        except torch.cuda.OutOfMemoryError as error:
            failed[method] = "out of memory: " + str(error).splitlines()[0][:160]
            fns.pop(method, None)
            torch.cuda.empty_cache()
    samples = {m: {"forward": [], "backward": [], "forward_backward": []} for m in fns}
    for _ in range(rounds):
        for method, (fwd, (prep, bwd), fb) in fns.items():
            set_variant(method)
            samples[method]["forward"].append(time_per_call(fwd, reps[method], device))
            prep()
            samples[method]["backward"].append(time_per_call(bwd, reps[method], device))
            samples[method]["forward_backward"].append(time_per_call(fb, reps[method], device))
    result = asdict(cfg)
    result["methods"] = {}
    for method, phases in samples.items():
        result["methods"][method] = {
            phase: {"median_ms": statistics.median(v) * 1e3, "rounds": len(v), "calls_per_round": reps[method]}
            for phase, v in phases.items()
        }
    for method, reason in failed.items():
        result["methods"][method] = {"error": reason}
    if device == "cuda":
        result["memory"] = {}
        for method, (_, _, fb) in fns.items():
            set_variant(method)
            result["memory"][method] = {"peak_mb": cuda_peak_bytes(fb) / 2**20}
        for method in failed:
            result["memory"][method] = {"peak_mb": None, "error": "out of memory"}
        set_variant("native")
    # similarity products per forward+backward: S in the forward, S again, G V' and G^T V in the
    # backward (the split variant recomputes S and G once more for the columns)
    flops = 8 * cfg.B * cfg.N * cfg.N * cfg.C
    for method in ("native", "native-split"):
        if method in result["methods"] and "forward_backward" in result["methods"][method]:
            ms = result["methods"][method]["forward_backward"]["median_ms"]
            result["methods"][method]["similarity_tflops"] = flops / (ms * 1e-3) / 1e12
    return result


MEMORY_SNIPPET = r"""
import json, sys, torch
sys.path.insert(0, {root!r} + "/benchmarks")
from bench_ops import Config, step_fns
cfg = Config(**{cfg!r})
_, _, fwd_bwd = step_fns({method!r}, cfg, "cpu")
def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set
before = rss_kb("VmRSS:")
fwd_bwd()
print(json.dumps({{"peak_bytes": (rss_kb("VmHWM:") - before) * 1024}}))
"""


def cpu_peak_memory(method, cfg: Config):
    fields = {k: v for k, v in asdict(cfg).items()}
    code = MEMORY_SNIPPET.format(root=str(ROOT), cfg=fields, method=method)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
        return {"peak_mb": None, "error": tail[0][:200]}
    return {"peak_mb": json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20}


def matmul_rates(device):
    """Measured matrix-product rates of this device (TFLOP/s), the ceiling for the similarity tiles."""
    if device != "cuda":
        return {}
    rates = {}
    n = 8192
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                              ("fp32", torch.float32, False)):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        seconds = time_per_call(lambda: a @ b, 10, device)
        rates[name] = 2 * n**3 / seconds / 1e12
        torch.backends.cuda.matmul.allow_tf32 = prev
        del a, b
    torch.cuda.empty_cache()
    return rates


def fmt(x):
    return "—" if x is None else (f"{x:.3g}" if x < 100 else f"{x:.0f}")


def median(result, method, phase="forward_backward"):
    entry = result["methods"].get(method, {})
    return entry.get(phase, {}).get("median_ms")


def table(results):
    lines = [
        "| config | B, N, C, P, M, dtype | native fwd / bwd / fwd+bwd ms | reference fwd+bwd ms | "
        "SDPA fwd+bwd ms | native vs reference | native / SDPA | peak MB native / reference / SDPA |",
        "|" + "---|" * 8,
    ]
    for r in results:
        nfb, rfb, sfb = median(r, "native"), median(r, "reference"), median(r, "sdpa")
        ref_error = r["methods"].get("reference", {}).get("error")
        mem = r.get("memory", {})
        speedup = f"{rfb / nfb:.1f}× faster" if rfb else ("reference OOM" if ref_error else "not run")
        lines.append(
            f"| {r['name']} | {r['B']}, {r['N']}, {r['C']}, {r['P']}, {r['M']}, {r['dtype']} | "
            f"{fmt(median(r, 'native', 'forward'))} / {fmt(median(r, 'native', 'backward'))} / {fmt(nfb)} | "
            f"{fmt(rfb) if rfb else ('OOM' if ref_error else '—')} | {fmt(sfb)} | {speedup} | "
            f"{f'{nfb / sfb:.2f}×' if sfb else 'not run'} | "
            + " / ".join(
                ("OOM" if mem.get(k, {}).get("error") else fmt(mem.get(k, {}).get("peak_mb")))
                for k in ("native", "reference", "sdpa"))
            + " |"
        )
        split = median(r, "native-split")
        if split:
            lines.append(
                f"| ↳ split (deterministic) backward | | {fmt(median(r, 'native-split', 'forward'))} / "
                f"{fmt(median(r, 'native-split', 'backward'))} / {fmt(split)} | | | | "
                f"{f'{split / sfb:.2f}×' if sfb else ''} | {fmt(mem.get('native-split', {}).get('peak_mb'))} |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--groups", default=None, help="comma-separated config groups "
                        f"(default: {DEFAULT_GROUPS})")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for smoke tests)")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    groups = set((args.groups or DEFAULT_GROUPS[args.device]).split(","))
    configs = [c for c in CONFIGS if c.group in groups]
    if args.device == "cpu":
        configs = [c for c in configs if c.dtype == "float32"]
    # GPU timings are steadier than this CPU's: fewer, shorter rounds keep `make gpu-check` short
    rounds, min_time = (2, 0.02) if args.quick else ((3, 0.05) if args.device == "cuda" else (7, 0.15))
    native = pdcr_ext.native_available and (args.device == "cpu" or pdcr_ext.has_cuda_kernels)
    if not native:
        sys.exit(f"the native extension is not built for {args.device}: run `make build` first")
    info = {
        "machine": machine_name(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_isa": pdcr_ext._ops._C.cpu_isa(),
        "date": time.strftime("%Y-%m-%d"),
        "matmul_tflops": matmul_rates(args.device),
    }
    print(json.dumps(info), flush=True)
    results = []
    for cfg in tqdm(configs, desc="configs", unit="config"):
        r = bench_config(cfg, args.device, rounds, min_time)
        if args.device == "cpu" and not args.no_memory:
            r["memory"] = {m: cpu_peak_memory(m, cfg) for m in cfg.methods}
        results.append(r)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    text = table(results)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = info["machine"] + ("-quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(
        f"Measured {info['date']} on {info['machine']} ({args.device}), torch {info['torch']}, "
        f"{info['threads']} CPU threads, CPU kernels {info['cpu_isa']}.\n\n{text}\n"
    )
    print(f"\nwrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
