"""The statistics of `pdcr-seg experiment`: summaries over seeds, paired differences to a
baseline, and Holm's correction over the tests of one table.

Two units of replication, two tests (experiments.md says which answers what):

- the training run (seed): an arm and the baseline trained with the same seed share the data,
  the initialisation and the augmentation draws, so their per-seed difference of a test metric
  removes those; ``paired_difference`` gives the mean difference, its 95 % t-interval and the
  paired t-test's p (n - 1 degrees of freedom: 2 with 3 seeds, a weak test). It generalises over
  training runs, on this test set.
- the test image: ``per_image_difference`` averages each test image's difference over the
  seeds both arms have, then tests whether those per-image differences are centred on 0
  (Wilcoxon signed-rank, two-sided). It asks whether the arm changes the scores of these test
  images, with the run-to-run variation averaged out but not counted: it is not a test over
  training runs, and images of one scan or one patient are not independent.

``holm`` adjusts the p-values of one table's tests together (Holm-Bonferroni: controls the
family-wise error rate at any dependence between the tests).
"""

from __future__ import annotations

import math
import statistics


def finite(values) -> list[float]:
    """The values that are numbers and not NaN or infinite."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_sd(values) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1) of the finite values, and their count."""
    kept = finite(values)
    n = len(kept)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(kept) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else math.nan
    return mean, sd, n


def median(values) -> float:
    """The median of the finite values (NaN when there are none)."""
    kept = finite(values)
    return statistics.median(kept) if kept else math.nan


def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with `dof` degrees of freedom (two-sided 95 %)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def paired_difference(values: dict, baseline: dict) -> dict:
    """Mean of (value - baseline) over the keys (seeds) both have with finite values, its 95 %
    t-interval, and the two-sided p of the paired t-test (NaN below 2 pairs; 1 when every
    difference is 0, 0 when they are all equal and not 0)."""
    keys = sorted(k for k in values if k in baseline and finite([values[k]]) and finite([baseline[k]]))
    diffs = [values[k] - baseline[k] for k in keys]
    mean, sd, n = mean_sd(diffs)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    if n < 2:
        p = math.nan
    elif sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        from scipy.stats import t

        p = float(2 * t.sf(abs(mean / (sd / math.sqrt(n))), n - 1))
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half, "p": p,
            "keys": keys, "per_seed": diffs}


def per_image_difference(values: dict, baseline: dict) -> dict:
    """The per-image paired test.

    values, baseline: {seed: {image name: metric}}. For each image, the difference (value -
    baseline) on every seed both arms have it with finite values, averaged over those seeds;
    then the Wilcoxon signed-rank test (two-sided, scipy's exact distribution for small n
    without ties) of those per-image means against 0. Returns n (images), the mean and median
    of the per-image differences, p (NaN below 2 images; 1 when all are 0), and the differences
    by image.
    """
    from scipy.stats import wilcoxon

    by_image: dict[str, list[float]] = {}
    for seed, scores in values.items():
        base = baseline.get(seed, {})
        for name, value in scores.items():
            if name in base and finite([value]) and finite([base[name]]):
                by_image.setdefault(name, []).append(value - base[name])
    diffs = {name: sum(d) / len(d) for name, d in sorted(by_image.items())}
    kept = list(diffs.values())
    n = len(kept)
    if n < 2:
        p = math.nan
    elif all(d == 0 for d in kept):
        p = 1.0
    else:
        p = float(wilcoxon(kept).pvalue)
    return {"n": n, "mean": sum(kept) / n if n else math.nan, "median": median(kept), "p": p,
            "per_image": diffs}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given; NaN entries stay NaN and do not
    count among the m tests. The i-th smallest of m gets max over j <= i of (m - j + 1) p_(j),
    capped at 1; reject at level alpha where the adjusted p <= alpha."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


__all__ = ["finite", "mean_sd", "median", "t_quantile_975", "paired_difference", "per_image_difference", "holm"]
