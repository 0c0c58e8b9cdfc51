"""The mask set: the one owner of the boolean masks of a model's prunable weights.

Masks live as ``weight_mask`` buffers on the modules, so checkpoints and best-epoch snapshots
carry them; this class only ever changes them in place, through :meth:`MaskSet.update`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from alma_bench.errors import UserError
from alma_bench.run.plugin_base import MASK_BUFFER
from alma_bench.sparsity.schedules import check_density

__all__ = ["MaskSet", "erk_densities", "plain_state_dict"]

BUFFER = MASK_BUFFER  # each mask is the buffer <layer>.weight_mask


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """RigL's Erdos-Renyi-Kernel per-layer densities for a global ``density``.

    Layer l gets ``eps * sum(shape) / prod(shape)``; eps is solved so that the kept count equals
    ``density * total``. Layers that would exceed 1 are made dense and eps is solved again.
    """
    density = check_density(density, minimum=0.0)
    numel = {n: math.prod(int(d) for d in s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    if density >= 1.0:
        return {n: 1.0 for n in shapes}
    dense: set[str] = set()
    while True:
        # Dense layers keep all their weights; the others share what is left of the budget.
        rhs = sum(density * numel[n] for n in shapes if n not in dense) - sum(
            (1.0 - density) * numel[n] for n in dense
        )
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        eps = rhs / divisor
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1.0}
        if not over:
            break
        # RigL densifies one layer per round; densifying all at once gives the same result,
        # because eps only grows when a layer over 1 leaves the budget.
        dense |= over
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


@torch.no_grad()
def plain_state_dict(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict:
    """A masked model's weights as a plain model's ``state_dict``: each ``<layer>.weight_mask``
    folded into ``<layer>.weight`` (masked weights exactly 0) and dropped, so
    ``build_model(...).load_state_dict(plain_state_dict(model), strict=True)`` loads into a
    fresh model with no mask buffers. Takes a model or a state dict (a checkpoint's
    ``"model"``); tensors are copies, the model is not changed."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) \
        else model_or_state
    suffix = "." + BUFFER
    out = {k: v.detach().clone() for k, v in state.items() if not k.endswith(suffix)}
    for key, mask in state.items():
        if key.endswith(suffix):
            weight = key[: -len(suffix)] + ".weight"
            out[weight] = out[weight] * mask.to(out[weight].device, out[weight].dtype)
    return out


def _keep_top(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Flat bool mask of the k best alive positions; ties go to the lower index."""
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    lo, hi = torch.finfo(scores.dtype).min, torch.finfo(scores.dtype).max
    # Alive scores are made finite, dead ones -inf, so a dead weight can never beat an alive one.
    key = torch.where(alive, scores.nan_to_num(nan=lo, neginf=lo, posinf=hi), float("-inf"))
    order = torch.sort(key, descending=True, stable=True).indices
    keep = torch.zeros_like(alive)
    keep[order[:k]] = True
    return keep


class MaskSet:
    """Boolean masks over the weights of every Conv2d and Linear layer of ``model``.

    ``prune_first`` / ``prune_last``: whether the first and the last such layer (in
    ``named_modules`` order) are prunable; ``prune_linear``: whether any Linear layer is (APP
    prunes every conv and no Linear layer). Layers left out stay dense and are listed in
    :attr:`dense_layers`.
    """

    def __init__(self, model: nn.Module, prune_first: bool = True, prune_last: bool = True,
                 prune_linear: bool = True):
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            raise UserError("model has no Conv2d or Linear layer to prune")
        skip = {layers[0][0]} if not prune_first else set()
        skip |= {layers[-1][0]} if not prune_last else set()
        skip |= {n for n, m in layers if isinstance(m, nn.Linear)} if not prune_linear else set()
        if len(skip) == len(layers):
            raise UserError(
                f"nothing left to prune: the model's layers are {', '.join(n for n, _ in layers)} "
                f"and prune_first={prune_first}, prune_last={prune_last}, "
                f"prune_linear={prune_linear} keep them all dense (set prune_linear=true for an "
                "all-Linear model such as mlp)")
        self.model = model
        self._modules: dict[str, nn.Module] = {}
        self._dense = [n for n, _ in layers if n in skip]
        for name, module in (layer for layer in layers if layer[0] not in skip):
            w = module.weight
            old = module._buffers.get(BUFFER)
            if old is None:
                module.register_buffer(BUFFER, torch.ones_like(w, dtype=torch.bool))
            elif old.shape != w.shape or old.dtype != torch.bool:
                raise ValueError(f"{name}.{BUFFER} exists but is not bool of {tuple(w.shape)}")
            self._modules[name] = module
        # name -> (mask buffer it was made from, its version, float copy in the weight's layout)
        self._float: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}

    @property
    def names(self) -> list[str]:
        """Module names of the prunable layers, in ``named_modules`` order."""
        return list(self._modules)

    @property
    def dense_layers(self) -> list[str]:
        """Names of Conv2d/Linear layers kept dense (not prunable)."""
        return list(self._dense)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Name -> mask buffer. Read only: change masks through :meth:`update`."""
        # Looked up on the module each time, so a load_state_dict(assign=True) is followed too.
        return {n: m._buffers[BUFFER] for n, m in self._modules.items()}

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """Name -> prunable weight parameter."""
        return {n: m.weight for n, m in self._modules.items()}

    def numel(self) -> int:
        """Number of prunable weights."""
        return sum(m.numel() for m in self.masks.values())

    def kept(self) -> int:
        """Number of unmasked prunable weights."""
        return sum(int(m.sum()) for m in self.masks.values())

    def density(self) -> float:
        """Kept / total over the prunable tensors (1.0 if there are none)."""
        total = self.numel()
        return self.kept() / total if total else 1.0

    def layer_density(self) -> dict[str, float]:
        """Name -> kept / total of that layer."""
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def layer_densities(self, density: float, distribution: str = "uniform") -> dict[str, float]:
        """Per-layer target densities for a global ``density``: ``uniform`` or ``erk``."""
        density = check_density(density, minimum=0.0)
        if distribution == "uniform":
            return {n: density for n in self._modules}
        if distribution == "erk":
            return erk_densities({n: tuple(m.shape) for n, m in self.masks.items()}, density)
        raise UserError(f"unknown distribution '{distribution}'. Valid: erk, uniform")

    def _float_masks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, mask as 0/1 in the weight's dtype and memory layout) per prunable layer.

        Multiplying by a float mask of the same layout is 4-5x faster than by the bool buffer
        (measured: a mixed-dtype in-place multiply casts element by element) and gives the same
        bits (the bool is promoted to exactly 0.0/1.0 either way). The copy is rebuilt whenever
        the buffer changes: a different tensor, or an in-place write (``update``,
        ``load_state_dict``), which bumps the buffer's version counter.
        """
        out = []
        for name, module in self._modules.items():
            mask, w = module._buffers[BUFFER], module.weight
            hit = self._float.get(name)
            if (hit is None or hit[0] is not mask or hit[1] != mask._version
                    or hit[2].dtype != w.dtype or hit[2].device != w.device
                    or hit[2].stride() != w.stride()):
                hit = (mask, mask._version, torch.empty_like(w).copy_(mask))
                self._float[name] = hit
            out.append((w, hit[2]))
        return out

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights in place (after every optimizer step)."""
        pairs = self._float_masks()
        if pairs:  # one fused call for all layers instead of one multiply per layer
            torch._foreach_mul_([w for w, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients at masked positions (after every backward)."""
        pairs = [(w.grad, m) for w, m in self._float_masks() if w.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def update(self, new_masks: Mapping[str, torch.Tensor], optimizer=None) -> None:
        """Replace masks (any subset of :attr:`names`), then :meth:`apply`.

        Wherever a mask changes, the optimizer state with the weight's shape (momentum, Adam
        moments) is zeroed, and regrown weights start at 0, so a regrown weight inherits
        nothing from the pruned one that was there before.
        """
        masks = self.masks
        for name, new in new_masks.items():
            if name not in masks:
                raise KeyError(f"no prunable layer '{name}'. Valid: {', '.join(masks)}")
            old = masks[name]
            if new.shape != old.shape or new.dtype != torch.bool:
                raise ValueError(f"mask for '{name}' must be bool of shape {tuple(old.shape)}")
            new = new.to(old.device)
            changed = old ^ new
            if not bool(changed.any()):
                continue
            w = self._modules[name].weight
            if optimizer is not None:
                for value in optimizer.state.get(w, {}).values():
                    if torch.is_tensor(value) and value.shape == w.shape:
                        value.masked_fill_(changed, 0)
            w.masked_fill_(new & ~old, 0)
            old.copy_(new)
        self.apply()

    def prune_to(
        self, density: float, scores: Mapping[str, torch.Tensor], scope: str = "global",
        distribution: str = "uniform", optimizer=None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Keep the best-scored round(density * n) alive weights; return and apply the masks.

        Masked weights are never kept, so the new masks are subsets of the old ones (nested).
        ``scope="global"`` ranks all layers together (the global density is then exactly
        round(d * n) / n); ``scope="layer"`` keeps round(d_l * n_l) per layer, with d_l from
        :meth:`layer_densities`. Asking for more weights than are alive is a UserError.
        """
        density = check_density(density, minimum=0.0)
        if not self._modules:
            raise UserError("no prunable layers: every Conv2d/Linear layer is kept dense")
        masks = self.masks
        missing = [n for n in masks if n not in scores]
        if missing:
            raise KeyError(f"scores missing for layers: {', '.join(missing)}")
        flat = {n: scores[n].detach().to(masks[n].device).reshape(-1) for n in masks}
        alive = {n: m.reshape(-1) for n, m in masks.items()}
        if scope == "global":
            total = self.numel()
            k = round(density * total)
            self._check_alive(k, sum(int(a.sum()) for a in alive.values()), density, "the model")
            keep = _keep_top(torch.cat(list(flat.values())), torch.cat(list(alive.values())), k)
            parts = keep.split([a.numel() for a in alive.values()])
            new = {n: p.reshape(masks[n].shape) for n, p in zip(masks, parts, strict=True)}
        elif scope == "layer":
            targets = self.layer_densities(density, distribution)
            new = {}
            for n, m in masks.items():
                k = round(targets[n] * m.numel())
                self._check_alive(k, int(alive[n].sum()), targets[n], f"layer '{n}'")
                new[n] = _keep_top(flat[n], alive[n], k).reshape(m.shape)
        else:
            raise UserError(f"unknown scope '{scope}'. Valid: global, layer")
        self.update(new, optimizer)
        return {n: t.clone() for n, t in new.items()}

    @staticmethod
    def _check_alive(k: int, alive: int, density: float, where: str) -> None:
        if k > alive:
            raise UserError(
                f"cannot prune {where} to density {density:.4g}: it keeps {k} weights but only "
                f"{alive} are unmasked (prune_to only shrinks masks; regrow to raise density)"
            )

    def regrow_random(
        self, name: str, count: int, generator: torch.Generator | None,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """A copy of mask ``name`` with ``count`` random masked positions (not in ``exclude``)
        turned on. Changes nothing: pass the result to :meth:`update`."""
        mask = self.masks[name]
        free = ~mask
        if exclude is not None:
            free &= ~exclude.to(mask.device, torch.bool)
        candidates = free.reshape(-1).nonzero().squeeze(1).cpu()
        if count > candidates.numel() or count < 0:
            raise ValueError(
                f"cannot regrow {count} weights in '{name}': {candidates.numel()} are available"
            )
        # Draw on the CPU so the same generator gives the same positions on any device.
        pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
        out = mask.clone().reshape(-1)
        out[pick.to(mask.device)] = True
        return out.reshape(mask.shape)
