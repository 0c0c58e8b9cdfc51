"""IMP whose pruning step is the decision of a tabular Q-learning agent that learns from the
run's own IMP levels (the MDP form of lottery tickets; ALGORITHMS.md section 11).

The loop is ``imp``'s (rewind point, one level per megabatch, rewind, offline ``levels``);
only *which* weights a level removes changes. One level is one MDP step, and the run's levels
(offline ones included) are one episode, ending at the final density:

* state ``(level, (round(layer density * buckets), ...))``, a tuple key; ``level`` is the
  level about to be pruned;
* actions, a fixed list: action 0 is plain global magnitude (IMP's own step); then layers x
  ``fractions``: first cut the ``round(fraction * alive)`` smallest-magnitude surviving
  weights of that layer (capped by the level's budget, and a layer keeps at least one
  weight), then prune the rest of the level by global magnitude. Every level thus ends at
  exactly ``round(d_level * n)`` weights, nested, whatever the agent chose; the agent decides
  which layer pays more than magnitude would make it, and how much. Layer actions on a layer
  with one weight left are masked out (the list never shrinks);
* reward: how much better the agent's masks do than plain global magnitude's, both applied to
  the same trained weights (the model as the previous megabatch left it, before the rewind),
  on the validation split of the megabatch those weights last trained on (its new samples
  when the stream has no validation split): with ``reward=loss`` (default) the mean
  cross-entropy of magnitude's masks minus the agent's, with ``reward=accuracy`` the agent's
  accuracy minus magnitude's. It is 0 for "do what IMP does" by construction (action 0, or
  any action whose masks come out equal to magnitude's: then nothing is evaluated), positive
  for a better choice. The loss is the default because accuracy on a validation split moves
  in steps of 1/|split| and saturates (at smoke scale both masks score 100% and every
  reward was 0); the absolute ``-val_error`` of the earlier reward is dominated by the level
  and the data, not by the choice (0 in 29 of 30 smoke episodes). Cost: two extra
  evaluations per level where the masks differ, no extra training. The reward is known when
  the level is pruned, so Q is updated right then, with s' the state of the next level (the
  last level is terminal): the update needs nothing from the retraining that follows, and no
  pending transition has to be checkpointed. What it does not see is how the ticket
  retrains; one-shot damage is its proxy;
* initial values: untried actions are not 0 with rewards <= 0 (the old table: every untried
  action looked best, the bootstrap ``max Q(s')`` was always 0 and ties fell to index order).
  Q of an untried (state, action) is its prior (``alma_bench.rl.qlearn``): 0, the value of
  doing what magnitude does, pooled (``pooled``) with that action's learned Q in the states
  where it was tried. Each level of a run is a new state (the level is part of it), so
  without pooling the run's experience could never change its own later choices; with it, a
  layer cut that hurt at level 2 is expected to hurt at level 3 too. Greedy ties go to
  action 0: an agent that has learned nothing prunes as IMP.
* epsilon-greedy over the decisions (``epsilon_start`` at the first, ``epsilon_end`` at the
  run's last level; the warm-up's decisions, if any, come first), linear by default, a
  generator seeded per decision from the strategy seed. Exploring prunes the run's own
  model, hence the moderate default (0.5 -> 0).

A run is short as an episode: one decision per level (7 at paper scale) among 1 + 3 x layers
actions, so one run tries a handful of them; the pooled prior is what lets those few
transitions steer the later levels.

The agent is built at the first pruning step, carried across megabatches, saved in the
plugin state (a resumed run continues it bit for bit) and written to ``artifacts/q_table.json``
after every level. Each metrics row lists the decisions of the levels pruned before its
megabatch (``q_decisions``: level, action, layer, fraction, weights cut by the layer action,
greedy or explore, weights that differ from magnitude's masks, the reward, and the
accuracy and loss of both masks).

``backup=full`` measures at each level the reward of *every* feasible action, not only the one
taken: each action's masks are made from the same trained weights and scored against
magnitude's, as the taken action's are, so one level costs one evaluation per action and no
training. Q(s, a) is updated for each action with its own reward and next state, and the
greedy action is then taken (no exploration prunes the run's own model). The table thus learns
from 1 + 3 x layers transitions per level instead of one; the seed's sampled backup
(``backup=sample``, the default) stays as it was.

``learn=false`` applies the table greedily without exploring or updating: the untrained
greedy policy for a paired comparison. With ``episodes=0`` that table is the initial one, so
the run *is* plain IMP (global magnitude at every level; the rows equal ``imp``'s, plus the
decisions). ``episodes > 0`` adds an optional warm-up before the first level: episodes on a
*train network* (a fresh model with its own seed, trained ``episode_steps`` SGD steps on a
seeded sample of megabatch 1, pruned level by level with the same reward on megabatch 1's
validation split, without retraining or rewinding), which never touches the run's model or
its random draws. It is off by default: a network trained a few steps is not the one the
run prunes, and the run's levels are the signal that matters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from alma_bench.registry import STRATEGIES
from alma_bench.rl.qlearn import EpsilonSchedule, QAgent
from alma_bench.run.models import build_model
from alma_bench.sparsity.experience import scheduled
from alma_bench.sparsity.masks import MaskSet
from alma_bench.spec.config import derive
from alma_bench.store.files import atomic_write_text
from alma_bench.strategies.imp import IMPPlugin, Lottery

Q_TABLE = "q_table.json"  # the agent (QAgent.state_dict), under the run's artifacts/
MAGNITUDE = (None, 0.0)  # action 0: no layer cut, the level by global magnitude alone


def actions_of(maskset: MaskSet, fractions) -> list[tuple]:
    """Action 0, plain magnitude; then (layer index, fraction) for every prunable layer."""
    return [MAGNITUDE] + [(i, float(f)) for i in range(len(maskset.names)) for f in fractions]


def state_of(maskset: MaskSet, level: int, buckets: int) -> tuple:
    """The MDP state: the level about to be pruned and each layer's density bucket."""
    return (level, tuple(round(d * buckets) for d in maskset.layer_density().values()))


def feasible(maskset: MaskSet, actions: list[tuple]) -> list[bool]:
    """Magnitude always; a layer action while its layer has more than one surviving weight."""
    alive = [int(m.sum()) for m in maskset.masks.values()]
    return [i is None or alive[int(i)] > 1 for i, _ in actions]


def magnitude_level(maskset: MaskSet, density: float, optimizer=None) -> None:
    """Global magnitude pruning (nested) to exactly ``round(density * n)`` weights."""
    scores = {n: w.detach().abs() for n, w in maskset.weights.items()}
    maskset.prune_to(density, scores, optimizer=optimizer)


def apply_action(maskset: MaskSet, action: tuple, density: float, optimizer=None) -> int:
    """One level: the action's cut in its layer, the rest by global magnitude. Returns the
    number of weights the cut removed."""
    if action[0] is None:
        magnitude_level(maskset, density, optimizer)
        return 0
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


def _snapshot(ms: MaskSet) -> tuple[dict, dict]:
    return ({n: m.clone() for n, m in ms.masks.items()},
            {n: w.detach().clone() for n, w in ms.weights.items()})


@torch.no_grad()
def _restore(ms: MaskSet, snap: tuple[dict, dict]) -> None:
    # in place, past MaskSet.update: that would zero the "regrown" weights we bring back
    masks, weights = snap
    for n, m in ms.masks.items():
        m.copy_(masks[n])
    for n, w in ms.weights.items():
        w.copy_(weights[n])


def prune_level(agent: QAgent, ms: MaskSet, level: int, densities: list[float], evaluate,
                buckets: int, learn: bool = True, optimizer=None,
                reward: str = "loss") -> dict:
    """One level, one MDP step: choose (epsilon-greedy if ``learn``, else greedy), prune ``ms``
    to the level's density, reward against plain magnitude on the same weights
    (``evaluate()``: (accuracy, mean cross-entropy) of the model as ``ms`` masks it), and with
    ``learn`` one Q-update. Returns the decision."""
    last = len(densities) - 1
    density = scheduled(densities, level)
    s, ok = state_of(ms, level, buckets), feasible(ms, agent.table.actions)
    a, explored = agent.act(s, ok, explore=learn)
    action = agent.table.actions[a]
    snap = _snapshot(ms)
    cut = apply_action(ms, action, density)
    mine = {n: m.clone() for n, m in ms.masks.items()}
    _restore(ms, snap)
    magnitude_level(ms, density)
    differs = sum(int((ms.masks[n] ^ mine[n]).sum()) for n in mine)
    acc = acc_ref = loss = loss_ref = None
    if differs:
        with torch.no_grad():
            acc_ref, loss_ref = evaluate()
        _restore(ms, snap)
        ms.update(mine, optimizer)  # nested in the snapshot: only prunes
        with torch.no_grad():
            acc, loss = evaluate()
    elif optimizer is not None:  # the same masks; redone so the optimizer state follows them
        _restore(ms, snap)
        ms.update(mine, optimizer)
    if not differs:
        r = 0.0
    else:
        r = acc - acc_ref if reward == "accuracy" else loss_ref - loss
    if learn:
        if level >= last:
            agent.learn(s, a, r, None)
            agent.end_episode()
        else:
            agent.learn(s, a, r, state_of(ms, level + 1, buckets),
                        feasible(ms, agent.table.actions))
    return {"level": level, "action": a,
            "layer": None if action[0] is None else ms.names[int(action[0])],
            "fraction": float(action[1]), "cut": cut,
            "choice": "explore" if explored else "greedy", "differs": differs, "reward": r,
            "val_acc": acc, "val_acc_magnitude": acc_ref, "val_loss": loss,
            "val_loss_magnitude": loss_ref}


def prune_level_full(agent: QAgent, ms: MaskSet, level: int, densities: list[float], evaluate,
                     buckets: int, optimizer=None, reward: str = "loss") -> dict:
    """One level with a full backup (``backup: full``): the masks of *every* feasible action
    are made from the same trained weights and rewarded against magnitude's, exactly as the
    taken action's are in :func:`prune_level`; Q(s, a) is updated for each with its own
    reward and next state; then the greedy action is taken. The reward needs no training, only
    one evaluation per action, so the table learns from all 1 + 3 x layers actions at every
    level instead of one, and no exploration prunes the run's own model."""
    last = len(densities) - 1
    density = scheduled(densities, level)
    actions = agent.table.actions
    s, ok = state_of(ms, level, buckets), feasible(ms, actions)
    snap = _snapshot(ms)
    magnitude_level(ms, density)
    ref = {n: m.clone() for n, m in ms.masks.items()}
    with torch.no_grad():
        acc_ref, loss_ref = evaluate()
    tried = {}
    for a in agent.table.options(ok):
        _restore(ms, snap)
        cut = apply_action(ms, actions[a], density)
        mine = {n: m.clone() for n, m in ms.masks.items()}
        differs = sum(int((ref[n] ^ mine[n]).sum()) for n in mine)
        acc, loss, r = acc_ref, loss_ref, 0.0
        if differs:
            with torch.no_grad():
                acc, loss = evaluate()
            r = acc - acc_ref if reward == "accuracy" else loss_ref - loss
        nxt = (None, None) if level >= last else (state_of(ms, level + 1, buckets),
                                                  feasible(ms, actions))
        agent.backup(s, a, r, *nxt)
        tried[a] = (mine, cut, differs, acc, loss, r)
    a, _ = agent.act(s, ok, explore=False)
    mine, cut, differs, acc, loss, r = tried[a]
    _restore(ms, snap)
    ms.update(mine, optimizer)  # nested in the snapshot: only prunes
    agent.took(r)
    if level >= last:
        agent.end_episode()
    action = actions[a]
    return {"level": level, "action": a,
            "layer": None if action[0] is None else ms.names[int(action[0])],
            "fraction": float(action[1]), "cut": cut, "choice": "greedy", "differs": differs,
            "reward": r, "val_acc": acc, "val_acc_magnitude": acc_ref, "val_loss": loss,
            "val_loss_magnitude": loss_ref,
            "rewards": {str(i): t[5] for i, t in tried.items()}}


def new_agent(p: IMPQ, ms: MaskSet, n_levels: int, seed: int) -> QAgent:
    """The initial agent: priors 0 (magnitude's value), pooled, ties to magnitude; epsilon
    over the warm-up's decisions and the run's ``n_levels``."""
    return QAgent(actions_of(ms, p.fractions), p.alpha, p.gamma,
                  EpsilonSchedule(p.epsilon_start, p.epsilon_end, (p.episodes + 1) * n_levels,
                                  p.epsilon_decay),
                  derive(seed, "q-explore"), init=0.0, pooled=p.pooled, default=0)


def _episode_batches(ctx, p: IMPQ, episode: int):
    """A seeded sample of megabatch 1's training data, new for each episode."""
    x, y = ctx.stream.train_set(0)
    k = max(1, min(len(y), round(p.sample_fraction * ctx.stream.megabatches[0].size)))
    g = torch.Generator().manual_seed(derive(ctx.seeds.strategy, "q-sample", episode))
    idx = torch.randperm(len(y), generator=g)[:k]
    return ctx.batches(x[idx], y[idx], seed=derive(ctx.seeds.strategy, "q-order", episode))


def warm_up(agent: QAgent, ctx, p: IMPQ, densities: list[float]) -> None:
    """``p.episodes`` learning episodes on train networks (module docstring)."""
    from alma_bench.run.training import build_optimizer

    # the global RNG is forked: the warm-up must not shift the run's own random draws, or a
    # resumed run (which skips it) would differ from one that ran it in-process
    cuda = [ctx.device] if ctx.device.type == "cuda" else []  # dropout draws there
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(derive(ctx.seeds.strategy, "q-net"))
        net = build_model(ctx.spec.model, ctx.stream.input_shape, ctx.stream.num_classes)
        net = net.to(ctx.device)
        ms = MaskSet(net, p.prune_first, p.prune_last, p.prune_linear)
        # taken with all-ones masks: loading it resets weights and masks for each episode
        start = {k: v.clone() for k, v in net.state_dict().items()}
        val = _eval_set(ctx, 0)
        for episode in range(p.episodes):
            net.load_state_dict(start)
            _train(net, build_optimizer(ctx.protocol, net), _episode_batches(ctx, p, episode),
                   p.episode_steps)
            for level in range(1, len(densities)):
                prune_level(agent, ms, level, densities, lambda: evaluate(ctx, net, *val),
                            p.buckets, reward=p.reward)


def _train(net, optimizer, batches, steps: int) -> None:
    net.train()
    for s in range(steps):
        x, y = batches[s % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()


def evaluate(ctx, model, x, y) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on uint8 images, eval mode."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    bs = ctx.protocol.eval_batch_size
    with torch.no_grad():
        for i in range(0, len(y), bs):
            out = model(ctx.normalize(x[i : i + bs]))
            target = y[i : i + bs].to(out.device)
            correct += int((out.argmax(1) == target).sum())
            loss += float(F.cross_entropy(out.float(), target, reduction="sum"))
    model.train(was_training)
    return correct / len(y), loss / len(y)


def _eval_set(ctx, t: int):
    """Megabatch t's validation split; its new samples if the stream has none."""
    x, y = ctx.stream.val_set(t)
    return (x, y) if len(y) else ctx.stream.new_set(t)


class QPruningPlugin(IMPPlugin):
    """IMP with the agent's decisions as the pruning step, learning from each level. The
    reward's evaluations and the warm-up need the harness's ctx."""

    def __init__(self, ctx, params: IMPQ):
        super().__init__(params, seed=ctx.seeds.strategy, model=ctx.model, run_dir=ctx.run_dir,
                         ctx=ctx)
        self.agent: QAgent | None = None
        self.decisions: list[dict] = []  # of the levels pruned before the current megabatch

    def before_training_exp(self, strategy, **kw):
        self.decisions = []
        super().before_training_exp(strategy, **kw)

    def prune(self, level: int, model, optimizer) -> None:
        if self.agent is None:  # the first level: the episode starts
            self.agent = new_agent(self.p, self.maskset, len(self.densities) - 1,
                                   self.ctx.seeds.strategy)
            warm_up(self.agent, self.ctx, self.p, self.densities)
        # the weights last trained on megabatch t - 1 (offline levels: on megabatch 1)
        val = _eval_set(self.ctx, max(self.t - 1, 0))
        scored = (lambda: evaluate(self.ctx, model, *val))
        if self.p.learn and self.p.backup == "full":
            decision = prune_level_full(self.agent, self.maskset, level, self.densities, scored,
                                        self.p.buckets, optimizer=optimizer, reward=self.p.reward)
        else:
            decision = prune_level(self.agent, self.maskset, level, self.densities, scored,
                                   self.p.buckets, learn=self.p.learn, optimizer=optimizer,
                                   reward=self.p.reward)
        self.decisions.append(decision)
        if self.ctx.run_dir is not None:
            path = self.ctx.run_dir / "artifacts" / Q_TABLE
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(self.agent.state_dict(), indent=1))

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
    """IMP with rewinding whose pruning step is chosen by a Q-learning agent that learns from
    the run's own levels."""

    # 2: learns from the run's own levels (relative reward, priors, per-decision epsilon);
    # 1 learned once on a train network and froze the table
    revision: ClassVar[int] = 2
    learn: bool = True  # false: greedy, no updates (with episodes=0: plain IMP)
    episodes: int = 0  # warm-up episodes on train networks before the first level
    episode_steps: int = 20  # SGD steps of the train network per warm-up episode
    sample_fraction: float = 0.5  # of megabatch 1, the train network's data per episode
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3)  # of a layer's surviving weights
    buckets: int = 10  # per-layer density buckets of the state
    alpha: float = 0.9  # MDP-tickets' alpha and gamma
    gamma: float = 0.9
    # the reward: mean validation cross-entropy of magnitude's masks minus the agent's
    # (continuous: it ranks choices that accuracy, on a small split, scores the same), or the
    # agent's validation accuracy minus magnitude's
    reward: Literal["loss", "accuracy"] = "loss"
    pooled: bool = True  # untried (state, action): pooled with the action's Q elsewhere
    epsilon_start: float = 0.5  # exploration costs the run's own accuracy: moderate
    epsilon_end: float = 0.0
    epsilon_decay: Literal["exponential", "linear"] = "linear"
    # sample: one Q-update per level, of the action taken (epsilon-greedy, as the MDP seed);
    # full: every feasible action's reward is measured on the same weights and backed up,
    # then the greedy action is taken (prune_level_full; epsilon unused)
    backup: Literal["sample", "full"] = "sample"
    later_params: ClassVar[dict] = {"backup": "sample"}  # added after runs were published

    def __post_init__(self):
        super().__post_init__()
        if self.episodes < 0 or self.episode_steps < 1 or self.buckets < 1:
            raise ValueError("need episodes >= 0, episode_steps >= 1 and buckets >= 1")
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1), got {list(self.fractions)}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if not 0 < self.alpha <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= gamma <= 1, got alpha={self.alpha}, "
                             f"gamma={self.gamma}")
        if self.backup not in ("sample", "full"):
            raise ValueError(f"backup must be sample or full, got {self.backup!r}")
        if self.reward not in ("loss", "accuracy"):
            raise ValueError(f"reward must be loss or accuracy, got {self.reward!r}")
        EpsilonSchedule(self.epsilon_start, self.epsilon_end, 1, self.epsilon_decay)

    def plugins(self, ctx) -> list:
        self.check(ctx)
        return [QPruningPlugin(ctx, self)]
