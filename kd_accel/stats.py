"""Small statistics for multi-seed comparisons, with no SciPy: mean, sample std, Student-t
quantiles, paired 95% confidence intervals and Welch's t-test.

Baseline and variant runs share seeds (same initialisation, same data order), so the natural
test of "does distillation help" is paired: the per-seed differences and their t interval.
"""
import math


def mean(xs):
    return sum(xs) / len(xs)


def std(xs):
    """Sample standard deviation (n-1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a, b, x):
    # continued fraction of the incomplete beta function (modified Lentz)
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2, 0.5, x)
    return 1 - tail if t > 0 else tail


def t_ppf(p, df):
    """Quantile of Student's t (bisection on the CDF)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_ci(diffs, level=0.95):
    """Mean of per-seed differences, its `level` t interval and the two-sided p-value."""
    n = len(diffs)
    m = mean(diffs)
    if n < 2:
        return {"mean": m, "low": float("nan"), "high": float("nan"), "p": float("nan"), "n": n}
    se = std(diffs) / math.sqrt(n)
    half = t_ppf(0.5 + level / 2, n - 1) * se
    p = 2 * (1 - t_cdf(abs(m) / se, n - 1)) if se > 0 else (0.0 if m != 0 else 1.0)
    return {"mean": m, "low": m - half, "high": m + half, "p": p, "n": n}


def welch(a, b):
    """Welch's t-test of mean(a) - mean(b): (t, df, two-sided p)."""
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return float("nan"), float("nan"), float("nan")
    t = (mean(a) - mean(b)) / se
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, 2 * (1 - t_cdf(abs(t), df))
