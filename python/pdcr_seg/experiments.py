"""`pdcr-seg experiment` / `make experiment`: a plan of training runs, their statistics, tables and
figures (benchmarks/results/experiments.md, experiments.json, sweep.png, ablation.png,
embedding.png, uncertainty.png; limited_data.png for a plan with a limited-data study).

A plan (YAML, or the built-in ones below) has shared settings (and per data set), named arms and
studies; a study crosses its data sets and models with arms, seeds (the plan's, or its own) and
training fractions into runs. `folds: F` in a study runs seed s on fold s mod F (lung-ct: seed s
tests patient s + 1, so that every replicate tests another patient and an arm's difference to
the baseline of the same seed is a difference on the same patient). Each run is an ordinary
`pdcr-seg train` in its own directory; a run whose summary.json exists is done, so an
interrupted plan resumes where it stopped. Runs go `jobs` at a time in subprocesses of one thread
each (two small models on two cores outrun one model on two).

Statistics (stats.py): per arm, the mean and sd over seeds of each test metric and of each run's
per-image median; the paired difference to the baseline by seed (t-interval, paired t-test) and
by test image (Wilcoxon signed-rank); Holm's correction over each table's tests.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, TrainConfig, from_dict, from_run, save_yaml
from .stats import holm, mean_sd, median, paired_difference, per_image_difference, t_quantile_975  # noqa: F401

METRICS = ("dice", "jaccard", "accuracy", "hd95")
IMAGE_METRICS = ("dice", "hd95")  # with per-image medians and the per-image test
VOLUME_METRICS = ("volume_dice", "volume_hd95")  # lung-ct 2-D: the test patient's stacked slices (3-D)
TESTED = ("dice", "hd95", "volume_dice", "volume_hd95")  # the seed-paired tests of a table (one Holm family)
RATIOS = (0.01, 0.1, 1, 10, 100, 1000)  # the sweep: ||grad PDCR|| / ||grad seg|| set over the first 5 steps


def _sweep_arms() -> dict:
    return {f"H-PDCR ratio {r:g}": {"pdcr": True, "pdcr_target_ratio": float(r)} for r in RATIOS}


# The built-in plans. "cpu": 73 runs, about an hour on a 2-core CPU (two runs at a time, one
# thread each). Its cost, in CPU seconds of one thread (process time, measured on the loaded
# 2-core AMD EPYC, so an upper bound: re-measure on a quiet machine), UNet width 8, batch 8:
#   nuclei, 64 px tiles, 45 steps an epoch: a step 0.10 s (baseline), 0.134 (H-PDCR, the paper
#     preset, with the gradient balance every 15th step: a measured step costs 1.5 steps),
#     0.118 (RF-PDCR), 0.18 (UAFR), 0.217 (H-PDCR + UAFR); validation 0.3 s; a run's start, test
#     and figures 9.5 s;
#   lung-ct, 112 px slices, Dice + CE, 10-14 steps an epoch by fold (12 on average): a step
#     0.256 s (baseline), 0.297 (H-PDCR), 0.388 (UAFR), 0.45 (H-PDCR + UAFR); validation of a
#     patient 1.1-1.65 s (1.36 on average); a run's start and test about 14 s.
# nuclei: 3 seeds x 11 arms, 6 epochs (270 steps):
#   per seed 270 x (0.10 + 7 x 0.134 + 0.118 + 0.18 + 0.217) + 11 x (6 x 0.3 + 9.5) = 543 s: 1 630 s;
# lung-ct: 4 folds (seed s on fold s) x 10 arms, 25 epochs (300 steps on average):
#   per fold 300 x (0.256 + 7 x 0.297 + 0.388 + 0.45) + 10 x (25 x 1.36 + 14) = 1 430 s: 5 730 s;
# in all about 7 360 CPU seconds: 61 minutes at two runs at a time, plus about 2 minutes of
# figures. (The 5 calibration steps of a target-ratio arm are all measured: about 3 s more each.)
CPU_PLAN = {
    "name": "cpu",
    "jobs": 2,
    "settings": {"model": "unet", "width": 8, "batch_size": 8, "overlays": 0},
    # nuclei: 361 overlapping 64 px tiles of the training region, 45 steps an epoch, cross-entropy
    # (the paper's). lung-ct: the axial slices of the two training patients (87-116: 10-14 steps
    # an epoch), 112 px (a multiple of 16 above the 101 px that keep every tumour pixel), MONAI's
    # Dice + cross-entropy: 0.6-12 % of the training pixels are tumour (by fold), and with
    # cross-entropy alone this UNet learns the tumour far more slowly (pilot runs on fold 0, one
    # seed: best validation Dice 0.19 in 19 epochs with cross-entropy, 0.49 with Dice + CE; fold
    # 3, trained on the two smallest tumours, found no tumour after its first epochs with either)
    "data_settings": {"nuclei": {"image_size": 64, "epochs": 6},
                      "lung-ct": {"image_size": 112, "epochs": 25, "dice_loss": True}},
    "seeds": [0, 1, 2],
    "arms": {
        "baseline": {},
        "H-PDCR": {"pdcr": True},  # the paper's weight, 0.01 (Section V-A)
        **_sweep_arms(),
        "RF-PDCR": {"pdcr": True, "pdcr_mode": "receptive_field"},
        "UAFR": {"uafr": True},
        "H-PDCR + UAFR": {"pdcr": True, "uafr": True},
    },
    "studies": [
        # where, if anywhere, does PDCR help: the weight set by the gradient ratio, and the paper's
        {"name": "sweep", "data": ["nuclei"], "arms": ["baseline", "H-PDCR", *_sweep_arms()]},
        {"name": "sweep", "data": ["lung-ct"], "seeds": [0, 1, 2, 3], "folds": 4,
         "arms": ["baseline", "H-PDCR", *_sweep_arms()]},
        # the paper's methods at the paper's weight (Tables IV-V): RF-PDCR, UAFR, both
        {"name": "ablation", "data": ["nuclei"], "arms": ["baseline", "H-PDCR", "RF-PDCR", "UAFR", "H-PDCR + UAFR"]},
        {"name": "ablation", "data": ["lung-ct"], "seeds": [0, 1, 2, 3], "folds": 4,
         "arms": ["baseline", "H-PDCR", "UAFR", "H-PDCR + UAFR"]},
    ],
}
# The same studies at the paper's sizes (width 64, 300 epochs, 8 seeds: two per lung-ct patient;
# mixed precision): a GPU's work. The tiles stay 128 px (nuclei: the largest its regions hold;
# lung-ct: the slices' centred crop).
PAPER_PLAN = copy.deepcopy(CPU_PLAN)
PAPER_PLAN.update(name="paper", jobs=1, seeds=[0, 1, 2, 3, 4, 5, 6, 7])
PAPER_PLAN["settings"] = {"model": "unet", "width": 64, "batch_size": 8, "epochs": 300, "overlays": 4, "amp": True}
PAPER_PLAN["data_settings"] = {"nuclei": {"image_size": 128}, "lung-ct": {"image_size": 128, "dice_loss": True}}
for _study in PAPER_PLAN["studies"]:
    _study.pop("seeds", None)


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
        fold = f"_fold{self.config.fold}" if self.data == "lung-ct" else ""
        arm = self.arm.replace(" ", "").replace("+", "_")
        return f"{data}/{self.model}/{arm}{fraction}/s{self.seed}{fold}"


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


def study_seeds(plan: dict, study: dict) -> list[int]:
    return list(study.get("seeds", plan["seeds"]))


def study_models(plan: dict, study: dict) -> list[str]:
    models = study.get("model", plan.get("settings", {}).get("model", "unet"))
    return [models] if isinstance(models, str) else list(models)


def expand(plan: dict, out: Path, max_steps: int | None = None) -> list[Run]:
    """Every run of the plan, each once (a run shared by two studies, e.g. the baseline of the
    sweep and of the ablation, is trained once)."""
    runs: dict[str, Run] = {}
    for study in plan["studies"]:
        unknown = [a for a in study["arms"] if a not in plan["arms"]]
        if unknown:
            raise ConfigError(f"study {study['name']}: unknown arms {unknown}")
        for data, model, arm, seed, fraction in itertools.product(
                study["data"], study_models(plan, study), study["arms"], study_seeds(plan, study),
                study.get("fractions", [1.0])):
            values = {**plan.get("settings", {}), **plan.get("data_settings", {}).get(data, {}),
                      **study.get("settings", {}), **plan["arms"][arm],
                      "data": data, "model": model, "seed": seed, "fraction": fraction}
            if "folds" in study:  # seed s tests fold s mod F
                values["fold"] = seed % int(study["folds"])
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


# settings that do not change what a run computes (where it writes, on what, how much it prints)
NOT_COMPARED = ("out", "device", "workers", "overlays", "max_steps")


def _summary(run: Run) -> dict | None:
    """The run's summary.json, None while it has none. A summary written with other settings than
    the plan's (an older plan, an edited one) is an error, never silently reused: the run's folder
    is the plan's key, not its settings."""
    path = Path(run.config.out) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    saved = from_run(summary["config"], str(path)).to_dict()
    planned = run.config.to_dict()
    differ = sorted(k for k in planned if k not in NOT_COMPARED and saved.get(k) != planned[k])
    if differ:
        raise ConfigError(f"{path} was trained with other settings than the plan's ({', '.join(differ)}: "
                          f"{', '.join(f'{saved.get(k)!r} vs {planned[k]!r}' for k in differ[:3])}); "
                          "move it away or give the plan another --out")
    return summary


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


# -- aggregation ------------------------------------------------------------------------------

def collect(runs: list[Run]) -> list[dict]:
    """One row per finished run: its test metrics (per image too), the gradient balance and the
    PDCR weight it trained with, its cost."""
    rows = []
    for run in runs:
        summary = _summary(run)
        if summary is None:
            continue
        test = summary["test"]
        images = test.get("per_image", [])
        volumes = test.get("per_volume", [])
        metrics = {m: test[m] for m in METRICS}
        if volumes:  # lung-ct 2-D: the test patient's slices scored as one volume (3-D, HD95 in mm)
            metrics["volume_dice"] = mean_sd([v["dice"] for v in volumes])[0]
            metrics["volume_hd95"] = mean_sd([v["hd95"] for v in volumes])[0]
        weight = (summary.get("pdcr_weight") or {}).get("in_force")
        # the ratio the run trained with: the measurements at the weight in force (a target
        # ratio's calibration steps were measured at the configured weight)
        in_force = [m["ratio"] for e in summary["epochs"] for m in e.get("balance", {}).get("values", [])
                    if m["pdcr_weight"] == weight]
        rows.append({"study": run.study, "data": run.data, "model": run.model, "arm": run.arm, "seed": run.seed,
                     "fold": run.config.fold, "fraction": run.fraction, "key": run.key,
                     "metrics": metrics, "hd95_undefined": test.get("hd95_undefined", 0),
                     "images": {m: {r["name"]: r[m] for r in images} for m in IMAGE_METRICS},
                     "medians": {m: median([r[m] for r in images]) for m in IMAGE_METRICS},
                     "volumes": volumes, "data_description": summary["data"],
                     "pdcr_weight": weight, "target_ratio": run.config.pdcr_target_ratio if run.config.pdcr else None,
                     "grad_ratio": median(in_force) if in_force else None, "grad_measurements": len(in_force),
                     "seconds_per_step": summary["seconds_per_step"], "steps": summary["steps"],
                     "parameters": summary["complexity"]["parameters_inference"],
                     "macs": summary["complexity"]["macs"]})
    return rows


def arm_table(rows: list[dict], group: dict, arms: list[str]) -> list[dict]:
    """Per arm: mean +- sd over seeds of each metric and of each run's per-image median; the
    paired difference to the first arm (the baseline) by seed and by test image; Holm's
    correction over the table's seed-paired tests, and over its per-image tests."""
    selected = [r for r in rows if all(r[k] == v for k, v in group.items())]
    by_arm = {arm: {r["seed"]: r for r in selected if r["arm"] == arm} for arm in arms}
    base = by_arm[arms[0]]
    out = []
    for arm in arms:
        runs = by_arm[arm]
        if not runs:
            continue
        weights = [r["pdcr_weight"] for r in runs.values() if r["pdcr_weight"] is not None]
        entry = {"arm": arm, "seeds": sorted(runs), "folds": sorted({r["fold"] for r in runs.values()}),
                 "seconds_per_step": mean_sd([r["seconds_per_step"] for r in runs.values()])[0],
                 "parameters": next(iter(runs.values()))["parameters"], "macs": next(iter(runs.values()))["macs"],
                 "pdcr_weight": [median(weights), min(weights), max(weights)] if weights else None,
                 "target_ratio": next(iter(runs.values()))["target_ratio"],
                 "grad_ratio": mean_sd([r["grad_ratio"] for r in runs.values()]),
                 "hd95_undefined": sum(r["hd95_undefined"] for r in runs.values())}
        metrics = [m for m in METRICS + VOLUME_METRICS if any(m in r["metrics"] for r in runs.values())]
        for metric in metrics:
            entry[metric] = mean_sd([r["metrics"].get(metric) for r in runs.values()])
            if arm != arms[0] and base:
                entry[f"{metric}_vs_baseline"] = paired_difference(
                    {s: r["metrics"].get(metric) for s, r in runs.items()},
                    {s: r["metrics"].get(metric) for s, r in base.items()})
        for metric in IMAGE_METRICS:
            entry[f"{metric}_median"] = mean_sd([r["medians"][metric] for r in runs.values()])
            if arm != arms[0] and base:
                entry[f"{metric}_images_vs_baseline"] = per_image_difference(
                    {s: r["images"][metric] for s, r in runs.items()},
                    {s: r["images"][metric] for s, r in base.items()})
        out.append(entry)
    for suffix, metrics in (("_vs_baseline", TESTED), ("_images_vs_baseline", IMAGE_METRICS)):
        tests = [e[f"{m}{suffix}"] for e in out for m in metrics if f"{m}{suffix}" in e]
        for test, adjusted in zip(tests, holm([t["p"] for t in tests])):
            test["p_holm"], test["m"] = adjusted, len(tests)
    for e in out:  # Jaccard and accuracy: described, not tested (outside the Holm family: no p_holm)
        for m in METRICS:
            if m not in TESTED and f"{m}_vs_baseline" in e:
                e[f"{m}_vs_baseline"].update(p_holm=None, m=0, family="untested")
    return out


# -- tables ------------------------------------------------------------------------------------

def _fmt(mean_sd_n, digits=4):
    mean, sd, n = mean_sd_n
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if not math.isnan(sd) else f"{mean:.{digits}f}"


def _p(p) -> str:
    return "—" if p is None or math.isnan(p) else (f"{p:.2g}" if p >= 0.001 else f"{p:.0e}")


def _significant(d) -> bool:
    return d is not None and not math.isnan(d.get("p_holm", math.nan)) and d["p_holm"] < 0.05


def _fmt_diff(d, digits=4):
    """Seed-paired: mean [95 % t-interval], p (Holm-adjusted p); bold where the adjusted p < 0.05."""
    if d is None or d["n"] < 2:
        return "—"
    text = (f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}], "
            f"p {_p(d['p'])} (Holm {_p(d.get('p_holm'))})")
    return f"**{text}**" if _significant(d) else text


def _fmt_images(d, digits=4):
    """Per image: median of the per-image differences, Wilcoxon p (Holm), n images."""
    if d is None or d["n"] < 2:
        return "—"
    text = f"{d['median']:+.{digits}f}, p {_p(d['p'])} (Holm {_p(d.get('p_holm'))}), n {d['n']}"
    return f"**{text}**" if _significant(d) else text


def _fmt_weight(w) -> str:
    if w is None:
        return ""
    mid, low, high = w
    return f"{mid:.2g}" if low == high else f"{mid:.2g} ({low:.2g}–{high:.2g})"


def table_markdown(title: str, table: list[dict]) -> list[str]:
    base = table[0]["arm"]
    volume = any("volume_dice" in e for e in table)
    head = ["arm", "PDCR weight", "‖∇PDCR‖/‖∇seg‖", "Dice", "Dice median", "Δ Dice (seeds)", "Δ Dice (images)",
            "HD95", "HD95 median", "Δ HD95 (seeds)", "Δ HD95 (images)", "HD95 undef."]
    if volume:
        head += ["patient Dice (3-D)", "Δ patient Dice", "patient HD95 (mm)", "Δ patient HD95"]
    head += ["s/step", "params (M)", "GMACs"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in table:
        first = e["arm"] == base
        ratio = _fmt(e["grad_ratio"], 3) if not math.isnan(e["grad_ratio"][0]) else ""
        cells = [e["arm"], _fmt_weight(e["pdcr_weight"]), ratio, _fmt(e["dice"]), _fmt(e["dice_median"]),
                 "" if first else _fmt_diff(e.get("dice_vs_baseline")),
                 "" if first else _fmt_images(e.get("dice_images_vs_baseline")),
                 _fmt(e["hd95"], 2), _fmt(e["hd95_median"], 2),
                 "" if first else _fmt_diff(e.get("hd95_vs_baseline"), 2),
                 "" if first else _fmt_images(e.get("hd95_images_vs_baseline"), 2), str(e["hd95_undefined"])]
        if volume:
            cells += [_fmt(e.get("volume_dice", (math.nan,) * 3)),
                      "" if first else _fmt_diff(e.get("volume_dice_vs_baseline")),
                      _fmt(e.get("volume_hd95", (math.nan,) * 3), 2),
                      "" if first else _fmt_diff(e.get("volume_hd95_vs_baseline"), 2)]
        cells += [f"{e['seconds_per_step']:.3f}", f"{e['parameters'] / 1e6:.3f}", f"{e['macs'] / 1e9:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(plan: dict, rows: list[dict], tables: dict) -> str:
    s = plan.get("settings", {})
    per_data = plan.get("data_settings", {})
    shown = lambda k, v: "Dice + cross-entropy" if k == "dice_loss" and v else f"{k.replace('_', ' ')} {v}"
    sizes = "; ".join(f"{data}: " + ", ".join(shown(k, v) for k, v in values.items())
                      for data, values in per_data.items())
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"# Experiments ({plan.get('name', 'plan')} plan)",
        "",
        f"Every run: model {s.get('model')} width {s.get('width')}, batch {s.get('batch_size')}"
        + (f", {s['epochs']} epochs" if "epochs" in s else "") + (f"; {sizes}" if sizes else "")
        + f"; cross-entropy unless said; Adam lr {s.get('lr', 1e-3)}, cosine schedule, weight decay {s.get('weight_decay', 1e-5)}, the paper's "
        "augmentation; PDCR (H-PDCR, the paper's main setting: encoder stages 2-4, decoder stages, the pair 2-3) at "
        f"weight {s.get('pdcr_weight', 0.01)} (the paper's) unless the arm sets the weight from the gradient ratio "
        f"(`--pdcr-target-ratio R`: the median of ‖∇PDCR‖ / ‖∇seg‖ over the first "
        f"{s.get('pdcr_calibration_steps', TrainConfig.pdcr_calibration_steps)} steps at weight "
        f"{s.get('pdcr_weight', 0.01)}, then that weight × R / that median, fixed); the gradient balance measured at step 0 and every "
        f"{s.get('balance_every', TrainConfig.balance_every)} steps; seeds {seeds}. Test metrics of the best "
        "validation epoch.",
        "",
        "How to read the tables. Dice and HD95 (pixels; lower is better): mean ± sd over seeds of each run's mean "
        "over test images; *median*: mean ± sd over seeds of each run's median over test images (an image "
        "without foreground has no Dice or HD95; an image whose foreground was missed entirely has no HD95: "
        "counted in *HD95 undef.*, summed over seeds; the HD95 means leave such images out, so an arm that "
        "misses more images entirely is not penalised in HD95 for it: read HD95 beside *HD95 undef.* and Dice). "
        "s/step: median over the run's epochs, two runs sharing the two cores; for PDCR arms it includes "
        "the gradient-balance measurement (one extra backward every "
        f"{s.get('balance_every', TrainConfig.balance_every)}th step, and every calibration step). ‖∇PDCR‖/‖∇seg‖ (seg: the run's segmentation loss): each run's median of the ratios measured "
        "at the weight it trained with (on the weights both losses reach; a target ratio's calibration steps left "
        "out), mean ± sd over seeds. PDCR weight: median (range) over seeds.",
        "",
        "- **Δ (seeds)**: the unit of replication is the training run. The difference to the baseline trained "
        "with the same seed (same data, initialisation and augmentation draws; on lung-ct the same fold, i.e. the "
        "same test patient), mean [95 % t-interval] over seeds, the paired t-test's two-sided p (n − 1 degrees of "
        "freedom: 2 with 3 seeds, 3 with 4) and its Holm-adjusted p over every seed-paired test of the table. It "
        "generalises over training runs (and, on lung-ct, over the four patients).",
        "- **Δ (images)**: the unit of replication is the test image. Each test image's difference, averaged over "
        "the seeds both arms have it (on lung-ct each slice belongs to one fold, so one seed), then the Wilcoxon "
        "signed-rank test of those per-image differences (median shown, two-sided p, Holm-adjusted over the "
        "table's per-image tests, n images). It asks whether these test images are scored differently; it does "
        "not count the run-to-run variation, and images of one region (nuclei: tiles of one test region) or "
        "one patient (lung-ct: slices) are not independent, so it overstates the evidence where those matter.",
        "- **Bold**: Holm-adjusted p < 0.05. The intervals are per comparison (95 %), not simultaneous.",
        "",
        "## Data",
        "",
    ]
    described = {}
    for r in rows:
        described.setdefault(r["data"], {}).setdefault(r["data_description"], []).append(r["fold"])
    for data, descriptions in described.items():
        for text in descriptions:
            lines.append(f"- {text}")
    lines.append("")
    for title, table in tables.items():
        if table:
            lines += table_markdown(title, table)
    return "\n".join(lines)


def limited_markdown(limited: dict) -> str:
    if not limited:
        return ""
    arms = [e["arm"] for e in next(iter(limited.values()))]
    lines = ["", "## limited data: test Dice by fraction of the training split (limited_data.png)", "",
             "| data, fraction | " + " | ".join(arms) + f" | Δ {arms[-1]} (seeds) |", "|---" * (len(arms) + 2) + "|"]
    for key, table in limited.items():
        by_arm = {e["arm"]: e for e in table}
        cells = [_fmt(by_arm[a]["dice"]) if a in by_arm else "—" for a in arms]
        diff = by_arm.get(arms[-1], {}).get("dice_vs_baseline")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {_fmt_diff(diff) if diff else '—'} |")
    return "\n".join(lines) + "\n"


def separability_markdown(scores: dict) -> str:
    """The Fisher-ratio table: per data set and layer, mean ± sd over seeds per arm."""
    if not scores:
        return ""
    lines = ["", "## A look inside: separability of the hidden features (embedding.png)", "",
             "Fisher ratio of the pure-background and pure-foreground positions of a layer's output on the test "
             "images (squared distance of the two classes' mean vectors over the sum of their variances; higher "
             "= classes further apart), for every seed: mean ± sd over seeds (n). Encoder stage 3 carries a "
             "PDCR term (the layer PDCR optimises); encoder stage 1 carries none (PDCR's gradient still reaches "
             "it through stage 2): a **sanity check**: a change at stage 3 that stage 1 shows as well is not "
             "PDCR's own doing at its layer.", ""]
    arms = list(dict.fromkeys(arm for per_layer in scores.values() for layer in per_layer.values() for arm in layer))
    lines += ["| data | layer | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for data, per_layer in scores.items():
        for layer, per_arm in per_layer.items():
            cells = [_fmt(tuple(per_arm[a]["mean_sd"]), 3) + f" ({per_arm[a]['mean_sd'][2]})" if a in per_arm else "—"
                     for a in arms]
            lines.append(f"| {data} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# A section that another script (benchmarks/nnunet_experiment.py) keeps in experiments.md, between
# these markers; run_plan rewrites the file but carries such sections over unchanged.
_SECTION = re.compile(r"<!-- section: (?P<name>[\w-]+) -->\n.*?<!-- end of section: (?P=name) -->\n", re.S)


def kept_sections(text: str) -> str:
    """The marked sections of an experiments.md, in order (empty when there are none)."""
    return "\n".join(m.group(0) for m in _SECTION.finditer(text))


def put_section(path: Path, name: str, body: str) -> None:
    """Adds section `name` (Markdown `body`) to the end of the file at `path`, or replaces it where
    it is; the rest of the file is left as it is (the file is created if missing)."""
    section = f"<!-- section: {name} -->\n{body.rstrip()}\n<!-- end of section: {name} -->\n"
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    match = next((m for m in _SECTION.finditer(text) if m.group("name") == name), None)
    if match:
        text = text[:match.start()] + section + text[match.end():]
    else:
        text = text + ("\n" if text and not text.endswith("\n\n") else "") + section
    path.write_text(text)


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
        for data in study["data"]:
            for model in study_models(spec, study):
                tables[f"{study['name']}: {model} on {data}"] = arm_table(
                    [r for r in rows if r["fraction"] == 1.0], {"data": data, "model": model}, study["arms"])
    limited = {}
    for study in (s for s in spec["studies"] if s["name"] == "limited_data"):
        for data in study["data"]:
            for fraction in study["fractions"]:
                limited[f"{data} {fraction:g}"] = arm_table(
                    [r for r in rows if r["fraction"] == fraction],
                    {"data": data, "model": study_models(spec, study)[0]}, study["arms"])
    results_dir = Path(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    from . import experiment_figures

    scores = experiment_figures.write_all(spec, runs, rows, tables, limited, results_dir)
    text = markdown(spec, rows, tables) + limited_markdown(limited) + separability_markdown(scores)
    previous = results_dir / "experiments.md"
    kept = kept_sections(previous.read_text()) if previous.is_file() else ""
    text += ("\n" + kept) if kept else ""
    (results_dir / "experiments.json").write_text(json.dumps(
        {"plan": spec, "runs": rows, "tables": tables, "limited_data": limited, "separability": scores},
        indent=2, default=float) + "\n")
    (results_dir / "experiments.md").write_text(text)
    print(f"wrote {results_dir}/experiments.md, experiments.json and figures")
    return {"tables": tables, "limited_data": limited, "separability": scores}
