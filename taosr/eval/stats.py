"""Statistics over seeds (pure): mean with its standard error, and paired differences.

A figure from one run is an anecdote: comparisons report the mean over seeds with its standard
error (sample standard deviation / sqrt(n)), and method differences *paired by seed* (both
methods start from the same export with the same seed), which removes the noise the two runs
share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Summary:
    mean: float
    se: float          # standard error of the mean; nan with fewer than two values
    n: int

    def fmt(self, digits: int = 3) -> str:
        return "—" if self.n == 0 else pm(self.mean, self.se if self.n > 1 else math.nan, digits)


def se_is_zero(mean: float, se: float) -> bool:
    """Whether ``se`` is zero up to float noise: equal values give an s.e. of 7.9e-17, not a digit."""
    return abs(se) <= 1e-12 * max(1.0, abs(mean))


def pm(mean: float, se: float, digits: int = 3) -> str:
    """``mean ± se`` to ``digits`` decimals (``mean`` alone when se is nan, ``—`` when mean is); a
    non-zero se that would print as 0.000 gets the decimals of its first significant digit, the mean
    too (``0.8453 ± 0.0004``, not ``0.845 ± 0.000``, which reads as no uncertainty)."""
    if math.isnan(mean):
        return "—"
    if math.isnan(se):
        return f"{mean:.{digits}f}"
    if se_is_zero(mean, se):
        se = 0.0
    if 0 < abs(se) < 0.5 * 10 ** -digits:
        digits = -math.floor(math.log10(abs(se)))
        if round(abs(se), digits) >= 9.5 * 10 ** -digits:  # 0.00096 -> 0.001: one decimal fewer
            digits -= 1
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def mean_se(values) -> Summary:
    """Mean and standard error of the finite values (NaN and None are left out)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(float("nan"), float("nan"), 0)
    m = sum(xs) / n
    if n < 2:
        return Summary(m, float("nan"), n)
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return Summary(m, math.sqrt(var / n), n)


@dataclass(frozen=True)
class Paired:
    diff: Summary      # mean and standard error of a - b over the seeds both have
    wins: int          # seeds where a > b
    seeds: tuple       # the seeds used, in order
    diffs: tuple       # a - b per seed

    @property
    def z(self) -> float:
        """Mean difference in standard errors (nan when undefined: one seed, or every seed's
        difference equal, whose s.e. is float noise: 0.007 / 3.8e-17 printed as +1.8e14)."""
        d = self.diff
        return d.mean / d.se if d.n > 1 and not se_is_zero(d.mean, d.se) else float("nan")

    @property
    def ties(self) -> int:
        """Seeds where a == b (neither a win nor a loss)."""
        return sum(d == 0 for d in self.diffs)


def seed_order(seed) -> tuple:
    """Sort key for seeds given as ints or strings: by number (0, 1, 2, 10), names after them."""
    try:
        return (0, int(str(seed)), "")
    except ValueError:
        return (1, 0, str(seed))


def paired_difference(a: Mapping, b: Mapping | float) -> Paired:
    """``a`` minus ``b`` seed by seed. ``a`` maps seed -> value; ``b`` too, or is one number (a
    deterministic baseline such as the shared start, scored once). Seeds missing on either side
    or with a NaN value are left out."""
    seeds, diffs = [], []
    for s in sorted(a, key=seed_order):
        va = a[s]
        vb = b if not isinstance(b, Mapping) else b.get(s)
        if va is None or vb is None or math.isnan(float(va)) or math.isnan(float(vb)):
            continue
        seeds.append(s)
        diffs.append(float(va) - float(vb))
    return Paired(mean_se(diffs), sum(d > 0 for d in diffs), tuple(seeds), tuple(diffs))
