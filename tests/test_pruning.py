"""Sparse strategies end to end: APP's schedule and nesting, OSP, GMP, and checkpoint truth."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import TINY, write_suite

from alma_bench.cli import main
from alma_bench.registry import STRATEGIES
from alma_bench.store.files import read_rows
from alma_bench.strategies.app import APP

APP_8 = [0.800, 0.716, 0.640, 0.572, 0.512, 0.458, 0.410, 0.366]


class _Recorder(SupervisedPlugin):
    """Records the masks after each megabatch and checks masked weights after every step."""

    def __init__(self, maskset):
        super().__init__()
        self.ms, self.masks, self.densities, self.violations = maskset, [], [], 0

    def after_update(self, strategy, **kw):
        # runs after APP's own after_update (plugin order): masked weights must be 0 already
        for name, m in self.ms.masks.items():
            self.violations += int(self.ms.weights[name][~m].count_nonzero())

    def before_training_epoch(self, strategy, **kw):
        self.densities.append(self.ms.density())
        self.masks.append({n: m.clone() for n, m in self.ms.masks.items()})


def _register_spy():
    if "app-spy" in STRATEGIES:
        return

    @STRATEGIES.register("app-spy")
    @dataclass(frozen=True)
    class AppSpy(APP):
        """APP with a recorder (tests only)."""

        def plugins(self, ctx):
            plugins = super().plugins(ctx)
            rec = _Recorder(plugins[0].maskset)
            AppSpy.last = rec
            return plugins + [rec]


def run_suite(tmp_path, strategies, protocol=None, **stream):
    suite = write_suite(tmp_path / "s.yaml", strategies=strategies,
                        stream={**TINY["stream"], **stream},
                        protocol={**TINY["protocol"], "optimizer": "sgd", "momentum": 0.9,
                                  "weight_decay": 5e-3, "keep_optimizer_state": True,
                                  **(protocol or {})})
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet", "--workers", "1"]) == 0
    return {d.name: d for d in (tmp_path / "o" / "tiny").iterdir()}


@pytest.mark.parametrize("pruner", ["snip", "magnitude"])
def test_app_schedule_exact_and_nested(tmp_path, pruner):
    _register_spy()
    run_suite(tmp_path, [{"name": "app-spy", "params": {"pruner": pruner}}], megabatches=8,
              n_train=400)
    rec = STRATEGIES.get("app-spy").cls.last
    # two epochs per megabatch: density recorded at the start of each epoch
    per_mb = rec.densities[::2]
    assert per_mb == pytest.approx(APP_8, abs=1e-3)
    n = sum(m.numel() for m in rec.masks[0].values())
    assert all(d * n == pytest.approx(round(d * n)) for d in rec.densities)  # exact counts
    for prev, cur in zip(rec.masks, rec.masks[1:]):
        for name in cur:
            assert not (cur[name] & ~prev[name]).any()  # each mask a subset of the one before
    assert rec.violations == 0


def test_osp_density_constant_and_checkpoint_agrees(tmp_path):
    runs = run_suite(tmp_path, [{"name": "osp", "params": {"pruner": "snip"}}])
    (run,) = runs.values()
    rows = read_rows(run / "metrics.jsonl")
    dens = {r["density"] for r in rows}
    assert len(dens) == 1 and abs(dens.pop() - 0.8 ** 4.5) < 2e-3
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    masked = [k[: -len("_mask")] for k in ckpt if k.endswith("weight_mask")]
    kept = sum(int(ckpt[k].count_nonzero()) for k in masked)
    total = sum(ckpt[k].numel() for k in masked)
    assert rows[-1]["density"] == pytest.approx(kept / total, abs=1e-12)
    for k in masked:
        assert not ckpt[k][~ckpt[k + "_mask"]].any()


def _gmp_rows(tmp_path, protocol=None, strategy="gmp", **params) -> list[dict]:
    """Metrics rows of one run of ``strategy`` (GMP by default) with ``params``."""
    runs = run_suite(tmp_path, [{"name": strategy, "params": params}], protocol=protocol)
    return read_rows(next(iter(runs.values())) / "metrics.jsonl")


def _assert_on_schedule(rows, final_density):
    d = [r["density"] for r in rows]
    assert all(a >= b for a, b in zip(d, d[1:]))  # masks only shrink
    assert d[-1] == pytest.approx(final_density, abs=2e-3)
    # the kept model of every megabatch sits on the schedule (a best-epoch snapshot with
    # older, denser masks must not bring pruned weights back)
    for r in rows:
        assert r["density"] == pytest.approx(r["target_density"], abs=1e-3)


def test_gmp_shrinks_to_final_density(tmp_path):
    rows = _gmp_rows(tmp_path, density=0.3, update_period=2)
    assert rows[0]["density"] < 1.0
    _assert_on_schedule(rows, 0.3)


def test_gmp_reaches_final_density_when_early_stopping_cuts_megabatches(tmp_path):
    # 8 epochs planned per megabatch, patience 1: once the schedule is done (end=0.5) the
    # masks hold and early stopping cuts megabatches short; the schedule still ends on the
    # final density, and no megabatch is cut while its masks were still changing.
    rows = _gmp_rows(tmp_path, {"epochs": 8, "patience": 1, "lr": 0.5}, density=0.3,
                     end=0.5, update_period=3)
    planned = 8 * sum(-(-int(0.9 * 240 * t / 4) // 32) for t in (1, 2, 3, 4))
    assert rows[-1]["step"] < planned  # early stopping did cut the stream short
    assert rows[0]["epochs_trained"] == 8  # megabatch 1 rewires: never cut
    _assert_on_schedule(rows, 0.3)


def test_gmp_keeps_an_epoch_trained_with_its_masks(tmp_path):
    # masks shrink during every epoch of the rewiring window (end=1.0, a prune every step), so
    # only the last epoch was trained wholly under the final masks: it is the kept one
    rows = _gmp_rows(tmp_path, {"epochs": 4, "lr": 0.5}, density=0.2, end=1.0,
                     update_period=1)
    assert [r["best_epoch"] for r in rows] == [r["epochs_trained"] for r in rows]
    for r in rows:  # the per-epoch log, and the kept epoch's gap taken from it
        assert len(r["epoch_train_acc"]) == len(r["epoch_val_acc"]) == r["epochs_trained"]
        k = r["best_epoch"] - 1
        assert r["epoch_gap"] == pytest.approx(r["epoch_train_acc"][k] - r["epoch_val_acc"][k])


class _FirstStep(SupervisedPlugin):
    """Records the mask density at the first training step of a run."""

    def __init__(self, maskset):
        super().__init__()
        self.ms, self.density = maskset, None

    def before_training_iteration(self, strategy, **kw):
        if self.density is None:
            self.density = self.ms.density()


def _register_gmp_spy():
    if "gmp-first" in STRATEGIES:
        return
    from alma_bench.strategies.gmp import GMP

    @STRATEGIES.register("gmp-first")
    @dataclass(frozen=True)
    class GmpFirst(GMP):
        """GMP recording the density at its first step (tests only)."""

        def plugins(self, ctx):
            plugins = super().plugins(ctx)
            GmpFirst.last = _FirstStep(plugins[0].maskset)
            return plugins + [GmpFirst.last]


def test_gmp_starts_at_its_initial_density(tmp_path):
    # d(s0) = d_i: with begin=0 the model is at initial_density before its first step
    _register_gmp_spy()
    _gmp_rows(tmp_path, strategy="gmp-first", initial_density=0.6, density=0.3,
              update_period=50)
    assert STRATEGIES.get("gmp-first").cls.last.density == pytest.approx(0.6, abs=2e-3)


BUILTIN = sorted(n for n in STRATEGIES.names()
                 if STRATEGIES.get(n).cls.__module__.startswith("alma_bench.strategies"))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_registered_strategy_runs(tmp_path, name):
    runs = run_suite(tmp_path, [{"name": name}], megabatches=3, n_train=150)
    (run,) = runs.values()
    rows = read_rows(run / "metrics.jsonl")
    assert [r["megabatch"] for r in rows] == [1, 2, 3]
    assert all(0.0 <= r["test_acc"] <= 1.0 and 0.0 < r["density"] <= 1.0 for r in rows)
    assert rows[-1]["flops_effective"] <= rows[-1]["flops_dense"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    for k in ckpt:
        if k.endswith("weight_mask"):
            w = ckpt[k[: -len("_mask")]]
            assert not w[~ckpt[k]].any(), f"{name}: masked weights of {k} are not zero"


def test_pruner_sample_is_a_fifth_of_the_megabatch_from_the_replay_union():
    from types import SimpleNamespace

    from alma_bench.registry import STREAMS
    from alma_bench.run.stream import AlmaSplit, build_stream
    from alma_bench.sparsity.plugin import pruner_sample
    from alma_bench.spec.config import Seeds

    data = STREAMS.create("synthetic", n_train=400, n_test=10).load()
    stream = build_stream(data, AlmaSplit(megabatches=4, replay="all"), seed=0)
    ctx = SimpleNamespace(stream=stream, seeds=Seeds.derive(3),
                          batches=lambda x, y, seed: [(x[i:i + 16], y[i:i + 16])
                                                      for i in range(0, len(y), 16)])
    train_x = {t: stream.train_set(t)[0] for t in range(4)}
    for t in range(4):
        xs = torch.cat([x for x, _ in pruner_sample(ctx, t, 0.2)])
        # |M_t| is the megabatch before its 90/10 split (100 here), not its 90 training images
        assert len(xs) == round(0.2 * 100)
        # drawn from the replay-inclusive training set, never from validation
        flat = train_x[t].flatten(1)
        assert all(bool((flat == x.flatten()).all(1).any()) for x in xs)
        assert torch.equal(xs, torch.cat([x for x, _ in pruner_sample(ctx, t, 0.2)]))  # seeded
    later = torch.cat([x for x, _ in pruner_sample(ctx, 3, 0.2)]).flatten(1)
    first_mb = stream.new_set(0)[0].flatten(1)
    assert any(bool((first_mb == x).all(1).any()) for x in later)  # replay reaches old data
