"""Test plugin: dense training that logs each training start, and one that fails on demand.

``ALMA_TEST_STARTS`` names a file that gets one line per training start (label, seed, pid),
appended with O_APPEND so concurrent processes never mix lines. ``boom`` raises in megabatch 2
while the file named by ``ALMA_TEST_BOOM`` exists.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from avalanche.core import SupervisedPlugin

from alma_bench import register_strategy


def _log_start(ctx):
    path = os.environ.get("ALMA_TEST_STARTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.spec.label} {ctx.spec.seed} {os.getpid()}\n")


class _Pace(SupervisedPlugin):
    def after_training_iteration(self, strategy, **kw):
        time.sleep(0.01)  # widens a run so that concurrent runners overlap; changes no number


class _Boom(SupervisedPlugin):
    def before_training_exp(self, strategy, **kw):
        marker = os.environ.get("ALMA_TEST_BOOM")
        if strategy.experience.current_experience == 1 and marker and Path(marker).exists():
            raise RuntimeError("boom in megabatch 2")


@register_strategy("count-dense")
@dataclass(frozen=True)
class CountDense:
    """Dense; logs its training start (tests only)."""

    tag: int = 0  # only to make distinct runs of the same numbers

    def plugins(self, ctx):
        _log_start(ctx)
        return [_Pace()]


@register_strategy("boom")
@dataclass(frozen=True)
class Boom:
    """Dense; raises in megabatch 2 while $ALMA_TEST_BOOM exists (tests only)."""

    def plugins(self, ctx):
        _log_start(ctx)
        return [_Boom()]
