"""Iterative magnitude pruning with rewinding (IMP; Frankle et al. 2019, open_lth), anytime.

**Anytime form** (``levels=0``, the default): the rewind point is recorded after
``rewind_step`` optimizer steps of megabatch 1 (``rewind_step=0``: the original
initialisation, recorded before the first step). Before every later megabatch t (one level
per megabatch), the surviving weights are pruned by global magnitude to density
``(1 - prune_fraction) ** t`` (exactly ``round(d * n)`` weights, as every strategy here; open_lth
prunes ``ceil(f * remaining)`` per level, which drifts by a few weights), the model is
rewound, and it trains on the replay-inclusive megabatch. The LR schedule restarts at every
megabatch (``LRSchedulePlugin``), which is the rewind of its position; open_lth resumes the
schedule at step k instead, a difference only when k > 0 and the schedule is not constant.

**Rewind scope**, as open_lth: its next level loads the *whole* state dict saved at step k
(weights, biases, BatchNorm affine parameters and running statistics) into a fresh model and
then applies the mask. So here: every entry of the model's state at step k except the mask
buffers is restored, then the masks zero the pruned weights. The optimizer state is dropped
(open_lth builds a new optimizer per level): momentum belongs to the trained weights.

**Offline form** (``levels=L > 0``; with a one-megabatch stream this is ordinary IMP): before
megabatch 1 trains, L rounds of (train, prune, rewind) run on megabatch 1's data through the
harness's own training loop: each round is one ``AlmaTemplate.train`` of the same experience,
on a private copy of the run's clock (``RunContext``), with only the masks held, and its
steps, samples and FLOPs are then added to the run's clock. The run's own training of
megabatch 1 then trains the level-L ticket: L + 1 trainings in all, as open_lth's levels
0..L. The loop is reused, not copied. With more megabatches, the anytime levels continue
from there (megabatch t trains level L + t).

``density`` instead of ``prune_fraction`` fixes the final density: level l then keeps
``density ** (l / levels_total)``, so the last level lands on it exactly.

Artifacts (under the run's ``artifacts/``): ``initial_state.pt`` (the model's state dict at
initialisation, without mask buffers) and ``final_masks.pt`` (layer name -> bool CPU mask,
prunable layers only), read by the ``static`` strategy to train the re-initialised ticket.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from alma_bench.errors import UserError
from alma_bench.registry import PRUNERS, STRATEGIES
from alma_bench.sparsity import check_density, prune
from alma_bench.sparsity.experience import scheduled, stream_length
from alma_bench.sparsity.plugin import MaskedTraining, mask_layers
from alma_bench.sparsity.rewire import (
    FINAL_MASKS,
    INITIAL_STATE,
    final_masks,
    initial_state,
    load_weights,
    save_artifact,
)
from alma_bench.spec.config import derive


class _RoundPlugin(MaskedTraining):
    """The only strategy plugin of an offline round: holds the masks, counts steps towards the
    rewind point (which the first round records)."""

    def __init__(self, owner: IMPPlugin):
        super().__init__(owner.layers)
        self.maskset = owner.maskset  # the owner's masks, on the model both train
        self.owner = owner

    def after_update(self, strategy, **kw):
        super().after_update(strategy, **kw)
        self.owner.count_step(strategy.model)


class IMPPlugin(MaskedTraining):
    """Prunes by magnitude and rewinds before every megabatch after the first.

    As a plain Avalanche plugin: one level per experience of the stream (N from its
    ``origin_stream``; past N the final density holds), ``seed`` for the random pruner's
    control, ``run_dir`` (the harness's) for the artifacts. The offline rounds (``levels >
    0``) train through the harness's loop and need its ``ctx``."""

    def __init__(self, params: Lottery | None = None, *, seed: int = 0,
                 model: nn.Module | None = None, run_dir: Path | None = None, ctx=None):
        params = IMP() if params is None else params
        if params.levels > 0 and ctx is None:
            raise UserError("imp: levels > 0 trains its offline rounds through the alma-bench "
                            "harness's loop; as a plain Avalanche plugin use levels=0")
        super().__init__(mask_layers(params), model)
        self.p, self.seed, self.run_dir, self.ctx = params, seed, run_dir, ctx
        self.densities = [1.0]  # of levels 0..L, set from the stream's length N
        self.t = 0  # the current experience
        self.rewind_state: dict | None = None
        self.rewind_at: int | None = None  # the step the rewind point was taken at
        self.steps = 0  # optimizer steps of the first training, until the rewind point

    def level(self, t: int | None = None) -> int:
        """The pruning level trained in megabatch t (default: the current one)."""
        return self.p.levels + (self.t if t is None else t)

    def before_training_exp(self, strategy, **kw):
        t = self.t = strategy.experience.current_experience
        n = stream_length(strategy.experience)
        self.densities = self.p.level_densities(self.p.levels + n - 1)
        if t > 0:
            if self.rewind_state is None:
                raise UserError(f"imp: experience {t} is the first it trains, but IMP rewinds "
                                "to weights recorded in experience 0; train from experience 0")
            self.prune_and_rewind(self.level(t), strategy.model, strategy.optimizer)
            return
        # nothing has trained or pruned yet: this is the original initialisation
        init = initial_state(strategy.model)
        save_artifact(self.run_dir, INITIAL_STATE, init)
        if self.p.rewind_step == 0:
            self.rewind_state, self.rewind_at = init, 0
        for level in range(1, self.p.levels + 1):
            self.offline_round(strategy)
            self.prune_and_rewind(level, strategy.model, strategy.optimizer)

    def offline_round(self, strategy) -> None:
        """One training of megabatch 1 through the harness's loop, on a private clock."""
        from alma_bench.run.training import AlmaTemplate  # lazily, as the runner: a heavy import

        ctx = self.ctx
        inner = dataclasses.replace(ctx, step=0, samples_seen=0, epoch_log=[], kept_epoch=0,
                                    train_flops=0.0)
        AlmaTemplate(ctx=inner, plugins=[_RoundPlugin(self)]).train(strategy.experience)
        ctx.step += inner.step
        ctx.samples_seen += inner.samples_seen
        ctx.train_flops += inner.train_flops
        self._fallback_rewind(strategy.model)

    def count_step(self, model) -> None:
        if self.rewind_state is None:
            self.steps += 1
            if self.steps == self.p.rewind_step:
                self.rewind_state, self.rewind_at = initial_state(model), self.steps

    def after_update(self, strategy, **kw):
        super().after_update(strategy, **kw)
        self.count_step(strategy.model)

    def _fallback_rewind(self, model) -> None:
        # early stopping ended the first training before step k: rewind to its kept model
        if self.rewind_state is None:
            self.rewind_state, self.rewind_at = initial_state(model), self.steps

    def after_training_exp(self, strategy, **kw):
        # masks are only read here: they never change after the kept epoch is selected
        t = strategy.experience.current_experience
        if t == 0:
            self._fallback_rewind(strategy.model)
        if t == stream_length(strategy.experience) - 1:
            save_artifact(self.run_dir, FINAL_MASKS, final_masks(self.maskset))

    def prune_and_rewind(self, level: int, model, optimizer) -> None:
        self.prune(level, model, optimizer)
        # the whole state at step k but the masks, which then zero the pruned weights
        load_weights(model, self.rewind_state, "imp: the rewind state")
        self.maskset.apply()
        if optimizer is not None:
            optimizer.state.clear()

    def prune(self, level: int, model, optimizer) -> None:
        """Global (or per-layer) magnitude pruning of the surviving weights to level's density."""
        # pruner=random is the lottery papers' control: random pruning to the same densities
        pruner = PRUNERS.create(getattr(self.p, "pruner", "magnitude"), scope=self.p.scope)
        g = torch.Generator().manual_seed(derive(self.seed, "imp-random", level))
        prune(model, self.maskset, pruner, scheduled(self.densities, level), generator=g,
              optimizer=optimizer)

    def metrics(self) -> dict:
        level = self.level()
        return {**super().metrics(), "imp_level": level,
                "target_density": scheduled(self.densities, level),
                "rewind_step": self.rewind_at}

    def state_dict(self) -> dict:
        return {"rewind_state": self.rewind_state, "rewind_at": self.rewind_at,
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.rewind_state, self.rewind_at = state["rewind_state"], state["rewind_at"]
        self.steps = state["steps"]


@dataclass(frozen=True)
class Lottery:
    """Parameters shared by ``imp`` and ``imp-q``."""

    rewind_step: int = 0  # k, in optimizer steps of megabatch 1; 0 = the initialisation
    prune_fraction: float | None = None  # of the surviving weights, per level; 0.2 by default
    density: float | None = None  # final density instead of prune_fraction
    levels: int = 0  # offline IMP rounds inside megabatch 1 (0: the anytime form)
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False  # APP's layer set, so densities compare across strategies

    def __post_init__(self):
        if self.rewind_step < 0:
            raise ValueError(f"rewind_step must be >= 0, got {self.rewind_step}")
        if self.levels < 0:
            raise ValueError(f"levels must be >= 0, got {self.levels}")
        if self.density is not None:
            if self.prune_fraction is not None:
                raise ValueError("give density or prune_fraction, not both")
            check_density(self.density)
        elif self.prune_fraction is None:
            object.__setattr__(self, "prune_fraction", 0.2)
        elif not 0 < self.prune_fraction < 1:
            raise ValueError(f"prune_fraction must be in (0, 1), got {self.prune_fraction}")

    def level_densities(self, n_levels: int) -> list[float]:
        """Density of levels 0..n_levels (level 0: dense)."""
        if self.density is not None:
            if n_levels == 0 and self.density < 1:
                raise UserError(f"density={self.density} needs at least one pruning level: "
                                "more than one megabatch, or levels > 0")
            return [self.density ** (lv / max(1, n_levels)) for lv in range(n_levels + 1)]
        return [(1 - self.prune_fraction) ** lv for lv in range(n_levels + 1)]

    def cost_factor(self, spec) -> float:
        """The offline levels train megabatch 1 ``levels`` more times (the cost estimate:
        alma_bench/execute/cost.py)."""
        if not self.levels:
            return 1.0
        from alma_bench.spec.split import train_sizes

        sizes = train_sizes(spec)
        return 1.0 + self.levels * sizes[0] / sum(sizes)

    def check(self, ctx) -> None:
        """Checks that need the run (UserErrors), before it trains."""
        self.level_densities(self.levels + ctx.n_megabatches - 1)
        planned = ctx.steps_per_megabatch(0)
        if self.rewind_step > planned:
            raise UserError(f"rewind_step={self.rewind_step} is beyond megabatch 1's "
                            f"{planned} planned optimizer steps")


@STRATEGIES.register("imp")
@dataclass(frozen=True)
class IMP(Lottery):
    """Iterative magnitude pruning with rewinding: before each megabatch, prune and rewind."""

    scope: Literal["global", "layer"] = "global"  # open_lth's sparse_global
    pruner: Literal["magnitude", "random"] = "magnitude"  # random: the control

    def __post_init__(self):
        super().__post_init__()
        if self.pruner not in ("magnitude", "random"):
            raise ValueError(f"pruner must be magnitude or random, got {self.pruner!r}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be global or layer, got {self.scope!r}")

    def plugins(self, ctx) -> list:
        self.check(ctx)
        return [IMPPlugin(self, seed=ctx.seeds.strategy, model=ctx.model, run_dir=ctx.run_dir,
                          ctx=ctx)]
