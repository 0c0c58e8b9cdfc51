"""Intervals and the stopping rule of ``alma-bench perf``: pure Python, no torch, no clock.

A ratio is reported as the median of its per-block ratios with a distribution-free 95%
interval for that median: the order statistics ``x(l) <= median <= x(u)`` whose coverage
``1 - 2 P(Bin(n, 1/2) <= l - 1)`` is the smallest one still >= 95% (Hodges-Lehmann /
Conover's sign-test interval). Why this and not a bootstrap or a t-interval:

* the per-block ratios of a shared host are skewed, with rare large outliers (another
  process, a page-fault storm); the median ignores them and so does an interval made of
  order statistics, where a t-interval's mean and standard deviation are pulled by them;
* its coverage is exact for any continuous distribution once the blocks are exchangeable,
  with no resampling (a bootstrap of the median is discrete and under-covers at small n)
  and no random numbers: the same blocks always give the same interval.

It needs n >= 6 blocks for 95% (with 5, even [min, max] covers only 93.75%). Below that,
``median_interval`` falls back to a t-interval on the log ratios (n >= 2; labelled as such),
which is what a handful of whole-run pairs (``perf --run``) can give. The rule assumes
exchangeable blocks: interleaving the arms in each round is what removes the host's drift
from the ratio (both arms of a round see the same host), so the per-round ratios are close
to that; a drift within a round remains, and rounds alternate their order to cancel it.
"""

from __future__ import annotations

import math
import statistics

LEVEL = 0.95
ORDER_STATISTICS = "order statistics (sign test): distribution-free interval for the median"
T_LOG = "t-interval on log ratios (fewer than 6 blocks: assumes log-normal ratios)"

# two-sided 97.5% Student t quantiles, df 1..5 (the fallback is used below n = 6 only)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def order_statistic_ranks(n: int, level: float = LEVEL) -> tuple[int, int] | None:
    """1-based ranks (k, n - k + 1) of the narrowest symmetric order-statistic interval for
    the median of n exchangeable values with coverage >= ``level``; None when even (1, n)
    falls short (n < 6 at 95%)."""
    # coverage of rank k: 1 - 2 P(Bin(n, 1/2) <= k - 1), in exact integers (tail / 2^n)
    total, tail, best = 2**n, 0, None
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1)
        if (total - 2 * tail) / total < level:  # int / int: exact, any n
            break
        best = k
    return None if best is None else (best, n - best + 1)


def _binom_cdf(n: int, k: int) -> float:
    """P(Bin(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # exact ints: no overflow


def coverage(n: int, k: int) -> float:
    """Coverage of [x(k), x(n - k + 1)] for the median of n values."""
    return 1.0 - 2.0 * _binom_cdf(n, k - 1)


def median_interval(xs, level: float = LEVEL, t_fallback: bool = True) -> dict:
    """Median of ``xs`` with its interval: ``{"median", "low", "high", "method", "coverage"}``
    (low/high None with fewer than 2 values, or below 6 without ``t_fallback``)."""
    xs = sorted(float(x) for x in xs)
    n = len(xs)
    if n == 0:
        return {"median": None, "low": None, "high": None, "method": None, "coverage": None}
    med = statistics.median(xs)
    ranks = order_statistic_ranks(n, level)
    if ranks is not None:
        lo, hi = ranks
        return {"median": med, "low": xs[lo - 1], "high": xs[hi - 1], "method": ORDER_STATISTICS,
                "coverage": coverage(n, lo)}
    if t_fallback and n >= 2 and all(x > 0 for x in xs):
        logs = [math.log(x) for x in xs]
        m, sd = statistics.fmean(logs), statistics.stdev(logs)
        half = _T975[n - 1] * sd / math.sqrt(n)
        # the centre of a t-interval is the (geometric) mean; the reported point stays the
        # median, so the interval is widened to hold it if it must
        return {"median": med, "low": min(med, math.exp(m - half)),
                "high": max(med, math.exp(m + half)), "method": T_LOG, "coverage": level}
    return {"median": med, "low": None, "high": None, "method": None, "coverage": None}


def relative_half_width(iv: dict) -> float | None:
    """The interval's larger distance from the median, over the median (a 95% interval of
    1.00 [0.98, 1.03] has 0.03): the precision a ratio is quoted with."""
    if iv.get("low") is None or iv.get("high") is None or not iv.get("median"):
        return None
    med = iv["median"]
    return max(med - iv["low"], iv["high"] - med) / abs(med)


def summarise_ratio(xs, precision: float, min_blocks: int = 6, t_fallback: bool = True) -> dict:
    """A ratio's summary: the keys of ``perf.bare.stats`` (median, min, max, n, spread), so
    readers of the old perf.json keep working, plus its interval (``ci``: [low, high]),
    ``rel_half_width``, the ``precision`` asked for and whether it was met (``precise``)."""
    xs = [float(x) for x in xs]
    iv = median_interval(xs, t_fallback=t_fallback)
    rel = relative_half_width(iv)
    med = iv["median"]
    out = {"median": med, "min": min(xs) if xs else None, "max": max(xs) if xs else None,
           "n": len(xs), "spread": (max(xs) - min(xs)) / med if xs and med else None,
           "ci": [iv["low"], iv["high"]], "ci_method": iv["method"],
           "ci_coverage": iv["coverage"], "rel_half_width": rel, "precision": precision}
    out["precise"] = bool(rel is not None and rel <= precision and len(xs) >= min_blocks)
    return out


def should_stop(summaries: dict, *, elapsed_s: float, budget_s: float,
                required=None) -> tuple[bool, str | None]:
    """The stopping rule, checked after every round: stop when every required ratio is
    precise (``summarise_ratio``: its 95% interval within +-precision of its median, over at
    least ``min_blocks`` blocks), or when the time budget is spent. Returns (stop, reason)."""
    keys = list(summaries) if required is None else [k for k in required if k in summaries]
    if keys and all(summaries[k]["precise"] for k in keys):
        return True, "precision met"
    if elapsed_s >= budget_s:
        return True, "time budget spent"
    return False, None


def format_ratio(s: dict | None, fmt: str = "{:.3f}") -> str:
    """``1.012 [0.998, 1.027] (+-1.5%, 42 blocks)``, with ``precise`` or ``NOT precise``."""
    if not s or s.get("median") is None:
        return "-"
    lo, hi = s.get("ci") or (None, None)
    text = fmt.format(s["median"])
    if lo is None:
        return f"{text} (no interval: {s['n']} blocks)"
    rel = s["rel_half_width"]
    verdict = "" if s.get("precision") is None else (
        "; precise" if s["precise"] else f"; NOT within +-{s['precision']:.0%}")
    return (f"{text} [{fmt.format(lo)}, {fmt.format(hi)}] (+-{rel:.1%}, {s['n']} blocks"
            f"{verdict})")
