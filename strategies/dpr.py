"""Dynamic parameter reallocation, DPR / DSR (Mostafa & Wang 2019; ALGORITHMS.md section 8).

Start from a random mask with the same density in every sparse layer. Every ``rewire_period``
steps, prune every active weight with |w| < H (one global threshold; a tensor keeps at least
one weight), K in all, and regrow K at random among each layer's zeros, shared in proportion
to its surviving weights, never where it just pruned; regrown weights start at 0 with zeroed
optimizer state. H halves when K > (1 + delta) N_p and doubles when K < (1 - delta) N_p. The
number of active weights never changes; their distribution across layers does.

N_p (``n_prune``) is an absolute count in the reference code: 20,000 for WRN-28-2 (14% of its
145k active weights at density 0.1). Unset, it scales with the model: the same share of the
sparse layers' weights as the reference's WRN-28-2 run, 20,000 / 1,451,520 (1.38%), so WRN-28-2
with the paper's layer set gets exactly 20,000 and a 23k-weight small CNN 317, where a fixed
600 would move 26% of that CNN's active weights per reallocation and 0.4% of WRN-28-2's.

Time: ``rewire_schedule`` and ``stop`` are fractions of the stream's planned optimizer steps
(the same clock as gmp's ``begin``/``end``): the position is the planned steps of the earlier
megabatches plus the steps taken in this one. With N = 1 and E epochs, fraction f is epoch
f x E, so the paper's schedule (period 100 steps, 200 from epoch 25, 400 from 80, 800 from 140
of 200, stop at 190) is the default. Rewiring happens only in each megabatch's rewiring window
(``RewiringTraining``); the period counts window steps and carries over megabatch boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from alma_bench.registry import STRATEGIES
from alma_bench.sparsity import MaskSet, check_density
from alma_bench.sparsity.plugin import RewiringTraining, mask_layers
from alma_bench.sparsity.rewire import (
    FINAL_MASKS,
    INITIAL_STATE,
    adjust_threshold,
    final_masks,
    initial_state,
    keep_dense,
    one_by_one_convs,
    random_layer_masks,
    reallocate,
    save_artifact,
)
from alma_bench.spec.config import derive


def _dsr_masks(model: nn.Module, params) -> MaskSet:
    ms = mask_layers(params)(model)
    if not params.prune_1x1:
        keep_dense(ms, one_by_one_convs(model, ms.names))
    return ms


def dsr_layers(params):
    """The mask set of a DSR-style strategy (MaskSet's layer flags plus ``prune_1x1``), as a
    function of the model it is made over."""
    return partial(_dsr_masks, params=params)


def random_structure(seed: int, maskset, density: float) -> dict:
    """DSR's initial structure. One seed purpose, so ``static`` with ``structure: random`` and
    the same run seed and layers starts from exactly DPR's initial mask (experiment d)."""
    g = torch.Generator().manual_seed(derive(seed, "random-structure"))
    return random_layer_masks(maskset, density, g)


#: N_p of the reference's WRN-28-2 runs over the weights of its sparse layers (the 3x3 convs
#: inside blocks: 1,451,520), the share an unset ``n_prune`` takes of any model's sparse layers
N_PRUNE_SHARE = 20_000 / 1_451_520


def default_n_prune(sparse_weights: int) -> int:
    """N_p for a model whose sparse layers hold ``sparse_weights`` weights (dense count)."""
    return max(1, round(N_PRUNE_SHARE * sparse_weights))


class DPRPlugin(RewiringTraining):
    """DPR as a plain Avalanche plugin. The random structure is set before the first
    experience it trains; ``seed`` seeds it and the regrowth; ``run_dir`` (the harness's)
    receives the initial state and the final masks for static retraining."""

    def __init__(self, params: DPR | None = None, *, seed: int = 0,
                 model: nn.Module | None = None, run_dir: Path | None = None):
        params = DPR() if params is None else params
        super().__init__(dsr_layers(params), model)
        self.p, self.seed, self.run_dir = params, seed, run_dir
        self.threshold = params.threshold  # H
        self.since = 0  # window steps since the last reallocation, across megabatches
        self.reallocated = self.rewires = 0
        self.started = False

    @property
    def n_prune(self) -> int:
        """N_p: the parameter, or the share of the sparse layers' weights when unset."""
        if self.p.n_prune is not None:
            return self.p.n_prune
        return default_n_prune(sum(m.numel() for m in self.maskset.masks.values()))

    def position(self) -> float:
        """Fraction of the stream's planned steps done (steps taken in this megabatch)."""
        # the clock gmp and prune-regrow use, so every fraction of the stream is reached
        # (stop=0.85 stops at 85% of the plan)
        return self.planned_step() / max(1, self.planned_total)

    def period(self, position: float) -> int:
        return [p for start, p in self.p.rewire_schedule if start <= position][-1]

    def before_training_exp(self, strategy, **kw):
        super().before_training_exp(strategy, **kw)
        self.reallocated = self.rewires = 0
        if not self.started:  # experience 0, or the first of a slice of a stream
            self.started = True
            # the initialisation static retraining can rewind to (experiment c); a resumed
            # attempt keeps the first one's file (the same bits anyway: the init is seeded)
            save_artifact(self.run_dir, INITIAL_STATE, initial_state(strategy.model),
                          overwrite=False)
            self.maskset.update(random_structure(self.seed, self.maskset, self.p.density),
                                strategy.optimizer)

    def rewire(self, strategy) -> None:
        position = self.position()
        if position > self.p.stop:  # ablation (e): DPR stopped, trained on statically
            return
        self.since += 1
        if self.since < self.period(position):
            return
        self.since = 0
        g = torch.Generator().manual_seed(derive(self.seed, "dpr", self.t, self.exp_step))
        k, _ = reallocate(self.maskset, self.threshold, g, strategy.optimizer)
        self.threshold = adjust_threshold(self.threshold, k, self.n_prune, self.p.delta)
        self.reallocated += k
        self.rewires += 1

    def after_training_exp(self, strategy, **kw):
        # the masks are final here (the window closed before the last epoch)
        if self.last_experience():
            save_artifact(self.run_dir, FINAL_MASKS, final_masks(self.maskset))

    def metrics(self) -> dict:
        return {**super().metrics(), "threshold": self.threshold,
                "reallocated": self.reallocated, "rewires": self.rewires, "n_prune": self.n_prune,
                "rewire_period": self.period(self.position())}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "since": self.since, "started": self.started}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.since = float(state["threshold"]), int(state["since"])
        # a checkpoint from before "started" was saved is one of a run that had started
        self.started = bool(state.get("started", True))


@STRATEGIES.register("dpr")
@dataclass(frozen=True)
class DPR:
    """Dynamic parameter reallocation (DSR): global adaptive threshold, proportional regrowth."""

    # density of the sparse layers (the paper: 0.1 and 0.2 of WRN-28-2's 3x3 block convs)
    density: float = 0.1
    # (from this fraction of the stream's planned steps, rewire every this many steps)
    rewire_schedule: tuple[tuple[float, ...], ...] = (
        (0.0, 100), (0.125, 200), (0.4, 400), (0.7, 800))
    stop: float = 0.95  # no rewiring after this fraction of the planned steps
    # N_p: the number of weights H is tuned to prune per reallocation; null: 1.38% of the sparse
    # layers' weights (the reference's 20,000 on WRN-28-2, see default_n_prune)
    n_prune: int | None = None
    delta: float = 0.1  # tolerance around N_p
    threshold: float = 1e-3  # H at the start
    # the suite-wide default layer set (every conv, no Linear layer), so densities compare
    # across strategies; the paper's (first conv, 1x1 shortcuts, classifier dense) is
    # prune_first=false, prune_1x1=false, as the dpr-trainability suite sets it
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False
    prune_1x1: bool = True

    def __post_init__(self):
        check_density(self.density)
        pairs = [tuple(p) for p in self.rewire_schedule]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError("rewire_schedule must be a non-empty list of [fraction, period] pairs")
        starts = [float(s) for s, _ in pairs]
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= 1:
            raise ValueError(f"rewire_schedule fractions must start at 0 and rise below 1, "
                             f"got {starts}")
        if any(p != int(p) or p < 1 for _, p in pairs):
            raise ValueError(f"rewire_schedule periods must be whole steps >= 1, got "
                             f"{[p for _, p in pairs]}")
        object.__setattr__(self, "rewire_schedule", tuple((float(s), int(p)) for s, p in pairs))
        if not 0 <= self.stop <= 1:
            raise ValueError(f"stop must be in [0, 1], got {self.stop}")
        if self.n_prune is not None and self.n_prune < 1:
            raise ValueError(f"n_prune must be >= 1, got {self.n_prune}")
        if not 0 <= self.delta < 1:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")

    def plugins(self, ctx) -> list:
        return [DPRPlugin(self, seed=ctx.seeds.strategy, model=ctx.model, run_dir=ctx.run_dir)]
