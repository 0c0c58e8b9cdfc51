"""Fail a run whose training diverges (a NaN or infinite loss or weight), cheaply.

Each step's loss is kept on the device (no host sync and no kernel in the hot loop: a
``StepTally`` counts the non-finite ones in batched chunks) and checked once per epoch; the
weights are checked once per megabatch. Checking the loss matters: the best-validation
restore would otherwise hide a diverged epoch behind an earlier finite one.
"""

from __future__ import annotations

import torch

from alma_bench.run.plugin_base import SupervisedPlugin  # Avalanche's, without importing Avalanche
from alma_bench.run.tally import StepTally, non_finite


class NonFiniteError(RuntimeError):
    """Training produced NaN or infinite numbers: the run fails (the suite goes on)."""


class FiniteLossCheck(SupervisedPlugin):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.losses = None
        self.epoch = 0

    def before_training_exp(self, strategy, **kw):
        self.epoch = 0

    def before_training_epoch(self, strategy, **kw):
        self.losses = StepTally(non_finite)
        self.epoch += 1

    def after_training_iteration(self, strategy, **kw):
        self.losses.add(strategy.loss.detach())

    def after_training_epoch(self, strategy, **kw):
        bad = self.losses.total() if self.losses is not None else None
        if bad is not None and int(bad):
            raise NonFiniteError(f"training loss is NaN or infinite at {int(bad)} step(s) of "
                                 f"megabatch {self.ctx.megabatch + 1}, epoch {self.epoch}")


def check_weights(model: torch.nn.Module, megabatch: int) -> None:
    """Raise NonFiniteError when a parameter holds NaN or inf after ``megabatch`` (1-based)."""
    flags = [p.detach().isfinite().all() for p in model.parameters()]
    if flags and not bool(torch.stack(flags).all()):
        bad = [n for n, p in model.named_parameters() if not bool(p.detach().isfinite().all())]
        raise NonFiniteError(f"non-finite weights after megabatch {megabatch} in "
                             f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
