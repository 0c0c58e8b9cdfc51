"""One run: a RunSpec in, a result directory out. Resumable after any kill.

``execute`` follows the protocol of a run, one named step each: open (or reuse) the run
directory, build the stream, the model, the strategy and its training template, restore from
the last checkpoint, then per megabatch train, measure, commit; finish with the summary.

Determinism: every random draw of megabatch t (data order, augmentation, dropout, a strategy's
sample) comes from a generator seeded by (run seed, purpose, t), so resuming at megabatch t
from its checkpoint replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alma_bench import __version__
from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.data import Normalizer
from alma_bench.run.device import resolve_device
from alma_bench.run.metrics import (
    FlopMeter,
    density_layers,
    describe_layers,
    effective_flops,
    global_density,
    layer_density,
    layer_flops,
    nonzero_params,
    summarize,
)
from alma_bench.run.models import build_model
from alma_bench.run.provenance import note_reuse, provenance
from alma_bench.run.stream import build_stream
from alma_bench.spec import compose
from alma_bench.spec.config import RunSpec, derive, split_and_source
from alma_bench.store.files import clean_stale_tmp, ensure_dir, read_json, write_json
from alma_bench.store.rundir import RunDir

__all__ = ["dependency_dirs", "execute", "load_data", "machine_info", "resolve_device",
           "train_eval_set"]

_DATA_CACHE: dict = {}  # source spec -> ImageData, so runs in one process load data once


def load_data(stream: dict):
    _, name, params = split_and_source(stream)
    key = (name, tuple(sorted(params.items())))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # keep one data set in memory, not every one a process has seen
        _DATA_CACHE[key] = STREAMS.create(name, **params).load()
    return _DATA_CACHE[key]


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device)}


@dataclass
class _Run:
    """What one run's steps share: built by ``_open`` and ``_build``, grown by ``_commit``."""

    spec: RunSpec
    rd: RunDir
    dev: torch.device
    deps: dict[str, Path]
    tm: Any  # a ``timing.Breakdown`` or ``timing.NO_TIMER``
    seeds: Any = None
    protocol: Any = None
    data: Any = None
    stream: Any = None
    model: Any = None
    flops: tuple = ()  # (total, per layer) of the dense model
    ctx: Any = None
    plugins: list = field(default_factory=list)
    template: Any = None
    evaluator: Any = None
    rows: list[dict] = field(default_factory=list)
    sink: Any = None


def execute(spec: RunSpec, out: Path, device: str = "auto", progress=None,
            channels_last: bool = False, tensorboard: str | None = None,
            env: dict | None = None, note=None, avalanche_loggers: str | None = None,
            timer=None) -> dict:
    """Run (or resume, or skip) one run; returns its summary.

    ``env`` is provenance of the invocation (command line, plugin file hashes) recorded in
    config.json; a finished run reused under a different environment says so on stderr.
    ``note`` gets one line when damaged files change where the run resumes (default: stderr).
    ``avalanche_loggers``: a folder for Avalanche's own metrics and loggers
    (alma_bench/run/avalanche_logs.py); it changes no number. ``timer``: an
    ``alma_bench.run.timing.Breakdown`` to fill with where the time goes (``alma-bench perf
    --run``); it changes no number either.
    """
    from alma_bench.run.memory import tune_malloc
    from alma_bench.run.timing import NO_TIMER

    tune_malloc()  # no page-fault storm in evaluation (alma_bench/run/memory.py); no number moves
    rd = RunDir(out, spec.results_name, spec.run_id)
    if rd.is_done():
        note_reuse(spec, read_json(rd.config) or {}, device, env)
        return read_json(rd.summary)
    run = _open(spec, rd, out, device, timer or NO_TIMER)
    _build(run, channels_last, avalanche_loggers, timer)
    _restore(run, note)
    _record_config(run, env)
    run.sink = _tensorboard(tensorboard, spec, run.rows, note)  # re-logs a resumed run's rows
    run.tm.stop("setup")
    experiences = run.stream.benchmark.train_stream
    for t in range(len(run.rows), run.stream.n_megabatches):
        start = time.perf_counter()
        _train(run, experiences[t], t)
        row = _measure(run, t, start)
        _commit(run, t, row)
        if progress:
            progress(t + 1, run.stream.n_megabatches, row)
    return _finish(run)


def _open(spec: RunSpec, rd: RunDir, out: Path, device: str, tm) -> _Run:
    """The run directory made ready (its dependencies found, stale temporary files gone) and
    torch set up for the run: device, determinism, the thread count."""
    deps = dependency_dirs(spec, out)
    ensure_dir(rd.path)
    clean_stale_tmp(rd.path)  # of writers that were killed
    dev = resolve_device(device)
    if dev.type == "cuda":  # same seed, same numbers on a GPU too (at some speed cost)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    # the thread count is part of the run's identity: every executor honours it here
    torch.set_num_threads(spec.threads)
    return _Run(spec, rd, dev, deps, tm, seeds=spec.seeds(), protocol=spec.protocol_obj())


def _build(run: _Run, channels_last: bool, avalanche_loggers: str | None, timer) -> None:
    """Stream, model, run context, strategy plugins and the training template, in the order
    the run's random draws expect (the model's initialisation follows the stream's split)."""
    from alma_bench.run.finite import FiniteLossCheck
    from alma_bench.run.training import AlmaTemplate, RunContext

    spec, tm = run.spec, run.tm
    with tm.part("data_start"):
        run.data = load_data(spec.stream)
        run.stream = build_stream(run.data, spec.split(), run.seeds.stream,
                                  name=spec.stream["name"])
    tm.start("setup")
    torch.manual_seed(run.seeds.init)
    model = build_model(spec.model, run.stream.input_shape, run.stream.num_classes).to(run.dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.model = model
    run.flops = layer_flops(model, run.stream.input_shape, run.dev)
    run.ctx = RunContext(spec, run.stream, model, run.protocol, run.seeds, run.dev,
                         Normalizer(run.data.mean, run.data.std, run.dev, channels_last),
                         run_dir=run.rd.path, deps=run.deps, timer=tm)
    run.ctx.flop_meter = FlopMeter(model, *run.flops)
    strategy = compose.create(spec.strategy["name"], spec.strategy["params"])
    run.plugins = strategy.plugins(run.ctx)
    if timer is not None:
        for p in run.plugins:
            timer.wrap_hooks(p)
    if avalanche_loggers:
        from alma_bench.run import avalanche_logs

        run.evaluator = avalanche_logs.evaluator(
            avalanche_logs.run_log_dir(avalanche_loggers, spec))
    run.template = AlmaTemplate(ctx=run.ctx, plugins=[*run.plugins, FiniteLossCheck(run.ctx)],
                                evaluator=run.evaluator)


def _restore(run: _Run, note) -> None:
    """Resume from the last verified checkpoint (or a fallback), if any: model, optimizer,
    plugins, Avalanche's clock and the run's counters. The checkpoint holds its own rows, so
    model and metrics always agree."""
    ckpt = run.rd.resume_point(lambda line: _say(note, run.spec, line))
    if ckpt is None:
        return
    run.rows = ckpt["rows"]
    run.model.load_state_dict(ckpt["model"])
    if ckpt.get("optimizer") is not None:
        run.template.optimizer.load_state_dict(ckpt["optimizer"])
    for p, state in zip(run.plugins, ckpt["plugins"]):
        if state is not None:
            p.load_state_dict(state)
    # Avalanche's clock: plugins count experiences with it (EWC, GEM, SI, MAS)
    for key, value in ckpt.get("clock", {}).items():
        setattr(run.template.clock, key, value)
    run.ctx.step, run.ctx.samples_seen = ckpt["step"], ckpt["samples_seen"]
    run.ctx.train_flops = run.rows[-1]["train_flops"] if run.rows else 0.0


def _record_config(run: _Run, env: dict | None) -> None:
    """config.json: the spec, the version, the machine and the invocation's provenance."""
    write_json(run.rd.config, {**run.spec.to_json(), "version": __version__,
                               "machine": machine_info(run.dev),
                               "provenance": provenance(run.dev, run.spec.threads, env)})


def _train(run: _Run, experience, t: int) -> None:
    """Megabatch t's training, its global draws seeded by (run seed, t); a diverged model
    fails the run instead of reporting NaN."""
    from alma_bench.run.finite import check_weights

    torch.manual_seed(derive(run.seeds.run, "torch", t))  # dropout and any other global draws
    with run.tm.part("template_train"):
        run.template.train(experience)
    check_weights(run.model, t + 1)


def _accuracies(run: _Run, t: int) -> dict:
    """Test, train and validation accuracy after megabatch t (a validation pass the kept
    epoch already made on these very weights is reused)."""
    from alma_bench.run.training import state_versions

    ctx, stream, tm = run.ctx, run.stream, run.tm
    test = stream.test_set()
    with tm.part("test_pass"):
        test_acc, test_err = ctx.accuracy(*test)
    train = train_eval_set(stream, run.protocol, run.seeds, t)
    with tm.part("train_pass"):
        train_acc, _ = ctx.accuracy(*train)
    if ctx.kept_val is not None and ctx.kept_val[0] == state_versions(run.model):
        val_acc = ctx.kept_val[1]  # the kept epoch's validation scored these very weights
        tm.count("val_passes_reused", 1)
    else:
        val = stream.val_set(t)
        with tm.part("val_pass"):
            val_acc, _ = ctx.accuracy(*val)
        tm.count("final_val_images", len(val[1]))
    tm.count("test_images", len(test[1]))
    tm.count("train_images", len(train[1]))
    return {"test_acc": test_acc, "test_errors": test_err, "val_acc": val_acc,
            "train_acc": train_acc}


def _measure(run: _Run, t: int, start: float) -> dict:
    """Megabatch t's metrics row (``start``: when its training began)."""
    model, ctx = run.model, run.ctx
    flops_total, flops_layer = run.flops
    dens = layer_density(model)
    g_dens = global_density(model, dens)
    eff = effective_flops(flops_total, flops_layer, dens)
    acc = _accuracies(run, t)
    run.tm.start("checkpoint_metrics")
    best = ctx.kept_epoch  # the epoch whose model the megabatch kept
    row = {
        "megabatch": t + 1, "step": ctx.step, "samples_seen": ctx.samples_seen,
        "train_size": len(run.stream.megabatches[t].train),
        "test_acc": acc["test_acc"], "test_errors": acc["test_errors"],
        "val_acc": acc["val_acc"], "train_acc": acc["train_acc"],
        "gen_gap": acc["train_acc"] - acc["test_acc"],
        "epoch_gap": (ctx.epoch_log[best][0] - ctx.epoch_log[best][1]) if ctx.epoch_log
        else None,
        "epochs_trained": len(ctx.epoch_log), "best_epoch": best + 1,
        # APP's per-epoch log: running train accuracy and validation accuracy, every epoch
        "epoch_train_acc": [a for a, _ in ctx.epoch_log],
        "epoch_val_acc": [v for _, v in ctx.epoch_log],
        "density": g_dens, "density_over": describe_layers(model, density_layers(model)),
        "layer_density": dens, "nonzero_params": nonzero_params(model),
        # training FLOPs: per optimizer step, at the masks in force in that step
        "flops_dense": flops_total, "flops_effective": eff, "train_flops": ctx.train_flops,
        "wall_time": time.perf_counter() - start,
    }
    for p in run.plugins:  # strategy-specific extras, e.g. a rewiring threshold
        if hasattr(p, "metrics"):
            row.update(p.metrics())
    return row


def _commit(run: _Run, t: int, row: dict) -> None:
    """Megabatch t's row kept: checkpoint, then metrics, then status (crash-safe, in that
    order), then Avalanche's evaluation and the TensorBoard sink, which change nothing."""
    run.rows.append(row)
    if run.evaluator is not None:  # after the row is measured: it reads nothing it changes
        run.template.eval(run.stream.benchmark.test_stream)
    template = run.template
    run.rd.commit({
        "megabatches_done": t + 1, "model": run.model.state_dict(),
        "optimizer": template.optimizer.state_dict()
        if run.protocol.keep_optimizer_state else None,
        "plugins": [p.state_dict() if hasattr(p, "state_dict") else None for p in run.plugins],
        "clock": {k: v for k, v in vars(template.clock).items() if isinstance(v, int)},
        "step": run.ctx.step, "samples_seen": run.ctx.samples_seen, "rows": run.rows,
    }, run.rows, run.stream.n_megabatches)  # checkpoint, then metrics, then status
    if run.sink:
        run.sink.log_row(row)
    run.tm.stop("checkpoint_metrics")


def _finish(run: _Run) -> dict:
    """The run's summary, written with its final status; loggers closed."""
    if run.evaluator is not None:
        from alma_bench.run import avalanche_logs

        avalanche_logs.close(run.evaluator)
    summary = summarize(run.rows)
    run.rd.finish(run.rows, summary, run.stream.n_megabatches)
    if run.sink:
        run.sink.log_hparams(run.spec.to_json(), summary)
        run.sink.close()
    return summary


def train_eval_set(stream, protocol, seeds, t: int):
    """The images the generalisation gap's train accuracy is measured on: megabatch t's whole
    training set (ALGORITHMS.md), or a fixed seeded sample of ``protocol.train_eval_sample``
    images of it (the same sample on every resume)."""
    x, y = stream.train_set(t)
    k = protocol.train_eval_sample
    if k is None or k >= len(y):
        return x, y
    g = torch.Generator().manual_seed(derive(seeds.run, "train-eval", t))
    idx = torch.randperm(len(y), generator=g)[:k].sort().values
    return x[idx], y[idx]


def _say(note, spec: RunSpec, line: str) -> None:
    line = f"run {spec.label} seed {spec.seed} ({spec.run_id}): {line}"
    if note is not None:
        note(line)
    else:
        print(f"alma-bench: {line}", file=sys.stderr)


def dependency_dirs(spec: RunSpec, out: Path) -> dict[str, Path]:
    """Parameter name -> folder of the finished run it names (see ``RunSpec.deps``)."""
    dirs = {}
    named = compose.dependency_params(spec.strategy)
    for param, run_id in (spec.deps or {}).items():
        label = named.get(param)
        rd = RunDir(out, spec.results_name, run_id)
        if not rd.is_done():
            raise UserError(f"run '{spec.label}' seed {spec.seed} needs the finished run of "
                            f"'{label}' ({param}, run {run_id}), which is missing or unfinished "
                            f"in {rd.path.parent}")
        dirs[param] = rd.path
    return dirs


def _tensorboard(log_dir, spec: RunSpec, rows: list[dict], note=None):
    """The run's TensorBoard sink (``<log_dir>/<suite folder>/<label>/seed<N>``), or None;
    its failures are one line, never the run's (``tb.GuardedSink``)."""
    if not log_dir:
        return None
    from alma_bench.run.tb import GuardedSink, TensorBoardSink

    # The results folder's name (suite plus a non-default scale), as under --out: two scales
    # of one suite never share a TensorBoard run.
    return GuardedSink(lambda: TensorBoardSink(log_dir, spec.results_name, spec.label,
                                               spec.seed, run_id=spec.run_id, rows=rows),
                       lambda line: _say(note, spec, line))
