"""Sparsity: mask set (owns masks), pruners (score weights), schedules (density over time).

Importing this package registers every built-in pruner and schedule.
"""

from alma_bench.sparsity.masks import MaskSet, erk_densities, plain_state_dict
from alma_bench.sparsity.pruners import Magnitude, Random, Snip, prune
from alma_bench.sparsity.schedules import (
    Constant,
    Cosine,
    Cubic,
    Geometric,
    Linear,
    Quadratic,
    app_densities,
    check_density,
    progress,
)

__all__ = [
    "Constant",
    "Cosine",
    "Cubic",
    "Geometric",
    "Linear",
    "Magnitude",
    "MaskSet",
    "Quadratic",
    "Random",
    "Snip",
    "plain_state_dict",
    "app_densities",
    "check_density",
    "erk_densities",
    "progress",
    "prune",
]
