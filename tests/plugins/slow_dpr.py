"""Test plugin: dpr that sleeps during megabatch 3, so a test can kill it there."""

import time
from dataclasses import dataclass

from avalanche.core import SupervisedPlugin

from alma_bench import register_strategy
from alma_bench.strategies.dpr import DPR


class _Sleep(SupervisedPlugin):
    def after_training_iteration(self, strategy, **kw):
        if strategy.experience.current_experience == 2:
            time.sleep(0.05)  # widens megabatch 3; changes no number


@register_strategy("slow-dpr")
@dataclass(frozen=True)
class SlowDPR(DPR):
    """dpr, slowed down during megabatch 3 (tests only)."""

    def plugins(self, ctx):
        return super().plugins(ctx) + [_Sleep()]
