"""The dragsaw loss on a busy machine: native vs eager (the reference backend) at the paper's sizes,
on a quiet machine and with a competing process on one core, side by side.

Training runs data-loading workers beside the model, so the cores are rarely the loss's alone. The
competitor is a pure-Python busy loop pinned to one core (`--cores`, default 0), the simplest
process that takes a core and never sleeps. Per call (forward + backward) the script records the
time; it reports the median and the mean (the mean counts the slow calls a busy machine causes,
which are what a training step waits for) and the 90th percentile. Native and eager take turns
within each round, and quiet and contended rounds alternate, so that drift in the machine's speed
hits all alike. The load average at the start is recorded: a "quiet" run on a shared machine is
not quiet.

    python benchmarks/bench_contention.py [--rounds 5] [--seconds 0.4] [--cores 0] [--out DIR]

Writes <out>/contention-<machine>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pdcr_ext  # noqa: E402
from bench_ops import CONFIGS, machine_name  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in the dev requirements
    def tqdm(iterable, **_):
        return iterable

PAPER = [c for c in CONFIGS if c.group == "paper"]
METHODS = {"native": "native", "eager": "reference"}  # label -> dragsaw_loss backend
BUSY_LOOP = "import os, sys\nif hasattr(os, 'sched_setaffinity'): os.sched_setaffinity(0, {cores})\nwhile True: pass\n"


class Competitor:
    """A busy process pinned to `cores` while the `with` block runs."""

    def __init__(self, cores: set[int]):
        self.cores = cores

    def __enter__(self):
        code = BUSY_LOOP.format(cores=sorted(self.cores))
        self.process = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.2)  # let it start and take its core
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def loss_step(cfg, backend: str):
    """One forward + backward of dragsaw_loss at `cfg`, on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(cfg.B, cfg.N, cfg.C, generator=g).requires_grad_()
    raw = torch.rand(cfg.B, cfg.P, cfg.N, cfg.M + 1, generator=g)
    phi = (raw / raw.sum(-1, keepdim=True))[..., : cfg.M].contiguous()

    def step():
        pdcr_ext.dragsaw_loss(rows, phi, tau=0.5, backend=backend).backward()
        rows.grad = None

    return step


def call_times(step, seconds: float) -> list[float]:
    """Milliseconds of each call of `step` during `seconds` (at least 3 calls)."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered), "mean_ms": statistics.fmean(ordered),
            "p90_ms": ordered[int(0.9 * (len(ordered) - 1))], "calls": len(ordered)}


def bench(cfg, rounds: int, seconds: float, cores: set[int]) -> dict:
    steps = {label: loss_step(cfg, backend) for label, backend in METHODS.items()}
    for step in steps.values():  # warm-up: the first calls allocate and load the kernels
        step()
        step()
    samples = {scenario: {label: [] for label in steps} for scenario in ("quiet", "contended")}
    for _ in range(rounds):
        for label, step in steps.items():
            samples["quiet"][label] += call_times(step, seconds)
        with Competitor(cores):
            for label, step in steps.items():
                samples["contended"][label] += call_times(step, seconds)
    return {"config": cfg.name, "B": cfg.B, "N": cfg.N, "C": cfg.C, "P": cfg.P, "M": cfg.M,
            **{scenario: {label: summary(times) for label, times in by_method.items()}
               for scenario, by_method in samples.items()}}


def table(results: list[dict]) -> str:
    lines = ["| config | B, N, C, P, M | scenario | native median / mean / p90 ms | "
             "eager median / mean / p90 ms | native vs eager (mean) |", "|" + "---|" * 6]
    for r in results:
        for scenario in ("quiet", "contended"):
            n, e = r[scenario]["native"], r[scenario]["eager"]
            cell = lambda s: f"{s['median_ms']:.2f} / {s['mean_ms']:.2f} / {s['p90_ms']:.2f}"  # noqa: E731
            lines.append(f"| {r['config']} | {r['B']}, {r['N']}, {r['C']}, {r['P']}, {r['M']} | {scenario} | "
                         f"{cell(n)} | {cell(e)} | {e['mean_ms'] / n['mean_ms']:.1f}× faster |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.4, help="per method, round and scenario")
    parser.add_argument("--cores", default="0", help="comma-separated cores of the competitor (default 0)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if not pdcr_ext.native_available:
        sys.exit("the native extension is not built: run `make build` first")
    cores = {int(c) for c in args.cores.split(",")}
    info = {
        "machine": machine_name("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_isa": pdcr_ext._ops._C.cpu_isa(),
        "competitor": f"pure-Python busy loop pinned to core(s) {sorted(cores)}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": os.getloadavg(),
    }
    print(json.dumps(info), flush=True)
    results = [bench(cfg, args.rounds, args.seconds, cores) for cfg in tqdm(PAPER, desc="configs", unit="config")]
    info["load_average_at_end"] = os.getloadavg()
    text = table(results)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"contention-{info['machine']}"
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    load = ", ".join(f"{x:.1f}" for x in info["load_average_at_start"])
    (out / f"{stem}.md").write_text(
        f"Measured {info['date']} on {info['machine']}, torch {info['torch']}, {info['threads']} CPU "
        f"threads, CPU kernels {info['cpu_isa']}; competitor: {info['competitor']}; load average at the "
        f"start {load} (1, 5, 15 min). Forward + backward per call.\n\n{text}\n")
    print(f"\nwrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
