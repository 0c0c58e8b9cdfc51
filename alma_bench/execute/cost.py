"""A run's estimated cost, so that a pool starts the longest runs first.

A pool with more runs than workers that starts a long run last leaves every other core idle
while that run finishes alone. Starting the costliest runs first (as far as their dependencies
allow) packs the end of a suite. Only the order changes: never a number, never a run id.

The estimate, in arbitrary units (only its ratios between runs matter):

    training sample passes x forward FLOPs per sample x strategy factor

* **sample passes**: the epoch cap (``protocol.epochs``; early stopping is not foreseen) times
  the sum over megabatches of the megabatch's training-set size, from the stream's split
  (megabatches, replay policy, validation fraction) over a pool of ``stream.subset`` samples,
  else the stream's ``n_train`` parameter, else ``NOMINAL_POOL`` (data not loaded: streams
  of unknown size count as equal; alma_bench/spec/split.py computes these sizes);
* **FLOPs**: of the model built once per model spec (cached) on CPU for a nominal input
  (``NOMINAL_SHAPE``, ``NOMINAL_CLASSES``; the stream is not loaded), its parameter count when
  it cannot run that input;
* **strategy factor**: a strategy may declare ``cost_factor(self, spec) -> float``, the
  multiplier of its run's training cost (default 1): e.g. rl-schedule trains an agent for
  ``episodes`` episodes when given none, imp trains megabatch 1 ``levels`` more times. A
  composed strategy multiplies its parts' factors.

A run's priority is its cost plus the largest priority among the runs that depend on it (the
longest chain of work it starts), so a dependency of a long run starts early. Ties keep the
suite's order, so the order is deterministic.
"""

from __future__ import annotations

import json
from functools import cache

from alma_bench.spec.split import train_sizes

NOMINAL_SHAPE = (3, 32, 32)
NOMINAL_CLASSES = 10


def sample_passes(spec) -> float:
    """Training samples seen at the epoch cap: epochs x the sum of the megabatches' sizes."""
    return spec.protocol_obj().epochs * sum(train_sizes(spec))


@cache
def _model_flops(model: str, shape: tuple = NOMINAL_SHAPE,
                 classes: int = NOMINAL_CLASSES) -> float:
    import torch
    from torch import nn

    from alma_bench.run.models import build_model

    with torch.random.fork_rng(devices=[]):  # the caller's random draws stay where they were
        net = build_model(json.loads(model), shape, classes)
    macs = []

    def count(m, inputs, out):  # multiply-accumulates of a conv or linear layer
        per_out = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features
        macs.append(out.numel() * per_out)

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:  # hooks, not FlopCounterMode: its first use costs seconds of imports
        with torch.no_grad():
            net.eval()(torch.zeros((1, *shape)))
        return 2.0 * sum(macs) or 1.0
    except Exception:  # a model that takes other inputs: its size, an estimate all the same
        return float(sum(p.numel() for p in net.parameters())) or 1.0
    finally:
        for h in hooks:
            h.remove()


def model_flops(spec) -> float:
    """Forward FLOPs per sample of the run's model at the nominal input (cached per model)."""
    return _model_flops(json.dumps(spec.model, sort_keys=True, default=str))


def step_flops(spec) -> float:
    """Forward FLOPs of one training batch of the run (``protocol.batch_size`` samples of the
    stream's real input). Loads the stream's data, through the runner's in-process cache, so a
    run in this process then starts without loading it again."""
    from alma_bench.run.runner import load_data

    data = load_data(spec.stream)
    model = json.dumps(spec.model, sort_keys=True, default=str)
    per_sample = _model_flops(model, tuple(data.input_shape), data.num_classes)
    return spec.protocol_obj().batch_size * per_sample


def _parts(spec) -> tuple:
    """The run's strategy object, or a composition's parts."""
    from alma_bench.spec import compose

    obj = compose.create(spec.strategy["name"], spec.strategy["params"])
    return tuple(p for _, p in obj.parts) if isinstance(obj, compose.Composed) else (obj,)


def strategy_factor(spec) -> float:
    """The strategy's ``cost_factor(spec)`` (the product over a composition's parts), else 1."""
    factor = 1.0
    for part in _parts(spec):
        fn = getattr(part, "cost_factor", None)
        factor *= float(fn(spec)) if callable(fn) else 1.0
    return factor


def shared_work(spec) -> str | None:
    """The key of work the run shares with other runs (``shared_work(spec)`` of a strategy,
    e.g. rl-schedule's one agent for every seed of a label), else None."""
    for part in _parts(spec):
        fn = getattr(part, "shared_work", None)  # a composition shares its parts' work
        if callable(fn) and (key := fn(spec)) is not None:
            return key
    return None


def estimated_cost(spec, shared_done: bool = False) -> float:
    """The run's estimated cost (module docstring); 1 when it cannot be estimated.
    ``shared_done``: another run does the work this one shares (its strategy factor is 1)."""
    try:
        factor = 1.0 if shared_done else strategy_factor(spec)
        return sample_passes(spec) * model_flops(spec) * factor
    except Exception:  # an estimate only orders runs: it never stops a suite
        return 1.0


def _costs(specs) -> dict[str, float]:
    """Run id -> cost; of the runs sharing work, the first in suite order carries it: started
    together, the others would each hold a worker while waiting for it (two seeds of one
    learned schedule, say, waiting on one agent while another agent could be training)."""
    cost, claimed = {}, set()
    for s in specs:
        try:
            key = shared_work(s)
        except Exception:
            key = None
        cost[s.run_id] = estimated_cost(s, shared_done=key is not None and key in claimed)
        if key is not None:
            claimed.add(key)
    return cost


def longest_first(specs) -> list:
    """``specs`` by decreasing priority (own cost + the costliest chain of dependents); ties
    keep the given order."""
    specs = list(specs)
    cost = _costs(specs)
    dependents: dict[str, list[str]] = {}
    for s in specs:
        for dep in (s.deps or {}).values():
            dependents.setdefault(dep, []).append(s.run_id)
    prio: dict[str, float] = {}

    def priority(run_id: str, path=()) -> float:
        if run_id not in prio:
            if run_id in path:  # a cycle: the executor reports it
                return cost[run_id]
            below = [priority(d, (*path, run_id)) for d in dependents.get(run_id, ())]
            prio[run_id] = cost[run_id] + max(below, default=0.0)
        return prio[run_id]

    order = {s.run_id: i for i, s in enumerate(specs)}
    return sorted(specs, key=lambda s: (-priority(s.run_id), order[s.run_id]))
