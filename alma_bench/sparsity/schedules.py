"""Density schedules: *when and how many* weights are kept (ALGORITHMS.md sections 6, 7, 9).

A schedule maps training progress in [0, 1] to a density; which weights are kept is the
pruner's business and the mask set applies it. The caller decides what progress means
(optimizer steps between ``begin`` and ``end``, or megabatch index t / (N - 1)), see
:func:`progress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from alma_bench.errors import UserError
from alma_bench.registry import SCHEDULES

__all__ = [
    "Constant",
    "Cosine",
    "Cubic",
    "Geometric",
    "Linear",
    "Quadratic",
    "app_densities",
    "check_density",
    "progress",
]


#: The smallest density a strategy may ask for: below it even a large network keeps no weight
#: (a model with 0 weights "trains" to a constant guess and reports its accuracy).
MIN_DENSITY = 1e-6


def check_density(d: float, minimum: float = MIN_DENSITY) -> float:
    """Return ``d`` as a float, or raise UserError unless minimum <= d <= 1 (0 < d when
    ``minimum`` is 0: a layer's share of a global density may be smaller than a target)."""
    rule = f"[{minimum:g}, 1]" if minimum else "(0, 1]"
    try:
        value = float(d)
    except (TypeError, ValueError):
        raise UserError(f"density must be in {rule}, got {d!r}") from None
    # `not (...)` also rejects NaN, which compares false with everything.
    if isinstance(d, bool) or not (0.0 < value <= 1.0 and value >= minimum):
        raise UserError(f"density must be in {rule}, got {d!r}")
    return value


def progress(step: float, begin: float, end: float) -> float:
    """Fraction of the way from ``begin`` to ``end`` at ``step``, clamped to [0, 1]."""
    if end <= begin:
        return 1.0 if step >= begin else 0.0
    return _clamp((step - begin) / (end - begin))


def _clamp(p: float) -> float:
    return min(1.0, max(0.0, float(p)))


def _polynomial(p: float, initial: float, final: float, power: int) -> float:
    # Zhu & Gupta (2017): d = d_f + (d_i - d_f) * (1 - p) ** k.
    return final + (initial - final) * (1.0 - _clamp(p)) ** power


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant:
    """The final density from the very start (prune once, then hold)."""

    def density(self, progress: float, initial: float, final: float) -> float:
        """``final`` at every progress."""
        return float(final)


@SCHEDULES.register("linear")
@dataclass(frozen=True)
class Linear:
    """Linear interpolation from the initial to the final density."""

    def density(self, progress: float, initial: float, final: float) -> float:
        """``final + (initial - final) * (1 - p)``."""
        return _polynomial(progress, initial, final, 1)


@SCHEDULES.register("quadratic")
@dataclass(frozen=True)
class Quadratic:
    """Zhu & Gupta form with power 2: fast early pruning, slow near the end."""

    def density(self, progress: float, initial: float, final: float) -> float:
        """``final + (initial - final) * (1 - p) ** 2``."""
        return _polynomial(progress, initial, final, 2)


@SCHEDULES.register("cubic")
@dataclass(frozen=True)
class Cubic:
    """Gradual magnitude pruning schedule of Zhu & Gupta (2017): power 3."""

    def density(self, progress: float, initial: float, final: float) -> float:
        """``final + (initial - final) * (1 - p) ** 3``."""
        return _polynomial(progress, initial, final, 3)


@SCHEDULES.register("cosine")
@dataclass(frozen=True)
class Cosine:
    """Half-cosine decay from the initial to the final density."""

    def density(self, progress: float, initial: float, final: float) -> float:
        """``final + (initial - final) * 0.5 * (1 + cos(pi p))``."""
        p = _clamp(progress)
        return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * p))


@SCHEDULES.register("geometric")
@dataclass(frozen=True)
class Geometric:
    """APP's schedule: base ** linspace(1, tau, N); ignores the initial and final densities."""

    tau: float = 4.5
    base: float = 0.8

    def __post_init__(self):
        # ValueError becomes a one-line UserError in SCHEDULES.create.
        if not 0.0 < self.base < 1.0:
            raise ValueError(f"base must be in (0, 1), got {self.base}")
        if not self.tau >= 1.0:
            raise ValueError(f"tau must be >= 1 so that density never rises, got {self.tau}")

    def density(self, progress: float, initial: float = 1.0, final: float = 1.0) -> float:
        """``base ** (1 + (tau - 1) * p)``; progress t / (N - 1) gives megabatch t's density."""
        return self.base ** (1.0 + (self.tau - 1.0) * _clamp(progress))


def app_densities(n_megabatches: int, tau: float = 4.5, base: float = 0.8) -> list[float]:
    """APP's density before each of the N megabatches: ``base ** linspace(1, tau, N)``.

    For N = 8, tau = 4.5: 0.800, 0.716, 0.640, 0.572, 0.512, 0.458, 0.410, 0.366.
    """
    if isinstance(n_megabatches, bool) or not isinstance(n_megabatches, int) or n_megabatches < 1:
        raise UserError(f"n_megabatches must be a positive integer, got {n_megabatches!r}")
    try:
        schedule = Geometric(tau=float(tau), base=float(base))
    except ValueError as e:
        raise UserError(f"geometric schedule: {e}") from None
    if n_megabatches == 1:
        return [schedule.density(0.0)]  # numpy.linspace(1, tau, 1) == [1.0]
    return [schedule.density(t / (n_megabatches - 1)) for t in range(n_megabatches)]
