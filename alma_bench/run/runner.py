"""One run: a RunSpec in, a result directory out. Resumable after any kill.

Determinism: every random draw of megabatch t (data order, augmentation, dropout, a strategy's
sample) comes from a generator seeded by (run seed, purpose, t), so resuming at megabatch t
from its checkpoint replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

from alma_bench import __version__
from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.data import Normalizer
from alma_bench.run.metrics import (
    FlopMeter,
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

_DATA_CACHE: dict = {}  # source spec -> ImageData, so runs in one process load data once


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'. Valid: auto, cpu, cuda, cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available. Valid: auto, cpu")
    return d


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
    from alma_bench.run.training import AlmaTemplate, RunContext, state_versions

    tune_malloc()  # no page-fault storm in evaluation (alma_bench/run/memory.py); no number moves
    tm = timer or NO_TIMER

    rd = RunDir(out, spec.results_name, spec.run_id)
    if rd.is_done():
        note_reuse(spec, read_json(rd.config) or {}, device, env)
        return read_json(rd.summary)
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
    seeds = spec.seeds()
    protocol = spec.protocol_obj()

    with tm.part("data_start"):
        data = load_data(spec.stream)
        stream = build_stream(data, spec.split(), seeds.stream, name=spec.stream["name"])
    tm.start("setup")
    torch.manual_seed(seeds.init)
    model = build_model(spec.model, stream.input_shape, stream.num_classes).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    flops_total, flops_layer = layer_flops(model, stream.input_shape, dev)
    ctx = RunContext(spec, stream, model, protocol, seeds, dev,
                     Normalizer(data.mean, data.std, dev, channels_last),
                     run_dir=rd.path, deps=deps, timer=tm)
    ctx.flop_meter = FlopMeter(model, flops_total, flops_layer)
    strategy = compose.create(spec.strategy["name"], spec.strategy["params"])
    plugins = strategy.plugins(ctx)
    if timer is not None:
        for p in plugins:
            timer.wrap_hooks(p)
    from alma_bench.run.finite import FiniteLossCheck, check_weights

    evaluator = None
    if avalanche_loggers:
        from alma_bench.run import avalanche_logs

        evaluator = avalanche_logs.evaluator(avalanche_logs.run_log_dir(avalanche_loggers, spec))
    template = AlmaTemplate(ctx=ctx, plugins=[*plugins, FiniteLossCheck(ctx)],
                            evaluator=evaluator)

    rows: list[dict] = []
    ckpt = rd.resume_point(lambda line: _say(note, spec, line))  # verified, or a fallback
    if ckpt is not None:  # the checkpoint holds its own rows: model and metrics always agree
        rows = ckpt["rows"]
        model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            template.optimizer.load_state_dict(ckpt["optimizer"])
        for p, state in zip(plugins, ckpt["plugins"]):
            if state is not None:
                p.load_state_dict(state)
        # Avalanche's clock: plugins count experiences with it (EWC, GEM, SI, MAS)
        for key, value in ckpt.get("clock", {}).items():
            setattr(template.clock, key, value)
        ctx.step, ctx.samples_seen = ckpt["step"], ckpt["samples_seen"]
        ctx.train_flops = rows[-1]["train_flops"] if rows else 0.0
    write_json(rd.config, {**spec.to_json(), "version": __version__,
                           "machine": machine_info(dev),
                           "provenance": provenance(dev, spec.threads, env)})
    sink = _tensorboard(tensorboard, spec, rows)  # re-logs the rows a resumed run starts with
    tm.stop("setup")
    experiences = stream.benchmark.train_stream
    for t in range(len(rows), stream.n_megabatches):
        start = time.perf_counter()
        torch.manual_seed(derive(seeds.run, "torch", t))  # dropout and any other global draws
        with tm.part("template_train"):
            template.train(experiences[t])
        check_weights(model, t + 1)  # a diverged run fails instead of reporting NaN
        dens = layer_density(model)
        g_dens = global_density(model, dens)
        eff = effective_flops(flops_total, flops_layer, dens)
        test = stream.test_set()
        with tm.part("test_pass"):
            test_acc, test_err = ctx.accuracy(*test)
        train = train_eval_set(stream, protocol, seeds, t)
        with tm.part("train_pass"):
            train_acc, _ = ctx.accuracy(*train)
        if ctx.kept_val is not None and ctx.kept_val[0] == state_versions(model):
            val_acc = ctx.kept_val[1]  # the kept epoch's validation scored these very weights
            tm.count("val_passes_reused", 1)
        else:
            val = stream.val_set(t)
            with tm.part("val_pass"):
                val_acc, _ = ctx.accuracy(*val)
            tm.count("final_val_images", len(val[1]))
        tm.count("test_images", len(test[1]))
        tm.count("train_images", len(train[1]))
        tm.start("checkpoint_metrics")
        best = ctx.kept_epoch  # the epoch whose model the megabatch kept
        row = {
            "megabatch": t + 1, "step": ctx.step, "samples_seen": ctx.samples_seen,
            "train_size": len(stream.megabatches[t].train),
            "test_acc": test_acc, "test_errors": test_err, "val_acc": val_acc,
            "train_acc": train_acc, "gen_gap": train_acc - test_acc,
            "epoch_gap": (ctx.epoch_log[best][0] - ctx.epoch_log[best][1]) if ctx.epoch_log
            else None,
            "epochs_trained": len(ctx.epoch_log), "best_epoch": best + 1,
            # APP's per-epoch log: running train accuracy and validation accuracy, every epoch
            "epoch_train_acc": [a for a, _ in ctx.epoch_log],
            "epoch_val_acc": [v for _, v in ctx.epoch_log],
            "density": g_dens, "layer_density": dens, "nonzero_params": nonzero_params(model),
            # training FLOPs: per optimizer step, at the masks in force in that step
            "flops_dense": flops_total, "flops_effective": eff, "train_flops": ctx.train_flops,
            "wall_time": time.perf_counter() - start,
        }
        for p in plugins:  # strategy-specific extras, e.g. a rewiring threshold
            if hasattr(p, "metrics"):
                row.update(p.metrics())
        rows.append(row)
        if evaluator is not None:  # after the row is measured: it reads nothing it changes
            template.eval(stream.benchmark.test_stream)
        rd.commit({
            "megabatches_done": t + 1, "model": model.state_dict(),
            "optimizer": template.optimizer.state_dict()
            if protocol.keep_optimizer_state else None,
            "plugins": [p.state_dict() if hasattr(p, "state_dict") else None for p in plugins],
            "clock": {k: v for k, v in vars(template.clock).items() if isinstance(v, int)},
            "step": ctx.step, "samples_seen": ctx.samples_seen, "rows": rows,
        }, rows, stream.n_megabatches)  # checkpoint, then metrics, then status
        if sink:
            sink.log_row(row)
        tm.stop("checkpoint_metrics")
        if progress:
            progress(t + 1, stream.n_megabatches, row)
    if evaluator is not None:
        avalanche_logs.close(evaluator)
    summary = summarize(rows)
    rd.finish(rows, summary, stream.n_megabatches)
    if sink:
        sink.log_hparams(spec.to_json(), summary)
        sink.close()
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


def _tensorboard(log_dir, spec: RunSpec, rows: list[dict]):
    """The run's TensorBoard sink (``<log_dir>/<suite folder>/<label>/seed<N>``), or None."""
    if not log_dir:
        return None
    from alma_bench.run.tb import TensorBoardSink

    # The results folder's name (suite plus a non-default scale), as under --out: two scales
    # of one suite never share a TensorBoard run.
    return TensorBoardSink(log_dir, spec.results_name, spec.label, spec.seed,
                           run_id=spec.run_id, rows=rows)
