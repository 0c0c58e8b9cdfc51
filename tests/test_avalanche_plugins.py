"""Our sparse strategies as plain Avalanche plugins, in Avalanche's own ``Naive`` on a
benchmark built by hand (not through the harness), and ``make_benchmark``."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.data import Normalizer
from alma_bench.run.stream import AlmaSplit, build_stream
from alma_bench.sparsity import app_densities
from alma_bench.sparsity.experience import experience_sample
from alma_bench.sparsity.masks import BUFFER
from alma_bench.sparsity.plugin import pruner_sample
from alma_bench.spec.config import Seeds
from alma_bench.strategies.app import APP, ProgressivePlugin
from alma_bench.strategies.dpr import DPR, DPRPlugin
from alma_bench.strategies.gmp import GMP, GradualPlugin
from alma_bench.strategies.imp import IMP, IMPPlugin
from alma_bench.strategies.osp import OSP, OneShotPlugin
from alma_bench.strategies.prune_regrow import PruneRegrow, PruneRegrowPlugin

ROOT = Path(__file__).resolve().parents[1]
N = 4  # experiences of the hand-built benchmark
OSP_DENSITY = 0.3


def _dataset(n: int, g: torch.Generator):
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    data.targets = y.tolist()  # what Avalanche's classification dataset reads
    return as_classification_dataset(data)


@pytest.fixture(scope="module")
def bench():
    g = torch.Generator().manual_seed(0)
    return benchmark_from_datasets(train=[_dataset(48, g) for _ in range(N)],
                                   test=[_dataset(16, g)])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))


class _Densities:
    """Avalanche plugin: after each experience, the kept and total prunable weights of the
    model the strategy trained (read from its mask buffers, not from our plugin), and whether
    every masked weight is zero."""

    def __init__(self):
        self.rows: list[tuple[int, int, int, bool]] = []

    def after_training_exp(self, strategy, **kw):
        masks = [(m.weight, m._buffers[BUFFER]) for m in strategy.model.modules()
                 if BUFFER in m._buffers]
        kept = sum(int(b.sum()) for _, b in masks)
        total = sum(b.numel() for _, b in masks)
        zero = all(not w[~b].any() for w, b in masks)
        self.rows.append((strategy.experience.current_experience, kept, total, zero))

    def __getattr__(self, name):  # every other Avalanche hook does nothing
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)


def _train(model, plugins, experiences, epochs: int = 1) -> _Densities:
    rec = _Densities()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified": quiet on purpose
        evaluator = EvaluationPlugin(loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05,
                                                            momentum=0.9),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=epochs,
                     eval_mb_size=64, plugins=[*plugins, rec], evaluator=evaluator,
                     eval_every=-1)
    for exp in experiences:
        strategy.train(exp)
    return rec


def _exact(d: float, total: int) -> int:
    return round(d * total)


def _plugin(name: str, model=None):
    if name == "app":
        return ProgressivePlugin(APP(), seed=1, model=model)
    return OneShotPlugin(OSP(density=OSP_DENSITY), seed=1, model=model)


def _expected(name: str, t: int) -> float:
    return app_densities(N)[t] if name == "app" else OSP_DENSITY


@pytest.mark.parametrize("name", ["app", "osp"])
@pytest.mark.parametrize("given", ["none", "same", "copy"])
def test_app_and_osp_in_naive_hold_their_densities_exactly(bench, name, given):
    """APP and OSP in Avalanche's Naive: the density of the trained model after each
    experience is exactly round(d_t x n) weights; with no model, the model Naive trains, or a
    deep copy of it given to the plugin, it is always the trained model that is pruned."""
    model = _model()
    other = {"none": None, "same": model, "copy": copy.deepcopy(model)}[given]
    rec = _train(model, [_plugin(name, other)], bench.train_stream)
    assert [r[0] for r in rec.rows] == list(range(N))
    for t, kept, total, zero in rec.rows:
        assert total == 3 * 8 * 9 + 8 * 8 * 9  # both convs; the Linear layer stays dense
        assert kept == _exact(_expected(name, t), total), (t, kept)
        assert zero  # masked weights stay zero through training
    if given == "copy":  # the copy was never pruned: its masks are all ones
        assert all(b.all() for m in other.modules() for b in [m._buffers.get(BUFFER)]
                   if b is not None)


def test_osp_prunes_on_the_first_experience_of_a_sliced_stream(bench):
    """A stream sliced to start after experience 0: OSP prunes on the first experience it
    trains; APP follows the whole stream's schedule at each experience's index."""
    model = _model()
    rec = _train(model, [_plugin("osp")], bench.train_stream[2:])
    assert [(t, kept) for t, kept, total, _ in rec.rows] == [
        (t, _exact(OSP_DENSITY, rec.rows[0][2])) for t in (2, 3)]
    model = _model()
    rec = _train(model, [_plugin("app")], bench.train_stream[2:])
    assert [(t, kept) for t, kept, total, _ in rec.rows] == [
        (t, _exact(app_densities(N)[t], rec.rows[0][2])) for t in (2, 3)]


def test_a_stream_longer_than_the_planned_n_holds_the_final_density(bench):
    """APP planned over N = 2 experiences on a stream of 4: the schedule is complete after
    experience 1 and the density holds at its final value (no error, no overflow)."""
    model = _model()
    plugin = ProgressivePlugin(APP(), n_experiences=2)
    rec = _train(model, [plugin], bench.train_stream)
    plan = app_densities(2)
    total = rec.rows[0][2]
    assert [kept for _, kept, _, _ in rec.rows] == [_exact(d, total)
                                                   for d in (plan[0], plan[1], plan[1], plan[1])]


@pytest.mark.parametrize("name", ["gmp", "dpr", "prune-regrow", "imp"])
def test_every_sparse_plugin_runs_in_naive(bench, name):
    """The other sparse strategies' plugins in Naive, with no harness: masks on the trained
    model, masked weights zero, and the final density of their schedule at the end."""
    layers = (3 * 8 * 9, 8 * 8 * 9)
    per_layer = sum(_exact(0.4, n) for n in layers)  # the same density in every layer
    plugin, final = {
        "gmp": (GradualPlugin(GMP(density=0.4, update_period=2)), _exact(0.4, sum(layers))),
        "dpr": (DPRPlugin(DPR(density=0.4, rewire_schedule=((0.0, 2),), n_prune=20)),
                per_layer),
        "prune-regrow": (PruneRegrowPlugin(PruneRegrow(density=0.4, update_period=2)),
                         per_layer),
        "imp": (IMPPlugin(IMP()), _exact(0.8 ** (N - 1), sum(layers))),
    }[name]
    rec = _train(_model(), [plugin], bench.train_stream, epochs=2)
    assert len(rec.rows) == N and all(zero for *_, zero in rec.rows)
    assert rec.rows[-1][1] == final


def test_the_dataset_sample_is_the_harness_sample():
    """A pruner's sample read from the experience's dataset (as in any Avalanche strategy)
    is the harness's sample: the same examples of the replay-inclusive megabatch, 0.2 x |M_t|
    of them, in the same order."""
    from alma_bench.run.benchmark import mark_megabatches

    data = STREAMS.create("synthetic", n_train=200, n_test=10).load()
    stream = build_stream(data, AlmaSplit(megabatches=3, replay="all"), seed=0)
    seeds = Seeds.derive(5)
    norm = Normalizer(data.mean, data.std, "cpu")
    from alma_bench.run.data import BatchLoader

    def batches(x, y, seed):
        return [(xb, yb) for xb, yb, _ in BatchLoader(x, y, 16, norm, seed=seed)]

    ctx = SimpleNamespace(stream=stream, seeds=seeds, batches=batches)
    for t, exp in enumerate(mark_megabatches(stream).train_stream):
        assert len(exp.dataset) == len(stream.megabatches[t].train)  # replay included
        strategy = SimpleNamespace(experience=exp, train_mb_size=16, device="cpu")
        ours = experience_sample(strategy, 0.2, seeds.strategy)
        theirs = pruner_sample(ctx, t, 0.2)
        assert sum(len(y) for _, y in ours) == round(0.2 * stream.megabatches[t].size)
        assert [y.tolist() for _, y in ours] == [y.tolist() for _, y in theirs]
        for (xa, _), (xb, _) in zip(ours, theirs, strict=True):
            torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


def test_make_benchmark_is_the_harness_stream_and_naive_trains_on_it():
    from alma_bench import make_benchmark

    opts = {"n_train": 120, "n_test": 30, "classes": 3, "size": 8}
    bench = make_benchmark("synthetic", megabatches=3, replay="all", seed=4, **opts)
    data = STREAMS.create("synthetic", **opts).load()
    stream = build_stream(data, AlmaSplit(megabatches=3, replay="all"), Seeds.derive(4).stream)
    exps = list(bench.train_stream)
    assert len(exps) == 3 and len(bench.test_stream) == 1
    for t, exp in enumerate(exps):
        assert exp.megabatch_size == stream.megabatches[t].size
        assert exp.dataset.targets.uniques == set(stream.train_set(t)[1].tolist())
        assert len(exp.dataset) == len(stream.megabatches[t].train)
        assert exp.dataset.targets_task_labels.uniques == {0}  # one task, as LwF expects
    rec = _train(_model(), [ProgressivePlugin(APP())], exps)
    assert [kept for _, kept, _, _ in rec.rows] == [_exact(d, rec.rows[0][2])
                                                   for d in app_densities(3)]


@pytest.mark.parametrize("kwargs, words", [
    ({"stream": "cifar11"}, ["unknown stream 'cifar11'", "cifar10", "synthetic"]),
    ({"stream": "synthetic", "megabatches": 0}, ["megabatches", "positive integer"]),
    ({"stream": "synthetic", "megabatches": "8"}, ["megabatches", "positive integer"]),
    ({"stream": "synthetic", "replay": "most"}, ["replay", "none", "all", "buffer"]),
    ({"stream": "synthetic", "colour": 3}, ["colour", "Valid", "n_train"]),
])
def test_make_benchmark_bad_arguments_are_one_line(kwargs, words):
    from alma_bench import make_benchmark

    with pytest.raises(UserError) as e:
        make_benchmark(**kwargs)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_importing_alma_bench_does_not_import_the_benchmark_or_avalanche():
    code = ("import sys, alma_bench\n"
            "print('alma_bench.run.benchmark' in sys.modules, 'avalanche' in sys.modules)\n"
            "print(callable(alma_bench.make_benchmark), 'avalanche' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "True", "False"]


def test_a_resumed_osp_run_equals_an_uninterrupted_one_and_does_not_score_again(
        tmp_path, monkeypatch):
    """OSP prunes at the first experience it trains, so the harness's resumed run must say
    it already did: its state says so, and the rows equal an uninterrupted run's."""
    from conftest import write_suite

    import alma_bench.strategies.osp as osp_module
    from alma_bench.run.runner import execute
    from alma_bench.spec.config import load_suite
    from alma_bench.store.files import read_rows
    from alma_bench.store.rundir import RunDir

    suite = write_suite(tmp_path / "s.yaml", strategies=[{"name": "osp"}])
    spec = load_suite(str(suite)).runs[0]

    class Killed(Exception):
        pass

    def kill(t, n, row):
        if t == 2:
            raise Killed

    execute(spec, tmp_path / "whole", "cpu")
    with pytest.raises(Killed):
        execute(spec, tmp_path / "cut", "cpu", progress=kill)
    monkeypatch.setattr(osp_module, "prune_now", lambda *a, **k: pytest.fail("scored again"))
    execute(spec, tmp_path / "cut", "cpu")
    rows = [read_rows(RunDir(tmp_path / d, spec.results_name, spec.run_id).path
                      / "metrics.jsonl") for d in ("whole", "cut")]
    strip = [[{k: v for k, v in r.items() if k != "wall_time"} for r in rs] for rs in rows]
    assert len(strip[0]) == 4 and strip[0] == strip[1]


def test_osp_keeps_masks_that_came_pruned_with_the_model(monkeypatch):
    """A run resumed from a checkpoint written before OSP had a state: its model's masks are
    pruned already, and OSP does not score or prune them again."""
    import alma_bench.strategies.osp as osp_module

    model = _model()
    plugin = OneShotPlugin(OSP(density=OSP_DENSITY), model=model)
    ms = plugin.maskset
    name = ms.names[0]
    restored = ms.masks[name].clone()
    restored.view(-1)[:5] = False
    ms.update({name: restored})
    monkeypatch.setattr(osp_module, "prune_now", lambda *a, **k: pytest.fail("scored again"))
    strategy = SimpleNamespace(model=model, experience=SimpleNamespace(current_experience=2))
    plugin.before_training(strategy)
    plugin.before_training_exp(strategy)
    assert plugin.pruned and torch.equal(ms.masks[name], restored)


def test_readme_avalanche_example_runs_and_ends_at_apps_final_density():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- avalanche-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    model, app = scope["model"], scope["app"]
    assert app.maskset.model is model
    assert app.maskset.kept() == round(app_densities(8)[-1] * app.maskset.numel())
