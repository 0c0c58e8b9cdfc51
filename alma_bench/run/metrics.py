"""Metrics of ALGORITHMS.md section 2: per-megabatch rows and the run summary.

Density is measured on the model itself, so it is truthful for any strategy, a user's plugin
included: where a layer has a ``weight_mask`` buffer (the mask set's), its density is the
mask's (a regrown weight that is still exactly 0 counts as kept); elsewhere it is the share of
non-zero weights. Global density is over the masked layers when there are any (the layers a
strategy leaves dense, e.g. APP's classifier, show in ``layer_density`` at 1.0).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# the summary is plain Python, so that readers of results can regenerate it without torch
from alma_bench.store.summary import cer, summarize  # noqa: F401 - re-exported

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear layer, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


@torch.no_grad()
def layer_density(model: nn.Module) -> dict[str, float]:
    """Per-layer density over the weights of prunable layers."""
    out = {}
    for name, m in prunable_layers(model):
        mask = getattr(m, "weight_mask", None)
        kept = int(mask.sum()) if mask is not None else int(torch.count_nonzero(m.weight))
        out[name] = kept / m.weight.numel()
    return out


def global_density(model: nn.Module, per_layer: dict[str, float] | None = None) -> float:
    """Density over the prunable weights: the masked layers where a strategy holds masks (its
    dense layers are recorded in ``layer_density``), else every Conv2d and Linear weight."""
    per_layer = per_layer if per_layer is not None else layer_density(model)
    layers = prunable_layers(model)
    masked = [(n, m) for n, m in layers if getattr(m, "weight_mask", None) is not None]
    sizes = {n: m.weight.numel() for n, m in (masked or layers)}
    total = sum(sizes.values())
    return sum(per_layer[n] * sizes[n] for n in sizes) / total if total else 1.0


@torch.no_grad()
def nonzero_params(model: nn.Module) -> int:
    return int(sum(torch.count_nonzero(p) for p in model.parameters()))


@torch.no_grad()
def layer_flops(model: nn.Module, input_shape, device="cpu") -> tuple[int, dict[str, int]]:
    """Dense inference FLOPs for one sample: (total, per prunable layer). Counted once per model
    with ``FlopCounterMode`` (FLOPs = 2 x multiply-accumulates)."""
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)
    with FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was_training)
    counts = fc.get_flop_counts()
    total = int(sum(counts.get("Global", {}).values()))
    root = type(model).__name__
    per = {}
    for name, _ in prunable_layers(model):
        per[name] = int(sum(counts.get(f"{root}.{name}", {}).values()))
    return total, per


def effective_flops(total: int, per_layer: dict[str, int], density: dict[str, float]) -> float:
    """Dense FLOPs with each prunable layer's FLOPs scaled by its density."""
    return total - sum(f * (1.0 - density.get(n, 1.0)) for n, f in per_layer.items())


class FlopMeter:
    """Effective forward FLOPs per sample under the masks in force right now.

    Densities only change at mask updates, so the count is redone only when a ``weight_mask``
    buffer changed (its version counter moves on every in-place write): per-step training
    FLOPs cost a few attribute reads per step. Layers without a mask count at the share of
    non-zero weights measured by :meth:`refresh` (once per megabatch).
    """

    def __init__(self, model: nn.Module, total: int, per_layer: dict[str, int]):
        self.total, self.per_layer = total, per_layer
        self.layers = prunable_layers(model)
        self._key = None
        self._value = float(total)
        self._unmasked: dict[str, float] = {}

    def refresh(self) -> None:
        """Re-measure the layers without masks (their zeros are not tracked per step)."""
        self._unmasked = {}
        for name, m in self.layers:
            if getattr(m, "weight_mask", None) is None:
                self._unmasked[name] = int(torch.count_nonzero(m.weight)) / m.weight.numel()
        self._key = None

    def per_sample(self) -> float:
        # the buffer table directly: Module.__getattr__'s lookup chain is a per-step cost
        masks = [(n, m._buffers.get("weight_mask")) for n, m in self.layers]
        key = tuple((id(b), b._version) for _, b in masks if b is not None)
        if key != self._key:
            dens = dict(self._unmasked)
            for n, b in masks:
                if b is not None:
                    dens[n] = int(b.sum()) / b.numel()
            self._value = effective_flops(self.total, self.per_layer, dens)
            self._key = key
        return self._value
