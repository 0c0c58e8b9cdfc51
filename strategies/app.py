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

from torch import nn

from alma_bench.registry import STRATEGIES
from alma_bench.sparsity import app_densities, check_density
from alma_bench.sparsity.experience import scheduled, stream_length
from alma_bench.sparsity.plugin import MaskedTraining, check_pruner, mask_layers, prune_now


class ProgressivePlugin(MaskedTraining):
    """APP as a plain Avalanche plugin: before experience t, prune ``strategy.model``
    (nested) to ``d_t = base ** linspace(1, tau, N)[t]``.

    N is ``n_experiences`` when given, else the length of the experience's stream
    (``origin_stream``: a slice of a stream keeps the whole stream's schedule). Past N (a
    stream longer than planned) the schedule is complete and the density holds at its final
    value. The pruner's sample comes from the experience's dataset; ``seed`` seeds it.
    """

    def __init__(self, params: APP | None = None, *, seed: int = 0,
                 model: nn.Module | None = None, n_experiences: int | None = None):
        params = APP() if params is None else params
        super().__init__(mask_layers(params), model)
        self.p, self.seed, self.n_experiences = params, seed, n_experiences
        self.target = 1.0  # the density of the current experience

    def before_training_exp(self, strategy, **kw):
        exp = strategy.experience
        n = stream_length(exp, self.n_experiences)
        self.target = scheduled(app_densities(n, self.p.tau, self.p.base),
                                exp.current_experience)
        prune_now(strategy, self.maskset, self.p.pruner, self.p.scope, self.target, self.seed,
                  self.p.sample_fraction)

    def metrics(self) -> dict:
        return {**super().metrics(), "target_density": self.target}


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
            if d > self.base:  # tau < 1: APP prunes to base before the first megabatch
                raise ValueError(f"density must be <= base ({self.base:g}), got {d:g}")
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
        return [ProgressivePlugin(self, seed=ctx.seeds.strategy, model=ctx.model)]
