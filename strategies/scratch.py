"""From scratch: re-initialise the model before every megabatch (an ALMA baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin

from alma_bench.config import derive
from alma_bench.registry import STRATEGIES


class ReinitPlugin(SupervisedPlugin):
    """Re-initialises every layer in place before megabatches t > 0, seeded per megabatch."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def before_training_exp(self, strategy, **kw):
        t = strategy.experience.current_experience
        if t == 0:
            return  # the freshly built model is already an initialisation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(self.seed, "reinit", t))
            for m in strategy.model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
        if strategy.optimizer is not None:
            strategy.optimizer.state.clear()  # no momentum from the previous model


@STRATEGIES.register("scratch")
@dataclass(frozen=True)
class Scratch:
    """Re-initialise the model before every megabatch and train from scratch on its data."""

    def plugins(self, ctx) -> list:
        return [ReinitPlugin(ctx.seeds.init)]
