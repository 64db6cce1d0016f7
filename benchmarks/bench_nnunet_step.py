"""nnU-Net training-step benchmark: seconds per 3d_fullres step with and without PDCR and UAFR.

Arms: nnU-Net's own trainers, as ``nnUNetv2_train`` runs them (python/pdcr_seg/nnunet/trainers.py),
each with its own network built from the same plans, timed in interleaved rounds (every round runs
every arm, so that drift in the machine's speed hits them alike):

    baseline    nnUNetTrainer: deep-supervised Dice + CE, SGD, gradient clipping
    +PDCR       nnUNetTrainerPDCR: + PDCR on encoder stages 2-4, every decoder stage, pair (2, 3)
    +UAFR       nnUNetTrainerUAFR: UAFR on every encoder and decoder stage
    +both       nnUNetTrainerPDCRUAFR

A step is nnU-Net's ``train_step`` on one batch (zero_grad, forward, loss, backward, clip, SGD step;
bfloat16/float16 autocast only on CUDA, as nnU-Net). No data is read: the batch is random
intensities with blob-shaped labels, downsampled for deep supervision as nnU-Net's loader does.
The issue's target: PDCR adds at most 5 % to the step.

The plans: ``--plans nnUNetPlans.json [--configuration 3d_fullres]`` of a planned dataset (e.g. the
lung CT of ``benchmarks/nnunet_experiment.py``), or by default nnU-Net's 3d_fullres topology for a
``--patch`` (default 128^3, what nnU-Net plans for e.g. 1 mm isotropic CT at its 8 GB target) at
``--spacing`` with batch ``--batch`` (2), built with nnU-Net's own get_pool_and_conv_props and its
feature widths (32 doubling per stage, at most 320). Prints a table and writes
<out>/nnunet-step-<machine>.json and .md.

    python benchmarks/bench_nnunet_step.py [--device cpu|cuda] [--patch D H W] [--batch B]
        [--plans FILE] [--configuration NAME] [--rounds R] [--steps K] [--out DIR]

On a 2-core CPU the default 128^3 step takes about a minute per arm and a few GB of memory:
``--patch 64 64 64`` for a first look, ``--patch 32 32 32 --rounds 1`` as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ops import machine_name  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is in the dev requirements
    def tqdm(iterable, **_):
        return iterable

ARMS = {"baseline": "nnUNetTrainer", "+PDCR": "nnUNetTrainerPDCR", "+UAFR": "nnUNetTrainerUAFR",
        "+both": "nnUNetTrainerPDCRUAFR"}


def typical_plans(patch, spacing, batch: int) -> dict:
    """nnU-Net plans with one 3d_fullres configuration: its topology for `patch` at `spacing`
    (experiment_planners/default_experiment_planner.py: get_pool_and_conv_props, min feature map
    edge 4, widths 32 * 2^i capped at 320, 2 convolutions per stage)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, patch, _ = get_pool_and_conv_props(list(spacing), list(patch), 4, 999999)
    strides, kernels = ([[int(v) for v in row] for row in rows] for rows in (strides, kernels))
    patch = [int(p) for p in patch]
    stages = len(strides)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages, "features_per_stage": [min(32 * 2 ** i, 320) for i in range(stages)],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels, "strides": strides,
            "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch, "patch_size": patch, "median_image_size_in_voxels": patch,
        "spacing": list(spacing), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return {"dataset_name": "Dataset999_Benchmark", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(patch),
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"max": 1000.0, "mean": 0.0, "median": 0.0, "min": -1000.0,
                                                                   "percentile_00_5": -1000.0, "percentile_99_5": 1000.0,
                                                                   "std": 300.0}}}


def make_batch(trainer, generator) -> dict:
    """Random intensities (B, C, *patch) and blob labels, downsampled for deep supervision."""
    patch = list(trainer.configuration_manager.patch_size)
    B = trainer.configuration_manager.batch_size
    data = torch.randn(B, trainer.num_input_channels, *patch, generator=generator)
    pool = F.avg_pool3d if len(patch) == 3 else F.avg_pool2d
    labels = (pool(torch.rand(B, 1, *patch, generator=generator), 5, 1, 2) > 0.5).to(torch.int16)
    scales = trainer._get_deep_supervision_scales()
    target = [F.interpolate(labels.float(), size=[round(p * s) for p, s in zip(patch, scale)], mode="nearest")
              .to(torch.int16) for scale in scales]
    return {"data": data, "target": target}


def build_trainer(cls, plans: dict, configuration: str, dataset_json: dict, device):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    trainer_module.infer_dataset_class = lambda folder: nnUNetDatasetBlosc2  # no data is read here
    plans = json.loads(json.dumps(plans))
    plans["continue_training"] = False
    trainer = cls(plans, configuration, 0, dataset_json, device)
    trainer.initialize()
    return trainer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def pdcr_call_seconds(trainer, batch, device, repeats=5):
    """Median seconds of the PDCR term alone (forward + backward) on the features of one forward."""
    handle = trainer.pdcr_handle
    with torch.no_grad():
        trainer.network(batch["data"].to(device))
    features = [handle._features[name].detach().clone().requires_grad_() for name in handle.pdcr_layers]
    labels = trainer.full_resolution_target([t.to(device) for t in batch["target"]])
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        handle.pdcr(features, labels).backward()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plans", default=None, help="an nnUNetPlans.json (default: nnU-Net's topology for --patch)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128), metavar=("D", "H", "W"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("DZ", "DY", "DX"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="steps per arm and round")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pdcr_seg.nnunet import trainers

    device = torch.device(args.device)
    if args.plans:
        plans = json.loads(Path(args.plans).read_text())
        source = f"{args.plans} ({args.configuration})"
    else:
        plans = typical_plans(args.patch, args.spacing, args.batch)
        source = f"nnU-Net's 3d_fullres topology for a {'x'.join(map(str, args.patch))} patch at spacing {args.spacing}"
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "foreground": 1},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    arms = [a for a in ARMS if a in args.arms.split(",")]
    classes = {"nnUNetTrainer": nnUNetTrainer, **{name: getattr(trainers, name) for name in list(ARMS.values())[1:]}}
    generator = torch.Generator().manual_seed(0)

    with tempfile.TemporaryDirectory() as scratch:  # nnU-Net's trainers write their log folders here
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[key] = os.path.join(scratch, key)
        built, call_seconds, batch = {}, {}, None
        for arm in arms:
            torch.manual_seed(0)
            trainer = build_trainer(classes[ARMS[arm]], plans, args.configuration, dataset_json, device)
            batch = batch or make_batch(trainer, generator)  # one batch for every arm
            built[arm] = (trainer, batch)
            if getattr(trainer, "pdcr_handle", None) is not None:
                call_seconds[arm] = pdcr_call_seconds(trainer, batch, device)
            trainer.train_step(batch)  # warm-up: allocator, kernels, the native library's scratch
        times = {arm: [] for arm in arms}
        for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
            for arm in arms:
                trainer, batch = built[arm]
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step(batch)
                sync(device)
                times[arm].append((time.perf_counter() - start) / args.steps)
        first = built[arms[0]][0]
        config = first.configuration_manager
        parameters = {arm: sum(p.numel() for p in built[arm][0].network.parameters()) for arm in arms}

    info = {
        "machine": machine_name(args.device), "device": args.device, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "plans": source,
        "patch": list(config.patch_size), "batch": config.batch_size, "stages": len(config.pool_op_kernel_sizes),
        "parameters": parameters, "rounds": args.rounds, "steps_per_round": args.steps,
    }
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    uafr = statistics.median(times["+UAFR"]) if "+UAFR" in times else None
    rows = []
    for arm in arms:
        median = statistics.median(times[arm])
        reference, versus = (uafr, "+UAFR") if arm == "+both" and uafr else (base, "baseline")
        call = call_seconds.get(arm)
        rows.append({"arm": arm, "trainer": ARMS[arm], "median_s": median, "all_s": times[arm],
                     "added_percent": None if reference is None or arm == versus else 100 * (median - reference) / reference,
                     "versus": versus, "pdcr_call_s": call,
                     "pdcr_call_percent_of_baseline": None if call is None or not base else 100 * call / base})
    lines = [
        f"Measured {info['date']} on {info['machine']} ({args.device}), torch {info['torch']}, {info['threads']} threads; "
        f"{source}: patch {'x'.join(map(str, info['patch']))}, batch {info['batch']}, {info['stages']} stages, "
        f"{parameters[arms[0]] / 1e6:.1f} M parameters ({arms[0]}); nnU-Net's train_step, median of {args.rounds} "
        f"rounds of {args.steps} step(s).",
        "",
        "| arm | trainer | s / step | step time added | PDCR term alone (fwd+bwd) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        added = "—" if r["added_percent"] is None else f"{r['added_percent']:+.1f} % vs {r['versus']}"
        call = "—" if r["pdcr_call_s"] is None else f"{r['pdcr_call_s']:.3g} s" + (
            "" if r["pdcr_call_percent_of_baseline"] is None else f" ({r['pdcr_call_percent_of_baseline']:.1f} % of baseline)")
        lines.append(f"| {r['arm']} | {r['trainer']} | {r['median_s']:.4g} | {added} | {call} |")
    text = "\n".join(lines)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"nnunet-step-{info['machine']}"
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"\nwrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
