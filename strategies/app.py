"""Anytime Progressive Pruning (APP, Misra et al. 2022; ALGORITHMS.md section 6).

Before megabatch t, prune the current model (nested) to ``d_t = base ** delta_t`` with
``delta = linspace(1, tau, N)``; the pruner sees a seeded sample of ``0.2 x |M_t|`` examples
from the replay-inclusive megabatch. Unlike the released APP code (which scores random weights
from megabatch 2 on and intersects masks, ending near density 0.02), the density here is
exactly on schedule at every megabatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from alma_bench.registry import STRATEGIES
from alma_bench.sparsity import app_densities, check_density
from alma_bench.sparsity.plugin import MaskedTraining, check_pruner, prune_now, strategy_masks


class ProgressivePlugin(MaskedTraining):
    def __init__(self, ctx, maskset, params: APP):
        super().__init__(maskset)
        self.ctx, self.p = ctx, params
        self.densities = app_densities(ctx.n_megabatches, params.tau, params.base)

    def before_training_exp(self, strategy, **kw):
        t = strategy.experience.current_experience
        prune_now(self.ctx, self.maskset, self.p.pruner, self.p.scope, self.densities[t], t,
                  self.p.sample_fraction, strategy.optimizer)

    def metrics(self) -> dict:
        return {**super().metrics(), "target_density": self.densities[self.ctx.megabatch]}


@STRATEGIES.register("app")
@dataclass(frozen=True)
class APP:
    """Anytime Progressive Pruning: prune a little more (nested) before each megabatch.

    The final density is ``base ** tau``; give either ``density`` (the knob every pruning
    strategy shares, so a grid over it works across strategies) or ``tau`` (the paper's), and
    the other is derived. Both given and disagreeing is an error. Default: tau = 4.5."""

    # 2: the SNIP sample is 0.2 x the whole megabatch (before its validation split)
    revision: ClassVar[int] = 2

    pruner: str = "snip"
    density: float | None = None  # final density; derived from tau when not given
    tau: float | None = None  # 4.5 when neither is given
    base: float = 0.8
    scope: Literal["global", "layer"] = "global"
    sample_fraction: float = 0.2
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False  # APP prunes every conv and no Linear layer

    def __post_init__(self):
        check_pruner(self.pruner)
        if not 0 < self.base < 1:
            raise ValueError(f"base must be in (0, 1), got {self.base}")
        if self.density is None:
            tau = 4.5 if self.tau is None else float(self.tau)
            object.__setattr__(self, "tau", tau)
            object.__setattr__(self, "density", self.base ** tau)
        else:
            d = float(check_density(self.density))
            tau = round(math.log(d) / math.log(self.base), 12)
            if self.tau is not None and not math.isclose(self.base ** self.tau, d,
                                                          rel_tol=1e-9):
                raise ValueError(f"density={d} and tau={self.tau} disagree (base ** tau = "
                                 f"{self.base ** self.tau:.6g}); give one of them")
            object.__setattr__(self, "tau", tau if self.tau is None else float(self.tau))
            object.__setattr__(self, "density", d)
        if self.tau < 1:
            raise ValueError(f"tau must be >= 1 (density <= base = {self.base}), got "
                             f"tau={self.tau:.6g}, density={self.density:.6g}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")

    def plugins(self, ctx) -> list:
        ms = strategy_masks(ctx, self)
        return [ProgressivePlugin(ctx, ms, self)]
