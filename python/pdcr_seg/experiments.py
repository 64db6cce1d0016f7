"""`pdcr-seg experiment` / `make experiment`: a plan of training runs, their statistics, tables and
figures (benchmarks/results/experiments.md, experiments.json, ablation.png, limited_data.png,
embedding.png, uncertainty.png).

A plan (YAML, or the built-in ones below) has shared settings (and per data set), named arms and
studies; a study crosses its data sets and models with arms, seeds and training fractions into runs. Each run is an
ordinary `pdcr-seg train` in its own directory; a run whose summary.json exists is done, so an
interrupted plan resumes where it stopped. Runs go `jobs` at a time in subprocesses of one thread
each (two small models on two cores outrun one model on two).

Statistics: per arm, the mean and sample standard deviation of each test metric over seeds; per
seed, the paired difference to the baseline of the same seed (same data, same initialisation, same
augmentation draws), and its mean with a 95 % t-interval. An interval that contains 0 means no
significant difference at this number of seeds.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, TrainConfig, from_dict, save_yaml

METRICS = ("dice", "jaccard", "accuracy", "hd95")

# The built-in plans. "cpu": about 40 minutes on a 2-core CPU (two runs at a time). "paper": the
# same studies at the paper's sizes (width 64, 512 px, 300 epochs; a GPU's work).
CPU_PLAN = {
    "name": "cpu",
    "jobs": 2,
    "settings": {"model": "unet", "width": 8, "image_size": 64, "batch_size": 8, "overlays": 0},
    # about 300 steps either way: 361 overlapping nuclei tiles (64 px), 96 synthetic images
    "data_settings": {"nuclei": {"epochs": 6}, "synthetic": {"epochs": 25}},
    "seeds": [0, 1, 2],
    "arms": {
        "baseline": {},
        "H-PDCR": {"pdcr": True},
        "RF-PDCR": {"pdcr": True, "pdcr_mode": "receptive_field"},
        "UAFR": {"uafr": True},
        "H-PDCR + UAFR": {"pdcr": True, "uafr": True},
        "H-PDCR dense": {"pdcr": True, "pdcr_dense": True},
        "H-PDCR w=0.001": {"pdcr": True, "pdcr_weight": 0.001},
    },
    "studies": [
        {"name": "ablation", "data": ["nuclei", "synthetic"],
         "arms": ["baseline", "H-PDCR", "RF-PDCR", "UAFR", "H-PDCR + UAFR"]},
        {"name": "ablation", "data": ["synthetic"], "model": "deeplabv3plus", "settings": {"width": 8},
         "arms": ["baseline", "H-PDCR", "RF-PDCR", "UAFR", "H-PDCR + UAFR"]},
        {"name": "limited_data", "data": ["synthetic"], "arms": ["baseline", "H-PDCR + UAFR"],
         "fractions": [0.1, 0.25, 0.5, 1.0]},
        {"name": "dense", "data": ["nuclei"], "arms": ["H-PDCR", "H-PDCR dense"]},
        # the paper's weight (0.01 on eq. 12's sums) and ten times less
        {"name": "weight", "data": ["nuclei", "synthetic"], "arms": ["baseline", "H-PDCR", "H-PDCR w=0.001"]},
    ],
}
PAPER_PLAN = copy.deepcopy(CPU_PLAN)
PAPER_PLAN.update(name="paper", jobs=1)
PAPER_PLAN["settings"] = {"model": "unet", "width": 64, "image_size": 512, "batch_size": 8, "epochs": 300,
                          "overlays": 4, "amp": True}
PAPER_PLAN["data_settings"] = {}
PAPER_PLAN["studies"][1]["settings"] = {"width": 64}
PAPER_PLAN["seeds"] = [0, 1, 2, 3, 4]


@dataclass
class Run:
    study: str
    data: str
    model: str
    arm: str
    seed: int
    fraction: float
    config: TrainConfig

    @property
    def key(self) -> str:
        data = self.data.replace("folder:", "").replace("/", "_")
        fraction = "" if self.fraction == 1.0 else f"/f{self.fraction:g}"
        return f"{data}/{self.model}/{self.arm.replace(' ', '').replace('+', '_')}{fraction}/s{self.seed}"


def load_plan(plan: str | None, scale: str = "cpu") -> dict:
    if plan is None:
        return copy.deepcopy(PAPER_PLAN if scale == "paper" else CPU_PLAN)
    path = Path(plan)
    if not path.is_file():
        raise ConfigError(f"plan {path} does not exist")
    values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict) or "studies" not in values or "arms" not in values:
        raise ConfigError(f"plan {path} needs 'arms' and 'studies'")
    return values


def expand(plan: dict, out: Path, max_steps: int | None = None) -> list[Run]:
    """Every run of the plan, each once (a run shared by two studies, e.g. the full-data
    baseline of the ablation and of the limited-data curve, is trained once)."""
    runs: dict[str, Run] = {}
    for study in plan["studies"]:
        unknown = [a for a in study["arms"] if a not in plan["arms"]]
        if unknown:
            raise ConfigError(f"study {study['name']}: unknown arms {unknown}")
        models = study.get("model", plan.get("settings", {}).get("model", "unet"))
        for data, model, arm, seed, fraction in itertools.product(
                study["data"], [models] if isinstance(models, str) else models, study["arms"],
                plan["seeds"], study.get("fractions", [1.0])):
            values = {**plan.get("settings", {}), **plan.get("data_settings", {}).get(data, {}),
                      **study.get("settings", {}), **plan["arms"][arm],
                      "data": data, "model": model, "seed": seed, "fraction": fraction}
            if max_steps is not None:
                values["max_steps"] = max_steps
            config = from_dict(values)
            run = Run(study["name"], data, model, arm, seed, fraction, config)
            run.config.out = str(out / run.key)
            known = runs.setdefault(run.key, run)
            if known.config != run.config:  # the same data, model, arm, seed, fraction: one run
                raise ConfigError(f"studies {known.study} and {run.study} both define run {run.key} "
                                  "with different settings; give one of them another arm name")
    return list(runs.values())


def _summary(run: Run) -> dict | None:
    path = Path(run.config.out) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def execute(runs: list[Run], jobs: int = 1, log=print) -> None:
    """Trains the runs without a summary.json, `jobs` at a time, one thread each."""
    todo = [r for r in runs if _summary(r) is None]
    log(f"experiment: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train ({jobs} at a time)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running: list[tuple[Run, subprocess.Popen, float]] = []
    started = time.perf_counter()
    done = 0
    while todo or running:
        while todo and len(running) < jobs:
            run = todo.pop(0)
            folder = Path(run.config.out)
            folder.mkdir(parents=True, exist_ok=True)
            save_yaml(run.config, folder / "plan_config.yaml")
            log_file = open(folder / "train.log", "w")
            # --overwrite: the folder holds this plan's settings and log, and maybe an unfinished try
            process = subprocess.Popen([sys.executable, "-m", "pdcr_seg", "train", "--config",
                                        str(folder / "plan_config.yaml"), "--device", "cpu", "--overwrite"],
                                       stdout=log_file, stderr=subprocess.STDOUT, env=env)
            running.append((run, process, time.perf_counter()))
        time.sleep(0.5)
        for item in list(running):
            run, process, t0 = item
            if process.poll() is None:
                continue
            running.remove(item)
            done += 1
            if process.returncode != 0:
                tail = (Path(run.config.out) / "train.log").read_text().splitlines()[-5:]
                raise RuntimeError(f"run {run.key} failed (exit {process.returncode}):\n" + "\n".join(tail))
            elapsed = time.perf_counter() - started
            log(f"  [{done}/{done + len(todo) + len(running)}] {run.key}: "
                f"{time.perf_counter() - t0:.0f} s; {elapsed / 60:.1f} min so far")


# -- statistics ------------------------------------------------------------------------------

def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with `dof` degrees of freedom (two-sided 95 %)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def mean_sd(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1) of the finite values, and their count."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(finite) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else math.nan
    return mean, sd, n


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> dict:
    """Mean of (value - baseline) over the seeds both have, with a 95 % t-interval."""
    seeds = sorted(s for s in values if s in baseline and not math.isnan(values[s]) and not math.isnan(baseline[s]))
    diffs = [values[s] - baseline[s] for s in seeds]
    mean, sd, n = mean_sd(diffs)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half, "per_seed": diffs}


# -- aggregation ------------------------------------------------------------------------------

def collect(runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        summary = _summary(run)
        if summary is None:
            continue
        rows.append({"study": run.study, "data": run.data, "model": run.model, "arm": run.arm, "seed": run.seed,
                     "fraction": run.fraction, "key": run.key, "test": summary["test"],
                     "seconds_per_step": summary["seconds_per_step"], "steps": summary["steps"],
                     "parameters": summary["complexity"]["parameters_inference"],
                     "macs": summary["complexity"]["macs"]})
    return rows


def arm_table(rows: list[dict], group: dict, arms: list[str]) -> list[dict]:
    """Per arm: mean +- sd of each metric, and the paired difference to 'baseline' by seed."""
    selected = [r for r in rows if all(r[k] == v for k, v in group.items())]
    by_arm = {arm: {r["seed"]: r for r in selected if r["arm"] == arm} for arm in arms}
    out = []
    for arm in arms:
        runs = by_arm[arm]
        if not runs:
            continue
        entry = {"arm": arm, "seeds": sorted(runs), "seconds_per_step": mean_sd([r["seconds_per_step"] for r in runs.values()])[0],
                 "parameters": next(iter(runs.values()))["parameters"], "macs": next(iter(runs.values()))["macs"]}
        for metric in METRICS:
            entry[metric] = mean_sd([r["test"][metric] for r in runs.values()])
            if arm != arms[0] and by_arm[arms[0]]:
                entry[f"{metric}_vs_{arms[0]}"] = paired_difference(
                    {s: r["test"][metric] for s, r in runs.items()},
                    {s: r["test"][metric] for s, r in by_arm[arms[0]].items()})
        out.append(entry)
    return out


def _fmt(mean_sd_n, digits=4):
    mean, sd, n = mean_sd_n
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if not math.isnan(sd) else f"{mean:.{digits}f}"


def _fmt_diff(d, digits=4):
    if d["n"] < 2:
        return "—"
    star = "" if d["low"] <= 0 <= d["high"] else " *"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]{star}"


def markdown(plan: dict, rows: list[dict], tables: dict) -> str:
    s = plan.get("settings", {})
    lines = [
        f"# Experiments ({plan.get('name', 'plan')} plan)",
        "",
        f"Settings shared by every run: model {s.get('model')} width {s.get('width')}, {s.get('image_size')} px "
        f"tiles, batch {s.get('batch_size')}, "
        + (f"{s['epochs']} epochs" if "epochs" in s else ", ".join(
            f"{v.get('epochs')} epochs on {k}" for k, v in plan.get("data_settings", {}).items()))
        + f", Adam lr {s.get('lr', 1e-3)}, cosine "
        f"schedule, weight decay {s.get('weight_decay', 1e-5)}, the paper's augmentation, PDCR weight "
        f"{s.get('pdcr_weight', 0.01)} on eq. 12 (pairs summed); seeds {plan['seeds']}. Test metrics of the "
        "best validation epoch, mean ± sd over seeds; Δ = paired difference to the baseline of the same "
        "seed, mean [95 % t-interval], * where the interval excludes 0. HD95 in pixels (lower is better).",
        "",
    ]
    for title, table in tables.items():
        lines += [f"## {title}", "",
                  "| arm | Dice | Δ Dice | Jaccard | Δ Jaccard | accuracy | HD95 | Δ HD95 | s/step | params (M) | GMACs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in table:
            base = e["arm"] == table[0]["arm"]
            lines.append(
                f"| {e['arm']} | {_fmt(e['dice'])} | {'' if base else _fmt_diff(e['dice_vs_' + table[0]['arm']])} | "
                f"{_fmt(e['jaccard'])} | {'' if base else _fmt_diff(e['jaccard_vs_' + table[0]['arm']])} | "
                f"{_fmt(e['accuracy'])} | {_fmt(e['hd95'], 2)} | "
                f"{'' if base else _fmt_diff(e['hd95_vs_' + table[0]['arm']], 2)} | {e['seconds_per_step']:.3f} | "
                f"{e['parameters'] / 1e6:.3f} | {e['macs'] / 1e9:.3f} |")
        lines.append("")
    return "\n".join(lines)


def run_plan(plan: str | None = None, *, scale: str = "cpu", out: str = "runs/experiments",
             results: str = "benchmarks/results", max_steps: int | None = None, jobs: int | None = None) -> dict:
    """Runs (or resumes) the plan, then writes the tables and figures; returns the tables."""
    spec = load_plan(plan, scale)
    runs = expand(spec, Path(out), max_steps)
    execute(runs, jobs or spec.get("jobs", 1))
    rows = collect(runs)
    tables = {}
    for study in spec["studies"]:
        if study["name"] == "limited_data":
            continue
        models = study.get("model", spec.get("settings", {}).get("model", "unet"))
        for data in study["data"]:
            for model in [models] if isinstance(models, str) else models:
                title = f"{study['name']}: {model} on {data}"
                tables[title] = arm_table([r for r in rows if r["fraction"] == 1.0],
                                          {"data": data, "model": model}, study["arms"])
    limited = {}
    for study in (s for s in spec["studies"] if s["name"] == "limited_data"):
        for data in study["data"]:
            for fraction in study["fractions"]:
                limited[f"{data} {fraction:g}"] = arm_table(
                    [r for r in rows if r["fraction"] == fraction],
                    {"data": data, "model": study.get("model", spec["settings"].get("model", "unet"))}, study["arms"])
    results_dir = Path(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    from . import experiment_figures

    scores = experiment_figures.write_all(spec, runs, rows, tables, limited, results_dir)
    text = markdown(spec, rows, tables) + limited_markdown(limited)
    if scores:
        text += ("\n## A look inside: encoder stage 3 on the test tiles (embedding.png)\n\n"
                 "Fisher ratio of the pure-background and pure-foreground positions (squared distance "
                 "of their mean vectors over the sum of their variances; higher = classes further "
                 "apart), seed " + str(spec["seeds"][0]) + ": "
                 + ", ".join(f"{arm} {value:.3f}" for arm, value in scores.items()) + "\n")
    (results_dir / "experiments.json").write_text(json.dumps(
        {"plan": spec, "runs": rows, "tables": tables, "limited_data": limited, "embedding_fisher_ratio": scores},
        indent=2, default=float) + "\n")
    (results_dir / "experiments.md").write_text(text)
    print(f"wrote {results_dir}/experiments.md, experiments.json and figures")
    return {"tables": tables, "limited_data": limited, "embedding": scores}


def limited_markdown(limited: dict) -> str:
    if not limited:
        return ""
    arms = [e["arm"] for e in next(iter(limited.values()))]
    lines = ["", "## limited data: test Dice by fraction of the training split (limited_data.png)", "",
             "| data, fraction | " + " | ".join(arms) + f" | Δ {arms[-1]} |", "|---" * (len(arms) + 2) + "|"]
    for key, table in limited.items():
        by_arm = {e["arm"]: e for e in table}
        cells = [_fmt(by_arm[a]["dice"]) if a in by_arm else "—" for a in arms]
        diff = by_arm.get(arms[-1], {}).get(f"dice_vs_{arms[0]}")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {_fmt_diff(diff) if diff else '—'} |")
    return "\n".join(lines) + "\n"
