"""The gradient balance while training (--balance-every) and the PDCR weight set from it
(--pdcr-target-ratio): summary.json, the checkpoint, progress.png, and exact resume."""

from __future__ import annotations

import json
import statistics

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

import pdcr_ext
from models import EncoderDecoder
from pdcr_seg import figures, train as train_module
from pdcr_seg.balance import gradient_balance, summarize_measurements, weight_for_ratio
from pdcr_seg.cli import main
from test_seg_runs import TINY, comparable  # 24 training images, batches of 4: 6 steps an epoch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weight_for_ratio_is_the_median_rescaled_and_refuses_a_zero_ratio():
    assert weight_for_ratio(0.01, [2.0, 100.0, 4.0], 1.0) == pytest.approx(0.01 / 4.0)
    assert weight_for_ratio(0.01, [3.0, 5.0], 10.0) == pytest.approx(0.01 * 10 / 4.0)
    with pytest.raises(FloatingPointError, match="median 0"):
        weight_for_ratio(0.01, [0.0, 0.0, 1.0], 1.0)
    summary = summarize_measurements([{"step": 0, "seg_norm": 1.0, "pdcr_norm": 3.0, "ratio": 3.0},
                                      {"step": 5, "seg_norm": 2.0, "pdcr_norm": 2.0, "ratio": 1.0},
                                      {"step": 10, "seg_norm": 3.0, "pdcr_norm": 6.0, "ratio": 2.0}])
    assert summary["count"] == 3 and summary["ratio_median"] == 2.0 and summary["ratio_mean"] == 2.0
    assert summary["seg_norm_mean"] == 2.0 and summary["pdcr_norm_median"] == 3.0 and len(summary["values"]) == 3


def test_the_rescaled_weight_gives_the_target_ratio_on_the_same_batch():
    """The premise of --pdcr-target-ratio: PDCR's gradient is linear in its weight."""
    torch.manual_seed(0)
    model = EncoderDecoder(width=4)
    handle = pdcr_ext.attach(model, pdcr_layers=["enc2", "enc3"], cross_layers=[("enc2", "enc3")], uafr_layers=[],
                             num_classes=2, samples=(24, 12), example_input=torch.zeros(2, 3, 32, 32))
    model.double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = (images[:, :1] > 0.2).long()

    def ratio() -> float:
        model.zero_grad(set_to_none=True)
        return gradient_balance(model, F.cross_entropy(model(images), labels[:, 0]), handle.loss(labels)).ratio

    measured = ratio()
    handle.pdcr.weight = weight_for_ratio(handle.pdcr.weight, [measured], 3.0)
    assert ratio() == pytest.approx(3.0, rel=1e-9)


def _records(out) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    return summary, [m for e in summary["epochs"] for m in e["balance"]["values"]]


def test_summary_records_the_balance_of_every_measured_step(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--balance-every", "4", "--overlays", "0", "--out", str(out)]) == 0
    summary, measured = _records(out)
    assert [[m["step"] for m in e["balance"]["values"]] for e in summary["epochs"]] == [[0, 4], [8]]
    for epoch in summary["epochs"]:
        values = epoch["balance"]["values"]
        assert epoch["balance"]["count"] == len(values)
        assert epoch["balance"]["ratio_median"] == pytest.approx(statistics.median(m["ratio"] for m in values))
        assert epoch["balance"]["pdcr_norm_mean"] == pytest.approx(statistics.fmean(m["pdcr_norm"] for m in values))
    for m in measured:
        assert m["ratio"] == pytest.approx(m["pdcr_norm"] / m["seg_norm"]) and m["pdcr_weight"] == 0.01
    balance = summary["gradient_balance"]
    assert balance["every"] == 4 and balance["count"] == 3 and balance["first"] == measured[0]
    assert balance["ratio_median"] == pytest.approx(statistics.median(m["ratio"] for m in measured))
    assert summary["pdcr_weight"] == {"configured": 0.01, "target_ratio": None, "in_force": 0.01}
    fig = figures.progress_figure(summary["epochs"])
    panel = next(ax for ax in fig.axes if ax.get_title() == "gradient balance (shared weights)")
    assert panel.get_yscale() == "log" and panel.get_xlabel() == "step"
    assert list(panel.lines[0].get_xdata()) == [0, 4, 8]
    plt.close(fig)


def test_without_pdcr_nothing_is_measured(tmp_path):
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--pdcr", "--uafr")]
    assert main(["train", *args, "--epochs", "1", "--max-steps", "2", "--overlays", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "balance" not in summary["epochs"][0] and "gradient_balance" not in summary


def test_target_ratio_sets_the_weight_and_a_run_stopped_in_its_calibration_resumes_exactly(
        tmp_path, monkeypatch, capsys):
    """Calibration over 8 steps: it spans epochs 1 and 2 (6 steps each). Ctrl-C in the second
    step of epoch 2 (before the weight is set); the resumed run must end as the whole one."""
    args = [*TINY, "--epochs", "3", "--overlays", "0", "--pdcr-target-ratio", "2", "--pdcr-calibration-steps", "8",
            "--balance-every", "5"]
    whole = tmp_path / "whole"
    assert main(["train", *args, "--out", str(whole)]) == 0
    summary, measured = _records(whole)
    weight = summary["pdcr_weight"]
    ratios = [m["ratio"] for m in measured[:8]]
    assert [m["step"] for m in measured] == [0, 1, 2, 3, 4, 5, 6, 7, 10, 15]  # every step, then every 5th
    assert weight["calibration_ratios"] == ratios and weight["calibrated"]
    assert weight["in_force"] == pytest.approx(0.01 * 2 / statistics.median(ratios), rel=1e-12)
    assert all(m["pdcr_weight"] == 0.01 for m in measured[:8])
    # the calibration steps trained with the segmentation loss alone: the first 8 steps as a run
    # without PDCR's gradient (weight 0), step for step (the same 18 steps: the same learning rates)
    zero = tmp_path / "zero"
    assert main(["train", *[a for a in args if a not in ("--pdcr-target-ratio", "2")], "--pdcr-weight", "0",
                 "--balance-every", "1", "--out", str(zero)]) == 0
    zero_measured = _records(zero)[1][:8]
    assert [m["seg_norm"] for m in zero_measured] == pytest.approx([m["seg_norm"] for m in measured[:8]], rel=1e-5)
    assert all(m["pdcr_weight"] == weight["in_force"] for m in measured[8:])
    # the run's balance is the weight it trained with: the calibration steps are listed, not averaged in
    assert [m["calibration"] for m in measured] == [True] * 8 + [False] * 2
    balance = summary["gradient_balance"]
    assert (balance["count"], balance["calibration_count"]) == (2, 8)
    assert balance["ratio_median"] == pytest.approx(statistics.median(m["ratio"] for m in measured[8:]))
    assert balance["ratio_median"] == pytest.approx(2.0, rel=0.5)  # near the target, far from the calibration's
    assert f"PDCR weight {weight['in_force']:.4g} from now on" in capsys.readouterr().out
    last = torch.load(whole / "checkpoint_last.pt", weights_only=False)
    assert last["progress"]["pdcr_weight"] == weight["in_force"]

    real_step, calls = train_module.train_step, []

    def step_then_ctrl_c(run, batch):
        calls.append(1)
        if len(calls) == 8:  # step 7: epoch 2, calibration not finished
            raise KeyboardInterrupt
        return real_step(run, batch)

    monkeypatch.setattr(train_module, "train_step", step_then_ctrl_c)
    stopped = tmp_path / "stopped"
    assert main(["train", *args, "--out", str(stopped)]) == 130
    saved = torch.load(stopped / "checkpoint_last.pt", weights_only=False)["progress"]
    assert saved["pdcr_weight"] is None and saved["calibration_ratios"] == ratios[:6]
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert main(["train", "--resume", "--out", str(stopped)]) == 0
    assert comparable(stopped / "summary.json") == comparable(whole / "summary.json")
