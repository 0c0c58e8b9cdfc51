"""Anytime one-shot pruning (OSP): prune the initial model once, keep the mask for the stream.

APP paper, ``main_anytime_one.py``: before megabatch 1, prune the freshly initialised model
straight to the final density with the chosen pruner; the mask then stays fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from alma_bench.registry import STRATEGIES
from alma_bench.sparsity import app_densities, check_density
from alma_bench.sparsity.plugin import MaskedTraining, check_pruner, prune_now, strategy_masks

# APP's final density for N = 8, tau = 4.5 (0.8 ** 4.5): OSP and APP end at the same density
APP_FINAL = app_densities(8)[-1]


class OneShotPlugin(MaskedTraining):
    def __init__(self, ctx, maskset, params: OSP):
        super().__init__(maskset)
        self.ctx, self.p = ctx, params

    def before_training_exp(self, strategy, **kw):
        if strategy.experience.current_experience == 0:
            prune_now(self.ctx, self.maskset, self.p.pruner, self.p.scope, self.p.density, 0,
                      self.p.sample_fraction, strategy.optimizer)


@STRATEGIES.register("osp")
@dataclass(frozen=True)
class OSP:
    """Anytime one-shot pruning: prune the initial weights once to the final density."""

    # 2: the SNIP sample is 0.2 x the whole megabatch (before its validation split)
    revision: ClassVar[int] = 2

    density: float = APP_FINAL
    pruner: str = "snip"
    scope: Literal["global", "layer"] = "global"
    sample_fraction: float = 0.2  # SNIP's sample, as a fraction of the megabatch size
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False  # APP prunes every conv and no Linear layer

    def __post_init__(self):
        check_density(self.density)
        check_pruner(self.pruner)

    def plugins(self, ctx) -> list:
        ms = strategy_masks(ctx, self)
        return [OneShotPlugin(ctx, ms, self)]
