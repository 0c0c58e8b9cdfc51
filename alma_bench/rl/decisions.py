"""What the schedule agent decides, and what it reads: the learnable form of section 10.

An independent review found the first form unlearnable within any budget a CPU can pay: one
decision per schedule interval (T = 27 x 4 layers at the quick scale), actions mapped onto the
whole density range with std 1 (every decision resampled each layer's density anywhere in
[0.05, 1]: prune, regrow at zero, prune again, which wrecked the very training being scored),
raw observations and a reward without a baseline. What this module gives instead:

* **Few decisions** (``decisions``): the run's schedule intervals are cut into that many
  consecutive groups (:func:`decision_groups`); the agent decides once per group and its action
  holds through the group's intervals (the prune-regrow cadence, swaps and the final
  projection stay those of the run).
* **A residual on a handcrafted schedule** (``base_schedule``): action a_l in [-1, 1] scales
  the base schedule's density at each interval, d_l = base(p) * (max / min) ** a_l, clipped to
  [min_density, max_density] (:func:`residual_densities`). The zero action *is* the handcrafted
  schedule, so an agent whose action head starts at zero starts as that schedule exactly, and
  exploration around it is a sane schedule plus noise; one unit of action spans the whole
  range from any base.
* **Normalised observations** (:func:`normalise`): every feature mapped into [-1, 1] by a fixed
  transform (log scales for |w| and gradient norms), so no raw feature dwarfs the others.
"""

from __future__ import annotations

import math

import numpy as np


def decision_groups(n_intervals: int, decisions: int | None) -> list[int]:
    """Index of the group (decision) of each of ``n_intervals`` intervals: ``decisions``
    consecutive groups of near-equal interval counts (numpy's array_split); None: one decision
    per interval, the environment's first form."""
    if decisions is None or decisions >= n_intervals:
        return list(range(n_intervals))
    parts = np.array_split(np.arange(n_intervals), decisions)
    return [g for g, part in enumerate(parts) for _ in part]


def residual_densities(action, names: list[str], base: float, low: float,
                       high: float) -> dict[str, float]:
    """Action in [-1, 1]^L -> per-layer densities base * (high / low) ** a_l in [low, high]."""
    a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
    scale = math.log(high / low)
    return {n: min(high, max(low, base * math.exp(scale * float(v)))) for n, v in zip(names, a)}


def _log_unit(x: float, lo: float, hi: float) -> float:
    """log10(x) mapped from [lo, hi] (decades) onto [-1, 1], clipped; 0 and below read -1."""
    if not x > 0:
        return -1.0
    return float(np.clip(2 * (math.log10(x) - lo) / (hi - lo) - 1, -1.0, 1.0))


def normalise(raw: np.ndarray, n_layers: int, num_classes: int) -> np.ndarray:
    """The raw observation (per layer: density, mean |w|, gradient norm; then progress, loss,
    validation accuracy) mapped feature by feature into [-1, 1]: densities, progress and
    accuracy affinely, |w| over 1e-3..1 and gradient norms over 1e-4..10 on log scales, the
    loss against chance level log(C)."""
    out = np.empty_like(raw, dtype=np.float32)
    for i in range(n_layers):
        d, w, g = raw[3 * i: 3 * i + 3]
        out[3 * i: 3 * i + 3] = [2 * d - 1, _log_unit(w, -3, 0), _log_unit(g, -4, 1)]
    progress, loss, acc = raw[-3:]
    chance = math.log(max(2, num_classes))
    out[-3:] = [2 * progress - 1, np.clip(2 * loss / chance - 1, -1, 1), 2 * acc - 1]
    return np.clip(np.nan_to_num(out, nan=0.0), -1.0, 1.0)
