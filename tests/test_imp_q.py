"""``imp-q``: the Q-learner on MDPs with a known optimum, its priors and bootstrap, and the
strategy learning from the run's own IMP levels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_lottery import _execute, _rows, _spec, _tiny_masks

from alma_bench.rl.qlearn import EpsilonSchedule, QAgent, QTable
from alma_bench.strategies.imp_q import (
    IMPQ,
    magnitude_level,
    new_agent,
    prune_level,
    prune_level_full,
)

# A chain 0..N-1, the goal at N or beyond (terminal). STEP: +1 for -1; JUMP: +2, cheap from
# even states, dear from odd ones; BACK: -1 for -1, infeasible in state 0. The optimal
# policy mixes STEP and JUMP, so neither index order nor an all-equal table can pass.
N, STEP, JUMP, BACK = 6, 0, 1, 2
ACTIONS = [("step",), ("jump",), ("back",)]
GAMMA = 0.9


def _move(s: int, a: int) -> tuple[int, float]:
    if a == STEP:
        return s + 1, -1.0
    if a == JUMP:
        return s + 2, -1.2 if s % 2 == 0 else -2.6
    return max(s - 1, 0), -1.0


def _feasible(s: int) -> list[bool]:
    return [True, True, s > 0]


def _optimal() -> list[int]:
    """Value iteration: the optimal action of every state."""
    v = [0.0] * (N + 2)
    for _ in range(200):
        v = [max(r + (GAMMA * v[t] if t < N else 0.0) for t, r in
                 (_move(s, a) for a in range(3) if _feasible(s)[a])) for s in range(N)] + [0, 0]
    policy = []
    for s in range(N):
        q = [(r + (GAMMA * v[t] if t < N else 0.0)) if _feasible(s)[a] else -np.inf
             for a, (t, r) in enumerate(_move(s, a) for a in range(3))]
        policy.append(int(np.argmax(q)))
    return policy


def _learn_chain(seed: int, decisions: int, alpha: float, noise: float, pooled: bool) -> QAgent:
    agent = QAgent(ACTIONS, alpha, GAMMA, EpsilonSchedule(1.0, 0.05, decisions, "linear"), seed,
                   pooled=pooled)
    rng = np.random.default_rng([seed, 99])
    while agent.decisions < decisions:
        s = 0
        for _ in range(4 * N):  # a cap: an exploring agent can walk back and forth
            a, _ = agent.act((s,), _feasible(s))
            t, r = _move(s, a)
            r += noise * rng.standard_normal()
            if t >= N:
                agent.learn((s,), a, r, None)
                break
            agent.learn((s,), a, r, (t,), _feasible(t))
            s = t
        agent.end_episode()
    return agent


def test_the_chain_optimum_is_not_index_order():
    policy = _optimal()
    assert JUMP in policy and STEP in policy, policy


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_greedy_policy_converges_to_the_optimum_on_a_deterministic_chain(seed, pooled):
    agent = _learn_chain(seed, 2000, alpha=0.5, noise=0.0, pooled=pooled)
    assert [agent.table.best((s,), _feasible(s)) for s in range(N)] == _optimal()


@pytest.mark.parametrize("seed", range(4))
def test_greedy_policy_converges_to_the_optimum_on_a_noisy_chain(seed):
    agent = _learn_chain(seed, 8000, alpha=0.05, noise=0.5, pooled=True)
    assert [agent.table.best((s,), _feasible(s)) for s in range(N)] == _optimal()


def test_bootstrap_reads_the_tried_actions_not_a_dead_zero():
    a, b, c, d = (0,), (1,), (2,), (3,)
    pooled = QTable([("x",), ("y",)], init=0.0, pooled=True)
    pooled.update(a, 0, -1.0, None, None, alpha=1.0, gamma=1.0)
    pooled.update(a, 1, -2.0, None, None, alpha=1.0, gamma=1.0)
    # c was never visited: each action's prior is the mean of init (0) and its tried values
    assert pooled.q(c) == [-0.5, -1.0]
    assert pooled.max_q(c) == -0.5  # the old all-zero table read 0 here, whatever was learned
    assert pooled.update(b, 0, -1.0, c, None, alpha=1.0, gamma=0.9) == pytest.approx(
        -1.0 + 0.9 * -0.5)
    # without pooling, a realistic per-action init is what an untried action is worth
    plain = QTable([("x",), ("y",)], init=[-1.0, -3.0])
    assert plain.max_q(d) == -1.0
    plain.update(d, 0, -4.0, None, None, alpha=1.0, gamma=1.0)
    assert plain.max_q(d) == -3.0  # the tried action's -4 counts; y's prior is now the best
    # an update of an untried entry starts from its prior, not from 0
    assert plain.update(c, 1, -3.0, None, None, alpha=0.5, gamma=1.0) == -3.0
    zero = QTable([("x",), ("y",)])  # the old default: 0 everywhere, nothing pooled
    zero.update(a, 0, -1.0, None, None, alpha=1.0, gamma=1.0)
    zero.update(a, 1, -2.0, None, None, alpha=1.0, gamma=1.0)
    assert zero.max_q(c) == 0.0


def test_ties_go_to_the_default_action_then_to_a_seeded_draw():
    fresh = QTable([("magnitude",), ("l0",), ("l1",)], default=0)
    assert fresh.best((1,)) == 0  # nothing learned: the reference action, by design
    assert fresh.best((1,), [False, True, True], np.random.default_rng(0)) in (1, 2)
    drawn = {fresh.best((1,), [False, True, True], np.random.default_rng(s)) for s in range(20)}
    assert drawn == {1, 2}  # not index order
    fresh.update((0,), 2, 0.1, None, None, alpha=1.0, gamma=1.0)
    assert fresh.best((0,)) == 2  # learned there
    assert fresh.best((1,)) == 0  # pooled off: nothing carries to another state
    pooled = QTable([("magnitude",), ("l0",), ("l1",)], pooled=True, default=0)
    pooled.update((0,), 2, 0.1, None, None, alpha=1.0, gamma=1.0)
    pooled.update((0,), 1, -0.1, None, None, alpha=1.0, gamma=1.0)
    # a state never seen: l1 helped elsewhere, l0 hurt, so l1 is expected to help here
    assert pooled.q((5,)) == pytest.approx([0.0, -0.05, 0.05])
    assert pooled.best((5,)) == 2


def test_agent_state_round_trips_mid_episode():
    agent = QAgent(ACTIONS, 0.5, GAMMA, EpsilonSchedule(1.0, 0.0, 10, "linear"), 3,
                   pooled=True, default=0)
    agent.act((0,))
    agent.learn((0,), 1, -1.0, (2,), [True, True, True])
    again = QAgent.from_state(json.loads(json.dumps(agent.state_dict())))
    assert again.state_dict() == agent.state_dict()
    assert [again.act((2,)) for _ in range(5)] == [agent.act((2,)) for _ in range(5)]


def test_a_level_is_rewarded_against_magnitude_on_the_same_weights():
    model, ms = _tiny_masks()
    densities = [1.0, 0.8, 0.64]
    p = IMPQ(epsilon_start=1.0, epsilon_end=1.0)
    agent = new_agent(p, ms, 2, seed=0)
    # an action that cuts 30% of the first conv, whatever magnitude would do
    agent.table.update((1, tuple(10 for _ in ms.names)), 3, 1.0, None, None, 1.0, 1.0)
    _, ref = _tiny_masks()
    magnitude_level(ref, 0.8)
    weights = {n: w.detach().clone() for n, w in ms.weights.items()}
    seen = []

    def evaluate():
        # the model as masked now, on the weights as trained: magnitude's masks, then ours
        seen.append({n: m.clone() for n, m in ms.masks.items()})
        for n, w in ms.weights.items():
            assert torch.equal(w.detach(), weights[n] * ms.masks[n])
        return [(0.5, 1.0), (0.75, 0.8)][len(seen) - 1]  # (accuracy, cross-entropy)

    d = prune_level(agent, ms, 1, densities, evaluate, buckets=10, learn=False)
    assert (d["action"], d["choice"], d["layer"], d["fraction"]) == (3, "greedy", ms.names[0],
                                                                    0.3)
    assert d["cut"] == round(0.3 * ms.masks[ms.names[0]].numel()) and d["differs"] > 0
    assert all(torch.equal(seen[0][n], ref.masks[n]) for n in ms.names)
    assert d["reward"] == pytest.approx(1.0 - 0.8)  # the loss magnitude's masks lose to ours
    assert (d["val_acc"], d["val_acc_magnitude"]) == (0.75, 0.5)
    assert ms.kept() == round(0.8 * ms.numel())
    _, ms = _tiny_masks()
    seen.clear()
    d = prune_level(agent, ms, 1, densities, evaluate, buckets=10, learn=False,
                    reward="accuracy")
    assert d["reward"] == 0.25


@pytest.mark.parametrize("final", [None, 0.3])
def test_every_level_lands_on_its_exact_count_and_learns(final):
    model, ms = _tiny_masks()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    densities = IMPQ(density=final).level_densities(5)
    agent = new_agent(IMPQ(density=final, epsilon_start=1.0, epsilon_end=1.0), ms, 5, seed=1)
    for episode in range(3):
        model.load_state_dict(start)
        for level in range(1, 6):
            prev = {n: m.clone() for n, m in ms.masks.items()}
            prune_level(agent, ms, level, densities,
                        lambda: (float(ms.masks[ms.names[0]].float().mean()), 1.0), 10)
            assert ms.kept() == round(densities[level] * ms.numel())
            assert all(not (ms.masks[n] & ~prev[n]).any() for n in ms.names)  # nested
        assert agent.episode == episode + 1
    assert agent.decisions == 15 and sum(sum(v) for v in agent.table.visits.values()) == 15


def test_untrained_greedy_agent_prunes_as_imp():
    _, ms = _tiny_masks()
    agent = new_agent(IMPQ(), ms, 3, seed=0)
    before = json.dumps(agent.state_dict())
    d = prune_level(agent, ms, 1, [1.0, 0.8, 0.64, 0.512], lambda: 1 / 0, 10, learn=False)
    assert (d["action"], d["layer"], d["differs"], d["reward"]) == (0, None, 0, 0.0)
    _, ref = _tiny_masks()
    magnitude_level(ref, 0.8)
    assert all(torch.equal(ms.masks[n], ref.masks[n]) for n in ms.names)
    after = agent.state_dict()
    assert after["table"] == json.loads(before)["table"]  # no update when not learning


def test_q_is_updated_by_the_runs_own_levels(tmp_path):
    """Q after each megabatch's checkpoint: carried across megabatches, one update per level,
    and the last checkpoint's agent is the saved q_table.json."""
    spec = _spec("imp-q", {"epsilon_start": 1.0, "epsilon_end": 1.0})
    agents = {}

    def progress(done, total, row):
        ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
        agents[done] = ckpt["plugins"][0]["agent"]

    run = tmp_path / spec.results_name / spec.run_id
    from alma_bench.run.runner import execute

    execute(spec, tmp_path, device="cpu", progress=progress)
    assert agents[1] is None  # nothing pruned before megabatch 2
    visits = {k: sum(sum(r["visits"]) for r in a["table"]["states"])
              for k, a in agents.items() if a is not None}
    assert visits == {2: 1, 3: 2, 4: 3}
    assert agents[2]["table"] != agents[3]["table"] != agents[4]["table"]
    assert agents[4]["episode"] == 1 and agents[3]["episode"] == 0  # the run is the episode
    saved = json.loads((run / "artifacts" / "q_table.json").read_text())
    assert saved == agents[4]
    rows = _rows(run)
    decisions = [d for r in rows for d in r["q_decisions"]]
    assert [d["level"] for d in decisions] == [1, 2, 3]
    assert all(d["choice"] == "explore" for d in decisions)
    assert any(d["reward"] != 0 for d in decisions)  # a reward with signal, at smoke scale
    assert any(v != 0 for r in saved["table"]["states"] for v in r["q"])
    # each level's update is in the table: its state, its action tried once
    states = {tuple(r["state"][:1]): r for r in saved["table"]["states"]}
    for d in decisions:
        assert states[(d["level"],)]["visits"][d["action"]] == 1
    assert saved["returns"] == [pytest.approx(sum(d["reward"] for d in decisions))]


def test_untrained_greedy_policy_is_plain_imp(tmp_path):
    """learn=false, episodes=0: the paired comparison's untrained policy; by construction the
    rows are imp's, plus the decisions."""
    imp = _rows(_execute(_spec("imp"), tmp_path / "imp"))
    q = _rows(_execute(_spec("imp-q", {"learn": False}), tmp_path / "q"))
    skip = {"q_decisions", "strategy", "label", "run_id"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in q] == [
        {k: v for k, v in r.items() if k not in skip} for r in imp]
    assert [[d["action"] for d in r["q_decisions"]] for r in q] == [[], [0], [0], [0]]


def test_resumed_learning_run_matches_after_each_kill(tmp_path):
    spec = _spec("imp-q", {"epsilon_start": 1.0, "epsilon_end": 1.0}, megabatches=3)
    ref = _execute(spec, tmp_path / "ref")
    killed = _execute(spec, tmp_path / "killed", kill_after=2)
    _execute(spec, tmp_path / "killed")
    assert _rows(ref) == _rows(killed)
    assert (ref / "artifacts" / "q_table.json").read_text() == (
        killed / "artifacts" / "q_table.json").read_text()


def test_offline_levels_are_the_agents_decisions_too(tmp_path):
    run = _execute(_spec("imp-q", {"levels": 2, "rewind_step": 2, "epsilon_start": 1.0,
                                   "epsilon_end": 1.0}, megabatches=2), tmp_path)
    rows = _rows(run)
    assert [r["imp_level"] for r in rows] == [2, 3]
    assert [[d["level"] for d in r["q_decisions"]] for r in rows] == [[1, 2], [3]]
    assert [r["density"] for r in rows] == pytest.approx([0.64, 0.512], abs=1e-3)
    saved = json.loads((run / "artifacts" / "q_table.json").read_text())
    assert saved["decisions"] == 3 and saved["episode"] == 1


def test_a_full_backup_rewards_every_action_and_takes_the_best():
    """backup: full. Every feasible action is tried on the same trained weights and rewarded
    against magnitude's masks; Q(s, a) is updated for each with its own reward; the greedy
    action, taken, has the highest Q; the level lands on its exact, nested count."""
    _, ms = _tiny_masks()
    densities = IMPQ().level_densities(3)
    agent = new_agent(IMPQ(backup="full", gamma=0.0), ms, 3, seed=0)

    def evaluate():  # a loss that rewards keeping the first layer: cutting it costs
        return 0.5, 1.0 - float(ms.masks[ms.names[0]].float().mean())

    prev = {n: m.clone() for n, m in ms.masks.items()}
    s = (1, tuple(10 for _ in ms.names))
    d = prune_level_full(agent, ms, 1, densities, evaluate, buckets=10)
    assert ms.kept() == round(densities[1] * ms.numel())
    assert all(not (ms.masks[n] & ~prev[n]).any() for n in ms.names)
    n = len(agent.table.actions)
    assert agent.table.tried(s) == [True] * n and len(d["rewards"]) == n
    q = agent.table.q(s)
    assert d["action"] == max(range(n), key=lambda a: (q[a], a == 0))  # ties to magnitude
    assert q == pytest.approx([d["rewards"][str(a)] * 0.9 for a in range(n)])  # alpha 0.9
    first = [a for a, (i, _) in enumerate(agent.table.actions) if i == 0]
    assert all(d["rewards"][str(a)] <= 0 for a in first)  # cutting the first layer hurts
    assert any(d["rewards"][str(a)] < 0 for a in first)
    # gamma 0: the taken action is the best one-shot reward, never worse than magnitude's 0
    assert d["reward"] == d["rewards"][str(d["action"])] == max(d["rewards"].values()) >= 0
    assert agent.returns == [] and agent.state_dict()["running_return"] == d["reward"]


def test_a_full_backup_run_resumes_and_leaves_sampled_run_ids_alone(tmp_path):
    spec = _spec("imp-q", {"backup": "full"}, megabatches=3)
    assert spec.run_id != _spec("imp-q", {}, megabatches=3).run_id
    assert "backup" not in json.dumps(_spec("imp-q", {}, megabatches=3).strategy)
    ref = _execute(spec, tmp_path / "ref")
    killed = _execute(spec, tmp_path / "killed", kill_after=2)
    _execute(spec, tmp_path / "killed")
    assert _rows(ref) == _rows(killed)
    decisions = [d for r in _rows(ref) for d in r["q_decisions"]]
    assert [d["choice"] for d in decisions] == ["greedy", "greedy"]
    assert all(len(d["rewards"]) > 1 for d in decisions)
