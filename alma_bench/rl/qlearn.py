"""Tabular Q-learning, written plainly (ALGORITHMS.md section 11, the MDP form of IMP).

* A state is any hashable tuple (``imp-q`` uses ``(level, (density bucket per layer, ...))``);
  the table is a dict keyed by the tuple itself, never by a string hash of it.
* The action list is fixed for the whole run. Actions that are infeasible in a state are
  masked out (a list of bools per call), so action indices always mean the same thing: the
  public MDP-tickets code shrinks its action list as neurons go, which silently re-indexes Q.
* ``Q(s,a) += alpha * (r + gamma * max_a' Q(s',a') - Q(s,a))``, the max over the actions
  feasible in s'; a terminal transition (``s_next is None``) does not bootstrap.
* **Untried actions have a value of their own**, not 0. With rewards <= 0 and Q initialised
  at 0, an untried action is the best one in every state, ``max_a' Q(s', a')`` is 0 in every
  update (the bootstrap term is dead) and ties among untried actions fall to index order.
  Here Q(s, a) of an action never tried in s is its *prior*: ``init[a]`` (a number per action,
  e.g. the known value of a reference action), or with ``pooled=True`` the mean of
  ``init[a]`` (weight 1) and a's learned Q in every state where it was tried (weight 1 each),
  so what an action did elsewhere is what it is expected to do in a new state. The
  bootstrap then reads the best *expected* value of s', tried values where there are some,
  priors elsewhere. An update of an untried entry starts from its prior.
* Greedy ties: the ``default`` action (the reference the priors are measured against) wins
  a tie; among the others a seeded draw decides when a generator is given (the learner),
  else the lowest index (a deterministic reading of a saved table).
* Epsilon-greedy, epsilon decaying per *decision* from ``start`` (decision 0) to ``end``
  (decision ``horizon - 1``, held after), exponentially or linearly. Per decision rather than
  per episode because ``imp-q``'s main episode is the run itself: one decision per level.
  Each decision draws from a generator seeded by (seed, decision index), so an agent resumed
  from its state at any decision boundary draws what it would have.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EpsilonSchedule", "QAgent", "QTable"]


def _tuples(x):
    """JSON lists back to the nested tuples they were saved from (states are tuples)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def _lists(x):
    return [_lists(v) for v in x] if isinstance(x, tuple) else x


class QTable:
    """Q-values of a fixed action list, per state; an untried (state, action) reads its prior
    (module docstring)."""

    def __init__(self, actions: Sequence[tuple], init: float | Sequence[float] = 0.0,
                 pooled: bool = False, default: int | None = None):
        if not actions:
            raise ValueError("a Q-table needs at least one action")
        self.actions: list[tuple] = [tuple(a) for a in actions]
        n = len(self.actions)
        self.init = [float(init)] * n if isinstance(init, (int, float)) else [float(v)
                                                                                for v in init]
        if len(self.init) != n:
            raise ValueError(f"init has {len(self.init)} values for {n} actions")
        if default is not None and not 0 <= default < n:
            raise ValueError(f"default action {default} is not one of the {n} actions")
        self.pooled, self.default = bool(pooled), default
        # only tried entries are meaningful; the others hold init and are read as the prior
        self.values: dict[Hashable, list[float]] = {}
        self.visits: dict[Hashable, list[int]] = {}

    def prior(self, action: int) -> float:
        """The value of ``action`` in a state where it was never tried."""
        if not self.pooled:
            return self.init[action]
        tried = [q[action] for s, q in self.values.items() if self.visits[s][action] > 0]
        # fsum: exact, so the order of the states (insertion vs. a reloaded file's) is moot
        return math.fsum([self.init[action], *tried]) / (1 + len(tried))

    def tried(self, state: Hashable) -> list[bool]:
        return [n > 0 for n in self.visits.get(state, [0] * len(self.actions))]

    def q(self, state: Hashable) -> list[float]:
        """Q-values of ``state``: learned where tried, the prior elsewhere."""
        values, tried = self.values.get(state), self.tried(state)
        return [values[a] if tried[a] else self.prior(a) for a in range(len(self.actions))]

    def options(self, feasible: Sequence[bool] | None = None) -> list[int]:
        """Indices of the feasible actions (all when ``feasible`` is None)."""
        return [i for i in range(len(self.actions)) if feasible is None or feasible[i]]

    def best(self, state: Hashable, feasible: Sequence[bool] | None = None,
             rng: np.random.Generator | None = None) -> int:
        """The greedy action: highest Q among feasible actions; ties to ``default``, else a
        draw from ``rng``, else the lowest index."""
        q, options = self.q(state), self.options(feasible)
        if not options:
            raise ValueError("no feasible action")
        top = max(q[i] for i in options)
        tied = [i for i in options if q[i] == top]
        if self.default in tied:
            return self.default
        return tied[int(rng.integers(len(tied)))] if rng is not None and len(tied) > 1 \
            else tied[0]

    def max_q(self, state: Hashable, feasible: Sequence[bool] | None = None) -> float:
        """max_a' Q(s', a') over the feasible actions (priors for untried ones); 0 when none is
        feasible (nothing follows)."""
        q = self.q(state)
        return max((q[i] for i in self.options(feasible)), default=0.0)

    def update(self, state: Hashable, action: int, reward: float, next_state: Hashable | None,
               next_feasible: Sequence[bool] | None, alpha: float, gamma: float) -> float:
        """One Q-learning update; ``next_state=None`` is terminal. Returns the new Q(s, a)."""
        target = reward if next_state is None else reward + gamma * self.max_q(next_state,
                                                                               next_feasible)
        old = self.q(state)[action]  # the prior, if untried: what the learner acted on
        q = self.values.setdefault(state, list(self.init))
        q[action] = old + alpha * (target - old)
        self.visits.setdefault(state, [0] * len(self.actions))[action] += 1
        return q[action]

    def to_json(self) -> dict:
        # states sorted so the same table always writes the same file
        rows = sorted(self.values.items(), key=lambda kv: repr(kv[0]))
        return {"actions": [list(a) for a in self.actions], "init": list(self.init),
                "pooled": self.pooled, "default": self.default,
                "states": [{"state": _lists(s), "q": list(q), "visits": list(self.visits[s])}
                           for s, q in rows]}

    @classmethod
    def from_json(cls, d: dict) -> QTable:
        table = cls([tuple(a) for a in d["actions"]], d.get("init", 0.0), d.get("pooled", False),
                    d.get("default"))
        table.values = {_tuples(r["state"]): [float(v) for v in r["q"]] for r in d["states"]}
        table.visits = {_tuples(r["state"]): [int(v) for v in r["visits"]] for r in d["states"]}
        return table


@dataclass(frozen=True)
class EpsilonSchedule:
    """Epsilon of decision k: ``start`` at k = 0, ``end`` at k = horizon - 1 and after."""

    start: float = 1.0
    end: float = 0.1
    horizon: int = 20
    kind: str = "exponential"  # or "linear"

    def __post_init__(self):
        if not (0 <= self.end <= 1 and 0 <= self.start <= 1):
            raise ValueError(f"epsilon must be in [0, 1], got start={self.start}, end={self.end}")
        if self.kind not in ("exponential", "linear"):
            raise ValueError(f"epsilon decay must be exponential or linear, got {self.kind!r}")
        if self.kind == "exponential" and self.start != self.end and 0 in (self.start,
                                                                            self.end):
            raise ValueError("exponential epsilon decay never reaches or leaves 0: use linear")

    def __call__(self, k: int) -> float:
        if self.horizon <= 1:
            return self.start
        x = min(1.0, k / (self.horizon - 1))
        if self.kind == "linear":
            return self.start + (self.end - self.start) * x
        if self.start == self.end:
            return self.start
        return self.start * (self.end / self.start) ** x


class QAgent:
    """An epsilon-greedy Q-learner over a :class:`QTable`; counts its decisions and episodes.

    ``init``, ``pooled`` and ``default`` are the table's (priors of untried actions)."""

    def __init__(self, actions: Sequence[tuple], alpha: float, gamma: float,
                 epsilon: EpsilonSchedule, seed: int, init: float | Sequence[float] = 0.0,
                 pooled: bool = False, default: int | None = None):
        if not 0 < alpha <= 1 or not 0 <= gamma <= 1:
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= gamma <= 1, got {alpha}, {gamma}")
        self.table = QTable(actions, init, pooled, default)
        self.alpha, self.gamma, self.schedule, self.seed = alpha, gamma, epsilon, int(seed)
        self.decisions = 0  # actions chosen so far (epsilon's clock)
        self.episode = 0
        self.returns: list[float] = []  # undiscounted return of each finished episode
        self._return = 0.0

    @property
    def epsilon(self) -> float:
        """Epsilon of the next decision."""
        return self.schedule(self.decisions)

    def act(self, state: Hashable, feasible: Sequence[bool] | None = None,
            explore: bool = True) -> tuple[int, bool]:
        """Epsilon-greedy (``explore=False``: greedy): a uniformly random feasible action with
        probability epsilon. Returns (action, whether it was a random one)."""
        options = self.table.options(feasible)
        if not options:
            raise ValueError("no feasible action")
        rng = np.random.default_rng([self.seed, self.decisions])
        self.decisions += 1
        if explore and rng.random() < self.schedule(self.decisions - 1):
            return options[int(rng.integers(len(options)))], True
        return self.table.best(state, feasible, rng), False

    def learn(self, state, action: int, reward: float, next_state,
              next_feasible: Sequence[bool] | None = None) -> float:
        """One Q-update (``next_state=None``: terminal) of the action taken: its reward counts
        towards the episode's return."""
        self._return += reward
        return self.backup(state, action, reward, next_state, next_feasible)

    def took(self, reward: float) -> None:
        """Count the reward of the action taken towards the episode's return (after
        :meth:`backup` updates, which do not)."""
        self._return += reward

    def backup(self, state, action: int, reward: float, next_state,
               next_feasible: Sequence[bool] | None = None) -> float:
        """One Q-update of any action whose reward and next state are known (a full backup
        evaluates actions not taken); the return is left alone."""
        return self.table.update(state, action, reward, next_state, next_feasible, self.alpha,
                                 self.gamma)

    def end_episode(self) -> None:
        self.returns.append(self._return)
        self._return = 0.0
        self.episode += 1

    def state_dict(self) -> dict:
        """JSON-able state: table, counters, epsilon of the next decision, returns (the return
        of the episode under way included, so a resumed agent goes on summing it)."""
        return {"table": self.table.to_json(), "decisions": self.decisions,
                "episode": self.episode, "epsilon": self.epsilon,
                "returns": list(self.returns), "running_return": self._return,
                "alpha": self.alpha, "gamma": self.gamma, "seed": self.seed,
                "schedule": {"start": self.schedule.start, "end": self.schedule.end,
                             "horizon": self.schedule.horizon, "kind": self.schedule.kind}}

    def load_state_dict(self, state: dict) -> None:
        self.table = QTable.from_json(state["table"])
        self.decisions = int(state["decisions"])
        self.episode = int(state["episode"])
        self.returns = [float(r) for r in state["returns"]]
        self._return = float(state["running_return"])

    @classmethod
    def from_state(cls, state: dict) -> QAgent:
        """An agent rebuilt from :meth:`state_dict` (e.g. a saved ``q_table.json``)."""
        agent = cls(state["table"]["actions"], state["alpha"], state["gamma"],
                    EpsilonSchedule(**state["schedule"]), state["seed"])
        agent.load_state_dict(state)
        return agent
