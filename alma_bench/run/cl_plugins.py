"""Avalanche's continual-learning plugins, with their state checkpointed.

Avalanche's plugins keep what they learned in plain attributes and have no ``state_dict``
(EWC's importances and anchors, a replay buffer and its storage policy, LwF's previous model,
SI's and MAS's importances, GEM's memory): a resumed run would silently start them afresh.
Each class here *is* Avalanche's plugin (a subclass; every hook that trains is Avalanche's)
plus ``state_dict``/``load_state_dict`` over exactly what it holds, which the harness saves in
every megabatch's checkpoint. A loaded state is put in place at the next
``before_training_exp``, where the strategy gives the model and device it belongs to.

Replay buffers are saved as the samples they hold, not as images: the ``pool_index`` data
attribute every dataset of the stream carries (``AlmaStream.dataset``), with the reservoir
weights that decide what the buffer keeps next.

Each class also reports a metric in the run's rows: a regulariser the mean penalty it added to
the loss per step of the megabatch (``ewc_penalty``, ...), a memory its size.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from avalanche.training import ACECriterion
from avalanche.training.plugins import (
    EWCPlugin,
    GEMPlugin,
    LwFPlugin,
    MASPlugin,
    ReplayPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.storage_policy import (
    ClassBalancedBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)
from avalanche.training.utils import ParamData, cycle


class Checkpointed:
    """``state_dict``/``load_state_dict`` for a plugin: ``_state()`` says what it holds,
    ``_restore(state, strategy)`` puts it back before the next experience trains."""

    _pending = None

    def state_dict(self) -> dict:
        return self._pending if self._pending is not None else self._state()

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def before_training_exp(self, strategy, **kw):
        if self._pending is not None:
            self._restore(self._pending, strategy)
            self._pending = None
        super().before_training_exp(strategy, **kw)


class Penalty:
    """Measures what the plugin's ``before_backward`` adds to the loss: the row's
    ``<metric>`` is its mean per optimizer step of the megabatch."""

    metric = "penalty"

    def before_training_exp(self, strategy, **kw):
        self._sum, self._steps = 0.0, 0
        super().before_training_exp(strategy, **kw)

    def before_backward(self, strategy, **kw):
        before = strategy.loss.detach().clone()  # the plugin adds in place
        super().before_backward(strategy, **kw)
        self._sum = self._sum + (strategy.loss.detach() - before)  # no host sync per step
        self._steps += 1

    def metrics(self) -> dict:
        return {self.metric: float(self._sum) / max(1, self._steps)}


def _tensors(params: dict | None) -> dict | None:
    return None if params is None else {k: p.data.detach().cpu() for k, p in params.items()}


def _params(tensors: dict | None, device) -> dict | None:
    if tensors is None:
        return None
    return {k: ParamData(k, init_tensor=t.to(device), device=device) for k, t in tensors.items()}


def _own(params: dict) -> None:
    for p in params.values():
        p.data = p.data.clone()


def buffer_state(policy) -> dict:
    """A balanced buffer of reservoir groups (by experience or by class) as the samples it
    holds (their ``pool_index``), each group's reservoir weights and size."""
    groups = {}
    for key, g in policy.buffer_groups.items():
        index = list(g.buffer.pool_index) if len(g.buffer) else []
        groups[key] = {"max_size": g.max_size, "index": torch.tensor(index, dtype=torch.long),
                       "weights": g._buffer_weights.clone()}
    return {"max_size": policy.max_size, "groups": groups,
            "num_exps": getattr(policy, "_num_exps", None),
            "seen_classes": list(getattr(policy, "seen_classes", ()))}


def load_buffer(policy, state: dict, pool) -> None:
    """Rebuild ``policy``'s groups from ``buffer_state``; ``pool(indices)`` is the dataset of
    those samples of the stream (``AlmaStream.dataset``)."""
    policy.max_size = state["max_size"]
    policy.buffer_groups = {}
    for key, g in state["groups"].items():  # in the saved order: groups are resized in it
        group = ReservoirSamplingBuffer(g["max_size"])
        group.buffer = pool(g["index"].numpy())
        group._buffer_weights = g["weights"].clone()
        policy.buffer_groups[key] = group
    if state["num_exps"] is not None:
        policy._num_exps = state["num_exps"]
    if hasattr(policy, "seen_classes"):
        policy.seen_classes = set()
        for c in state["seen_classes"]:  # same insertions, same set iteration order
            policy.seen_classes.add(c)


class Replay(Checkpointed, ReplayPlugin):
    """Avalanche's ReplayPlugin with its buffer checkpointed; ``storage_policy`` by name."""

    def __init__(self, mem_size: int, batch_size_mem: int | None, storage_policy: str, pool):
        policy = {"experience_balanced": ExperienceBalancedBuffer,
                  "class_balanced": ClassBalancedBuffer}[storage_policy]
        super().__init__(mem_size=mem_size, batch_size_mem=batch_size_mem,
                         storage_policy=policy(max_size=mem_size, adaptive_size=True))
        self.pool = pool

    def _state(self):
        return buffer_state(self.storage_policy)

    def _restore(self, state, strategy):
        load_buffer(self.storage_policy, state, self.pool)

    def metrics(self) -> dict:
        return {"replay_buffer": len(self.storage_policy.buffer)}


class EWC(Penalty, Checkpointed, EWCPlugin):
    """Avalanche's EWCPlugin with its anchors and importances checkpointed."""

    metric = "ewc_penalty"

    def _state(self):
        return {"saved_params": {t: _tensors(d) for t, d in self.saved_params.items()},
                "importances": {t: _tensors(d) for t, d in self.importances.items()}}

    def _restore(self, state, strategy):
        dev = strategy.device
        self.saved_params = defaultdict(dict, {t: _params(d, dev)
                                               for t, d in state["saved_params"].items()})
        self.importances = defaultdict(dict, {t: _params(d, dev)
                                              for t, d in state["importances"].items()})


class LwF(Penalty, Checkpointed, LwFPlugin):
    """Avalanche's LwFPlugin with its previous model checkpointed."""

    metric = "lwf_penalty"

    def _state(self):
        lwf = self.lwf
        prev = None if lwf.prev_model is None else lwf.prev_model.state_dict()
        return {"expcount": lwf.expcount, "prev_model": prev,
                "prev_classes": {t: sorted(c) for t, c in lwf.prev_classes_by_task.items()}}

    def _restore(self, state, strategy):
        lwf = self.lwf
        lwf.expcount = state["expcount"]
        if state["prev_model"] is not None:
            # as LwF makes it: a copy of the strategy's model (in train mode), then its weights
            lwf.prev_model = copy.deepcopy(strategy.model)
            lwf.prev_model.load_state_dict(state["prev_model"])
        lwf.prev_classes_by_task = defaultdict(set, {t: set(c) for t, c
                                                     in state["prev_classes"].items()})


class SI(Penalty, Checkpointed, SynapticIntelligencePlugin):
    """Avalanche's SynapticIntelligencePlugin with its importances and trajectories
    checkpointed (held on the CPU, as SI holds them), and one fix: Avalanche 0.6 snapshots the
    weights as ``param.detach().cpu().flatten()``, which on the CPU is a *view* of the live
    weights (a copy only on a GPU). Its anchor (at each experience's start) and each step's
    starting point then move with the weights, so the path integral, the importance and the
    penalty are exactly 0 on the CPU. The two snapshots are copied right after SI takes them."""

    metric = "si_penalty"

    def before_training_exp(self, strategy, **kw):
        super().before_training_exp(strategy, **kw)
        _own(self.ewc_data[0])

    def before_training_iteration(self, strategy, **kw):
        super().before_training_iteration(strategy, **kw)
        _own(self.syn_data["old_theta"])

    def _state(self):
        return {"ewc_data": [_tensors(d) for d in self.ewc_data],
                "syn_data": {k: _tensors(d) for k, d in self.syn_data.items()}}

    def _restore(self, state, strategy):
        self.ewc_data = tuple(_params(d, "cpu") for d in state["ewc_data"])
        self.syn_data = {k: _params(d, "cpu") for k, d in state["syn_data"].items()}


class MAS(Penalty, Checkpointed, MASPlugin):
    """Avalanche's MASPlugin with its anchors and importances checkpointed."""

    metric = "mas_penalty"

    def _state(self):
        return {"params": _tensors(self.params), "importance": _tensors(self.importance)}

    def _restore(self, state, strategy):
        self.params = _params(state["params"], strategy.device)
        self.importance = _params(state["importance"], strategy.device)


class GEM(Checkpointed, GEMPlugin):
    """Avalanche's GEMPlugin with its episodic memory checkpointed (as the tensors it holds:
    GEM stores normalised images, not sample indices)."""

    def _state(self):
        return {"x": dict(self.memory_x), "y": dict(self.memory_y),
                "tid": dict(self.memory_tid)}

    def _restore(self, state, strategy):
        self.memory_x, self.memory_y = dict(state["x"]), dict(state["y"])
        self.memory_tid = dict(state["tid"])

    def metrics(self) -> dict:
        return {"gem_memory": sum(len(y) for y in self.memory_y.values())}


class ERACE(Checkpointed, SupervisedPlugin):
    """ER-ACE (Caccia et al. 2022) as a plugin. Avalanche 0.6 has it only as a strategy
    (``ER_ACE``, a template with its own training loop); this is that strategy's behaviour as
    hooks, built from its own parts: the class-balanced buffer it fills with each experience
    *before* training on it, a cycling loader of ``batch_size_mem`` buffer samples per step
    from the second experience on, and ``ACECriterion`` as the loss (the current batch's
    cross-entropy over the classes present in it, plus the buffer batch's)."""

    def __init__(self, mem_size: int, batch_size_mem: int, pool):
        super().__init__()
        self.batch_size_mem, self.pool = batch_size_mem, pool
        self.storage_policy = ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
        self.ace = ACECriterion()
        self.replay_loader = None
        self._criterion = None

    def _state(self):
        return buffer_state(self.storage_policy)

    def _restore(self, state, strategy):
        load_buffer(self.storage_policy, state, self.pool)

    def before_training_exp(self, strategy, **kw):
        super().before_training_exp(strategy, **kw)
        self.storage_policy.post_adapt(strategy, strategy.experience)
        buffer = self.storage_policy.buffer
        self.replay_loader = None
        if len(buffer) >= self.batch_size_mem and strategy.experience.current_experience > 0:
            self.replay_loader = cycle(torch.utils.data.DataLoader(
                buffer, batch_size=self.batch_size_mem, shuffle=True, drop_last=True))

    def after_forward(self, strategy, **kw):
        if self.replay_loader is None:
            return
        x, y, t = (v.to(strategy.device) for v in next(self.replay_loader))
        out = avalanche_forward(strategy.model, x, t)
        # The template computes its loss right after this hook, as strategy._criterion(output,
        # y): for this one call it is ACE's (ER_ACE's own loop calls ACE there).
        self._criterion = strategy._criterion
        strategy._criterion = lambda out_in, y_in: self.ace(out_in, y_in, out, y)

    def before_backward(self, strategy, **kw):
        if self._criterion is not None:
            strategy._criterion, self._criterion = self._criterion, None

    def after_training_exp(self, strategy, **kw):
        self.replay_loader = None

    def metrics(self) -> dict:
        return {"er_ace_buffer": len(self.storage_policy.buffer)}
