"""pdcr_seg.stats and the experiment tables' statistics, against hand values and scipy."""

import math

import pytest
from scipy import stats as scipy_stats

from pdcr_seg import experiments
from pdcr_seg.stats import holm, mean_sd, median, paired_difference, per_image_difference


def test_mean_sd_and_median_ignore_what_is_not_a_number():
    mean, sd, n = mean_sd([1.0, 2.0, 3.0, 4.0, float("nan"), None, float("inf")])
    assert (mean, n) == (2.5, 4) and sd == pytest.approx(math.sqrt(5 / 3))
    assert median([3.0, float("nan"), 1.0, 2.0, 10.0]) == 2.5
    assert math.isnan(median([float("nan")])) and mean_sd([])[2] == 0


def test_seed_paired_difference_by_hand_and_against_scipy():
    values, baseline = {0: 0.8, 1: 0.9, 2: 0.7, 3: 0.5}, {0: 0.75, 1: 0.8, 2: 0.72}  # seed 3: no baseline
    d = paired_difference(values, baseline)
    assert d["n"] == 3 and d["keys"] == [0, 1, 2] and d["per_seed"] == pytest.approx([0.05, 0.1, -0.02])
    assert d["mean"] == pytest.approx(0.0433333, abs=1e-6) and d["sd"] == pytest.approx(0.0602771, abs=1e-6)
    # t(0.975, 2) = 4.302653: half width 4.302653 * 0.0602771 / sqrt(3)
    assert d["low"] == pytest.approx(-0.1064031, abs=1e-5) and d["high"] == pytest.approx(0.1930698, abs=1e-5)
    # with 2 degrees of freedom the two-sided p has a closed form: 1 - |t| / sqrt(2 + t^2)
    t = d["mean"] / (d["sd"] / math.sqrt(3))
    assert d["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert d["p"] == pytest.approx(scipy_stats.ttest_rel([0.8, 0.9, 0.7], [0.75, 0.8, 0.72]).pvalue, rel=1e-9)
    assert experiments.t_quantile_975(2) == pytest.approx(4.302653, abs=1e-6)


def test_seed_paired_difference_edge_cases():
    assert paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})["p"] == 1.0  # no difference at all
    assert paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})["p"] == 0.0  # the same difference twice
    one = paired_difference({0: 2.0, 1: float("nan")}, {0: 1.0, 1: 2.0})
    assert one["n"] == 1 and math.isnan(one["p"]) and math.isnan(one["low"])


def test_per_image_difference_averages_over_seeds_then_runs_wilcoxon():
    values = {0: {"a": 1.0, "b": 0.0, "c": 5.0, "d": 4.0, "e": 10.0, "f": float("nan")},
              1: {"a": 3.0, "b": -4.0, "c": 1.0, "d": 4.0, "e": 0.0}}
    baseline = {0: {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.0, "f": 1.0},
                1: {"a": 0.0, "b": 0.0, "c": 5.0, "d": 0.0}}  # seed 1 has no "e"
    d = per_image_difference(values, baseline)
    # a: (1 + 3) / 2 = 2; b: (0 - 4) / 2 = -2; c: (5 - 4) / 2 = 0.5; d: 4; e: 10 (seed 0 only); f: NaN, left out
    assert d["per_image"] == {"a": 2.0, "b": -2.0, "c": 0.5, "d": 4.0, "e": 10.0}
    assert d["n"] == 5 and d["median"] == 2.0 and d["mean"] == pytest.approx(2.9)
    # by hand: |d| ranks 0.5 -> 1, 2 and -2 -> 2.5 each, 4 -> 4, 10 -> 5; W- = 2.5 (b); scipy's p for it
    assert d["p"] == pytest.approx(scipy_stats.wilcoxon([2.0, -2.0, 0.5, 4.0, 10.0]).pvalue)
    # without ties, the exact two-sided p by hand: ranks 1..5, W- = 2 -> subsets summing to <= 2: 3 of 32
    exact = per_image_difference({0: dict(zip("abcde", [1.0, -2.0, 3.0, 4.0, 5.0]))}, {0: dict.fromkeys("abcde", 0.0)})
    assert exact["p"] == pytest.approx(2 * 3 / 32)
    assert per_image_difference({0: {"a": 1.0, "b": 2.0}}, {0: {"a": 1.0, "b": 2.0}})["p"] == 1.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    # 1 x 0.04 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, float("nan"), 0.04])  # NaN is not a test: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def _row(arm, seed, dice, hd95, images):
    return {"study": "s", "data": "d", "model": "m", "arm": arm, "seed": seed, "fold": 0, "fraction": 1.0,
            "metrics": {"dice": dice, "jaccard": dice, "accuracy": 0.9, "hd95": hd95}, "hd95_undefined": 0,
            "images": {"dice": images, "hd95": {k: 10 * v for k, v in images.items()}},
            "medians": {"dice": median(images.values()), "hd95": median([10 * v for v in images.values()])},
            "pdcr_weight": None if arm == "baseline" else 0.01, "target_ratio": None,
            "grad_ratio": None if arm == "baseline" else 80.0, "seconds_per_step": 0.1, "parameters": 1, "macs": 1}


def test_arm_table_pairs_by_seed_and_image_and_holm_corrects_each_family():
    rows = []
    for seed in range(3):
        base = {f"i{k}": 0.5 + 0.01 * k + 0.001 * seed for k in range(6)}
        rows.append(_row("baseline", seed, 0.80 + 0.01 * seed, 5.0 - seed, base))
        rows.append(_row("A", seed, 0.82 + 0.012 * seed, 4.0 - seed, {k: v + 0.02 * (1 + seed) for k, v in base.items()}))
        rows.append(_row("B", seed, 0.79 + 0.01 * seed, 5.5 - seed, {k: v - 0.001 * int(k[1:]) for k, v in base.items()}))
    table = experiments.arm_table(rows, {"data": "d"}, ["baseline", "A", "B"])
    a = table[1]
    assert a["dice_vs_baseline"]["per_seed"] == pytest.approx([0.02, 0.022, 0.024])
    assert a["dice_images_vs_baseline"]["per_image"]["i0"] == pytest.approx(0.04)  # (0.02 + 0.04 + 0.06) / 3
    assert a["dice_median"][0] == pytest.approx(median(rows[1]["images"]["dice"].values()) / 3
                                                + median(rows[4]["images"]["dice"].values()) / 3
                                                + median(rows[7]["images"]["dice"].values()) / 3)
    seed_tests = [e[f"{m}_vs_baseline"] for e in table[1:] for m in ("dice", "hd95")]
    want = holm([t["p"] for t in seed_tests])
    assert [t["p_holm"] for t in seed_tests] == pytest.approx(want) and all(t["m"] == 4 for t in seed_tests)
    image_tests = [e[f"{m}_images_vs_baseline"] for e in table[1:] for m in ("dice", "hd95")]
    assert [t["p_holm"] for t in image_tests] == pytest.approx(holm([t["p"] for t in image_tests]))
    text = "\n".join(experiments.table_markdown("s: m on d", table))
    assert "| A | 0.01 | 80.000 ± 0.000 |" in text and "Holm" in text
