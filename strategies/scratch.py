"""From scratch: re-initialise the model before every megabatch (an ALMA baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from alma_bench.registry import STRATEGIES
from alma_bench.run.models import build_model
from alma_bench.run.plugin_base import SupervisedPlugin  # Avalanche's, without importing Avalanche
from alma_bench.spec.config import derive


class ReinitPlugin(SupervisedPlugin):
    """Before megabatches t > 0, loads a freshly built model (the model's own initialisation,
    e.g. He init for ResNets, not torch's layer defaults), seeded per megabatch."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx

    def before_training_exp(self, strategy, **kw):
        t = strategy.experience.current_experience
        if t == 0:
            return  # the freshly built model is already an initialisation
        ctx = self.ctx
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(ctx.seeds.init, "reinit", t))
            fresh = build_model(ctx.spec.model, ctx.stream.input_shape, ctx.stream.num_classes)
        # copied in place: the optimizer and the memory format keep pointing at these tensors
        strategy.model.load_state_dict(fresh.state_dict())
        if strategy.optimizer is not None:
            strategy.optimizer.state.clear()  # no momentum from the previous model


@STRATEGIES.register("scratch")
@dataclass(frozen=True)
class Scratch:
    """Re-initialise the model before every megabatch and train from scratch on its data."""

    revision: ClassVar[int] = 2  # 2: re-initialised with the model's own init

    def plugins(self, ctx) -> list:
        return [ReinitPlugin(ctx)]
