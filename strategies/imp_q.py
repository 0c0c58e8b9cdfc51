"""IMP whose pruning step is the decision of a tabular Q-learning agent (the MDP form of lottery
tickets; ALGORITHMS.md section 11).

The loop is ``imp``'s (rewind point, one level per megabatch, rewind, offline ``levels``);
only *which* weights a level removes changes. One level is one MDP step:

* state ``(level, (round(layer density * buckets), ...))``, a tuple key; ``level`` is the
  level about to be pruned;
* action ``(layer index, fraction)`` from the fixed list layers x ``fractions``: first cut the
  ``round(fraction * alive)`` smallest-magnitude surviving weights of that layer (capped by the
  level's budget, and a layer keeps at least one weight), then prune the rest of the level by
  global magnitude, so the level ends at exactly ``round(d_level * n)`` weights whatever the
  agent chose. The agent thus decides which layer pays for the level, and how much; actions
  on a layer with one weight left are masked out (the list never shrinks);
* reward: minus the validation error of the pruned network after the level (times its density
  with ``weight_reward``); the step that completes the last level is terminal (no bootstrap),
  at the run's final density.

A level as one step keeps episodes short (one evaluation per level) and gives every action a
reward of its own; as a sequence of small per-layer cuts with the reward only at the level's
end, tabular Q-learning over a few dozen episodes was seen to learn nothing (the zero-valued
first action of every new state won, and emptied the first layer).

The agent learns over ``episodes`` episodes on a *train network*: a fresh model with its own
seed (from the strategy seed), trained ``episode_steps`` SGD steps on a seeded sample of
megabatch 1's training data (a new sample each episode), then pruned level by level to the
final density, without retraining between levels (that would cost a training per level per
episode), validation error on megabatch 1's validation split. Learning happens at the run's
first pruning step and never touches the run's model. The learned table is then applied
greedily to the run: in each state, the best action among those tried there (ties to the
lowest index). Bucketed states and weight-dependent global cuts can put the run in a state
no episode reached; there, and only there, the level is plain IMP (global magnitude) and the
decision says so. The table is saved as ``artifacts/q_table.json`` and in the plugin state;
each metrics row lists the decisions of the levels pruned before its megabatch
(``q_decisions``: [level, layer, fraction, weights cut from it, "q"], or
[level, null, null, 0, "magnitude"]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from alma_bench.registry import STRATEGIES
from alma_bench.rl.qlearn import EpsilonSchedule, QAgent, QTable
from alma_bench.run.models import build_model
from alma_bench.sparsity.masks import MaskSet
from alma_bench.spec.config import derive
from alma_bench.store.files import atomic_write_text
from alma_bench.strategies.imp import IMPPlugin, Lottery

Q_TABLE = "q_table.json"  # the learned agent (QAgent.state_dict), under the run's artifacts/


def state_of(maskset: MaskSet, level: int, buckets: int) -> tuple:
    """The MDP state: the level about to be pruned and each layer's density bucket."""
    return (level, tuple(round(d * buckets) for d in maskset.layer_density().values()))


def feasible(maskset: MaskSet, actions: list[tuple]) -> list[bool]:
    """An action is feasible while its layer has more than one surviving weight."""
    alive = [int(m.sum()) for m in maskset.masks.values()]
    return [alive[int(i)] > 1 for i, _ in actions]


def magnitude_level(maskset: MaskSet, density: float, optimizer=None) -> None:
    """Global magnitude pruning (nested) to exactly ``round(density * n)`` weights."""
    scores = {n: w.detach().abs() for n, w in maskset.weights.items()}
    maskset.prune_to(density, scores, optimizer=optimizer)


def apply_action(maskset: MaskSet, action: tuple, density: float, optimizer=None) -> int:
    """One level: the action's cut in its layer, the rest by global magnitude. Returns the
    number of weights the cut removed."""
    i, fraction = int(action[0]), float(action[1])
    name = maskset.names[i]
    mask, w = maskset.masks[name], maskset.weights[name]
    alive = int(mask.sum())
    budget = maskset.kept() - round(density * maskset.numel())
    cut = max(0, min(round(fraction * alive), alive - 1, budget))
    if cut:
        score = torch.where(mask, w.detach().abs(), torch.inf).reshape(-1)
        # stable sort: among equal magnitudes the lower index goes first, deterministically
        drop = torch.sort(score, stable=True).indices[:cut]
        new = mask.clone().reshape(-1)
        new[drop] = False
        maskset.update({name: new.reshape(mask.shape)}, optimizer)
    magnitude_level(maskset, density, optimizer)
    return cut


def prune_level(table: QTable, maskset: MaskSet, level: int, density: float, buckets: int,
                optimizer=None) -> list:
    """Prune one level to ``density`` by the learned policy; returns the decision."""
    a = table.greedy(state_of(maskset, level, buckets), feasible(maskset, table.actions))
    if a is None:  # a state the agent never acted in: plain IMP
        magnitude_level(maskset, density, optimizer)
        return [level, None, None, 0, "magnitude"]
    cut = apply_action(maskset, table.actions[a], density, optimizer)
    return [level, maskset.names[int(table.actions[a][0])], float(table.actions[a][1]), cut,
            "q"]


def _episode_batches(ctx, p: IMPQ, episode: int):
    """A seeded sample of megabatch 1's training data, new for each episode."""
    x, y = ctx.stream.train_set(0)
    k = max(1, min(len(y), round(p.sample_fraction * ctx.stream.megabatches[0].size)))
    g = torch.Generator().manual_seed(derive(ctx.seeds.strategy, "q-sample", episode))
    idx = torch.randperm(len(y), generator=g)[:k]
    return ctx.batches(x[idx], y[idx], seed=derive(ctx.seeds.strategy, "q-order", episode))


def learn_agent(ctx, p: IMPQ, densities: list[float]) -> QAgent:
    """Q-learning over ``p.episodes`` episodes on a train network (module docstring);
    ``densities[l]`` is level l's density, the last one the final density."""
    from alma_bench.run.training import build_optimizer

    # the global RNG is forked: learning must not shift the run's own random draws, or a run
    # resumed with a loaded table would differ from one that learned it in-process
    cuda = [ctx.device] if ctx.device.type == "cuda" else []  # dropout draws there
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(derive(ctx.seeds.strategy, "q-net"))
        net = build_model(ctx.spec.model, ctx.stream.input_shape, ctx.stream.num_classes)
        net = net.to(ctx.device)
        ms = MaskSet(net, p.prune_first, p.prune_last, p.prune_linear)
        # taken with all-ones masks: loading it resets weights and masks for each episode
        start = {k: v.clone() for k, v in net.state_dict().items()}
        actions = [(i, f) for i in range(len(ms.names)) for f in p.fractions]
        agent = QAgent(actions, p.alpha, p.gamma,
                       EpsilonSchedule(p.epsilon_start, p.epsilon_end, p.episodes,
                                       p.epsilon_decay),
                       derive(ctx.seeds.strategy, "q-explore"))
        val = ctx.stream.val_set(0)
        for episode in range(p.episodes):
            net.load_state_dict(start)
            _train(net, build_optimizer(ctx.protocol, net), _episode_batches(ctx, p, episode),
                   p.episode_steps)
            run_episode(agent, ms, densities, lambda: 1.0 - ctx.accuracy(*val, model=net)[0],
                        p.buckets, p.weight_reward)
    return agent


def _train(net, optimizer, batches, steps: int) -> None:
    net.train()
    for s in range(steps):
        x, y = batches[s % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()


def run_episode(agent: QAgent, ms: MaskSet, densities: list[float], val_error, buckets: int,
                weight_reward: bool = False) -> None:
    """One episode: prune ``ms`` level by level to ``densities[-1]`` with epsilon-greedy
    actions, one Q-update per level; ``val_error()`` is measured after each level."""
    last = len(densities) - 1
    for level in range(1, last + 1):
        s, ok = state_of(ms, level, buckets), feasible(ms, agent.table.actions)
        if not any(ok):  # every layer is down to one weight: no choice left
            magnitude_level(ms, densities[level])
            continue
        a = agent.act(s, ok)
        apply_action(ms, agent.table.actions[a], densities[level])
        r = -val_error() * (ms.density() if weight_reward else 1.0)
        if level == last:
            agent.learn(s, a, r, None)
        else:
            agent.learn(s, a, r, state_of(ms, level + 1, buckets),
                        feasible(ms, agent.table.actions))
    agent.end_episode()


class QPruningPlugin(IMPPlugin):
    """IMP with the agent's greedy decisions as the pruning step. The agent learns on a
    train network built from the run's spec: this plugin needs the harness's ctx."""

    def __init__(self, ctx, params: IMPQ):
        super().__init__(params, seed=ctx.seeds.strategy, model=ctx.model, run_dir=ctx.run_dir,
                         ctx=ctx)
        self.agent: QAgent | None = None
        self.decisions: list[list] = []  # of the levels pruned before the current megabatch

    def before_training_exp(self, strategy, **kw):
        self.decisions = []
        super().before_training_exp(strategy, **kw)

    def prune(self, level: int, model, optimizer) -> None:
        if self.agent is None:
            self.agent = learn_agent(self.ctx, self.p, self.densities)
            if self.ctx.run_dir is not None:
                path = self.ctx.run_dir / "artifacts" / Q_TABLE
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(self.agent.state_dict(), indent=1))
        self.decisions.append(prune_level(self.agent.table, self.maskset, level,
                                          self.densities[level], self.p.buckets, optimizer))

    def metrics(self) -> dict:
        return {**super().metrics(), "q_decisions": self.decisions}

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "agent": self.agent.state_dict() if self.agent is not None else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.agent = QAgent.from_state(state["agent"]) if state["agent"] is not None else None


@STRATEGIES.register("imp-q")
@dataclass(frozen=True)
class IMPQ(Lottery):
    """IMP with rewinding whose pruning decisions come from a tabular Q-learning agent."""

    episodes: int = 20
    episode_steps: int = 20  # SGD steps of the train network per episode
    sample_fraction: float = 0.5  # of megabatch 1, the train network's data per episode
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3)  # of a layer's surviving weights
    buckets: int = 10  # per-layer density buckets of the state
    alpha: float = 0.9  # MDP-tickets' alpha, gamma and epsilon 1.0 -> 0.1
    gamma: float = 0.9
    epsilon_start: float = 1.0
    epsilon_end: float = 0.1
    epsilon_decay: Literal["exponential", "linear"] = "exponential"
    weight_reward: bool = False  # reward = -val_error x density

    def __post_init__(self):
        super().__post_init__()
        if self.episodes < 1 or self.episode_steps < 1 or self.buckets < 1:
            raise ValueError("episodes, episode_steps and buckets must be >= 1")
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1), got {list(self.fractions)}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if not 0 < self.alpha <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= gamma <= 1, got alpha={self.alpha}, "
                             f"gamma={self.gamma}")
        EpsilonSchedule(self.epsilon_start, self.epsilon_end, self.episodes, self.epsilon_decay)

    def plugins(self, ctx) -> list:
        self.check(ctx)
        return [QPruningPlugin(ctx, self)]
