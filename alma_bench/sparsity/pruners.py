"""Pruners: *which* weights to keep. Each returns one score per prunable weight, higher = kept.

A pruner never touches masks; :meth:`MaskSet.prune_to` turns scores into nested masks with an
exact density (ALGORITHMS.md section 4).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from alma_bench.registry import PRUNERS
from alma_bench.sparsity.masks import MaskSet

__all__ = ["Magnitude", "Random", "Snip", "prune"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Scoped:
    """Fields shared by every pruner: ranking scope and per-layer density distribution."""

    scope: Literal["global", "layer"] = "global"
    distribution: Literal["uniform", "erk"] = "uniform"

    def __post_init__(self):
        # ValueError becomes a one-line UserError in PRUNERS.create.
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be one of global, layer, got {self.scope!r}")
        if self.distribution not in ("uniform", "erk"):
            raise ValueError(f"distribution must be one of erk, uniform, got {self.distribution!r}")
        if self.scope == "global" and self.distribution != "uniform":
            # A global ranking sets per-layer densities itself; silently ignoring erk would lie.
            raise ValueError("distribution 'erk' needs scope 'layer'")


@PRUNERS.register("magnitude")
@dataclass(frozen=True)
class Magnitude(_Scoped):
    """Keep the largest |w|."""

    def scores(
        self, model: nn.Module, maskset: MaskSet, batches: Batches | None = None, *, generator=None
    ) -> dict[str, torch.Tensor]:
        """|w| per prunable layer."""
        return {n: w.detach().abs() for n, w in maskset.weights.items()}


@PRUNERS.register("random")
@dataclass(frozen=True)
class Random(_Scoped):
    """Keep random weights (seeded uniform scores)."""

    def scores(
        self, model: nn.Module, maskset: MaskSet, batches: Batches | None = None, *, generator=None
    ) -> dict[str, torch.Tensor]:
        """Uniform [0, 1) scores drawn from ``generator`` (required) in layer order."""
        if generator is None:
            raise ValueError("the random pruner needs a seeded torch.Generator")
        # Drawn on the CPU so a seed gives the same mask on any device.
        return {
            n: torch.rand(w.shape, generator=generator).to(w.device)
            for n, w in maskset.weights.items()
        }


@PRUNERS.register("snip")
@dataclass(frozen=True)
class Snip(_Scoped):
    """SNIP (Lee et al. 2019): keep the largest |g * w| on a sample of training data."""

    def scores(
        self, model: nn.Module, maskset: MaskSet, batches: Batches | None = None, *, generator=None
    ) -> dict[str, torch.Tensor]:
        """|sum over batches of dL/dw * w|, with L the cross-entropy of each batch.

        Computed on a deep copy in train mode, so the model's weights, gradients and BatchNorm
        running statistics are left exactly as they were.
        """
        if batches is None:
            raise ValueError("snip needs batches of (inputs, labels)")
        clone = copy.deepcopy(model)
        clone.train()
        clone.zero_grad(set_to_none=True)
        seen = 0
        for x, y in batches:
            # backward() accumulates into .grad: gradients are summed over batches, as in APP.
            F.cross_entropy(clone(x), y).backward()
            seen += 1
        if seen == 0:
            raise ValueError("snip got no batches")
        out = {}
        for name in maskset.names:
            w = clone.get_submodule(name).weight
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            out[name] = (g * w).detach().abs()
        return out


def prune(
    model: nn.Module,
    maskset: MaskSet,
    pruner,
    density: float,
    batches: Batches | None = None,
    generator: torch.Generator | None = None,
    optimizer=None,
) -> dict[str, torch.Tensor]:
    """Score with ``pruner`` and prune ``maskset`` (nested) to ``density``; returns the masks."""
    scores = pruner.scores(model, maskset, batches, generator=generator)
    return maskset.prune_to(
        density, scores, scope=pruner.scope, distribution=pruner.distribution, optimizer=optimizer
    )
