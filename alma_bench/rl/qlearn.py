"""Tabular Q-learning, written plainly (ALGORITHMS.md section 11, the MDP form of IMP).

* A state is any hashable tuple (``imp-q`` uses ``(level, (density bucket per layer, ...))``);
  the table is a dict keyed by the tuple itself, never by a string hash of it.
* The action list is fixed for the whole run. Actions that are infeasible in a state are
  masked out (a list of bools per call), so action indices always mean the same thing: the
  public MDP-tickets code shrinks its action list as neurons go, which silently re-indexes Q.
* ``Q(s,a) += alpha * (r + gamma * max_a' Q(s',a') - Q(s,a))``, the max over the actions
  feasible in s'; a terminal transition (``s_next is None``) does not bootstrap.
* Visits are counted per (state, action). The learner's greedy choice ranges over every
  feasible action (zero-initialised Q with rewards <= 0 is optimistic: untried actions get
  tried); :meth:`QTable.greedy`, the policy *applied* after learning, ranges only over actions
  tried in that state and says so when there is none, so an unvisited state is never mistaken
  for a good one.
* Epsilon-greedy, epsilon decaying per episode from ``start`` to ``end`` (reached at the last
  episode), exponentially or linearly. Exploration draws come from a generator seeded by
  (seed, episode), so a learner resumed at an episode boundary draws what it would have.
"""

from __future__ import annotations

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
    """Q-values of a fixed action list, per state; unseen states are all zero."""

    def __init__(self, actions: Sequence[tuple]):
        if not actions:
            raise ValueError("a Q-table needs at least one action")
        self.actions: list[tuple] = [tuple(a) for a in actions]
        self.values: dict[Hashable, list[float]] = {}
        self.visits: dict[Hashable, list[int]] = {}

    def q(self, state: Hashable) -> list[float]:
        """A copy of the Q-values of ``state``."""
        return list(self.values.get(state, [0.0] * len(self.actions)))

    def options(self, feasible: Sequence[bool] | None = None) -> list[int]:
        """Indices of the feasible actions (all when ``feasible`` is None)."""
        return [i for i in range(len(self.actions)) if feasible is None or feasible[i]]

    def best(self, state: Hashable, feasible: Sequence[bool] | None = None) -> int:
        """The learner's greedy action: highest Q among feasible actions, ties to the lowest
        index."""
        q, options = self.q(state), self.options(feasible)
        if not options:
            raise ValueError("no feasible action")
        return max(options, key=lambda i: (q[i], -i))

    def greedy(self, state: Hashable, feasible: Sequence[bool] | None = None) -> int | None:
        """The learned policy: highest Q among feasible actions tried in ``state`` (ties to the
        lowest index); None if none was tried there."""
        q, n = self.q(state), self.visits.get(state, [0] * len(self.actions))
        tried = [i for i in self.options(feasible) if n[i] > 0]
        return max(tried, key=lambda i: (q[i], -i)) if tried else None

    def max_q(self, state: Hashable, feasible: Sequence[bool] | None = None) -> float:
        """max_a' Q(s', a') over the feasible actions; 0 when none is (nothing follows)."""
        q = self.q(state)
        return max((q[i] for i in self.options(feasible)), default=0.0)

    def update(self, state: Hashable, action: int, reward: float, next_state: Hashable | None,
               next_feasible: Sequence[bool] | None, alpha: float, gamma: float) -> float:
        """One Q-learning update; ``next_state=None`` is terminal. Returns the new Q(s, a)."""
        target = reward if next_state is None else reward + gamma * self.max_q(next_state,
                                                                               next_feasible)
        q = self.values.setdefault(state, [0.0] * len(self.actions))
        q[action] += alpha * (target - q[action])
        self.visits.setdefault(state, [0] * len(self.actions))[action] += 1
        return q[action]

    def to_json(self) -> dict:
        # states sorted so the same table always writes the same file
        rows = sorted(self.values.items(), key=lambda kv: repr(kv[0]))
        return {"actions": [list(a) for a in self.actions],
                "states": [{"state": _lists(s), "q": list(q), "visits": list(self.visits[s])}
                           for s, q in rows]}

    @classmethod
    def from_json(cls, d: dict) -> QTable:
        table = cls([tuple(a) for a in d["actions"]])
        table.values = {_tuples(r["state"]): [float(v) for v in r["q"]] for r in d["states"]}
        table.visits = {_tuples(r["state"]): [int(v) for v in r["visits"]] for r in d["states"]}
        return table


@dataclass(frozen=True)
class EpsilonSchedule:
    """Epsilon of episode e: ``start`` at e = 0, ``end`` at e = episodes - 1."""

    start: float = 1.0
    end: float = 0.1
    episodes: int = 20
    kind: str = "exponential"  # or "linear"

    def __post_init__(self):
        if not (0 <= self.end <= 1 and 0 <= self.start <= 1):
            raise ValueError(f"epsilon must be in [0, 1], got start={self.start}, end={self.end}")
        if self.kind not in ("exponential", "linear"):
            raise ValueError(f"epsilon decay must be exponential or linear, got {self.kind!r}")
        if self.kind == "exponential" and self.start != self.end and 0 in (self.start,
                                                                            self.end):
            raise ValueError("exponential epsilon decay never reaches or leaves 0: use linear")

    def __call__(self, episode: int) -> float:
        if self.episodes <= 1:
            return self.start
        x = min(1.0, episode / (self.episodes - 1))
        if self.kind == "linear":
            return self.start + (self.end - self.start) * x
        if self.start == self.end:
            return self.start
        return self.start * (self.end / self.start) ** x


class QAgent:
    """An epsilon-greedy Q-learner over a :class:`QTable`; counts its episodes."""

    def __init__(self, actions: Sequence[tuple], alpha: float, gamma: float,
                 epsilon: EpsilonSchedule, seed: int):
        if not 0 < alpha <= 1 or not 0 <= gamma <= 1:
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= gamma <= 1, got {alpha}, {gamma}")
        self.table = QTable(actions)
        self.alpha, self.gamma, self.schedule, self.seed = alpha, gamma, epsilon, int(seed)
        self.episode = 0
        self.returns: list[float] = []  # undiscounted return of each finished episode
        self._return = 0.0
        self._rng = self._episode_rng()

    @property
    def epsilon(self) -> float:
        """Epsilon of the current episode."""
        return self.schedule(self.episode)

    def _episode_rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.episode])

    def act(self, state: Hashable, feasible: Sequence[bool] | None = None) -> int:
        """Epsilon-greedy: a uniformly random feasible action with probability epsilon."""
        options = self.table.options(feasible)
        if not options:
            raise ValueError("no feasible action")
        if self._rng.random() < self.epsilon:
            return options[int(self._rng.integers(len(options)))]
        return self.table.best(state, feasible)

    def learn(self, state, action: int, reward: float, next_state,
              next_feasible: Sequence[bool] | None = None) -> float:
        """One Q-update (``next_state=None``: terminal)."""
        self._return += reward
        return self.table.update(state, action, reward, next_state, next_feasible, self.alpha,
                                 self.gamma)

    def end_episode(self) -> None:
        """Close the episode: epsilon decays and the next episode draws from its own seed."""
        self.returns.append(self._return)
        self._return = 0.0
        self.episode += 1
        self._rng = self._episode_rng()

    def state_dict(self) -> dict:
        """JSON-able state (at an episode boundary): table, episode counter, epsilon, returns."""
        return {"table": self.table.to_json(), "episode": self.episode,
                "epsilon": self.epsilon, "returns": list(self.returns), "alpha": self.alpha,
                "gamma": self.gamma, "seed": self.seed,
                "schedule": {"start": self.schedule.start, "end": self.schedule.end,
                             "episodes": self.schedule.episodes, "kind": self.schedule.kind}}

    def load_state_dict(self, state: dict) -> None:
        self.table = QTable.from_json(state["table"])
        self.episode = int(state["episode"])
        self.returns = [float(r) for r in state["returns"]]
        self._return = 0.0
        self._rng = self._episode_rng()

    @classmethod
    def from_state(cls, state: dict) -> QAgent:
        """An agent rebuilt from :meth:`state_dict` (e.g. a saved ``q_table.json``)."""
        agent = cls(state["table"]["actions"], state["alpha"], state["gamma"],
                    EpsilonSchedule(**state["schedule"]), state["seed"])
        agent.load_state_dict(state)
        return agent
