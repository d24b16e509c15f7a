"""Small statistics for multi-seed comparisons: mean, sample std, and the paired t interval
and test, from scipy.stats (imported on first use: it takes a second to import, and most
runs never compare).

Baseline and variant runs share seeds (same initialisation, same data order), so the natural
test of "does distillation help" is paired: the per-seed differences and their t interval.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n-1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t with df degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean of per-seed differences, its `level` t interval and the two-sided p-value of the
    paired t-test (a one-sample t-test of the differences against 0)."""
    from scipy import stats

    n = len(diffs)
    m = mean(diffs)
    if n < 2:  # no interval and no test from one seed: None (JSON null), never NaN (not JSON)
        return {"mean": m, "low": None, "high": None, "p": None, "n": n}
    se = std(diffs) / math.sqrt(n)
    if se == 0:  # every seed moved by the same amount: scipy says nan, the answer is certain
        return {"mean": m, "low": m, "high": m, "p": 0.0 if m != 0 else 1.0, "n": n}
    half = t_ppf(0.5 + level / 2, n - 1) * se
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"mean": m, "low": m - half, "high": m + half, "p": p, "n": n}
