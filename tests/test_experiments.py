"""pdcr-seg experiment: the plan runner (resumable), its tables and figures; the built-in plan."""

import json

import pytest
import yaml

from pdcr_seg import experiments

PLAN = {
    "name": "test",
    "jobs": 2,
    "settings": {"model": "unet", "width": 4, "image_size": 32, "batch_size": 4, "epochs": 1, "fraction": 0.1,
                 "overlays": 0, "balance_every": 1, "pdcr_calibration_steps": 1},
    "seeds": [0],
    "arms": {"baseline": {}, "H-PDCR": {"pdcr": True, "pdcr_samples": [16, 8, 4]},
             "H-PDCR ratio 1": {"pdcr": True, "pdcr_samples": [16, 8, 4], "pdcr_target_ratio": 1.0},
             "H-PDCR + UAFR": {"pdcr": True, "uafr": True, "pdcr_samples": [16, 8, 4]}},
    "studies": [{"name": "sweep", "data": ["synthetic"], "arms": ["baseline", "H-PDCR", "H-PDCR ratio 1"]},
                {"name": "ablation", "data": ["synthetic"], "arms": ["baseline", "H-PDCR", "H-PDCR + UAFR"]}],
}


@pytest.mark.slow
def test_a_plan_writes_tables_and_figures_and_resumes(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    out, results = tmp_path / "runs", tmp_path / "results"
    experiments.run_plan(str(plan), out=str(out), results=str(results), max_steps=2)
    text = (results / "experiments.md").read_text()
    assert "## sweep: unet on synthetic" in text and "## ablation: unet on synthetic" in text
    assert "| H-PDCR + UAFR |" in text and "Holm" in text and "sanity check" in text
    data = json.loads((results / "experiments.json").read_text())
    assert len(data["runs"]) == 4  # the baseline and H-PDCR of both studies are trained once
    ratio_run = next(r for r in data["runs"] if r["arm"] == "H-PDCR ratio 1")
    assert ratio_run["target_ratio"] == 1.0 and ratio_run["pdcr_weight"] != 0.01
    assert set(ratio_run["images"]["dice"]) == set(next(r for r in data["runs"] if r["arm"] == "baseline")["images"]["dice"])
    assert set(data["separability"]["synthetic"]) == {"enc3 (PDCR term)", "enc1 (no PDCR term: sanity check)"}
    for name in ("sweep.png", "ablation.png", "embedding.png", "uncertainty.png"):
        assert (results / name).stat().st_size > 10_000, name
    # an interrupted plan: one run's results lost; the rerun trains only that one
    lost = out / "synthetic" / "unet" / "baseline" / "s0" / "summary.json"
    kept = out / "synthetic" / "unet" / "H-PDCR_UAFR" / "s0" / "summary.json"
    stamp = kept.stat().st_mtime
    lost.unlink()
    experiments.put_section(results / "experiments.md", "nnunet", "## nnU-Net\n\n| arm | dice |\n")
    capsys.readouterr()
    experiments.run_plan(str(plan), out=str(out), results=str(results), max_steps=2)
    assert "4 runs, 3 done, 1 to train" in capsys.readouterr().out
    rewritten = (results / "experiments.md").read_text()  # the rewrite keeps another script's section
    assert rewritten.startswith(text.split("\n")[0]) and rewritten.endswith(
        "<!-- section: nnunet -->\n## nnU-Net\n\n| arm | dice |\n<!-- end of section: nnunet -->\n")
    assert lost.is_file() and kept.stat().st_mtime == stamp
    # a run folder holding another setting's result is refused, not reused as the plan's
    summary = json.loads(kept.read_text())
    summary["config"]["pdcr_tau"] = 0.5
    kept.write_text(json.dumps(summary))
    with pytest.raises(experiments.ConfigError, match=r"other settings than the plan's \(pdcr_tau: 0.5 vs 1.0\)"):
        experiments.run_plan(str(plan), out=str(out), results=str(results), max_steps=2)


def test_the_built_in_plan_has_the_sweep_and_the_lung_ct_arms_on_every_patient(tmp_path):
    runs = experiments.expand(experiments.load_plan(None), tmp_path)
    assert len(runs) == len({r.key for r in runs}) == 73
    by = {}
    for run in runs:
        by.setdefault((run.data, run.arm), []).append(run)
    ratios = [f"H-PDCR ratio {r:g}" for r in (0.01, 0.1, 1, 10, 100, 1000)]
    for data, seeds in (("nuclei", 3), ("lung-ct", 4)):
        for arm in ["baseline", "H-PDCR", *ratios, "UAFR", "H-PDCR + UAFR"]:
            assert len(by[(data, arm)]) == seeds, (data, arm)
    assert len(by[("nuclei", "RF-PDCR")]) == 3
    for run in runs:
        run.config.validate()
        if run.data == "lung-ct":
            assert run.config.fold == run.seed and run.config.image_size == 112  # seed s tests patient s + 1
            assert run.config.dice_loss
        if run.arm in ratios:
            assert run.config.pdcr_target_ratio == float(run.arm.split()[-1]) and run.config.pdcr_weight == 0.01
        assert run.config.balance_every == 15 and not run.config.pdcr_dense


def test_a_section_is_added_then_replaced_in_place_and_others_are_left_alone(tmp_path):
    path = tmp_path / "experiments.md"
    path.write_text("# report\n\n| a | b |\n")
    experiments.put_section(path, "nnunet", "## nnU-Net\n\nfirst\n")
    experiments.put_section(path, "other", "## other\n")
    experiments.put_section(path, "nnunet", "## nnU-Net\n\nsecond")
    assert path.read_text() == ("# report\n\n| a | b |\n\n"
                                "<!-- section: nnunet -->\n## nnU-Net\n\nsecond\n<!-- end of section: nnunet -->\n\n"
                                "<!-- section: other -->\n## other\n<!-- end of section: other -->\n")
    assert experiments.kept_sections(path.read_text()) == path.read_text()[len("# report\n\n| a | b |\n\n"):]
    fresh = tmp_path / "new.md"
    experiments.put_section(fresh, "nnunet", "## nnU-Net")
    assert fresh.read_text() == "<!-- section: nnunet -->\n## nnU-Net\n<!-- end of section: nnunet -->\n"
