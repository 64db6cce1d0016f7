"""nnU-Net with and without PDCR and UAFR on the lung CT volumes: baseline vs PDCR vs PDCR + UAFR.

    python benchmarks/nnunet_experiment.py [--data lung-ct] [--epochs 10] [--iterations 50]
        [--folds all] [--seeds 0] [--arms baseline,pdcr,pdcr_uafr] [--work runs/nnunet-experiment]
        [--configuration 3d_fullres|2d] [--plans NAME --target-spacing z,y,x --gpu-memory-target GB]
        [--no-mirroring] [--report-only]

What it runs, all of it nnU-Net's (3d_fullres by default, its plans, augmentation, Dice + CE, SGD +
poly schedule, sliding-window validation with mirroring) but for the trainer class and the
schedule, and -- where a CPU budget asks for it -- plans made by nnU-Net's planner under its own
name with a coarser spacing and a smaller memory target (``--plans``), and no mirroring. The
CPU run of the README:

    python benchmarks/nnunet_experiment.py --plans nnUNetPlansCPU2 --target-spacing 3,2,2 \
        --gpu-memory-target 2 --epochs 5 --iterations 10 --val-iterations 2 --no-mirroring

1. ``pdcr-seg nnunet convert --data lung-ct`` into ``<work>/nnUNet_raw`` (one case per CT volume,
   ``splits_final.json`` leave-one-patient-out), then ``nnUNetv2_plan_and_preprocess -c 3d_fullres``.
   ``--data nuclei`` (6 blocks of one volume, nnU-Net's own 5 folds: not patients) checks the
   script where the lung CT loader is missing.
2. For every fold of splits_final.json, seed and arm: the arm's trainer (``nnUNetTrainer``,
   ``nnUNetTrainerPDCR``, ``nnUNetTrainerPDCRUAFR``, also ``nnUNetTrainerUAFR`` with ``--arms``) on a
   CPU budget of ``--epochs`` x ``--iterations`` training iterations (nnU-Net's own: 1000 x 250;
   that budget is stated in the results), then nnU-Net's validation of the held-out patient(s):
   ``validation/summary.json`` (Dice, IoU per case) and, here, HD95 in mm (MONAI's
   compute_hausdorff_distance with the CT's spacing). Runs are seeded (torch, numpy, random).
3. ``<results>/nnunet.md`` and ``nnunet.json`` (and the same table as a section of
   ``experiments.md``): per arm the mean +- sd over folds (and seeds) and
   the paired difference to the baseline over the same (fold, seed), with a 95 % t-interval --
   with 4 patients, 4 pairs per seed: wide intervals are the honest answer.

A finished run (validation/summary.json present) is never redone (``--report-only`` reports the
finished ones and trains nothing); an unfinished one continues
from its latest checkpoint (written every epoch), as ``nnUNetv2_train --c`` does. Data licence of
the lung CT: CC BY-NC 3.0 (non-commercial).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "python"))

ARMS = {"baseline": "nnUNetTrainer", "pdcr": "nnUNetTrainerPDCR", "uafr": "nnUNetTrainerUAFR",
        "pdcr_uafr": "nnUNetTrainerPDCRUAFR"}
LABELS = {"baseline": "baseline", "pdcr": "PDCR", "uafr": "UAFR", "pdcr_uafr": "PDCR + UAFR"}
METRICS = ("dice", "iou", "hd95_mm")


def prepare(data: str, dataset_id: int, env: dict, args) -> Path:
    """Converts (unless done) and plans + preprocesses 3d_fullres (unless done); the dataset's
    preprocessed folder. Plans other than nnU-Net's default ``nnUNetPlans`` are made with
    nnU-Net's own planner options (``-overwrite_target_spacing``, ``-gpu_memory_target``) under
    their own name, so the default plans are never overwritten."""
    from pdcr_seg.nnunet.convert import convert

    raw = Path(env["nnUNet_raw"])
    existing = sorted(raw.glob(f"Dataset{dataset_id:03d}_*")) if raw.is_dir() else []
    folder = existing[0] if existing else convert(data, dataset_id, str(raw))
    preprocessed = Path(env["nnUNet_preprocessed"]) / folder.name
    bin_dir = Path(sys.executable).parent
    if not (preprocessed / "nnUNetPlans.json").is_file():  # the fingerprint and nnU-Net's default plans
        subprocess.run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres",
                        "-np", "1", "-npfp", "1", "--no_pp"], env=env, check=True)
    if args.plans != "nnUNetPlans" and not (preprocessed / f"{args.plans}.json").is_file():
        command = [str(bin_dir / "nnUNetv2_plan_experiment"), "-d", str(dataset_id), "-overwrite_plans_name", args.plans]
        if args.target_spacing:
            command += ["-overwrite_target_spacing", *args.target_spacing.split(",")]
        if args.gpu_memory_target:
            command += ["-gpu_memory_target", str(args.gpu_memory_target)]
        subprocess.run(command, env=env, check=True)
    if not (preprocessed / f"{args.plans}_{args.configuration}").is_dir():
        subprocess.run([str(bin_dir / "nnUNetv2_preprocess"), "-d", str(dataset_id), "-plans_name", args.plans,
                        "-c", args.configuration, "-np", "1"], env=env, check=True)
    return preprocessed


def folds_of(preprocessed: Path, requested: str) -> list[int]:
    splits = preprocessed / "splits_final.json"
    n = len(json.loads(splits.read_text())) if splits.is_file() else 5  # nnU-Net writes its 5 folds at training
    return list(range(n)) if requested == "all" else [int(f) for f in requested.split(",")]


def hd95_mm(prediction: Path, reference: Path) -> float:
    """95th-percentile Hausdorff distance of the foreground in mm (NaN when either is empty)."""
    import nibabel
    from monai.metrics import compute_hausdorff_distance

    pred, ref = (nibabel.load(str(p)) for p in (prediction, reference))
    p, r = (torch.from_numpy(np.asarray(image.dataobj) > 0)[None, None] for image in (pred, ref))
    if not p.any() or not r.any():
        return float("nan")
    spacing = [float(s) for s in ref.header.get_zooms()[:3]]
    return float(compute_hausdorff_distance(p, r, percentile=95, spacing=spacing)[0, 0])


def run_one(arm: str, fold: int, seed: int, preprocessed: Path, args) -> dict:
    """Trains and validates one (arm, fold, seed) unless done; its metrics per validation case."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pdcr_seg.nnunet import trainers

    base = nnUNetTrainer if arm == "baseline" else getattr(trainers, ARMS[arm])
    cls = trainers.short_schedule(base, f"{args.epochs}x{args.iterations}it{'_nomirror' if args.no_mirroring else ''}"
                                  f"_seed{seed}", args.epochs, args.iterations, args.val_iterations,
                                  mirroring=not args.no_mirroring)
    plans = load_json(str(preprocessed / f"{args.plans}.json"))
    fold_dir = (Path(os.environ["nnUNet_results"]) / preprocessed.name / f"{cls.__name__}__{args.plans}__{args.configuration}"
                / f"fold_{fold}")
    summary = fold_dir / "validation" / "summary.json"
    if args.report_only and not summary.is_file():
        return []
    if not summary.is_file():
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        latest = fold_dir / "checkpoint_latest.pth"
        plans["continue_training"] = latest.is_file()
        trainer = cls(plans, args.configuration, fold, load_json(str(preprocessed / "dataset.json")), torch.device(args.device))
        trainer.save_every = 1  # a checkpoint every epoch: an interrupted plan loses at most one
        if latest.is_file():
            trainer.load_checkpoint(str(latest))
        start = time.perf_counter()
        trainer.run_training()
        seconds = time.perf_counter() - start
        trainer.perform_actual_validation()
        (fold_dir / "experiment_run.json").write_text(json.dumps({"train_seconds": seconds}) + "\n")
    cases = json.loads(summary.read_text())["metric_per_case"]
    extra = json.loads((fold_dir / "experiment_run.json").read_text()) if (fold_dir / "experiment_run.json").is_file() else {}
    # nnU-Net's last EMA pseudo Dice (its on-the-fly score of validation patches during training):
    # whether a run learnt anything, where the held-out patient's Dice is 0
    logging = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False).get("logging", {})
    ema = [float(x) for x in logging.get("ema_fg_dice", [])]
    rows = []
    for case in cases:
        name = Path(case["prediction_file"]).name
        foreground = case["metrics"].get("1") or case["metrics"].get(1)  # label 1 (json keys are strings)
        rows.append({"arm": arm, "fold": fold, "seed": seed, "case": name[:-len(".nii.gz")],
                     "dice": foreground["Dice"], "iou": foreground["IoU"],
                     "hd95_mm": hd95_mm(Path(case["prediction_file"]), Path(case["reference_file"])),
                     "predicted_voxels": foreground.get("n_pred"), "reference_voxels": foreground.get("n_ref"),
                     "ema_pseudo_dice": ema[-1] if ema else None,
                     "train_seconds": extra.get("train_seconds")})
    return rows


def report(rows: list[dict], arms: list[str], args, dataset: str, preprocessed: Path,
           planned: list[tuple] = ()) -> str:
    from pdcr_seg.experiments import mean_sd, paired_difference

    plans = json.loads((preprocessed / f"{args.plans}.json").read_text())["configurations"][args.configuration]
    # one value per (fold, seed): the mean over that fold's validation cases
    per_run = {}
    for r in rows:
        per_run.setdefault((r["arm"], r["fold"], r["seed"]), []).append(r)
    value = {key: {m: float(np.nanmean([c[m] for c in cases])) if any(not np.isnan(c[m]) for c in cases) else float("nan")
                   for m in METRICS} for key, cases in per_run.items()}
    pairs = sorted({(f, s) for (_, f, s) in per_run})
    lines = [
        f"# nnU-Net {args.configuration} with and without PDCR and UAFR ({dataset})",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/nnunet_experiment.py` on {args.device}: "
        f"{args.epochs} epochs x {args.iterations} training iterations (nnU-Net's own schedule is 1000 x 250), "
        f"{args.val_iterations} validation iterations per epoch"
        f"{', no mirroring (augmentation and validation)' if args.no_mirroring else ''}; plans `{args.plans}`: patch {plans['patch_size']}, batch "
        f"{plans['batch_size']}, spacing {[round(float(x), 3) for x in plans['spacing']]} mm; folds {sorted({f for f, _ in pairs})}, seeds "
        f"{sorted({s for _, s in pairs})}. Metrics of nnU-Net's validation of the held-out cases (Dice, IoU of "
        f"the foreground) and HD95 in mm (MONAI), averaged per fold; mean ± sd over (fold, seed), and the paired "
        f"difference to the baseline with a 95 % t-interval (* where it excludes 0). train s: wall seconds of "
        f"nnU-Net's run_training on the machine as it was (other work beside it slows it; the step costs of "
        f"the arms are measured by benchmarks/bench_nnunet_step.py).",
        "",
        "| arm | " + " | ".join(METRICS) + " | " + " | ".join(f"Δ {m}" for m in METRICS) + " | train s (mean) |",
        "|---|" + "---|" * (2 * len(METRICS) + 1),
    ]
    for arm in arms:
        runs = {(f, s): value[(arm, f, s)] for (f, s) in pairs if (arm, f, s) in value}
        if not runs:
            continue
        cells = []
        for m in METRICS:
            mean, sd, n = mean_sd([v[m] for v in runs.values()])
            cells.append("—" if n == 0 else f"{mean:.4f}" + ("" if n < 2 else f" ± {sd:.4f}"))
        for m in METRICS:
            if arm == "baseline":
                cells.append("")
                continue
            base = {i: value[("baseline", f, s)][m] for i, (f, s) in enumerate(pairs) if ("baseline", f, s) in value}
            mine = {i: value[(arm, f, s)][m] for i, (f, s) in enumerate(pairs) if (arm, f, s) in value}
            d = paired_difference(mine, base)
            cells.append("—" if d["n"] < 2 else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                         + ("" if d["low"] <= 0 <= d["high"] else " *"))
        seconds = [r["train_seconds"] for r in rows if r["arm"] == arm and r["train_seconds"]]
        cells.append(f"{np.mean(seconds):.0f}" if seconds else "—")
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    if rows and all(r.get("predicted_voxels") == 0 for r in rows):
        lines += ["", "**No run predicted a single foreground voxel on its held-out case(s): at this budget no arm "
                  "has learnt the structure, so the table compares nothing** (the differences are 0 because every "
                  "score is 0, not because the arms are alike)."]
    missing = sorted({(f, s, a) for (a, f, s) in planned} - {(f, s, a) for (a, f, s) in per_run})
    if missing:
        lines += ["", f"Not finished, so not in the table ({len(missing)} of {len(planned)} runs of the plan; "
                  "e.g. the time budget ended): " + ", ".join(f"{LABELS[a]} fold {f} seed {s}" for f, s, a in missing) + "."]
    lines += ["", "Per fold: Dice of the held-out case(s); foreground voxels predicted / in the reference; "
              "nnU-Net's last EMA pseudo Dice (validation patches during training):", "",
              "| fold, seed | " + " | ".join(LABELS[a] for a in arms) + " |", "|---|" + "---|" * len(arms)]

    def cell(a, f, s):
        cases = per_run.get((a, f, s))
        if not cases:
            return "—"
        voxels = "; ".join(f"{c.get('predicted_voxels')} / {c.get('reference_voxels')}" for c in cases)
        ema = cases[0].get("ema_pseudo_dice")
        return f"{value[(a, f, s)]['dice']:.4f} ({voxels}; " + ("—" if ema is None else f"{ema:.3f}") + ")"

    for f, s in pairs:
        lines.append(f"| {f}, {s} | " + " | ".join(cell(a, f, s) for a in arms) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="lung-ct", help="lung-ct (default), nuclei or folder:PATH")
    parser.add_argument("--id", type=int, default=610, help="nnU-Net dataset id in the work folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=10, help="validation iterations per epoch")
    parser.add_argument("--folds", default="all", help="all, or a comma-separated list")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--arms", default="baseline,pdcr,pdcr_uafr", help=f"comma-separated of {', '.join(ARMS)}")
    parser.add_argument("--plans", default="nnUNetPlans",
                        help="plans name; another than nnU-Net's default is planned with the two options below")
    parser.add_argument("--target-spacing", default="", help="z,y,x in mm for --plans (nnU-Net's "
                        "-overwrite_target_spacing), e.g. 3,2,2")
    parser.add_argument("--gpu-memory-target", type=float, default=None,
                        help="GB for --plans (nnU-Net's -gpu_memory_target; a smaller target, smaller patches)")
    parser.add_argument("--configuration", default="3d_fullres", help="nnU-Net configuration: 3d_fullres or 2d")
    parser.add_argument("--no-mirroring", action="store_true",
                        help="no mirroring in augmentation and validation (nnU-Net's nnUNetTrainerNoMirroring): "
                             "8 times fewer sliding-window passes in 3-D")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the finished runs (e.g. those that fitted in a time budget)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=str(ROOT / "runs" / "nnunet-experiment"),
                        help="nnUNet_raw, _preprocessed and _results of the experiment")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "baseline" not in arms:
        parser.error(f"--arms must include baseline and name only {', '.join(ARMS)}; got {args.arms}")

    work = Path(args.work)
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "0"),
               nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "1"))
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                            "nnUNet_n_proc_DA", "nnUNet_def_n_proc")})
    preprocessed = prepare(args.data, args.id, {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}, args)
    rows, planned = [], []
    for fold in folds_of(preprocessed, args.folds):
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in arms:
                planned.append((arm, fold, seed))
                rows += run_one(arm, fold, seed, preprocessed, args)
    text = report(rows, arms, args, args.data, preprocessed, planned)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nnunet.md").write_text(text)
    (out / "nnunet.json").write_text(json.dumps({"settings": vars(args), "cases": rows}, indent=2) + "\n")
    # experiments.md (make experiment's report) carries this table as its own section
    from pdcr_seg.experiments import put_section

    put_section(out / "experiments.md", "nnunet", "## " + text.lstrip("# "))
    print(text)
    print(f"wrote {out / 'nnunet.md'}, nnunet.json and its section of {out / 'experiments.md'}")


if __name__ == "__main__":
    main()
