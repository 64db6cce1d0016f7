"""pdcr-seg experiment: the plan runner (resumable), its statistics, tables and figures."""

import json
import math

import pytest
import yaml

from pdcr_seg import experiments

PLAN = {
    "name": "test",
    "jobs": 2,
    "settings": {"model": "unet", "width": 4, "image_size": 32, "batch_size": 4, "epochs": 1, "fraction": 0.1,
                 "overlays": 0},
    "seeds": [0],
    "arms": {"baseline": {}, "H-PDCR + UAFR": {"pdcr": True, "uafr": True, "pdcr_samples": [16, 8, 4]}},
    "studies": [{"name": "ablation", "data": ["synthetic"], "arms": ["baseline", "H-PDCR + UAFR"]}],
}


def test_statistics_against_hand_computed_values():
    mean, sd, n = experiments.mean_sd([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert (mean, n) == (2.5, 4) and sd == pytest.approx(math.sqrt(5 / 3))
    d = experiments.paired_difference({0: 0.8, 1: 0.9, 2: 0.7, 3: 0.5}, {0: 0.75, 1: 0.8, 2: 0.72})
    assert d["n"] == 3 and d["per_seed"] == pytest.approx([0.05, 0.1, -0.02])
    assert d["mean"] == pytest.approx(0.0433333, abs=1e-6) and d["sd"] == pytest.approx(0.0602771, abs=1e-6)
    # t(0.975, 2) = 4.302653: half width 4.302653 * 0.0602771 / sqrt(3)
    assert d["low"] == pytest.approx(-0.1064031, abs=1e-5) and d["high"] == pytest.approx(0.1930698, abs=1e-5)
    assert experiments.t_quantile_975(2) == pytest.approx(4.302653, abs=1e-6)


def test_a_two_run_plan_writes_tables_and_figures_and_resumes(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    out, results = tmp_path / "runs", tmp_path / "results"
    experiments.run_plan(str(plan), out=str(out), results=str(results), max_steps=2)
    text = (results / "experiments.md").read_text()
    assert "ablation: unet on synthetic" in text and "| H-PDCR + UAFR |" in text
    data = json.loads((results / "experiments.json").read_text())
    assert len(data["runs"]) == 2 and {r["arm"] for r in data["runs"]} == {"baseline", "H-PDCR + UAFR"}
    for name in ("ablation.png", "embedding.png", "uncertainty.png"):
        assert (results / name).stat().st_size > 10_000, name
    # an interrupted plan: one run's results lost; the rerun trains only that one
    lost = out / "synthetic" / "unet" / "baseline" / "s0" / "summary.json"
    assert lost.is_file()
    kept = out / "synthetic" / "unet" / "H-PDCR_UAFR" / "s0" / "summary.json"
    stamp = kept.stat().st_mtime
    lost.unlink()
    capsys.readouterr()
    experiments.run_plan(str(plan), out=str(out), results=str(results), max_steps=2)
    assert "2 runs, 1 done, 1 to train" in capsys.readouterr().out
    assert lost.is_file() and kept.stat().st_mtime == stamp
