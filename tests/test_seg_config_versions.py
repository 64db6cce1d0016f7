"""Config versions: a run's config records every setting that changes what it trains, and a run
written before versions is rebuilt (eval, resume) with the values it was trained with."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pdcr_seg.cli import main, parser, train_config
from pdcr_seg.config import CONFIG_VERSION, ConfigError, TrainConfig, from_dict, from_run, upgrade
from pdcr_seg.evaluate import load_run

pytestmark = pytest.mark.usefixtures("one_thread")

# The settings a config.yaml held before versions (and before the paper's defaults)
OLD_KEYS = {"data", "dims", "image_size", "patch_size", "samples_per_epoch", "num_classes", "fraction", "augment",
            "ignore_index", "model", "width", "pdcr", "pdcr_mode", "pdcr_weight", "pdcr_layers", "pdcr_cross",
            "pdcr_decoder", "pdcr_samples", "pdcr_dense", "pdcr_pair_reduction", "uafr", "uafr_layers", "epochs",
            "max_steps", "batch_size", "lr", "weight_decay", "dice_loss", "seed", "device", "amp", "sync_bn",
            "workers", "overlays", "out"}
# what those runs trained with, now written out
OLD_VALUES = {"pdcr_preset": "encoder", "pdcr_tau": 0.5, "pdcr_patch_reduction": "sum", "pdcr_cross_samples": None,
              "uafr_hidden": None}


def test_upgrade_fills_each_version_with_what_it_trained_with():
    old = upgrade({"pdcr": True, "uafr": True})  # no version, no pdcr_preset: before the paper's defaults
    assert {k: old[k] for k in OLD_VALUES} == OLD_VALUES
    assert old["balance_every"] == 0 and old["config_version"] == CONFIG_VERSION
    # the old pair "mean" divided the k-summed series by P x N x K: today's patch mean with pair mean
    assert upgrade({"pdcr_pair_reduction": "mean"})["pdcr_patch_reduction"] == "mean"
    one = from_run({"pdcr": True, "pdcr_preset": "paper"})  # version 1: today's defaults, not measured
    assert (one.pdcr_tau, one.pdcr_patch_reduction, one.pdcr_cross_samples, one.uafr_hidden) == (1.0, "mean", 32, 16)
    assert one.balance_every == 0 and one.pdcr_preset == "paper"
    current = TrainConfig(pdcr=True).to_dict()
    assert from_run(current) == TrainConfig(pdcr=True)  # a current config stays as it is
    with pytest.raises(ConfigError, match="newer pdcr-seg"):
        upgrade({"config_version": CONFIG_VERSION + 1})
    with pytest.raises(ConfigError, match="config_version 1"):
        from_dict({"config_version": 1}).validate()  # not a setting of a new run


def test_the_new_settings_on_the_command_line_and_in_yaml(tmp_path):
    args = parser().parse_args(["train", "--uafr-hidden", "wide", "--pdcr-cross-samples", "own", "--pdcr-tau", "0.5",
                                "--pdcr-patch-reduction", "sum", "--balance-every", "0", "--pdcr-target-ratio", "10"])
    cfg = train_config(args)
    assert (cfg.uafr_hidden, cfg.pdcr_cross_samples, cfg.pdcr_tau, cfg.pdcr_patch_reduction) == (None, None, 0.5, "sum")
    assert cfg.balance_every == 0 and cfg.pdcr_target_ratio == 10.0
    assert from_dict({"uafr_hidden": "wide", "pdcr_cross_samples": "own"}).uafr_hidden is None
    for bad, message in (({"pdcr_tau": 0}, "--pdcr-tau"), ({"pdcr_target_ratio": -1.0}, "--pdcr-target-ratio"),
                         ({"pdcr_target_ratio": 1.0, "pdcr_weight": 0.0}, "--pdcr-weight must be > 0"),
                         ({"balance_every": -1}, "--balance-every"), ({"uafr_hidden": 0}, "--uafr-hidden")):
        with pytest.raises(ConfigError, match=message):
            from_dict(bad).validate()


def _write_the_old_way(run) -> None:
    """config.yaml and the checkpoints' config as a run before versions wrote them."""
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        state = torch.load(run / name, weights_only=False)
        state["config"] = {k: v for k, v in state["config"].items() if k in OLD_KEYS}
        torch.save(state, run / name)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k in OLD_KEYS}))


def test_eval_rebuilds_a_run_written_before_versions_as_it_was_trained(tmp_path, capsys):
    """A run trained with the old values (UAFR's head min(C, 64) wide, tau 0.5, ...) and its config
    written the old way: eval rebuilds it with them (read as today's defaults, UAFR's head would
    not even load) and gives the same metrics as the run's own test."""
    run = tmp_path / "old"
    old = ["--pdcr-preset", "encoder", "--pdcr-tau", "0.5", "--pdcr-patch-reduction", "sum",
           "--pdcr-cross-samples", "own", "--uafr-hidden", "wide", "--balance-every", "0"]
    assert main(["train", "--data", "synthetic", "--fraction", "0.1", "--model", "unet", "--width", "4",
                 "--image-size", "32", "--batch-size", "4", "--overlays", "0", "--device", "cpu", "--pdcr", "--uafr",
                 "--epochs", "1", "--max-steps", "2", *old, "--out", str(run)]) == 0
    _write_the_old_way(run)
    state = torch.load(run / "checkpoint_best.pt", weights_only=False)
    assert "config_version" not in state["config"] and "uafr_hidden" not in state["config"]
    with pytest.raises(RuntimeError, match="size mismatch"):  # as today's defaults: another UAFR head
        from pdcr_seg.evaluate import build_run

        model, _ = build_run(from_dict(state["config"]), 1, 2, torch.device("cpu"))
        model.load_state_dict(state["model"])
    _, handle, cfg, _ = load_run(run / "checkpoint_best.pt", torch.device("cpu"))
    assert (cfg.pdcr_tau, cfg.pdcr_patch_reduction, cfg.pdcr_cross_samples, cfg.uafr_hidden, cfg.pdcr_preset) == \
        (0.5, "sum", None, None, "encoder")
    assert handle.pdcr.tau == 0.5 and handle.pdcr.patch_reduction == "sum" and handle.pdcr.cross_samples is None
    assert handle.pdcr_layers == ["enc2", "enc3", "enc4"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint_best.pt"), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--overlays", "0"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    test = json.loads((run / "summary.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(test["accuracy"]) and metrics["per_image"] == test["per_image"]


def test_a_run_of_version_1_resumes_with_its_own_settings(tmp_path):
    """config.yaml with pdcr_preset but no version (the paper's defaults, no balance measured):
    --resume continues it without measuring, as it was."""
    run = tmp_path / "v1"
    args = ["--data", "synthetic", "--fraction", "0.1", "--model", "unet", "--width", "4", "--image-size", "32",
            "--batch-size", "4", "--overlays", "0", "--device", "cpu", "--pdcr", "--balance-every", "0"]
    assert main(["train", *args, "--epochs", "1", "--out", str(run)]) == 0
    v2_only = {"config_version", "pdcr_tau", "pdcr_patch_reduction", "pdcr_cross_samples", "pdcr_target_ratio",
               "pdcr_calibration_steps", "uafr_hidden", "balance_every"}
    state = torch.load(run / "checkpoint_last.pt", weights_only=False)
    state["config"] = {k: v for k, v in state["config"].items() if k not in v2_only}
    torch.save(state, run / "checkpoint_last.pt")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k not in v2_only}))
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["balance_every"] == 0 and summary["config"]["config_version"] == CONFIG_VERSION
    assert [e["balance"]["count"] for e in summary["epochs"]] == [0, 0]
