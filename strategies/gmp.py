"""Gradual magnitude pruning (Zhu & Gupta 2017; ALGORITHMS.md section 7).

``d(s) = d_f + (d_i - d_f) (1 - (s - s0)/(s1 - s0))^3`` for optimizer steps s in [s0, s1],
pruning by magnitude every ``update_period`` steps; masks only shrink. s0 and s1 are fractions
(``begin``, ``end``) of the stream's planned optimizer steps, so the schedule is keyed to
steps, not epochs. Within megabatch t the schedule's span for t is run over the megabatch's
rewiring window (its first E - 1 epochs, see ``RewiringTraining``): the density due at the
megabatch's planned end is reached at the window's last step, and the last epoch trains under
it, so the kept model was trained at the density it reports. Any registered schedule can
replace the cubic one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from alma_bench.registry import SCHEDULES, STRATEGIES
from alma_bench.sparsity import app_densities, check_density, progress
from alma_bench.sparsity.plugin import RewiringTraining, mask_layers, prune_now

APP_FINAL = app_densities(8)[-1]  # 0.8 ** 4.5: the final density of APP and OSP


class GradualPlugin(RewiringTraining):
    """GMP as a plain Avalanche plugin: the schedule runs over the planned optimizer steps of
    the experience's stream (its experiences' sizes, the strategy's epochs and mini-batch
    size); past the plan it holds the final density."""

    def __init__(self, params: GMP | None = None, *, model: nn.Module | None = None):
        params = GMP() if params is None else params
        super().__init__(mask_layers(params), model)
        self.p = params
        self.schedule = SCHEDULES.create(params.schedule)

    @property
    def s0(self) -> float:
        return self.p.begin * self.planned_total

    @property
    def s1(self) -> float:
        return self.p.end * self.planned_total

    def target(self, step: float) -> float:
        return self.schedule.density(progress(step, self.s0, self.s1), self.p.initial_density,
                                     self.p.density)

    def before_training_exp(self, strategy, **kw):
        super().before_training_exp(strategy, **kw)
        s = self.planned_step()
        if s >= self.s0:  # on schedule from the first step: d_i itself is applied at s0
            self._shrink_to(self.target(s), strategy)

    def rewire(self, strategy) -> None:
        # pruning steps: every update_period steps of the megabatch, and the window's last
        # step, where the density due at the megabatch's planned end is reached exactly
        if self.exp_step % self.p.update_period == 0 or not self.window_open():
            s = self.planned_step()
            if s >= math.ceil(self.s0):
                self._shrink_to(self.target(s), strategy)

    def end_target(self) -> float:
        """The density due at the planned end of the current megabatch."""
        return self.target(self.planned_end())

    def _shrink_to(self, d: float, strategy) -> None:
        if round(d * self.maskset.numel()) < self.maskset.kept():
            # magnitude needs no data and no random draw: the seed is never read
            prune_now(strategy, self.maskset, "magnitude", self.p.scope, d, seed=0)

    def metrics(self) -> dict:
        return {**super().metrics(), "target_density": self.end_target()}


@STRATEGIES.register("gmp")
@dataclass(frozen=True)
class GMP:
    """Gradual magnitude pruning on a cubic schedule, every update_period steps (Zhu & Gupta)."""

    # 3: the megabatch's density is reached before its last epoch and never changed after
    # selection; one final-density knob (density) and APP's layer set
    revision: ClassVar[int] = 3

    density: float = APP_FINAL  # final density d_f, as every pruning strategy names it
    initial_density: float = 1.0
    update_period: int = 20  # optimizer steps between mask updates
    begin: float = 0.0  # s0 as a fraction of the stream's planned steps
    end: float = 0.75  # s1: final density reached here, then held
    schedule: str = "cubic"
    scope: Literal["global", "layer"] = "global"  # Zhu & Gupta prune each layer to d(s)
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False  # the same layer set as app and osp, so densities compare

    def __post_init__(self):
        check_density(self.density)
        check_density(self.initial_density)
        if self.update_period < 1:
            raise ValueError(f"update_period must be >= 1, got {self.update_period}")
        if not 0 <= self.begin < self.end <= 1:
            raise ValueError(f"need 0 <= begin < end <= 1, got begin={self.begin}, end={self.end}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.schedule}'. "
                             f"Valid: {', '.join(SCHEDULES.names())}")

    def plugins(self, ctx) -> list:
        return [GradualPlugin(self, model=ctx.model)]
