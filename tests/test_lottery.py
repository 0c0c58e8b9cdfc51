"""Lottery tickets: IMP with rewinding (``imp``) and its Q-learning form (``imp-q``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import TINY

from alma_bench.registry import STRATEGIES
from alma_bench.rl.qlearn import EpsilonSchedule, QAgent, QTable
from alma_bench.run.models import build_model
from alma_bench.run.runner import execute
from alma_bench.sparsity import MaskSet
from alma_bench.sparsity.masks import BUFFER
from alma_bench.spec.config import RunSpec
from alma_bench.store.files import read_rows
from alma_bench.strategies.imp import IMP
from alma_bench.strategies.imp_q import IMPQ, magnitude_level, new_agent, prune_level

VOLATILE = {"wall_time"}


class _Kill(Exception):
    """Raised by the progress callback: the run dies right after a megabatch's checkpoint."""


def _spec(name: str, params=None, megabatches: int = 4, protocol=None) -> RunSpec:
    return RunSpec(suite="lottery", label=name, strategy={"name": name, "params": params or {}},
                   seed=0, stream={**TINY["stream"], "megabatches": megabatches},
                   model=dict(TINY["model"]), protocol={**TINY["protocol"], **(protocol or {})})


def _execute(spec: RunSpec, out, kill_after: int | None = None):
    """Run ``spec`` under ``out``; with ``kill_after=k`` die after megabatch k. Returns the
    run's folder."""

    def progress(done, total, row):
        if done == kill_after:
            raise _Kill

    try:
        execute(spec, out, device="cpu", progress=progress)
    except _Kill:
        pass
    return out / spec.results_name / spec.run_id


def _rows(run) -> list[dict]:
    rows = read_rows(run / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(BUFFER)}


class _RewindSpy(SupervisedPlugin):
    """Its own record of the model at step k of megabatch 1, and of the model (and optimizer
    state) at the first step of every later megabatch, after all pruning and rewinding."""

    def __init__(self, maskset, k):
        super().__init__()
        self.ms, self.k, self.steps, self.step_k, self.starts = maskset, k, 0, None, []

    def before_training_exp(self, strategy, **kw):
        self.first = True

    def before_training_iteration(self, strategy, **kw):
        t = strategy.experience.current_experience
        if t == 0 and self.steps == self.k and self.step_k is None:
            self.step_k = _state(strategy.model)
        if t > 0 and self.first:
            masks = {n: m.clone() for n, m in self.ms.masks.items()}
            self.starts.append((_state(strategy.model), masks, len(strategy.optimizer.state)))
        self.first = False

    def after_update(self, strategy, **kw):
        if strategy.experience.current_experience == 0:
            self.steps += 1


def _register_spy():
    if "imp-spy" in STRATEGIES:
        return

    @STRATEGIES.register("imp-spy")
    @dataclass(frozen=True)
    class ImpSpy(IMP):
        """IMP with a rewind recorder (tests only)."""

        def plugins(self, ctx):
            plugins = super().plugins(ctx)
            ImpSpy.last = _RewindSpy(plugins[0].maskset, self.rewind_step)
            return plugins + [ImpSpy.last]


@pytest.mark.parametrize("k", [0, 3])
def test_rewind_restores_every_surviving_weight_to_step_k(tmp_path, k):
    _register_spy()
    # momentum kept across megabatches, so a rewind that kept it would show
    _execute(_spec("imp-spy", {"rewind_step": k}, megabatches=3,
                   protocol={"keep_optimizer_state": True}), tmp_path)
    spy = STRATEGIES.get("imp-spy").cls.last
    assert spy.step_k is not None and len(spy.starts) == 2
    for state, masks, opt_state in spy.starts:
        assert opt_state == 0  # momentum belongs to the trained weights, not to step k
        assert any(not m.all() for m in masks.values())
        for key, value in spy.step_k.items():
            layer = key.rsplit(".", 1)[0]
            if key.endswith(".weight") and layer in masks:
                # surviving weights exactly at step k, pruned ones zero
                assert torch.equal(state[key], value * masks[layer]), key
            else:  # biases, BatchNorm parameters and running statistics: open_lth's scope
                assert torch.equal(state[key], value), key


def test_density_after_level_l_is_0_8_to_the_l(tmp_path):
    run = _execute(_spec("imp"), tmp_path)
    rows = _rows(run)
    assert [r["imp_level"] for r in rows] == [0, 1, 2, 3]
    for level, r in enumerate(rows):
        assert r["density"] == pytest.approx(0.8 ** level, abs=1e-3)
        assert r["target_density"] == pytest.approx(0.8 ** level)
    masks = torch.load(run / "artifacts" / "final_masks.pt", weights_only=True)
    n = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.8 ** 3 * n)  # exactly
    assert rows[-1]["dense_layers"] == ["fc"]  # APP's layer set: no Linear layer pruned


def test_offline_form_runs_its_levels_inside_one_megabatch(tmp_path):
    run = _execute(_spec("imp", {"levels": 2, "rewind_step": 2}, megabatches=1), tmp_path)
    (row,) = _rows(run)
    assert row["density"] == pytest.approx(0.64, abs=1e-3) and row["imp_level"] == 2
    steps_per_training = 2 * -(-216 // 32)  # 2 epochs of 216 examples (90%), batch 32
    assert row["step"] == 3 * steps_per_training  # levels 0, 1, 2: three trainings
    assert row["samples_seen"] == 3 * 2 * 216
    # FLOPs of every round counted, the earlier (denser) ones above the final density's rate
    final_rate = 3 * row["flops_effective"] * row["samples_seen"]
    assert final_rate < row["train_flops"] < 3 * row["flops_dense"] * row["samples_seen"]
    assert row["rewind_step"] == 2


def test_q_update_on_a_hand_computed_two_step_example():
    table = QTable([("a",), ("b",)])
    s0, s1 = (0, (10,)), (1, (8,))
    alpha, gamma = 0.5, 0.9
    # episode 1: s0 -a-> s1 (reward 0), s1 -b-> end (reward -0.5)
    assert table.update(s0, 0, 0.0, s1, [True, True], alpha, gamma) == 0.0
    assert table.update(s1, 1, -0.5, None, None, alpha, gamma) == pytest.approx(-0.25)
    # episode 2: in s1 only b is feasible, so max_a' Q(s1, a') = -0.25, not Q(s1, a) = 0
    assert table.update(s0, 0, 0.0, s1, [False, True], alpha, gamma) == pytest.approx(
        0.5 * (0.9 * -0.25))
    assert table.update(s1, 1, -0.5, None, None, alpha, gamma) == pytest.approx(
        -0.25 + 0.5 * (-0.5 + 0.25))
    assert table.q(s0) == pytest.approx([-0.1125, 0.0])  # b untried in s0: its prior, 0
    assert table.best(s0) == 1
    assert table.tried(s0) == [True, False]
    # pooled: b's prior in s0 is the mean of init 0 and its Q where tried (s1)
    pooled = QTable.from_json({**table.to_json(), "pooled": True})
    assert pooled.q(s0) == pytest.approx([-0.1125, 0.5 * (0.0 + -0.375)])
    assert pooled.best(s0) == 0
    again = QTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again.values == table.values and again.visits == table.visits
    assert again.actions == table.actions and s1 in again.values  # tuple keys survive JSON


def test_epsilon_decays_as_configured():
    exp = EpsilonSchedule(1.0, 0.1, horizon=5, kind="exponential")
    lin = EpsilonSchedule(1.0, 0.1, horizon=5, kind="linear")
    assert [exp(e) for e in range(5)] == pytest.approx([0.1 ** (e / 4) for e in range(5)])
    assert [lin(e) for e in range(5)] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    assert exp(9) == pytest.approx(0.1)  # held at the end
    agent = QAgent([(0, 0.1), (1, 0.1)], 0.5, 0.9, lin, seed=3)
    seen = []
    for _ in range(5):  # per decision: the run's levels are one episode
        seen.append(agent.epsilon)
        agent.act((0,))
    assert seen == pytest.approx([lin(e) for e in range(5)])
    # epsilon 1: uniform over the feasible actions only; epsilon 0: greedy
    explore = QAgent([(0,), (1,), (2,)], 0.5, 0.9, EpsilonSchedule(1.0, 1.0, 1), seed=0)
    assert {explore.act((0,), [True, False, True]) for _ in range(50)} == {(0, True),
                                                                           (2, True)}
    greedy = QAgent([(0,), (1,)], 0.5, 0.9, EpsilonSchedule(0.0, 0.0, 1, "linear"), seed=0)
    greedy.learn((0,), 0, -1.0, None)
    assert {greedy.act((0,)) for _ in range(20)} == {(1, False)}
    with pytest.raises(ValueError):
        EpsilonSchedule(1.0, 0.0, 5, "exponential")


def _tiny_masks(seed=0):
    torch.manual_seed(seed)
    model = build_model({"name": "small-cnn", "width": 4}, (3, 8, 8), 3)
    return model, MaskSet(model, prune_first=True, prune_last=False, prune_linear=False)


def test_unvisited_state_prunes_as_imp():
    # an agent that learned nothing, in a state it never saw: ties go to plain magnitude
    model, ms = _tiny_masks()
    agent = new_agent(IMPQ(epsilon_start=0.0), ms, 3, seed=0)
    decision = prune_level(agent, ms, 1, [1.0, 0.8, 0.64, 0.512], lambda: (0.5, 1.0), buckets=10)
    assert (decision["action"], decision["layer"], decision["reward"]) == (0, None, 0.0)
    _, ref = _tiny_masks()
    magnitude_level(ref, 0.8)
    assert all(torch.equal(ms.masks[n], ref.masks[n]) for n in ms.names)


@pytest.fixture(scope="module")
def imp_q_runs(tmp_path_factory):
    """An uninterrupted imp-q run, and one killed after megabatch 3 then resumed; plus the
    checkpoint the kill left (the model level 3 is pruned from)."""
    base = tmp_path_factory.mktemp("impq")
    # two warm-up episodes on train networks, then the run's own levels (one more episode)
    spec = _spec("imp-q", {"episodes": 2, "episode_steps": 4})
    ref = _execute(spec, base / "ref")
    killed = _execute(spec, base / "killed", kill_after=3)
    assert len(read_rows(killed / "metrics.jsonl")) == 3
    shutil.copy(killed / "checkpoint.pt", base / "after3.pt")
    _execute(spec, base / "killed")
    return ref, killed, base / "after3.pt"


def test_imp_q_resumed_run_is_identical(imp_q_runs):
    ref, resumed, _ = imp_q_runs
    rows = _rows(ref)
    assert len(rows) == 4 and rows == _rows(resumed)
    assert [len(r["q_decisions"]) for r in rows] == [0, 1, 1, 1]
    assert [r["density"] for r in rows] == pytest.approx([1, 0.8, 0.64, 0.512], abs=1e-3)
    q_ref = json.loads((ref / "artifacts" / "q_table.json").read_text())
    assert q_ref == json.loads((resumed / "artifacts" / "q_table.json").read_text())
    assert q_ref["episode"] == 3 and len(q_ref["returns"]) == 3
    assert q_ref["decisions"] == 3 * 3  # three levels per episode


def test_agent_from_the_checkpoint_reproduces_the_next_decision(imp_q_runs):
    ref, _, after3 = imp_q_runs
    ckpt = torch.load(after3, weights_only=False)
    agent = QAgent.from_state(ckpt["plugins"][0]["agent"])  # as it was before level 3
    model, ms = _tiny_masks(seed=123)  # weights and masks come from the checkpoint
    model.load_state_dict(ckpt["model"])
    decision = prune_level(agent, ms, 3, [0.8 ** lv for lv in range(4)],
                           lambda: (0.5, 1.0), buckets=10)
    logged = _rows(ref)[3]["q_decisions"][0]
    same = ("level", "action", "layer", "fraction", "cut", "choice", "differs")
    assert {k: decision[k] for k in same} == {k: logged[k] for k in same}
    final = torch.load(ref / "artifacts" / "final_masks.pt", weights_only=True)
    assert set(final) == set(ms.names)
    assert all(torch.equal(ms.masks[n], final[n]) for n in ms.names)


def test_imp_resumed_run_is_identical_and_saves_its_ticket(tmp_path):
    spec = _spec("imp", {"rewind_step": 3})
    ref = _execute(spec, tmp_path / "ref")
    killed = _execute(spec, tmp_path / "killed", kill_after=2)
    assert len(read_rows(killed / "metrics.jsonl")) == 2
    _execute(spec, tmp_path / "killed")
    assert _rows(ref) == _rows(killed)
    assert [r["rewind_step"] for r in _rows(ref)] == [3, 3, 3, 3]
    # the initial state: the model as built from the run's init seed, no mask buffers
    init = torch.load(ref / "artifacts" / "initial_state.pt", weights_only=True)
    torch.manual_seed(spec.seeds().init)
    fresh = build_model(spec.model, (3, 8, 8), 3).state_dict()
    assert init.keys() == fresh.keys() and all(torch.equal(init[k], fresh[k]) for k in init)
    final = torch.load(ref / "artifacts" / "final_masks.pt", weights_only=True)
    ckpt = torch.load(ref / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(final[n], ckpt[f"{n}.{BUFFER}"]) for n in final)


@pytest.mark.parametrize("params, message", [
    ({"prune_fraction": 0.2, "density": 0.3}, "not both"),
    ({"prune_fraction": 1.0}, "prune_fraction must be in"),
    ({"levels": -1}, "levels must be"),
])
def test_bad_parameters_are_one_line_errors(params, message):
    from alma_bench.errors import UserError

    with pytest.raises(UserError, match=message):
        STRATEGIES.create("imp", **params)
    with pytest.raises(UserError, match="fractions"):
        STRATEGIES.create("imp-q", fractions=[0.0, 0.5])
