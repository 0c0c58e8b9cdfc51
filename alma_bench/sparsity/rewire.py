"""Shared math of dynamic sparse training (ALGORITHMS.md sections 8 and 9).

* DPR / DSR (Mostafa & Wang 2019): prune below one global adaptive threshold H, regrow the
  same number K at random, shared among layers in proportion to their surviving weights
  (:func:`reallocate`, :func:`growth_shares`, :func:`adjust_threshold`).
* Prune-and-regrow (SET, MP-RR, RP-RR): bring each layer to a density chosen elsewhere, plus a
  swap of a fraction of its weights (:func:`set_layer_densities`). *Who* picks the densities (a
  handcrafted schedule, an RL agent) is the caller's business; this only says *how*.
* The artifacts a dynamic run leaves for static retraining (the DPR paper's experiments b, c).

Every mask change goes through :meth:`MaskSet.update`, which starts regrown weights at 0 and
zeroes their optimizer state wherever a mask bit flips. DSR's reallocation never regrows where
it just pruned (its paper's rule). The prune-and-regrow swap follows RigL's SET by default
(``regrow_dropped``): growth may pick a just-dropped position, whose bit then never flipped, so
that weight keeps its value and optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from alma_bench.errors import UserError
from alma_bench.sparsity.masks import BUFFER, MaskSet, _keep_top
from alma_bench.sparsity.schedules import check_density
from alma_bench.store.files import save_checkpoint

__all__ = ["DROP_BY", "FINAL_MASKS", "INITIAL_STATE", "adjust_threshold", "final_masks",
           "growth_shares", "initial_state", "keep_dense", "load_artifact", "load_weights",
           "one_by_one_convs", "random_grow", "random_layer_masks", "reallocate",
           "save_artifact", "set_layer_densities", "threshold_prune"]

INITIAL_STATE = "initial_state.pt"  # the model's state_dict before any mask (no mask buffers)
FINAL_MASKS = "final_masks.pt"  # layer name -> bool mask (CPU) at the end of the stream


def adjust_threshold(threshold: float, pruned: int, n_prune: int, delta: float = 0.1) -> float:
    """DSR's threshold rule: halve H if more than (1 + delta) N_p were pruned, double it if
    fewer than (1 - delta) N_p, else keep it; so K tracks the target N_p."""
    if pruned > (1 + delta) * n_prune:
        return threshold / 2
    if pruned < (1 - delta) * n_prune:
        return threshold * 2
    return threshold


def growth_shares(survivors: Mapping[str, int], capacity: Mapping[str, int], k: int,
                  generator: torch.Generator | None) -> dict[str, int]:
    """How many of ``k`` regrown weights each layer gets: ``floor(k * r_l / sum r)`` for
    survivors r_l, at most ``capacity[l]``; what rounding (or a full layer) leaves goes one by
    one to a uniformly random layer with room, until exactly ``k`` are placed."""
    total = sum(survivors.values())
    shares = {n: min(capacity[n], k * r // total) if total else 0 for n, r in survivors.items()}
    left = k - sum(shares.values())
    if left > sum(capacity[n] - shares[n] for n in shares):
        raise ValueError(f"cannot regrow {k} weights: only {sum(capacity.values())} places")
    while left > 0:
        room = [n for n in shares if shares[n] < capacity[n]]
        shares[room[int(torch.randint(len(room), (1,), generator=generator))]] += 1
        left -= 1
    return shares


def random_grow(mask: torch.Tensor, count: int, generator: torch.Generator | None,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``mask`` with ``count`` random off positions (not in ``exclude``) turned on."""
    free = ~mask if exclude is None else ~mask & ~exclude
    candidates = free.reshape(-1).nonzero().squeeze(1).cpu()
    if not 0 <= count <= candidates.numel():
        raise ValueError(f"cannot regrow {count} weights: {candidates.numel()} are available")
    # drawn on the CPU so the same generator picks the same positions on any device
    pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
    out = mask.clone().reshape(-1)
    out[pick.to(mask.device)] = True
    return out.reshape(mask.shape)


def random_layer_masks(maskset: MaskSet, density: float,
                       generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """DSR's start: random masks with the same density (round(d * n_l) weights) in every layer."""
    density = check_density(density, minimum=0.0)
    out = {}
    for name, m in maskset.masks.items():
        keep = torch.randperm(m.numel(), generator=generator)[: round(density * m.numel())]
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[keep] = True
        out[name] = flat.reshape(m.shape).to(m.device)
    return out


def threshold_prune(maskset: MaskSet, threshold: float,
                    limit: int | None = None) -> dict[str, torch.Tensor]:
    """Positions to prune: every active weight with |w| < H, but the largest weight of a tensor
    whose every active weight is below H (a layer is never emptied). With ``limit``, only the
    ``limit`` smallest of them (globally), so no more are pruned than can be regrown."""
    out, mags = {}, {}
    for name, m in maskset.masks.items():
        mags[name] = maskset.weights[name].detach().abs()
        below = m & (mags[name] < threshold)
        alive = int(m.sum())
        if alive and int(below.sum()) == alive:
            below &= ~_keep_top(mags[name].reshape(-1), m.reshape(-1), 1).reshape(m.shape)
        out[name] = below
    if limit is not None and sum(int(p.sum()) for p in out.values()) > limit:
        cand = torch.cat([p.reshape(-1) for p in out.values()])
        smallest = _keep_top(torch.cat([-mags[n].reshape(-1) for n in out]), cand, limit)
        parts = smallest.split([p.numel() for p in out.values()])
        out = {n: part.reshape(p.shape) for (n, p), part in zip(out.items(), parts)}
    return out


def reallocate(maskset: MaskSet, threshold: float, generator: torch.Generator | None,
               optimizer=None) -> tuple[int, dict[str, torch.Tensor]]:
    """One DSR reallocation: prune by the threshold, regrow as many in proportion to each
    layer's survivors at random among its zeros (never where it just pruned). The number of
    active weights is unchanged. Returns K and the positions pruned."""
    masks = maskset.masks
    # regrowth may only go where a weight was already off before this step
    capacity = {n: m.numel() - int(m.sum()) for n, m in masks.items()}
    pruned = threshold_prune(maskset, threshold, limit=sum(capacity.values()))
    k = sum(int(p.sum()) for p in pruned.values())
    survivors = {n: int(m.sum()) - int(pruned[n].sum()) for n, m in masks.items()}
    shares = growth_shares(survivors, capacity, k, generator)
    new = {n: random_grow(m & ~pruned[n], shares[n], generator, exclude=pruned[n])
           for n, m in masks.items()}
    maskset.update(new, optimizer)
    return k, pruned


DROP_BY = ("pruner", "magnitude")


def set_layer_densities(maskset: MaskSet, densities: Mapping[str, float], pruner,
                        drop_fraction: float, generator: torch.Generator | None,
                        optimizer=None, drop_by: str = "pruner",
                        regrow_dropped: bool = False) -> dict[str, torch.Tensor]:
    """Bring each named layer to exactly round(d_l * n_l) active weights (section 9).

    A layer above its target is pruned by ``pruner``'s scores (magnitude: MP, random: RP); one
    below it regrows at random among its zeros (RR). Then a fraction ``drop_fraction`` of the
    surviving weights is swapped: dropped, and as many regrown at random. Which survivors the
    swap drops is ``drop_by``: ``pruner``, the lowest-scored by the same pruner (RP-RR then
    drops at random); ``magnitude``, the smallest |w| among the survivors of the scheduled
    pruning, as SET and RigL drop.

    Where the swap may regrow is ``regrow_dropped``:

    * ``True``, RigL's SET (``rigl/sparse_optimizers.py``): floor(drop_fraction * survivors)
      are dropped and as many grown among every position off after the drop, just-dropped
      ones included; a just-dropped weight picked again never left the mask, so it keeps its
      value and optimizer state (only positions that were off before the update are new).
      A dense layer then swaps onto itself: no change, as in RigL.
    * ``False``, DSR's rule: round(drop_fraction * survivors) are dropped and regrown only
      where the layer was already off before this update, so every swapped weight is replaced
      by a new zero one and the swap is capped by the layer's free positions.

    Positions the *scheduled* pruning removed are never regrown in the same update, in either
    mode: the schedule's pruning is the pruner's decision, not a swap. Layers not in
    ``densities`` are left alone. Returns the new masks.
    """
    if drop_by not in DROP_BY:
        raise ValueError(f"drop_by must be one of {', '.join(DROP_BY)}, got {drop_by!r}")
    scores = pruner.scores(maskset.model, maskset, None, generator=generator)
    new = {}
    for name, m in maskset.masks.items():
        if name not in densities:
            continue
        n, alive = m.numel(), int(m.sum())
        target = round(check_density(densities[name], minimum=0.0) * n)
        survive = min(alive, target)  # survivors of bringing the layer down to its target
        grow = target - survive
        if regrow_dropped:
            drop = math.floor(drop_fraction * survive)
        else:
            drop = max(0, min(round(drop_fraction * survive), (n - alive) - grow))
        # the survivors of the scheduled pruning (by the pruner's scores), then the swap drops
        # the lowest of them by its criterion (_keep_top's order is total, so with the
        # pruner's scores this is the top survive - drop of the alive weights)
        scheduled = _keep_top(scores[name].reshape(-1), m.reshape(-1), survive)
        swap_by = (maskset.weights[name].detach().abs() if drop_by == "magnitude"
                   else scores[name])
        kept = _keep_top(swap_by.reshape(-1), scheduled, survive - drop).reshape(m.shape)
        # never where the scheduled pruning just pruned; where the swap dropped only under SET
        exclude = m & ~scheduled.reshape(m.shape) if regrow_dropped else m & ~kept
        new[name] = random_grow(kept, grow + drop, generator, exclude=exclude)
    maskset.update(new, optimizer)
    return new


def one_by_one_convs(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The 1x1 convolutions among ``names`` (the shortcut projections of ResNets and WRNs)."""
    return [n for n in names if isinstance(m := model.get_submodule(n), nn.Conv2d)
            and tuple(m.kernel_size) == (1, 1)]


def keep_dense(maskset: MaskSet, names: Iterable[str]) -> None:
    """Take freshly made (all-ones) masks of ``names`` out of ``maskset``: the layers stay dense.

    MaskSet's own flags choose only the first, the last and the Linear layers; DSR also keeps
    the 1x1 shortcuts dense, and a static rerun must mask exactly the layers its source did.
    """
    names = set(names)
    for name in names:
        module = maskset._modules.pop(name)
        if not bool(module._buffers[BUFFER].all()):
            raise ValueError(f"keep_dense: layer '{name}' is already pruned")
        del module._buffers[BUFFER]
        maskset._float.pop(name, None)
    dense = names | set(maskset._dense)
    maskset._dense = [n for n, _ in maskset.model.named_modules() if n in dense]
    if not maskset._modules:
        raise UserError(f"nothing left to prune: layers {', '.join(maskset._dense)} are all "
                        "kept dense")


def save_artifact(run_dir: Path | None, name: str, obj, overwrite: bool = True) -> Path | None:
    """Save ``obj`` as ``run_dir/artifacts/name`` (atomically); nothing without a run folder
    (a plugin outside the harness). ``overwrite=False`` keeps a file a previous (interrupted)
    attempt saved."""
    if run_dir is None:
        return None
    path = Path(run_dir) / "artifacts" / name
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, obj)
    return path


def initial_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state on the CPU without mask buffers: loadable into a model with any
    layer choice."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if not k.endswith(BUFFER)}


def final_masks(maskset: MaskSet) -> dict[str, torch.Tensor]:
    """Layer name -> a CPU copy of its mask."""
    return {n: m.detach().cpu().clone() for n, m in maskset.masks.items()}


def load_artifact(ctx, dep: str, label: str | None, name: str, who: str):
    """``name`` from the artifacts of the finished run the harness resolved for parameter
    ``dep`` (``ctx.deps[dep]``); a one-line UserError naming the file when it is missing."""
    folder = (getattr(ctx, "deps", None) or {}).get(dep)
    if folder is None:
        raise UserError(f"{who}: {dep}={label!r} was not resolved to a finished run of this "
                        f"suite (needs the harness's dependency support)")
    path = Path(folder) / "artifacts" / name
    if not path.is_file():
        raise UserError(f"{who}: {path} not found: the run named by {dep}={label!r} saved no "
                        f"{name} (it must be a finished dpr or prune-regrow run)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` (no mask buffers) into ``model`` in place; a UserError if it is not
    this model's (every weight and buffer but the masks must match)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{what} does not fit this model: {str(e).splitlines()[0]}") from None
    missing = [k for k in missing if not k.endswith(BUFFER)]
    if missing or unexpected:
        raise UserError(f"{what} does not fit this model: missing {missing[:3]}, "
                        f"unexpected {list(unexpected)[:3]}")
