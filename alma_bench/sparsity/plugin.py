"""The Avalanche plugin every sparse strategy builds on: masks held through training.

After every backward pass the gradients of masked weights are zeroed; after every optimizer
step the masked weights are zeroed again (weight decay and momentum would move them). Mask
changes themselves go through ``MaskSet.update``/``prune_to``, which zero the optimizer state
where a mask changed.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from alma_bench.config import derive
from alma_bench.registry import PRUNERS
from alma_bench.sparsity.masks import MaskSet
from alma_bench.sparsity.pruners import prune


class MaskedTraining(SupervisedPlugin):
    """Holds ``maskset`` through every update. Subclasses change masks at hook points."""

    def __init__(self, maskset: MaskSet):
        super().__init__()
        self.maskset = maskset

    def after_backward(self, strategy, **kw):
        self.maskset.mask_grads()

    def after_update(self, strategy, **kw):
        self.maskset.apply()

    def metrics(self) -> dict:
        return {"dense_layers": list(self.maskset.dense_layers)}


def strategy_masks(ctx, params) -> MaskSet:
    """The mask set over ``ctx.model`` with the layer choice of a strategy's parameters
    (``prune_first``, ``prune_last``, ``prune_linear``)."""
    return MaskSet(ctx.model, prune_first=params.prune_first, prune_last=params.prune_last,
                   prune_linear=params.prune_linear)


def pruner_sample(ctx, t: int, fraction: float, purpose: str = "prune-sample"):
    """A seeded sample of ``fraction x |M_t|`` examples (|M_t|: the megabatch's size before its
    validation split, not the replay set's) drawn from the replay-inclusive training set of
    megabatch t, as batches."""
    x, y = ctx.stream.train_set(t)
    k = max(1, min(len(y), int(round(fraction * ctx.stream.megabatches[t].size))))
    g = torch.Generator().manual_seed(derive(ctx.seeds.strategy, purpose, t))
    idx = torch.randperm(len(y), generator=g)[:k]
    return ctx.batches(x[idx], y[idx], seed=derive(ctx.seeds.strategy, purpose + "-order", t))


def prune_now(ctx, maskset: MaskSet, pruner_name: str, scope: str, density: float, t: int,
              sample_fraction: float, optimizer=None):
    """Score with the named pruner (on a sample of megabatch t if it needs data) and prune
    ``maskset`` (nested) to ``density``."""
    pruner = PRUNERS.create(pruner_name, scope=scope)
    batches = pruner_sample(ctx, t, sample_fraction) if pruner_name == "snip" else None
    g = torch.Generator().manual_seed(derive(ctx.seeds.strategy, "prune", t))
    return prune(ctx.model, maskset, pruner, density, batches, generator=g, optimizer=optimizer)


def check_pruner(name: str) -> None:
    """ValueError (a one-line UserError at suite load) for an unknown pruner name."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner '{name}'. Valid: {', '.join(PRUNERS.names())}")
