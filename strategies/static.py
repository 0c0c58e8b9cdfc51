"""Static sparse training with a fixed mask: the DPR paper's controls (ALGORITHMS.md sec. 8).

``structure: from_run`` takes the final masks of a finished dpr or prune-regrow run (named by
``structure_from``, a label of the same suite; the harness resolves it to that run's folder
with the same seed) and masks exactly the layers that run masked. ``init: original`` rewinds to
that run's saved initialisation (experiment c: bit-identical weights to the DPR run's start);
``init: random`` draws a fresh one (experiment b). ``structure: random`` is a random mask with
the same density in every layer, DPR's own start for the same seed and layers (experiment d).

``init: random`` is drawn from a seed of its own, not the run's init seed: with the same run
seed the run's init *is* the DPR run's, and experiment (b) would silently be (c).
The mask is applied before megabatch 1 and never changes, so selection is the harness's plain
best-validation rule over all epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
from torch import nn

from alma_bench.errors import UserError
from alma_bench.registry import STRATEGIES
from alma_bench.run.models import build_model
from alma_bench.sparsity import MaskSet, check_density
from alma_bench.sparsity.plugin import MaskedTraining, MaskFactory
from alma_bench.sparsity.rewire import (
    FINAL_MASKS,
    INITIAL_STATE,
    keep_dense,
    load_artifact,
    load_weights,
)
from alma_bench.spec.config import derive
from alma_bench.strategies.dpr import dsr_layers, random_structure


class StaticPlugin(MaskedTraining):
    """A fixed mask as a plain Avalanche plugin: before experience 0, load ``initial`` (a
    state dict without masks, named ``what`` in errors; None keeps the model's weights) into
    ``strategy.model`` and apply ``masks`` (layer name -> bool mask) over ``layers``."""

    def __init__(self, layers: MaskFactory, masks: dict, initial: dict | None = None, *,
                 what: str = "static: the initial state", model: nn.Module | None = None):
        super().__init__(layers, model)
        self.masks, self.initial, self.what = masks, initial, what

    def before_training_exp(self, strategy, **kw):
        if strategy.experience.current_experience != 0:
            return
        if self.initial is not None:  # rewound before the mask, as the source run started
            load_weights(strategy.model, self.initial, self.what)
        self.maskset.update(self.masks, strategy.optimizer)


def _source_masks(model: nn.Module, masks: dict, label: str | None) -> MaskSet:
    ms = MaskSet(model, prune_first=True, prune_last=True, prune_linear=True)
    bad = sorted(set(masks) - set(ms.names))
    if bad:
        raise UserError(f"static: {FINAL_MASKS} of structure_from={label!r} "
                        f"masks layers this model lacks: {', '.join(bad)}")
    keep_dense(ms, [n for n in ms.names if n not in masks])
    for name, m in ms.masks.items():
        if masks[name].shape != m.shape or masks[name].dtype != torch.bool:
            raise UserError(f"static: {FINAL_MASKS} of structure_from={label!r}:"
                            f" '{name}' is not a bool mask of shape {tuple(m.shape)}")
    return ms


def source_masks(ctx, params: Static) -> tuple[MaskFactory, dict]:
    """The mask set over exactly the layers the source run masked (as a function of the
    model), and its final masks; checked against the run's model now."""
    masks = load_artifact(ctx, "structure_from", params.structure_from, FINAL_MASKS, "static")
    layers = partial(_source_masks, masks=masks, label=params.structure_from)
    layers(ctx.model)
    return layers, masks


def fresh_state(ctx) -> dict:
    """A fresh initialisation of the run's model, from a seed of its own (module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(ctx.seeds.init, "static-init"))
        fresh = build_model(ctx.spec.model, ctx.stream.input_shape, ctx.stream.num_classes)
    return fresh.state_dict()


@STRATEGIES.register("static")
@dataclass(frozen=True)
class Static:
    """A fixed sparse mask: a finished run's final structure, or a random one."""

    depends_on: ClassVar[tuple[str, ...]] = ("structure_from",)

    structure: Literal["random", "from_run"] = "random"
    structure_from: str | None = None  # label of a dpr / prune-regrow entry (from_run)
    init: Literal["random", "original"] = "random"  # original: the source run's initial state
    # structure: random only (from_run takes the source run's layers and masks)
    density: float = 0.1
    prune_first: bool = True  # the suite-wide default layer set, as dpr
    prune_last: bool = False
    prune_linear: bool = False
    prune_1x1: bool = True

    def __post_init__(self):
        check_density(self.density)
        if self.structure == "from_run" and not self.structure_from:
            raise ValueError("structure=from_run needs structure_from: the label of a dpr or "
                             "prune-regrow entry of the same suite")
        if self.structure == "random" and self.structure_from is not None:
            raise ValueError("structure_from is read only with structure=from_run")
        if self.init == "original" and self.structure != "from_run":
            raise ValueError("init=original needs structure=from_run (the source run's "
                             "initial state)")

    def plugins(self, ctx) -> list:
        if self.structure == "random":
            layers = dsr_layers(self)
            masks = random_structure(ctx.seeds.strategy, layers(ctx.model), self.density)
        else:
            layers, masks = source_masks(ctx, self)
        if self.init == "original":
            initial = load_artifact(ctx, "structure_from", self.structure_from, INITIAL_STATE,
                                    "static")
            what = f"static: {INITIAL_STATE} of structure_from={self.structure_from!r}"
        else:
            initial, what = fresh_state(ctx), "static: fresh initialisation"
        return [StaticPlugin(layers, masks, initial, what=what, model=ctx.model)]
