"""One run: a RunSpec in, a result directory out. Resumable after any kill.

Determinism: every random draw of megabatch t (data order, augmentation, dropout, a strategy's
sample) comes from a generator seeded by (run seed, purpose, t), so resuming at megabatch t
from its checkpoint replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from alma_bench import __version__
from alma_bench.config import RunSpec, derive, split_and_source
from alma_bench.data import Normalizer
from alma_bench.errors import UserError
from alma_bench.metrics import (
    effective_flops,
    global_density,
    layer_density,
    layer_flops,
    nonzero_params,
    summarize,
)
from alma_bench.models import build_model
from alma_bench.registry import STRATEGIES, STREAMS
from alma_bench.store import (
    RunDir,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
    write_rows,
)
from alma_bench.stream import build_stream

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
            channels_last: bool = False, tensorboard: str | None = None) -> dict:
    """Run (or resume, or skip) one run; returns its summary."""
    from alma_bench.training import AlmaTemplate, RunContext

    rd = RunDir(out, spec.results_name, spec.run_id)
    if rd.is_done():
        return read_json(rd.summary)
    rd.path.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    if dev.type == "cuda":  # same seed, same numbers on a GPU too (at some speed cost)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    seeds = spec.seeds()
    protocol = spec.protocol_obj()

    data = load_data(spec.stream)
    stream = build_stream(data, spec.split(), seeds.stream, name=spec.stream["name"])
    torch.manual_seed(seeds.init)
    model = build_model(spec.model, stream.input_shape, stream.num_classes).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    flops_total, flops_layer = layer_flops(model, stream.input_shape, dev)
    ctx = RunContext(spec, stream, model, protocol, seeds, dev,
                     Normalizer(data.mean, data.std, dev, channels_last))
    strategy = STRATEGIES.create(spec.strategy["name"], **spec.strategy["params"])
    plugins = strategy.plugins(ctx)
    template = AlmaTemplate(ctx=ctx, plugins=plugins)

    rows: list[dict] = []
    ckpt = load_checkpoint(rd.checkpoint)
    if ckpt is not None:  # the checkpoint holds its own rows: model and metrics always agree
        rows = ckpt["rows"]
        model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            template.optimizer.load_state_dict(ckpt["optimizer"])
        for p, state in zip(plugins, ckpt["plugins"]):
            if state is not None:
                p.load_state_dict(state)
        ctx.step, ctx.samples_seen = ckpt["step"], ckpt["samples_seen"]
    write_json(rd.config, {**spec.to_json(), "version": __version__,
                           "machine": machine_info(dev)})
    sink = _tensorboard(tensorboard, spec)
    train_flops = rows[-1]["train_flops"] if rows else 0.0
    experiences = stream.benchmark.train_stream
    for t in range(len(rows), stream.n_megabatches):
        start, samples0 = time.perf_counter(), ctx.samples_seen
        torch.manual_seed(derive(seeds.run, "torch", t))  # dropout and any other global draws
        template.train(experiences[t])
        dens = layer_density(model)
        g_dens = global_density(model, dens)
        eff = effective_flops(flops_total, flops_layer, dens)
        train_flops += 3.0 * eff * (ctx.samples_seen - samples0)
        test_acc, test_err = ctx.accuracy(*stream.test_set())
        train_acc, _ = ctx.accuracy(*stream.train_set(t))
        val_acc, _ = ctx.accuracy(*stream.val_set(t))
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
            "flops_dense": flops_total, "flops_effective": eff, "train_flops": train_flops,
            "wall_time": time.perf_counter() - start,
        }
        for p in plugins:  # strategy-specific extras, e.g. a rewiring threshold
            if hasattr(p, "metrics"):
                row.update(p.metrics())
        rows.append(row)
        save_checkpoint(rd.checkpoint, {
            "megabatches_done": t + 1, "model": model.state_dict(),
            "optimizer": template.optimizer.state_dict()
            if protocol.keep_optimizer_state else None,
            "plugins": [p.state_dict() if hasattr(p, "state_dict") else None for p in plugins],
            "step": ctx.step, "samples_seen": ctx.samples_seen, "rows": rows,
        })
        write_rows(rd.metrics, rows)
        write_json(rd.status, {"state": "running", "megabatches_done": t + 1,
                               "n_megabatches": stream.n_megabatches})
        if sink:
            sink.log_row(row)
        if progress:
            progress(t + 1, stream.n_megabatches, row)
    summary = summarize(rows)
    write_json(rd.summary, summary)
    write_json(rd.status, {"state": "done", "megabatches_done": len(rows),
                           "n_megabatches": stream.n_megabatches})
    if sink:
        sink.close()
    return summary


def _tensorboard(log_dir, spec):
    if not log_dir:
        return None
    from alma_bench.tb import TensorBoardSink

    return TensorBoardSink(log_dir, spec.suite, spec.label, spec.seed)
