import math

import pytest

from kd_accel.stats import betainc, mean, paired_ci, std, t_cdf, t_ppf, welch


def test_mean_std_by_hand():
    xs = [98.1, 98.3, 98.2, 98.6]
    assert mean(xs) == pytest.approx(98.3)
    # deviations -0.2, 0, -0.1, 0.3: squares sum 0.14, / 3
    assert std(xs) == pytest.approx(math.sqrt(0.14 / 3))
    assert std([5.0]) == 0.0


@pytest.mark.parametrize("df,q", [(1, 12.706), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantiles_match_tables(df, q):
    assert t_ppf(0.975, df) == pytest.approx(q, abs=1e-3)


def test_t_cdf_symmetry_and_known_values():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-2.0, 7) == pytest.approx(1 - t_cdf(2.0, 7))
    # df=1 is Cauchy: P(T <= 1) = 3/4
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-9)
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)


def test_paired_ci_by_hand():
    d = [0.1, 0.3, 0.2, 0.4, 0.0]
    r = paired_ci(d)
    se = std(d) / math.sqrt(5)  # std = sqrt(0.1/4) = 0.158114
    assert r["mean"] == pytest.approx(0.2)
    assert r["high"] - r["mean"] == pytest.approx(2.776445 * se, rel=1e-5)
    # t = 0.2 / 0.0707107 = 2.828; two-sided p with 4 df ~ 0.0474
    assert r["p"] == pytest.approx(0.0474, abs=5e-4)


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]
    t, df, p = welch(a, b)
    # se^2 = 1/3 + 1.6667/4 = 0.75; t = (2 - 5.5)/0.8660 = -4.0415
    assert t == pytest.approx(-4.0415, abs=1e-4)
    assert df == pytest.approx(0.75**2 / ((1 / 3) ** 2 / 2 + (1.6666667 / 4) ** 2 / 3), rel=1e-5)
    assert 0.005 < p < 0.02
