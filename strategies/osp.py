"""Anytime one-shot pruning (OSP): prune the initial model once, keep the mask for the stream.

APP paper, ``main_anytime_one.py``: before megabatch 1, prune the freshly initialised model
straight to the final density with the chosen pruner; the mask then stays fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from alma_bench.registry import STRATEGIES
from alma_bench.sparsity import app_densities, check_density
from alma_bench.sparsity.plugin import MaskedTraining, check_pruner, mask_layers, prune_now

# APP's final density for N = 8, tau = 4.5 (0.8 ** 4.5): OSP and APP end at the same density
APP_FINAL = app_densities(8)[-1]


class OneShotPlugin(MaskedTraining):
    """OSP as a plain Avalanche plugin: prune ``strategy.model`` once, before the first
    experience it trains (experience 0, or the first of a slice of a stream), to
    ``params.density``; the mask then stays. The pruner's sample comes from that experience's
    dataset; ``seed`` seeds it."""

    def __init__(self, params: OSP | None = None, *, seed: int = 0,
                 model: nn.Module | None = None):
        params = OSP() if params is None else params
        super().__init__(mask_layers(params), model)
        self.p, self.seed = params, seed
        self.pruned = False

    def before_training_exp(self, strategy, **kw):
        if self.pruned:
            return
        self.pruned = True
        # Masks that are already pruned came with the model: a run resumed from a checkpoint
        # written before this plugin had a state. Scoring again would waste a SNIP pass and
        # could draw from the global RNG (dropout in the scored copy).
        if self.maskset.kept() == self.maskset.numel():
            prune_now(strategy, self.maskset, self.p.pruner, self.p.scope, self.p.density,
                      self.seed, self.p.sample_fraction)

    def state_dict(self) -> dict:
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict) -> None:
        self.pruned = bool(state["pruned"])


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
        return [OneShotPlugin(self, seed=ctx.seeds.strategy, model=ctx.model)]
