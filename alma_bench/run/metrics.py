"""Metrics of docs/algorithms.md ("Metrics"): per-megabatch rows and the run summary.

**Density** has one definition for every strategy, built-in or a user's (docs/strategies.md):
kept weights / all weights over the run's *prunable layers*. The prunable layers are the ones
the strategy masks through the harness (layers with a ``weight_mask`` buffer, made by a
``MaskSet``); a run without masks (dense, scratch, a plugin that zeroes weights by hand) is
measured over the layers a built-in strategy prunes with its default parameters: every Conv2d
but the model's last Conv2d/Linear layer, or, on a model without Conv2d (``mlp``), every Linear
but the last. So a plugin that zeroes 10% of the remaining conv weights before each of 8
megabatches reads 0.9**8 exactly as ``app`` does at that density. A masked layer's density is
its mask's (a regrown weight that is still exactly 0 counts as kept); an unmasked layer's is
its share of non-zero weights. Every row names the layer set in ``density_over``.
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


def default_prunable(model: nn.Module) -> list[str]:
    """The layers a built-in strategy prunes with its default parameters (``prune_first``
    true, ``prune_last`` false, ``prune_linear`` false; on a model without Conv2d every Linear
    layer): every Conv2d but the model's last Conv2d/Linear layer, or every Linear but the last
    on an all-Linear model."""
    layers = prunable_layers(model)
    has_conv = any(isinstance(m, nn.Conv2d) for _, m in layers)
    last = layers[-1][0] if layers else None
    picked = [n for n, m in layers if n != last and (isinstance(m, nn.Conv2d) or not has_conv)]
    return picked or [n for n, _ in layers]  # a one-layer model: that layer


def density_layers(model: nn.Module) -> list[str]:
    """The run's prunable layers, over which ``density`` is measured: the masked layers when
    a strategy holds masks, else :func:`default_prunable`."""
    masked = [n for n, m in prunable_layers(model) if getattr(m, "weight_mask", None) is not None]
    return masked or default_prunable(model)


def describe_layers(model: nn.Module, names: list[str]) -> str:
    """A short name of a layer set, e.g. ``every Conv2d but conv1`` or ``every Conv2d and
    Linear but fc``: the layer types it holds, less the layers of those types it leaves out."""
    layers = prunable_layers(model)
    chosen = set(names)
    kinds = sorted({type(m).__name__ for n, m in layers if n in chosen})
    left = [n for n, m in layers if type(m).__name__ in kinds and n not in chosen]
    text = "every " + " and ".join(kinds)
    if left:
        shown = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        text += f" but {shown}"
    return text


def global_density(model: nn.Module, per_layer: dict[str, float] | None = None) -> float:
    """Density over the run's prunable layers (:func:`density_layers`)."""
    per_layer = per_layer if per_layer is not None else layer_density(model)
    chosen = set(density_layers(model))
    sizes = {n: m.weight.numel() for n, m in prunable_layers(model) if n in chosen}
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
