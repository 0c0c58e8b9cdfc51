"""Prune-and-regrow under a density schedule: SET-style MP-RR and RP-RR (ALGORITHMS.md sec. 9).

Every ``update_period`` steps each layer l is brought to exactly round(d_l(s) x n_l) weights:
pruned by magnitude (MP) or at random (RP) when above it, regrown at random (RR) when below,
and ``drop_fraction`` of its surviving weights are swapped (dropped, regrown at random),
optionally cosine-decayed (RigL). The swap is SET's as RigL's code runs it, by default:
``drop_by: magnitude`` drops the smallest |w| among the survivors whatever the scheduled
pruner (``pruner`` drops by the scheduled pruner's scores instead, so RP-RR swaps at random),
and ``regrow_dropped: true`` lets growth pick a just-dropped position, which then keeps its
value and optimizer state (``false`` is DSR's rule: regrowth only where the layer was off, so
every swapped weight comes back as a new zero one, a larger effective swap). Newly grown
weights start at 0 with zeroed optimizer state.

The schedule d_l(s) (any registered one, per layer if wanted) runs from ``initial_density`` to
``density`` over [``begin``, ``end``] of the stream's planned optimizer steps, as gmp's does:
megabatch t's planned span is run over its rewiring window (its first E - 1 epochs), so the
density due at its planned end is reached at the window's last step and its last epoch trains
under it. Who decides the densities is :meth:`PruneRegrowPlugin.layer_targets`, so a learned
schedule (an RL agent) subclasses the plugin and replaces that one method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from alma_bench.errors import UserError
from alma_bench.registry import PRUNERS, SCHEDULES, STRATEGIES
from alma_bench.sparsity import check_density, progress
from alma_bench.sparsity.plugin import RewiringTraining, mask_layers
from alma_bench.sparsity.rewire import (
    FINAL_MASKS,
    INITIAL_STATE,
    final_masks,
    initial_state,
    save_artifact,
    set_layer_densities,
)
from alma_bench.spec.config import derive


class PruneRegrowPlugin(RewiringTraining):
    """Prune-regrow as a plain Avalanche plugin: the schedule runs over the planned
    optimizer steps of the experience's stream; ``seed`` seeds the regrowth; ``run_dir`` (the
    harness's) receives the initial state and the final masks."""

    def __init__(self, params: PruneRegrow | None = None, *, seed: int = 0,
                 model: nn.Module | None = None, run_dir: Path | None = None):
        params = PruneRegrow() if params is None else params
        super().__init__(mask_layers(params), model)
        self.p, self.seed, self.run_dir = params, seed, run_dir
        self.pruner = PRUNERS.create(params.pruner, scope="layer")
        self._schedules: tuple[tuple, dict] = ((), {})
        if self.maskset is not None:  # a schedule mapping that names no layer fails now
            self.schedules  # noqa: B018

    @property
    def s0(self) -> float:
        return self.p.begin * self.planned_total

    @property
    def s1(self) -> float:
        return self.p.end * self.planned_total

    @property
    def schedules(self) -> dict:
        """Layer name -> schedule, for the layers of the mask set (made once per layer set)."""
        names = tuple(self.maskset.names)
        if self._schedules[0] != names:
            self._schedules = (names, layer_schedules(self.p.schedule, list(names)))
        return self._schedules[1]

    def schedule_progress(self, planned_step: float | None = None) -> float:
        """Schedule progress in [0, 1]: megabatch t's planned span run over its window."""
        if planned_step is None:
            planned_step = self.planned_step()
        return progress(planned_step, self.s0, self.s1)

    def layer_targets(self, progress: float) -> dict[str, float]:
        """The density d_l of every layer at ``progress``: the replaceable decision."""
        p = self.p
        return {n: s.density(progress, p.initial_density, p.density)
                for n, s in self.schedules.items()}

    def drop_fraction(self, progress: float) -> float:
        if self.p.drop_decay == "cosine":
            return self.p.drop_fraction * 0.5 * (1 + math.cos(math.pi * progress))
        return self.p.drop_fraction

    def update_masks(self, targets: dict[str, float], drop: float, strategy) -> None:
        g = torch.Generator().manual_seed(derive(self.seed, "prune-regrow", self.t, self.exp_step))
        set_layer_densities(self.maskset, targets, self.pruner, drop, g, strategy.optimizer,
                            drop_by=self.p.drop_by, regrow_dropped=self.p.regrow_dropped)

    def before_training_exp(self, strategy, **kw):
        super().before_training_exp(strategy, **kw)
        if self.t == 0:
            save_artifact(self.run_dir, INITIAL_STATE, initial_state(strategy.model),
                          overwrite=False)
        # on schedule before the first step (d_0 itself, e.g. the constant schedule's d_T);
        # no swap here: later megabatches start where the previous window left them
        self.update_masks(self.layer_targets(self.schedule_progress()), 0.0, strategy)

    def rewire(self, strategy) -> None:
        # every update_period steps, and at the window's last step, where the density due at
        # the megabatch's planned end is reached exactly
        if self.exp_step % self.p.update_period == 0 or not self.window_open():
            p = self.schedule_progress()
            self.update_masks(self.layer_targets(p), self.drop_fraction(p), strategy)

    def after_training_exp(self, strategy, **kw):
        if self.last_experience():  # masks are final: the window has closed
            save_artifact(self.run_dir, FINAL_MASKS, final_masks(self.maskset))

    def metrics(self) -> dict:
        end = self.layer_targets(self.schedule_progress(self.planned_end()))
        sizes = {n: m.numel() for n, m in self.maskset.masks.items()}
        kept = sum(round(end[n] * sizes[n]) for n in sizes)
        return {**super().metrics(), "target_density": kept / sum(sizes.values()),
                "drop_fraction": self.drop_fraction(self.schedule_progress())}


def layer_schedules(schedule: str | dict, names: list[str]) -> dict:
    """Layer name -> schedule object, from one name or a {layer: name} mapping whose key
    ``default`` covers the layers it does not name."""
    if isinstance(schedule, str):
        return {n: SCHEDULES.create(schedule) for n in names}
    unknown = sorted(set(schedule) - set(names) - {"default"})
    missing = [n for n in names if n not in schedule and "default" not in schedule]
    if unknown or missing:
        raise UserError(f"prune-regrow: schedule mapping: unknown layer(s) {unknown}, missing "
                        f"{missing}. Valid: {', '.join(names)}, default")
    return {n: SCHEDULES.create(schedule.get(n, schedule.get("default"))) for n in names}


@STRATEGIES.register("prune-regrow")
@dataclass(frozen=True)
class PruneRegrow:
    """Prune (magnitude or random) and regrow at random to a per-layer density schedule."""

    # revision 2: the swap's defaults became SET's (drop_by magnitude, regrow_dropped true);
    # every field is recorded, so no run made under the old defaults is reused
    revision: ClassVar[int] = 2

    density: float = 0.1  # final density d_T of every layer (the seeded table's 10%)
    initial_density: float = 1.0  # d_0
    schedule: str | dict = "cubic"  # a registered schedule, or {layer or "default": name}
    pruner: Literal["magnitude", "random"] = "magnitude"  # MP-RR or RP-RR
    update_period: int = 20  # optimizer steps between mask updates
    drop_fraction: float = 0.3  # share of surviving weights swapped per update (SET's 0.3)
    drop_decay: Literal["none", "cosine"] = "none"
    # the swap drops the smallest |w| (SET, RigL), or by the scheduled pruner's scores
    drop_by: Literal["pruner", "magnitude"] = "magnitude"
    # growth may land on a just-dropped position, which keeps its weight and momentum (SET as
    # RigL's code runs it); false: DSR's rule, regrowth only where the layer was already off
    regrow_dropped: bool = True
    begin: float = 0.0  # schedule start, as a fraction of the stream's planned steps
    end: float = 1.0  # d_T reached here, then held
    prune_first: bool = True  # the suite-wide default layer set: every conv, no Linear layer
    prune_last: bool = False
    prune_linear: bool = False

    def __post_init__(self):
        check_density(self.density)
        check_density(self.initial_density)
        names = [self.schedule] if isinstance(self.schedule, str) else list(
            self.schedule.values())
        bad = [s for s in names if not isinstance(s, str) or s not in SCHEDULES]
        if bad:
            raise ValueError(f"unknown schedule {bad[0]!r}. Valid: {', '.join(SCHEDULES.names())}")
        if self.update_period < 1:
            raise ValueError(f"update_period must be >= 1, got {self.update_period}")
        if not 0 <= self.drop_fraction < 1:
            raise ValueError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if not 0 <= self.begin < self.end <= 1:
            raise ValueError(f"need 0 <= begin < end <= 1, got begin={self.begin}, end={self.end}")

    def plugins(self, ctx) -> list:
        return [PruneRegrowPlugin(self, seed=ctx.seeds.strategy, model=ctx.model,
                                  run_dir=ctx.run_dir)]
