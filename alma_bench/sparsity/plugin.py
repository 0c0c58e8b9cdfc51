"""The Avalanche plugin every sparse strategy builds on: masks held through training.

After every backward pass the gradients of masked weights are zeroed; after every optimizer
step the masked weights are zeroed again (weight decay and momentum would move them). Mask
changes themselves go through ``MaskSet.update``/``prune_to``, which zero the optimizer state
where a mask changed.
"""

from __future__ import annotations

import torch

from alma_bench.config import derive
from alma_bench.plugin_base import SupervisedPlugin  # Avalanche's, without importing Avalanche
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


def rewiring_window(per_epoch: int, epochs: int) -> int:
    """Optimizer steps of a megabatch's rewiring window: its first E - 1 epochs, or half of its
    steps when E = 1 (empty with a single step: the masks are then set before that step)."""
    return per_epoch * (epochs - 1) if epochs > 1 else per_epoch // 2


def planned_offsets(ctx) -> list[int]:
    """The planned optimizer step at which each megabatch starts (no early stopping); the last
    entry is the stream's planned total. Schedules keyed to the stream use this clock."""
    planned = [ctx.steps_per_megabatch(t) for t in range(ctx.n_megabatches)]
    return [sum(planned[:t]) for t in range(len(planned) + 1)]


class RewiringTraining(MaskedTraining):
    """Base of every strategy whose masks change *inside* a megabatch (GMP, DPR, prune-regrow,
    learned schedules): it owns the harness's selection rule, so subclasses get it for free.

    The rule (README, "Which model a megabatch keeps"): masks change only in the megabatch's
    *rewiring window*, its first E - 1 epochs of E (the first half of the steps when E = 1).
    The rest trains under the megabatch's final masks; the kept epoch is chosen among the
    epochs trained wholly under them (with E = 1 the one epoch is kept); early stopping never
    ends a megabatch while its window is open. Nothing changes a mask after selection (the
    harness checks this and fails loudly otherwise).

    Subclasses implement :meth:`rewire`, called after every optimizer step inside the window
    (the step is already counted in :attr:`exp_step`); :meth:`window_progress` says how far the
    window is done, so a schedule can reach the megabatch's target at the window's last step.
    Only the Avalanche strategy is read (its epochs and data loader), no harness object.
    """

    def __init__(self, maskset: MaskSet, offsets: list[int] | None = None):
        super().__init__(maskset)
        self.exp_step = 0  # optimizer steps taken in the current megabatch
        self.window = 1  # planned steps of the current megabatch's rewiring window
        self.t = 0  # the current megabatch (0-based)
        # planned step at which each megabatch starts (see planned_offsets), for planned_step
        self.offsets = offsets

    def before_training_exp(self, strategy, **kw):
        self.exp_step = 0
        self.t = strategy.experience.current_experience
        self.window = rewiring_window(len(strategy.dataloader), int(strategy.train_epochs))

    def planned_step(self) -> float:
        """Position on the stream's planned optimizer steps: megabatch t's planned span run
        over its rewiring window, so a schedule keyed to the stream's plan reaches the density
        due at the megabatch's planned end at the window's last step (needs ``offsets``)."""
        span = self.offsets[self.t + 1] - self.offsets[self.t]
        return self.offsets[self.t] + span * self.window_progress()

    def after_update(self, strategy, **kw):
        super().after_update(strategy, **kw)
        if self.exp_step < self.window:
            self.exp_step += 1
            self.rewire(strategy)

    def rewire(self, strategy) -> None:
        """Change masks (through the mask set) after a step inside the window."""

    def window_open(self) -> bool:
        """Whether masks may still change in this megabatch."""
        return self.exp_step < self.window

    def window_progress(self) -> float:
        """Fraction of the rewiring window done in this megabatch, in [0, 1] (1.0 for an
        empty window)."""
        return min(1.0, self.exp_step / self.window) if self.window else 1.0

    def masks_final(self, strategy=None) -> bool:
        """Read by early stopping: a megabatch never ends while its masks may still change."""
        return not self.window_open()


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
