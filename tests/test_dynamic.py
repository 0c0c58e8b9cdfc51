"""Dynamic sparse strategies: DPR (section 8), prune-regrow (section 9) and static retraining.

Pure functions are tested on constructed cases; runs use the tiny synthetic stream through
``runner.execute`` with hand-made RunSpecs, and a RunContext hook that gives each run its
folder (``run_dir``) and dependencies (``deps``), so nothing is asked of the suite-level
dependency mechanism.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import write_suite
from torch import nn

from alma_bench.errors import UserError
from alma_bench.registry import PRUNERS, SCHEDULES, STRATEGIES
from alma_bench.run import training
from alma_bench.run.models import build_model
from alma_bench.run.runner import execute
from alma_bench.sparsity import MaskSet
from alma_bench.sparsity.rewire import (
    adjust_threshold,
    growth_shares,
    keep_dense,
    one_by_one_convs,
    random_layer_masks,
    reallocate,
    set_layer_densities,
    threshold_prune,
)
from alma_bench.spec.config import load_suite
from alma_bench.store.files import read_rows
from alma_bench.store.rundir import RunDir
from alma_bench.strategies import dpr as dpr_module
from alma_bench.strategies import prune_regrow as pr_module
from alma_bench.strategies.prune_regrow import PruneRegrowPlugin, layer_schedules
from alma_bench.strategies.static import StaticPlugin

STREAM = {"name": "synthetic", "n_train": 160, "n_test": 48, "classes": 3, "size": 8,
          "megabatches": 3, "replay": "all"}
DPR_FAST = {"rewire_schedule": [[0, 2]], "n_prune": 8}  # rewire every 2 steps, small N_p


# ---------------------------------------------------------------- pure functions


def test_threshold_rule():
    # N_p = 100, delta = 0.1: halve above 110, double below 90, keep in between (inclusive)
    assert adjust_threshold(1.0, 111, 100, 0.1) == 0.5
    assert adjust_threshold(1.0, 89, 100, 0.1) == 2.0
    for k in (90, 100, 110):
        assert adjust_threshold(1.0, k, 100, 0.1) == 1.0


def test_growth_shares_proportional_to_survivors():
    g = torch.Generator().manual_seed(0)
    room = {"a": 100, "b": 100, "c": 100}
    surv = {"a": 1, "b": 2, "c": 3}
    assert growth_shares(surv, room, 12, g) == {"a": 2, "b": 4, "c": 6}  # exact, no leftover
    for seed in range(5):  # 7 x (1, 2, 3) / 6 = 1.17, 2.33, 3.5: floors 1, 2, 3, one left
        shares = growth_shares(surv, room, 7, torch.Generator().manual_seed(seed))
        assert sum(shares.values()) == 7
        assert [shares[n] - f for n, f in zip("abc", (1, 2, 3))].count(1) == 1
    # a full layer's excess goes to the layers with room, still exactly K in all
    assert growth_shares({"a": 10, "b": 10}, {"a": 2, "b": 100}, 10, g) == {"a": 2, "b": 8}
    with pytest.raises(ValueError):
        growth_shares({"a": 1}, {"a": 3}, 4, g)


def _toy(density=0.3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 6))
    ms = MaskSet(model)
    ms.update(random_layer_masks(ms, density, torch.Generator().manual_seed(seed)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for w in ms.weights.values():  # momentum everywhere, and weights even where masked
        opt.state[w]["momentum_buffer"] = torch.ones_like(w)
        with torch.no_grad():
            w.copy_(torch.randn(w.shape))
    return model, ms, opt


def test_threshold_prune_keeps_one_per_tensor_and_respects_the_limit():
    model, ms, _ = _toy()
    everything = threshold_prune(ms, 1e9)
    for n, m in ms.masks.items():
        assert int(everything[n].sum()) == int(m.sum()) - 1  # the largest survives
        survivor = m & ~everything[n]
        assert ms.weights[n].abs()[survivor].item() == ms.weights[n].abs()[m].max().item()
    limited = threshold_prune(ms, 1e9, limit=5)
    assert sum(int(p.sum()) for p in limited.values()) == 5
    cut = max(ms.weights[n].abs()[p].max() for n, p in limited.items() if p.any())
    rest = min(ms.weights[n].abs()[everything[n] & ~limited[n]].min() for n in limited)
    assert cut <= rest  # the smallest are pruned first


def test_reallocate_constant_count_regrown_zero_no_momentum_never_where_pruned():
    model, ms, opt = _toy()
    before = {n: m.clone() for n, m in ms.masks.items()}
    kept = ms.kept()
    k, pruned = reallocate(ms, 0.8, torch.Generator().manual_seed(1), opt)
    assert k > 0 and ms.kept() == kept
    grown_total = 0
    for n, m in ms.masks.items():
        w, mom = ms.weights[n], opt.state[ms.weights[n]]["momentum_buffer"]
        grown = m & ~before[n]
        grown_total += int(grown.sum())
        assert not (m & pruned[n]).any()  # nothing pruned in this step came back
        assert not (grown & before[n]).any()
        assert not w[grown].any() and not mom[grown].any()  # regrown: 0, no momentum
        assert not w[pruned[n]].any() and not mom[pruned[n]].any()
    assert grown_total == k


def test_set_layer_densities_exact_counts_with_swap():
    model, ms, opt = _toy(density=0.5)
    names = ms.names
    before = {n: m.clone() for n, m in ms.masks.items()}
    mags = {n: ms.weights[n].detach().abs().clone() for n in names}
    targets = {names[0]: 0.3, names[1]: 0.8}
    new = set_layer_densities(ms, targets, PRUNERS.create("magnitude", scope="layer"), 0.2,
                              torch.Generator().manual_seed(0), opt)
    for n in names:
        m, old, size = ms.masks[n], before[n], before[n].numel()
        assert torch.equal(new[n], m) and int(m.sum()) == round(targets[n] * size)
        alive, grown, pruned = int(old.sum()), m & ~old, old & ~m
        survive = min(alive, round(targets[n] * size))
        drop = min(round(0.2 * survive), size - alive - (round(targets[n] * size) - survive))
        assert int(grown.sum()) == round(targets[n] * size) - survive + drop
        assert int(pruned.sum()) == alive - survive + drop
        assert mags[n][pruned].max() <= mags[n][old & m].min()  # MP: the smallest go
        assert not ms.weights[n][grown].any()
        assert not opt.state[ms.weights[n]]["momentum_buffer"][grown | pruned].any()


def test_swap_by_magnitude_drops_the_smallest_survivors_after_random_scheduled_pruning():
    """RP-RR with drop_by=magnitude: the scheduled pruning is the random pruner's (the same
    draws as with drop_by=pruner), the swap then drops exactly the smallest |w| survivors."""
    for seed in range(3):
        model, ms, opt = _toy(density=0.5, seed=seed)
        names = ms.names
        before = {n: m.clone() for n, m in ms.masks.items()}
        mags = {n: ms.weights[n].detach().abs().clone() for n in names}
        targets = {names[0]: 0.3, names[1]: 0.6}  # 60 -> 36 weights; 30 -> 36 (grows)
        rp = PRUNERS.create("random", scope="layer")
        scores = rp.scores(model, ms, None, generator=torch.Generator().manual_seed(seed))
        sched = {}
        new = set_layer_densities(ms, targets, rp, 0.25, torch.Generator().manual_seed(seed),
                                  opt, drop_by="magnitude")
        for n in names:
            old, m, size = before[n], ms.masks[n], before[n].numel()
            target = round(targets[n] * size)
            assert torch.equal(new[n], m) and int(m.sum()) == target  # exact density
            survive = min(int(old.sum()), target)
            drop = min(round(0.25 * survive), size - int(old.sum()) - (target - survive))
            assert drop > 0
            # the scheduled pruning: the `survive` best random scores among the old weights
            alive_scores = torch.where(old, scores[n], -1.0).reshape(-1)
            scheduled = torch.zeros(size, dtype=torch.bool)
            scheduled[alive_scores.argsort(descending=True)[:survive]] = True
            scheduled = scheduled.reshape(old.shape)
            # the swap: exactly the `drop` smallest |w| among those survivors
            mag_alive = torch.where(scheduled, mags[n], math.inf).reshape(-1)
            swapped = torch.zeros(size, dtype=torch.bool)
            swapped[mag_alive.argsort()[:drop]] = True
            swapped = swapped.reshape(old.shape)
            assert torch.equal(old & ~m, (old & ~scheduled) | swapped)
            assert torch.equal(old & m, scheduled & ~swapped)
            assert mags[n][swapped].max() < mags[n][old & m].min()
            grown = m & ~old
            assert int(grown.sum()) == target - survive + drop
            assert not (grown & swapped).any() and not ms.weights[n][grown].any()
            assert not opt.state[ms.weights[n]]["momentum_buffer"][grown | swapped].any()
            sched[n] = scheduled
        # the scheduled pruning is still random: not the smallest magnitudes of the layer
        n = names[0]
        assert mags[n][before[n] & ~sched[n]].max() > mags[n][sched[n]].min()


def test_swap_by_pruner_is_the_default_and_magnitude_pruner_is_unchanged_by_drop_by():
    kept = []
    for drop_by in [None, "pruner", "magnitude"]:
        for pruner in ["magnitude", "random"]:
            _, ms, opt = _toy(density=0.5, seed=4)
            kw = {} if drop_by is None else {"drop_by": drop_by}
            set_layer_densities(ms, {n: 0.3 for n in ms.names},
                                PRUNERS.create(pruner, scope="layer"), 0.3,
                                torch.Generator().manual_seed(4), opt, **kw)
            kept.append([m.clone() for m in ms.masks.values()])
    same = [all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(kept, kept[2:])]
    # default == pruner (both pruners); magnitude pruner: pruner == magnitude swap (same
    # |w| order, same draws); random pruner: the swap criterion matters
    assert same == [True, True, True, False]
    with pytest.raises(ValueError, match="drop_by"):
        set_layer_densities(ms, {}, PRUNERS.create("random", scope="layer"), 0.3,
                            torch.Generator().manual_seed(0), drop_by="random")


@pytest.mark.parametrize("name", ["constant", "linear", "quadratic", "cubic", "cosine"])
def test_each_schedule_hits_its_start_and_end(name):
    s = SCHEDULES.create(name)
    start = 0.1 if name == "constant" else 1.0  # constant: d_T from the start
    assert s.density(0.0, 1.0, 0.1) == pytest.approx(start, abs=1e-12)
    assert s.density(1.0, 1.0, 0.1) == pytest.approx(0.1, abs=1e-12)


def test_per_layer_schedule_mapping():
    s = layer_schedules({"conv2": "constant", "default": "linear"}, ["conv2", "conv3"])
    assert [type(v).__name__ for v in s.values()] == ["Constant", "Linear"]
    with pytest.raises(UserError, match=r"unknown layer\(s\) \['conv9'\], missing \['conv3'\]"):
        layer_schedules({"conv2": "linear", "conv9": "cubic"}, ["conv2", "conv3"])


def test_keep_dense_takes_1x1_convs_out():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8, 2))
    ms = MaskSet(model)
    keep_dense(ms, one_by_one_convs(model, ms.names))
    assert ms.names == ["0", "2", "4"] and ms.dense_layers == ["1"]
    assert not hasattr(model[1], "weight_mask")


def test_the_swap_defaults_are_sets_recorded_and_move_the_run_id(tmp_path):
    """The swap's defaults are SET's as RigL runs it (drop_by magnitude, regrow_dropped true);
    every field is recorded and the strategy revision is at least 2 (rl-schedule's 3: its
    agents' networks train as a run's), so no run made under the old defaults (drop_by
    pruner, regrowth never on just-dropped weights) is reused; each choice moves the id."""
    for name, revision in [("prune-regrow", 2), ("rl-schedule", 3)]:
        cls = STRATEGIES.get(name).cls
        assert cls.revision == revision and not getattr(cls, "later_params", {})
        defaults = STRATEGIES.get(name).params()
        assert defaults["drop_by"] == "magnitude" and defaults["regrow_dropped"] is True
        ids, params = [], []
        for extra in [{}, {"drop_by": "pruner"}, {"regrow_dropped": False}]:
            suite = write_suite(tmp_path / "s.yaml", stream=STREAM, strategies=[
                {"name": name, "params": {"density": 0.5, "pruner": "random", **extra}}])
            (spec,) = load_suite(str(suite)).runs
            ids.append(spec.run_id)
            params.append(spec.strategy["params"])
            assert spec.identity()["strategy_revision"] == revision
        assert params[0]["drop_by"] == "magnitude" and params[0]["regrow_dropped"] is True
        assert len(set(ids)) == 3
        with pytest.raises(UserError, match="drop_by"):
            STRATEGIES.create(name, drop_by="random")


def test_simple_cnn_bn_is_off_by_default_unrecorded_and_never_pruned(tmp_path):
    """simple-cnn's bn was added after the published runs: off, the network is today's (same
    modules, parameter order and seeded init) and the model section records no bn, so no run
    id moves; on, a BatchNorm2d follows each conv (before its ReLU) and stays dense."""
    names = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "pool3",
             "flatten", "fc1", "relu4", "fc2"]
    nets = []
    for config in [{"name": "simple-cnn"}, {"name": "simple-cnn", "bn": False}]:
        torch.manual_seed(0)
        nets.append(build_model(config, (3, 32, 32), 10))
    assert [n for n, _ in nets[0].named_children()] == names
    assert [n for n, _ in nets[0].named_parameters()] == [
        f"{n}.{w}" for n in ("conv1", "conv2", "conv3", "fc1", "fc2") for w in ("weight", "bias")]
    for (a, x), (b, y) in zip(nets[0].state_dict().items(), nets[1].state_dict().items()):
        assert a == b and torch.equal(x, y)
    bn = build_model({"name": "simple-cnn", "bn": True}, (3, 32, 32), 10)
    children = [n for n, _ in bn.named_children()]
    for i in (1, 2, 3):  # conv, bn, relu
        assert children.index(f"bn{i}") == children.index(f"conv{i}") + 1
        assert children.index(f"relu{i}") == children.index(f"bn{i}") + 1
        assert isinstance(getattr(bn, f"bn{i}"), nn.BatchNorm2d)
    assert bn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    ms = MaskSet(bn, prune_linear=True)
    assert ms.names == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    ids, models = [], []
    for model in [{"name": "simple-cnn"}, {"name": "simple-cnn", "bn": False},
                  {"name": "simple-cnn", "bn": True}]:
        suite = write_suite(tmp_path / "s.yaml", stream=STREAM, model=model,
                            strategies=[{"name": "dense"}])
        (spec,) = load_suite(str(suite)).runs
        ids.append(spec.run_id)
        models.append(spec.model)
    assert models[0] == models[1] == {"name": "simple-cnn"}  # as recorded before bn existed
    assert models[2] == {"name": "simple-cnn", "bn": True}
    assert ids[0] == ids[1] != ids[2]


def test_parameter_errors_are_one_line():
    bad = [("dpr", {"rewire_schedule": [[0.1, 100]]}, "start at 0"),
           ("dpr", {"rewire_schedule": [[0, 1.5]]}, "whole steps"),
           ("prune-regrow", {"schedule": "cubical"}, "unknown schedule"),
           ("static", {"structure": "from_run"}, "needs structure_from"),
           ("static", {"init": "original"}, "init=original needs structure=from_run")]
    for name, params, message in bad:
        with pytest.raises(UserError, match=message):
            STRATEGIES.create(name, **params)


# ---------------------------------------------------------------- runs


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """``run(strategy, params, ...)`` -> (rows, run folder); every run gets ``run_dir``, and
    ``deps`` from the dict ``run.deps``."""
    real = training.RunContext
    out = tmp_path / "o"

    def make(*args, **kw):
        ctx = real(*args, **kw)
        if ctx.run_dir is None:
            ctx.run_dir = RunDir(out, ctx.spec.results_name, ctx.spec.run_id).path
        ctx.deps.update(run.deps)
        return ctx

    monkeypatch.setattr(training, "RunContext", make)

    def run(strategy, params=None, protocol=None, root=out, progress=None, **stream):
        suite = write_suite(tmp_path / "s.yaml", stream={**STREAM, **stream},
                            protocol={"epochs": 2, "batch_size": 32, "lr": 0.05,
                                      "momentum": 0.9, "weight_decay": 5e-4,
                                      "eval_batch_size": 256, **(protocol or {})})
        spec = load_suite(str(suite)).runs[0]  # the tiny suite's dense entry, made over
        obj = STRATEGIES.create(strategy, **(params or {}))
        spec = dataclasses.replace(spec, label=strategy, strategy={
            "name": strategy, "params": dataclasses.asdict(obj)})
        execute(spec, root, device="cpu", progress=progress)
        folder = RunDir(root, spec.results_name, spec.run_id).path
        return read_rows(folder / "metrics.jsonl"), folder

    run.deps = {}
    return run


def _same_rows(a, b):
    strip = [{k: v for k, v in r.items() if k != "wall_time"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time"} for r in b]


def test_dpr_count_constant_at_every_reallocation(runs, monkeypatch):
    calls = []

    def spy(maskset, threshold, generator, optimizer):
        before, kept = {n: m.clone() for n, m in maskset.masks.items()}, maskset.kept()
        k, pruned = reallocate(maskset, threshold, generator, optimizer)
        assert maskset.kept() == kept  # at every rewire, not only at the end
        for n, m in maskset.masks.items():
            assert not (m & pruned[n]).any()
            grown, w = m & ~before[n], maskset.weights[n]
            assert not w[grown].any()
            mom = optimizer.state.get(w, {}).get("momentum_buffer")
            assert mom is None or not mom[grown].any()
        calls.append((threshold, k))
        return k, pruned

    monkeypatch.setattr(dpr_module, "reallocate", spy)
    rows, _ = runs("dpr", DPR_FAST, protocol={"epochs": 3})
    assert len(calls) >= 5 and sum(k for _, k in calls) > 0
    for (h, k), (h_next, _) in zip(calls, calls[1:]):  # H follows the rule between rewires
        assert h_next == adjust_threshold(h, k, 8, 0.1)
    assert len({r["density"] for r in rows}) == 1
    assert sum(r["reallocated"] for r in rows) == sum(k for _, k in calls)
    assert rows[-1]["threshold"] == adjust_threshold(*calls[-1], 8, 0.1)
    assert rows[0]["dense_layers"] == ["fc"]  # the suite-wide default layer set


def test_dpr_with_one_epoch_rewires_only_in_the_first_half(runs, monkeypatch):
    steps = []
    orig = dpr_module.DPRPlugin.rewire

    def spy(self, strategy):
        steps.append((self.exp_step, self.window, len(strategy.dataloader)))
        orig(self, strategy)

    monkeypatch.setattr(dpr_module.DPRPlugin, "rewire", spy)
    runs("dpr", {"rewire_schedule": [[0, 1]]}, protocol={"epochs": 1})
    assert steps and all(s <= w == n // 2 for s, w, n in steps)


def test_prune_regrow_exact_after_every_update(runs, monkeypatch):
    seen, criteria = [], []
    orig = PruneRegrowPlugin.update_masks
    orig_set = pr_module.set_layer_densities

    def spy(self, targets, drop, strategy):
        orig(self, targets, drop, strategy)
        for n, m in self.maskset.masks.items():
            assert int(m.sum()) == round(targets[n] * m.numel())
        seen.append(targets)

    def spy_set(*args, drop_by, **kw):
        criteria.append(drop_by)
        return orig_set(*args, drop_by=drop_by, **kw)

    monkeypatch.setattr(PruneRegrowPlugin, "update_masks", spy)
    monkeypatch.setattr(pr_module, "set_layer_densities", spy_set)
    for schedule, drop_by in [("linear", "pruner"), ("constant", "pruner"),
                              ("linear", "magnitude"), ("constant", "magnitude")]:
        seen.clear(), criteria.clear()
        rows, _ = runs("prune-regrow", {"schedule": schedule, "update_period": 2,
                                        "pruner": "random", "initial_density": 0.9,
                                        "drop_by": drop_by})
        assert len(criteria) == len(seen) > 3 and set(criteria) == {drop_by}
        start = 0.1 if schedule == "constant" else 0.9
        assert all(d == start for d in seen[0].values())  # before the first step
        assert all(d == pytest.approx(0.1, abs=1e-12) for d in seen[-1].values())
        assert rows[-1]["density"] == rows[-1]["target_density"]
        assert rows[-1]["density"] == pytest.approx(0.1, abs=0.01)


def test_same_seed_same_rows(runs, tmp_path):
    for name, params in [("dpr", DPR_FAST), ("prune-regrow", {"update_period": 2})]:
        a, _ = runs(name, params, root=tmp_path / "a")
        b, _ = runs(name, params, root=tmp_path / "b")
        _same_rows(a, b)


def test_resumed_dpr_equals_uninterrupted(runs, tmp_path):
    params = {"rewire_schedule": [[0, 3]], "n_prune": 8}  # periods straddle megabatches
    whole, whole_dir = runs("dpr", params, root=tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill(t, n, row):
        if t == 1:
            raise Killed

    with pytest.raises(Killed):
        runs("dpr", params, root=tmp_path / "cut", progress=kill)
    _, cut_dir = runs("dpr", params, root=tmp_path / "cut")
    resumed = read_rows(cut_dir / "metrics.jsonl")
    _same_rows(whole, resumed)
    assert len({r["threshold"] for r in whole}) > 1  # H moved, so its state mattered
    for name in ("initial_state.pt", "final_masks.pt"):
        a = torch.load(whole_dir / "artifacts" / name)
        b = torch.load(cut_dir / "artifacts" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_static_original_starts_from_dpr_initial_state(runs, monkeypatch):
    _, dpr_dir = runs("dpr", DPR_FAST, megabatches=2)
    initial = torch.load(dpr_dir / "artifacts" / "initial_state.pt")
    final = torch.load(dpr_dir / "artifacts" / "final_masks.pt")
    # the saved initial state is the run's own initialisation, before any mask
    spec = load_suite(str(dpr_dir.parents[2] / "s.yaml")).runs[0]
    torch.manual_seed(spec.seeds().init)
    shape = tuple(initial["conv1.weight"].shape[1:2]) + (8, 8)
    fresh = build_model(spec.model, shape, 3).state_dict()
    assert all(torch.equal(fresh[k], initial[k]) for k in fresh)

    starts = []
    orig = StaticPlugin.before_training_exp

    def spy(self, strategy, **kw):
        orig(self, strategy, **kw)
        if strategy.experience.current_experience == 0:
            starts.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

    monkeypatch.setattr(StaticPlugin, "before_training_exp", spy)
    runs.deps = {"structure_from": dpr_dir}
    for init in ("original", "random"):
        rows, _ = runs("static", {"structure": "from_run", "structure_from": "dpr",
                                  "init": init}, megabatches=2)
        state = starts[-1]
        masks = {k[: -len(".weight_mask")]: v for k, v in state.items()
                 if k.endswith("weight_mask")}
        assert masks.keys() == final.keys()
        assert all(torch.equal(masks[n], final[n]) for n in final)
        assert rows[0]["density"] == pytest.approx(
            sum(int(m.sum()) for m in final.values()) / sum(m.numel() for m in final.values()))
        masked = {k: k[: -len(".weight")] for k in initial
                  if k.endswith(".weight") and k[: -len(".weight")] in final}
        same = [torch.equal(state[k], initial[k] * final[masked[k]] if k in masked
                            else initial[k]) for k in initial]
        assert all(same) if init == "original" else not all(same)


def test_static_missing_artifact_names_file_and_dependency(tmp_path):
    class Ctx:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
        deps = {"structure_from": tmp_path}

    s = STRATEGIES.create("static", structure="from_run", structure_from="dpr-run")
    with pytest.raises(UserError, match=r"final_masks\.pt not found.*structure_from='dpr-run'"):
        s.plugins(Ctx())
    Ctx.deps = {}
    with pytest.raises(UserError, match="structure_from='dpr-run' was not resolved"):
        s.plugins(Ctx())


def test_static_random_is_dpr_initial_density_per_layer(runs):
    rows, _ = runs("static", megabatches=1)
    for n, d in rows[0]["layer_density"].items():
        if n not in rows[0]["dense_layers"]:
            size = {"conv1": 3 * 4 * 9, "conv2": 4 * 8 * 9, "conv3": 8 * 16 * 9}[n]
            assert d == round(0.1 * size) / size
    assert math.isclose(rows[0]["density"],
                        (round(10.8) + round(28.8) + round(115.2)) / (108 + 288 + 1152))



# ---------------------------------------------------------------- fidelity to the references


def _swap(regrow_dropped: bool, density: float, seed: int):
    """One swap (no scheduled change) of a toy layer at ``density``: masks before and after,
    weights and momentum before, and the weights and momentum after."""
    model, ms, opt = _toy(density, seed)
    before = {n: m.clone() for n, m in ms.masks.items()}
    w0 = {n: w.detach().clone() for n, w in ms.weights.items()}
    m0 = {n: opt.state[w]["momentum_buffer"].clone() for n, w in ms.weights.items()}
    dens = {n: int(m.sum()) / m.numel() for n, m in ms.masks.items()}
    set_layer_densities(ms, dens, PRUNERS.create("magnitude", scope="layer"), 0.5,
                        torch.Generator().manual_seed(seed), opt, drop_by="magnitude",
                        regrow_dropped=regrow_dropped)
    return ms, opt, before, w0, m0


def test_set_swap_may_regrow_a_just_dropped_weight_which_keeps_value_and_momentum():
    """RigL's SET: growth may pick a just-dropped position; that weight never left the mask,
    so it keeps its value and momentum; truly new positions start at 0 with no momentum."""
    back = 0
    for seed in range(6):
        ms, opt, before, w0, m0 = _swap(True, 0.7, seed)
        for n, m in ms.masks.items():
            w, mom = ms.weights[n].detach(), opt.state[ms.weights[n]]["momentum_buffer"]
            assert int(m.sum()) == int(before[n].sum())  # the count is unchanged
            stayed = m & before[n]
            assert torch.equal(w[stayed], w0[n][stayed] * 1)  # values kept where on before
            assert torch.equal(mom[stayed], m0[n][stayed])
            new = m & ~before[n]
            assert not w[new].any() and not mom[new].any()
            # floor(0.5 * survivors) dropped by |w|: the kept ones are the largest
            alive = int(before[n].sum())
            dropped = before[n] & ~m
            assert int(new.sum()) == int(dropped.sum()) <= alive // 2
            back += alive // 2 - int(dropped.sum())  # dropped, then regrown in place
    assert back > 0  # at density 0.7 most of the regrowth lands back on dropped positions


def test_dsr_rule_never_regrows_where_it_just_dropped():
    """regrow_dropped=False (DSR's rule) and dpr's reallocation: no swapped position comes
    back in the same update."""
    for seed in range(6):
        ms, _, before, _, _ = _swap(False, 0.3, seed)
        for n, m in ms.masks.items():
            assert int(m.sum()) == int(before[n].sum())
            assert (before[n] & ~m).any()  # something was swapped
            # every regrown position was off before: nothing dropped came back
            assert int((m & before[n]).sum()) == int(before[n].sum()) - int((before[n] & ~m).sum())
        model, ms, opt = _toy(0.3, seed)
        old = {n: m.clone() for n, m in ms.masks.items()}
        k, pruned = reallocate(ms, 0.8, torch.Generator().manual_seed(seed), opt)
        assert k > 0
        for n, m in ms.masks.items():
            assert not (m & pruned[n]).any() and torch.equal(pruned[n] & ~old[n],
                                                             torch.zeros_like(m))


def test_dpr_n_prune_paper_scale_and_default_rule():
    """dpr-trainability's paper scale sets the reference's N_p = 20,000; unset, N_p is the
    same share of any model's sparse layers (20,000 on WRN-28-2 with the paper's layers)."""
    runs = [r for r in load_suite("dpr-trainability", "paper").runs
            if r.strategy["name"] == "dpr"]
    assert runs and all(r.strategy["params"]["n_prune"] == 20000 for r in runs)
    assert STRATEGIES.get("dpr").params()["n_prune"] is None
    quick = [r for r in load_suite("dpr-trainability", "quick").runs
             if r.strategy["name"] == "dpr"]
    assert quick and all(r.strategy["params"]["n_prune"] is None for r in quick)
    for name, want in [("wrn-28-2", 20000), ("small-cnn", 317)]:
        model = build_model({"name": name}, (3, 32, 32), 10)
        plugin = dpr_module.DPRPlugin(STRATEGIES.create("dpr", prune_first=False,
                                                         prune_1x1=False), model=model)
        assert plugin.n_prune == want
    assert dpr_module.default_n_prune(100) == 1  # never 0


def test_wrn_conv_init_is_he_normal_fan_out_as_the_dsr_code():
    torch.manual_seed(0)
    model = build_model({"name": "wrn-28-2"}, (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        if conv.weight.numel() >= 4000:  # a std estimate within 5% needs enough draws
            assert abs(conv.weight.std().item() / math.sqrt(2 / k) - 1) < 0.05
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
    assert not fc.bias.any()
    torch.manual_seed(0)
    plain = build_model({"name": "wrn-28-2", "init": "pytorch"}, (3, 32, 32), 10)
    w = [m for m in plain.modules() if isinstance(m, nn.Conv2d)][2].weight
    assert w.std().item() < 0.05  # PyTorch's default (0.034 for 32->32 3x3), not the reference


@pytest.mark.parametrize("name", ["dense", "static", "dpr", "prune-regrow", "gmp"])
def test_keep_best_false_keeps_every_strategys_last_epoch_and_moves_the_id(name, tmp_path):
    """The selection rule is the suite's protocol (keep_best): false keeps the last epoch of
    every megabatch for every strategy (the DPR paper reports the end of training), and the
    setting is part of the run id."""
    params = {"dpr": {"density": 0.3, **DPR_FAST}, "static": {"density": 0.3},
              "prune-regrow": {"density": 0.3, "update_period": 2}, "gmp": {"density": 0.3},
              "dense": {}}[name]
    ids = []
    for keep_best in (True, False):
        suite = write_suite(tmp_path / f"s{keep_best}.yaml", stream=STREAM, strategies=[
            {"name": name, "params": params}], protocol={"epochs": 4, "batch_size": 16,
                                                        "patience": None, "keep_best": keep_best})
        (spec,) = load_suite(str(suite)).runs
        ids.append(spec.run_id)
        if not keep_best:
            execute(spec, tmp_path / "out", device="cpu")
            folder = RunDir(tmp_path / "out", spec.results_name, spec.run_id).path
            rows = read_rows(folder / "metrics.jsonl")
            assert [(r["best_epoch"], r["epochs_trained"]) for r in rows] == [(4, 4)] * 3
    assert ids[0] != ids[1]
