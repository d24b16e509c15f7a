import math

import pytest

from kd_accel.stats import mean, paired_ci, std, t_ppf


def test_mean_std_by_hand():
    xs = [98.1, 98.3, 98.2, 98.6]
    assert mean(xs) == pytest.approx(98.3)
    # deviations -0.2, 0, -0.1, 0.3: squares sum 0.14, / 3
    assert std(xs) == pytest.approx(math.sqrt(0.14 / 3))
    assert std([5.0]) == 0.0


@pytest.mark.parametrize("df,q", [(1, 12.706), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantiles_match_tables(df, q):
    assert t_ppf(0.975, df) == pytest.approx(q, abs=1e-3)


def test_paired_p_values_match_tables():
    # differences whose t statistic sits on a table's two-sided critical value: p is that level
    se = 0.1 / math.sqrt(5)  # std of [-0.1, 0.1, 0, -0.1, 0.1] is sqrt(0.04/4) = 0.1
    for t_crit, level in [(2.776, 0.05), (4.604, 0.01)]:  # df = 4
        d = [t_crit * se + x for x in (-0.1, 0.1, 0.0, -0.1, 0.1)]
        assert paired_ci(d)["p"] == pytest.approx(level, abs=2e-4)
    # df = 1 is Cauchy: t = 1 gives a two-sided p of exactly 1/2
    assert paired_ci([0.0, 2.0])["p"] == pytest.approx(0.5, abs=1e-9)


def test_identical_differences_are_certain():
    assert paired_ci([0.3, 0.3, 0.3]) == pytest.approx({"mean": 0.3, "low": 0.3, "high": 0.3, "p": 0.0, "n": 3})
    assert paired_ci([0.0, 0.0])["p"] == 1.0
    assert paired_ci([0.5])["low"] is None and paired_ci([0.5])["p"] is None  # JSON null, not NaN


def test_paired_ci_by_hand():
    d = [0.1, 0.3, 0.2, 0.4, 0.0]
    r = paired_ci(d)
    se = std(d) / math.sqrt(5)  # std = sqrt(0.1/4) = 0.158114
    assert r["mean"] == pytest.approx(0.2)
    assert r["high"] - r["mean"] == pytest.approx(2.776445 * se, rel=1e-5)
    # t = 0.2 / 0.0707107 = 2.828; two-sided p with 4 df ~ 0.0474
    assert r["p"] == pytest.approx(0.0474, abs=5e-4)
