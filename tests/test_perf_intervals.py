"""The interval and the stopping rule of ``alma-bench perf`` (alma_bench/perf/intervals.py,
interleave.py) on synthetic timing sequences: deterministic, no clock, no torch."""

from __future__ import annotations

import math
import random

import pytest

from alma_bench.perf import intervals as iv
from alma_bench.perf.interleave import Arm, Block, Ratio, block_ratios, run_rounds


def test_order_statistic_ranks_match_the_binomial_tables():
    # Conover's table of the sign-test interval for the median at >= 95%
    assert iv.order_statistic_ranks(5) is None  # [min, max] covers 93.75% only
    assert iv.order_statistic_ranks(6) == (1, 6)
    assert iv.order_statistic_ranks(10) == (2, 9)
    assert iv.order_statistic_ranks(20) == (6, 15)
    assert iv.order_statistic_ranks(100) == (40, 61)
    for n in range(6, 200):
        k, u = iv.order_statistic_ranks(n)
        assert u == n - k + 1
        assert iv.coverage(n, k) >= 0.95  # covers
        assert k + 1 > n // 2 or iv.coverage(n, k + 1) < 0.95  # and is the narrowest


def test_median_interval_ignores_outliers_and_order():
    xs = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01, 0.99, 1.00, 5.0]  # one host hiccup
    a = iv.median_interval(xs)
    b = iv.median_interval(list(reversed(xs)))
    assert a == b
    assert a["method"] == iv.ORDER_STATISTICS
    # ranks 2 and 9 of 10: the hiccup (rank 10) is outside the interval
    assert a["low"] == 0.99 and a["high"] == 1.02 and a["median"] == 1.0
    assert iv.relative_half_width(a) == pytest.approx(0.02)


def test_few_values_fall_back_to_a_labelled_t_interval():
    a = iv.median_interval([1.0, 1.1, 0.95])
    assert a["method"] == iv.T_LOG
    assert a["low"] < a["median"] < a["high"]
    assert iv.median_interval([1.0])["low"] is None
    assert iv.median_interval([])["median"] is None


def test_summary_keeps_the_old_stats_keys():
    s = iv.summarise_ratio([1.0 + 0.001 * i for i in range(12)], precision=0.02, min_blocks=10)
    for key in ("median", "min", "max", "n", "spread"):  # perf.bare.stats' keys
        assert key in s
    assert s["n"] == 12 and s["precise"] and s["ci"][0] <= s["median"] <= s["ci"][1]
    # precise only once min_blocks blocks are in, however narrow the interval
    assert not iv.summarise_ratio([1.0] * 8, precision=0.02, min_blocks=10)["precise"]


def _stop_index(seq, precision, min_blocks=10, budget=10**9):
    """Feed a ratio sequence block by block; the block count at which the rule stops."""
    for n in range(1, len(seq) + 1):
        s = {"r": iv.summarise_ratio(seq[:n], precision, min_blocks)}
        stop, reason = iv.should_stop(s, elapsed_s=n, budget_s=budget)
        if stop:
            return n, reason
    return None, None


def test_stopping_rule_on_synthetic_sequences():
    rng = random.Random(0)
    quiet = [math.exp(rng.gauss(0.03, 0.03)) for _ in range(400)]  # 3% noise per block
    n, reason = _stop_index(quiet, 0.02)
    assert reason == "precision met" and 10 <= n <= 60
    # the interval it stopped with covers the sequence's true median (exp(0.03))
    s = iv.summarise_ratio(quiet[:n], 0.02)
    assert s["ci"][0] <= math.exp(0.03) <= s["ci"][1]
    noisy = [math.exp(rng.gauss(0.0, 0.5)) for _ in range(400)]  # 50% noise: never precise
    assert _stop_index(noisy, 0.02) == (None, None)
    assert _stop_index(noisy, 0.02, budget=50) == (50, "time budget spent")
    # a drifting host: interleaved per-round ratios cancel the drift that the arms share
    drift = [1 + 0.3 * math.sin(i / 7) for i in range(200)]
    ratios = [(1.05 * d * (1 + 0.01 * ((i % 5) - 2))) / d for i, d in enumerate(drift)]
    n, reason = _stop_index(ratios, 0.02)
    assert reason == "precision met"
    assert iv.summarise_ratio(ratios[:n], 0.02)["median"] == pytest.approx(1.05, rel=0.02)


def test_every_ratio_must_be_precise():
    a = iv.summarise_ratio([1.0] * 12, 0.02)
    b = iv.summarise_ratio([1.0, 2.0] * 6, 0.02)
    assert iv.should_stop({"a": a, "b": b}, elapsed_s=0, budget_s=1) == (False, None)
    assert iv.should_stop({"a": a}, elapsed_s=0, budget_s=1) == (True, "precision met")
    assert iv.should_stop({"a": a, "b": b}, elapsed_s=2, budget_s=1)[1] == "time budget spent"


def test_block_ratios_pair_rounds_and_filter_the_last_megabatch():
    num = [Block(0, 1, 2.0, 100, 2, 0), Block(1, 1, 3.0, 100, 2, 1), Block(3, 1, 1.0, 50, 1, 1)]
    den = [Block(0, 1, 1.0, 100, 2, 0), Block(1, 1, 2.0, 100, 2, 1), Block(2, 1, 1.0, 10, 1, 1)]
    assert block_ratios(num, den) == [2.0, 1.5]  # round 3 has no partner
    assert block_ratios(num, den, last_megabatch=1) == [1.5]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _fake_arm(name, clock, per_sample, megabatches=(3, 5), batch=10, drift=None):
    """An arm whose steps take ``per_sample`` x batch seconds on the synthetic clock, times
    the host's speed ``drift(t)`` (shared by every arm)."""
    def body(arm):
        for mb, steps in enumerate(megabatches):
            arm.boundary()
            arm.begin_epoch()
            for _ in range(steps):
                clock.t += per_sample * batch * (drift(clock.t) if drift else 1.0)
                arm.step(batch, mb)

    return Arm(name, body, block_samples=20, clock=clock)


def test_rounds_interleave_restart_and_stop_on_precision():
    clock = FakeClock()
    drift = lambda t: 1 + 0.5 * math.sin(t / 3)  # the host's speed moves 50%
    arms = [_fake_arm("bare", clock, 1e-3, drift=drift),
            _fake_arm("harness", clock, 1.02e-3, drift=drift)]
    out = run_rounds(arms, [Ratio("h/b", "harness", "bare"),
                            Ratio("h/b final", "harness", "bare", last_megabatch=1)],
                     precision=0.02, budget_s=1e9, min_blocks=10, clock=clock)
    assert out["stopped"] == "precision met" and out["precise"]
    r = out["ratios"]["h/b"]
    assert r["ci"][0] <= 1.02 <= r["ci"][1]
    assert out["passes"]["bare"] > 1  # the runs were restarted while the rounds went on
    # blocks end at megabatch boundaries: 3 steps -> blocks of 2 and 1 steps, 5 -> 2, 2, 1
    steps = [b[4] for b in out["blocks"]["bare"] if b[1] == 1]
    assert steps == [2, 1, 2, 2, 1]
    assert all(not a._thread.is_alive() for a in arms)  # every arm thread ended


def test_rounds_stop_at_the_budget_and_end_arms_mid_run():
    clock = FakeClock()
    noise = iter([1.0, 1.5, 0.7, 1.3, 0.8] * 1000)
    arms = [_fake_arm("a", clock, 1e-3), _fake_arm("b", clock, 1e-3, drift=lambda t: next(noise))]
    out = run_rounds(arms, [Ratio("b/a", "b", "a")], precision=0.001, budget_s=0.5,
                     min_blocks=10, clock=clock)
    assert out["stopped"] == "time budget spent" and not out["precise"]
    assert all(not a._thread.is_alive() for a in arms)


def test_a_failing_arm_stops_the_measurement():
    clock = FakeClock()

    def broken(arm):
        arm.begin_epoch()
        clock.t += 1
        arm.step(10, 0)
        raise ValueError("boom")

    arms = [_fake_arm("a", clock, 1e-3), Arm("b", broken, block_samples=100, clock=clock)]
    with pytest.raises(RuntimeError, match="boom"):
        run_rounds(arms, [Ratio("b/a", "b", "a")], budget_s=10, clock=clock)
    assert all(not a._thread.is_alive() for a in arms)


def test_format_ratio():
    s = iv.summarise_ratio([1.0, 1.01, 0.99] * 4, 0.02)
    text = iv.format_ratio(s)
    assert text.startswith("1.000 [0.990, 1.010]") and "12 blocks" in text and "precise" in text
    assert iv.format_ratio(None) == "-"


def test_agreement_of_repeated_measurements():
    from alma_bench.perf.agree import agreement

    def result(med, lo, hi):
        return {"interleaved": {"ratios": {"h/b": {"median": med, "ci": [lo, hi],
                                                   "precise": True}}}}

    good = [result(1.00, 0.98, 1.02), result(1.01, 0.99, 1.03), result(0.995, 0.975, 1.015)]
    a = agreement(good)["h/b"]
    assert a["within"] and a["covered"] and a["precise"]
    bad = [*good, result(1.08, 1.06, 1.10)]  # 8% off: outside +-3%, intervals disjoint
    a = agreement(bad)["h/b"]
    assert not a["within"] and not a["covered"]
