"""Test plugin: dense training that sleeps during megabatch 4, so a test can kill it there."""

import time
from dataclasses import dataclass

from avalanche.core import SupervisedPlugin

from alma_bench import register_strategy


class _Sleep(SupervisedPlugin):
    def after_training_iteration(self, strategy, **kw):
        if strategy.experience.current_experience == 3:
            time.sleep(0.05)  # widens megabatch 4; changes no number


@register_strategy("slow-dense")
@dataclass(frozen=True)
class SlowDense:
    """Dense, slowed down during megabatch 4 (tests only)."""

    def plugins(self, ctx):
        return [_Sleep()]
