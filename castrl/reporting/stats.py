"""Small-sample statistics for the benchmark report: t-intervals over seeds and paired differences.

Why t and not normal: a grid has 2-10 seeds, where the normal 1.96 understates the interval badly
(t_{0.975} is 12.7 at 1 degree of freedom, 2.78 at 4). scipy is not a dependency, so the t quantile
is computed here: Simpson integration of the t density from 0, inverted by bisection (accurate to
~1e-6, checked in the tests against tabulated values).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple


def _t_pdf(x: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: float, intervals: int = 4000) -> float:
    """P(T <= x) for Student's t with `df` > 0 degrees of freedom (Simpson's rule on [0, |x|])."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    a = abs(x)
    if a == 0:
        return 0.5
    h = a / intervals
    total = _t_pdf(0.0, df) + _t_pdf(a, df)
    for i in range(1, intervals):
        total += (4 if i % 2 else 2) * _t_pdf(i * h, df)
    half = min(total * h / 3, 0.5)
    return 0.5 + half if x > 0 else 0.5 - half


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (p in (0, 1)), by bisection on `t_cdf` (cached: a report asks for few df)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


class Interval(NamedTuple):
    """Mean with a two-sided confidence interval; `half` is NaN when n < 2 (no spread to estimate)."""

    mean: float
    half: float
    n: int

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and t-interval half-width `t_{(1+level)/2, n-1} * s / sqrt(n)` (s: sample std)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Interval(mean, t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n)


def paired_diff(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> Interval:
    """t-interval of a - b over the keys (seeds) both have: the paired comparison of two methods."""
    common = sorted(set(a) & set(b))
    return mean_ci([a[k] - b[k] for k in common], level)


def ci_text(iv: Interval, digits: int = 3, signed: bool = False,
            bounds: tuple[float, float] | None = None) -> tuple[str, bool]:
    """`fmt_ci`'s text without its '(clipped)' mark, and whether the interval was clipped to `bounds`."""
    if iv.n == 0 or not math.isfinite(iv.mean):
        return "-", False
    sign = "+" if signed else ""
    if not math.isfinite(iv.half):
        return f"{iv.mean:{sign}.{digits}f}" + (" (n=1)" if signed else ""), False
    lo, hi = iv.lo, iv.hi
    visible = 0.5 * 10**-digits  # float noise past a bound is not worth a mark
    clipped = bounds is not None and (lo < bounds[0] - visible or hi > bounds[1] + visible)
    if clipped:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    if signed or clipped:
        return f"{iv.mean:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]", clipped
    return f"{iv.mean:.{digits}f} ± {iv.half:.{digits}f}", False


def fmt_ci(iv: Interval, digits: int = 3, signed: bool = False, bounds: tuple[float, float] | None = None) -> str:
    """'0.412 ± 0.031' (or '+0.020 [-0.011, +0.051]' when signed); '-' when there is no value.

    `bounds`: what the measure can take ((0, 1) for an accuracy, (-1, 1) for a difference of two). A
    t-interval of few seeds can reach past them ('0.333 ± 2.118'); it is then shown clipped, as
    '0.333 [0.000, 1.000] (clipped)', so no printed interval claims an impossible value."""
    text, clipped = ci_text(iv, digits, signed, bounds)
    return text + (" (clipped)" if clipped else "")
