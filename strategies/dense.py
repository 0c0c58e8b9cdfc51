"""Dense warm start: train the previous megabatch's model on, all weights kept."""

from __future__ import annotations

from dataclasses import dataclass

from alma_bench.registry import STRATEGIES


@STRATEGIES.register("dense")
@dataclass(frozen=True)
class Dense:
    """Dense warm start from the previous megabatch's model (ALMA's baseline)."""

    def plugins(self, ctx) -> list:
        return []  # the core loop already warm-starts: nothing to add
