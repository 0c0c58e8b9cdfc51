"""Gradual magnitude pruning (Zhu & Gupta 2017; ALGORITHMS.md section 7).

``d(s) = d_f + (d_i - d_f) (1 - (s - s0)/(s1 - s0))^3`` for optimizer steps s in [s0, s1],
pruning by magnitude every ``update_period`` steps; masks only shrink. s0 and s1 are fractions
(``begin``, ``end``) of the stream's planned optimizer steps, so the schedule is keyed to
steps, not epochs. When early stopping ends a megabatch before its planned steps, the schedule
skips to that megabatch's planned end, so the final density is still reached on time. Any
registered schedule can replace the cubic one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from alma_bench.registry import SCHEDULES, STRATEGIES
from alma_bench.sparsity import check_density, progress
from alma_bench.sparsity.plugin import MaskedTraining, prune_now, strategy_masks


class GradualPlugin(MaskedTraining):
    def __init__(self, ctx, maskset, params: GMP):
        super().__init__(maskset)
        self.ctx, self.p = ctx, params
        planned = [ctx.steps_per_megabatch(t) for t in range(ctx.n_megabatches)]
        # planned step at which megabatch t starts (the last entry: the stream's total)
        self.offsets = [sum(planned[:t]) for t in range(len(planned) + 1)]
        self.s0, self.s1 = params.begin * self.offsets[-1], params.end * self.offsets[-1]
        self.schedule = SCHEDULES.create(params.schedule)
        self.start = 0  # ctx.step when the current megabatch began

    def planned_step(self) -> int:
        """Position on the schedule: planned steps before this megabatch plus steps taken in
        it (not ctx.step, which falls behind the plan once early stopping cuts a megabatch)."""
        return self.offsets[self.ctx.megabatch] + self.ctx.step - self.start

    def target(self, step: int) -> float:
        return self.schedule.density(progress(step, self.s0, self.s1), self.p.initial_density,
                                     self.p.final_density)

    def before_training_exp(self, strategy, **kw):
        self.start = self.ctx.step
        s = self.planned_step()
        if s >= self.s0:  # on schedule from the first step: d_i itself is applied at s0
            self._shrink_to(self.target(s), strategy)

    def after_update(self, strategy, **kw):
        super().after_update(strategy, **kw)
        s = self.planned_step()  # the clock plugin has already counted this step
        # pruning steps: s0, s0 + update_period, ... (s0 rounded up to a whole step)
        if s >= self.s0 and (s - math.ceil(self.s0)) % self.p.update_period == 0:
            self._shrink_to(self.target(s), strategy)

    def end_target(self) -> float:
        """The density due at the planned end of the current megabatch."""
        return self.target(self.offsets[self.ctx.megabatch + 1])

    def after_training_exp(self, strategy, **kw):
        # The megabatch counts as complete on the schedule even if early stopping cut it, so
        # the kept model is pruned to the density due at its planned end (section 7).
        self._shrink_to(self.end_target(), strategy)

    def _shrink_to(self, d: float, strategy) -> None:
        if round(d * self.maskset.numel()) < self.maskset.kept():
            prune_now(self.ctx, self.maskset, "magnitude", "global", d, self.ctx.megabatch, 0.0,
                      strategy.optimizer)

    def metrics(self) -> dict:
        return {**super().metrics(), "target_density": self.end_target()}


@STRATEGIES.register("gmp")
@dataclass(frozen=True)
class GMP:
    """Gradual magnitude pruning on a cubic schedule, every update_period steps (Zhu & Gupta)."""

    # 2: the kept epoch is chosen among epochs with the current masks; schedule on planned steps
    revision: ClassVar[int] = 2

    final_density: float = 0.366
    initial_density: float = 1.0
    update_period: int = 20  # optimizer steps between mask updates
    begin: float = 0.0  # s0 as a fraction of the stream's planned steps
    end: float = 0.75  # s1: final density reached here, then held
    schedule: str = "cubic"
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = True  # Zhu & Gupta prune every layer but the classifier

    def __post_init__(self):
        check_density(self.final_density)
        check_density(self.initial_density)
        if self.update_period < 1:
            raise ValueError(f"update_period must be >= 1, got {self.update_period}")
        if not 0 <= self.begin < self.end <= 1:
            raise ValueError(f"need 0 <= begin < end <= 1, got begin={self.begin}, end={self.end}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.schedule}'. "
                             f"Valid: {', '.join(SCHEDULES.names())}")

    def plugins(self, ctx) -> list:
        ms = strategy_masks(ctx, self)
        return [GradualPlugin(ctx, ms, self)]
