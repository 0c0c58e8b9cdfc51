"""Fail a run whose training diverges (a NaN or infinite loss or weight), cheaply.

The loss is summed on the device step by step (no host sync in the hot loop) and checked once
per epoch; the weights are checked once per megabatch. Checking the loss matters: the best-
validation restore would otherwise hide a diverged epoch behind an earlier finite one.
"""

from __future__ import annotations

import torch

from alma_bench.plugin_base import SupervisedPlugin  # Avalanche's, without importing Avalanche


class NonFiniteError(RuntimeError):
    """Training produced NaN or infinite numbers: the run fails (the suite goes on)."""


class FiniteLossCheck(SupervisedPlugin):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.total = None
        self.epoch = 0

    def before_training_exp(self, strategy, **kw):
        self.epoch = 0

    def before_training_epoch(self, strategy, **kw):
        self.total = None
        self.epoch += 1

    def after_training_iteration(self, strategy, **kw):
        loss = strategy.loss.detach()
        self.total = loss if self.total is None else self.total + loss

    def after_training_epoch(self, strategy, **kw):
        if self.total is not None and not bool(torch.isfinite(self.total)):
            raise NonFiniteError(f"training loss is {float(self.total)} in megabatch "
                                 f"{self.ctx.megabatch + 1}, epoch {self.epoch}")


def check_weights(model: torch.nn.Module, megabatch: int) -> None:
    """Raise NonFiniteError when a parameter holds NaN or inf after ``megabatch`` (1-based)."""
    flags = [p.detach().isfinite().all() for p in model.parameters()]
    if flags and not bool(torch.stack(flags).all()):
        bad = [n for n, p in model.named_parameters() if not bool(p.detach().isfinite().all())]
        raise NonFiniteError(f"non-finite weights after megabatch {megabatch} in "
                             f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
