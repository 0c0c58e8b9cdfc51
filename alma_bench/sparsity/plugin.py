"""The Avalanche plugins every sparse strategy builds on: masks held through training.

After every backward pass the gradients of masked weights are zeroed; after every optimizer
step the masked weights are zeroed again (weight decay and momentum would move them). Mask
changes themselves go through ``MaskSet.update``/``prune_to``, which zero the optimizer state
where a mask changed.

These are plain Avalanche plugins: the masks live on ``strategy.model``, the model the
strategy trains, whatever model the plugin was built with; everything else is read from the
strategy at hook time (:mod:`alma_bench.sparsity.experience`) or is the plugin's own
parameter (its seed). The harness hands over its model when it builds a plugin only so the
mask buffers exist before a checkpoint is loaded into it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from alma_bench.registry import PRUNERS
from alma_bench.run.plugin_base import SupervisedPlugin  # Avalanche's, without importing Avalanche
from alma_bench.sparsity.experience import (
    experience_sample,
    planned_offsets,
    sample_indices,
)
from alma_bench.sparsity.masks import MaskSet
from alma_bench.sparsity.pruners import prune
from alma_bench.spec.config import derive

#: Makes the mask set of a strategy's layer choice over a given model.
MaskFactory = Callable[[nn.Module], MaskSet]


class MaskedTraining(SupervisedPlugin):
    """Holds the masks of ``layers(strategy.model)`` through every update. Subclasses change
    masks at hook points, through :attr:`maskset`.

    ``layers`` makes the mask set over a model (which layers are prunable); ``model``, when
    given, gets its mask buffers now (the harness loads a checkpoint into it before training).
    At every ``train`` call the mask set is bound to the strategy's own model, so a plugin
    built with a copy of the model prunes the model that is trained.
    """

    def __init__(self, layers: MaskFactory, model: nn.Module | None = None):
        super().__init__()
        self.layers = layers
        self.maskset: MaskSet | None = layers(model) if model is not None else None

    def bind(self, model: nn.Module) -> MaskSet:
        """The mask set over ``model``, made on first use (or when the model is another)."""
        if self.maskset is None or self.maskset.model is not model:
            self.maskset = self.layers(model)
        return self.maskset

    def before_training(self, strategy, **kw):
        self.bind(strategy.model)

    def after_backward(self, strategy, **kw):
        self.maskset.mask_grads()

    def after_update(self, strategy, **kw):
        self.maskset.apply()

    def metrics(self) -> dict:
        return {"dense_layers": list(self.maskset.dense_layers)}


def window_fraction(step: int, window: int) -> float:
    """Fraction of a rewiring window of ``window`` steps done after ``step`` steps, in [0, 1]
    (1.0 for an empty window): the clock of every schedule keyed to the stream's plan."""
    return min(1.0, step / window) if window else 1.0


def rewiring_window(per_epoch: int, epochs: int) -> int:
    """Optimizer steps of a megabatch's rewiring window: its first E - 1 epochs, or half of its
    steps when E = 1 (empty with a single step: the masks are then set before that step)."""
    return per_epoch * (epochs - 1) if epochs > 1 else per_epoch // 2


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
    Only the Avalanche strategy is read (its epochs, mini-batch size and data loader, the
    experience's stream for the plan), no harness object.
    """

    def __init__(self, layers: MaskFactory, model: nn.Module | None = None):
        super().__init__(layers, model)
        self.exp_step = 0  # optimizer steps taken in the current megabatch
        self.window = 1  # planned steps of the current megabatch's rewiring window
        self.t = 0  # the current megabatch (0-based)
        # planned step at which each megabatch starts (planned_offsets), for planned_step
        self.offsets: list[int] = [0, 0]

    def before_training_exp(self, strategy, **kw):
        self.exp_step = 0
        self.t = strategy.experience.current_experience
        self.window = rewiring_window(len(strategy.dataloader), int(strategy.train_epochs))
        self.offsets = planned_offsets(strategy)

    @property
    def planned_total(self) -> int:
        """The stream's planned optimizer steps."""
        return self.offsets[-1]

    def planned_step(self) -> float:
        """Position on the stream's planned optimizer steps: megabatch t's planned span run
        over its rewiring window, so a schedule keyed to the stream's plan reaches the density
        due at the megabatch's planned end at the window's last step. Past the plan (an
        experience beyond the stream the plan was made for) it is the plan's end."""
        if self.t + 1 >= len(self.offsets):
            return float(self.planned_total)
        span = self.offsets[self.t + 1] - self.offsets[self.t]
        return self.offsets[self.t] + span * self.window_progress()

    def planned_end(self) -> int:
        """The planned step at which the current megabatch ends."""
        return self.offsets[min(self.t + 1, len(self.offsets) - 1)]

    def last_experience(self) -> bool:
        """Whether the current megabatch is the last one of the stream's plan."""
        return self.t >= len(self.offsets) - 2

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
        return window_fraction(self.exp_step, self.window)

    def masks_final(self, strategy=None) -> bool:
        """Read by early stopping: a megabatch never ends while its masks may still change."""
        return not self.window_open()


def _layer_masks(model: nn.Module, prune_first: bool, prune_last: bool,
                 prune_linear: bool) -> MaskSet:
    return MaskSet(model, prune_first=prune_first, prune_last=prune_last,
                   prune_linear=prune_linear)


def mask_layers(params) -> MaskFactory:
    """The mask set of a strategy's layer choice (``prune_first``, ``prune_last``,
    ``prune_linear``), as a function of the model it is made over."""
    return partial(_layer_masks, prune_first=params.prune_first, prune_last=params.prune_last,
                   prune_linear=params.prune_linear)


def pruner_sample(ctx, t: int, fraction: float, purpose: str = "prune-sample"):
    """The harness's form of :func:`~alma_bench.sparsity.experience.experience_sample`: the
    same seeded sample of ``fraction x |M_t|`` examples of megabatch t's replay-inclusive
    training set, read from the run's stream directly."""
    x, y = ctx.stream.train_set(t)
    idx = sample_indices(len(y), ctx.stream.megabatches[t].size, fraction,
                         derive(ctx.seeds.strategy, purpose, t))
    return ctx.batches(x[idx], y[idx], seed=derive(ctx.seeds.strategy, purpose + "-order", t))


def prune_now(strategy, maskset: MaskSet, pruner_name: str, scope: str, density: float,
              seed: int, sample_fraction: float = 0.2):
    """Score with the named pruner (on a sample of the current experience if it needs data)
    and prune ``maskset`` (nested) to ``density``; optimizer state follows the masks."""
    t = strategy.experience.current_experience
    pruner = PRUNERS.create(pruner_name, scope=scope)
    batches = (experience_sample(strategy, sample_fraction, seed) if pruner_name == "snip"
               else None)
    g = torch.Generator().manual_seed(derive(seed, "prune", t))
    return prune(strategy.model, maskset, pruner, density, batches, generator=g,
                 optimizer=strategy.optimizer)


def check_pruner(name: str) -> None:
    """ValueError (a one-line UserError at suite load) for an unknown pruner name."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner '{name}'. Valid: {', '.join(PRUNERS.names())}")
