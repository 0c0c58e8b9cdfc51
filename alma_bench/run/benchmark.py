"""The public Avalanche benchmark of an ALMA stream: ``alma_bench.make_benchmark(...)``.

It is the benchmark the harness trains on (``build_stream(...).benchmark``), built from a
stream name and split options instead of a suite: train stream (experience t is megabatch t,
replay included), valid stream (the validation split of every megabatch so far) and test
stream (the whole test set), usable by any Avalanche strategy.
"""

from __future__ import annotations

from typing import Any

from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.stream import AlmaStream, build_stream
from alma_bench.spec.config import Seeds, split_and_source


def mark_megabatches(stream: AlmaStream):
    """``stream.benchmark`` with each train experience marked with ``megabatch_size`` (|M_t|:
    the megabatch before its validation split, without replay), which a pruner's sample is a
    fraction of. An Avalanche experience has no such field; a sparse plugin reads it when
    present and otherwise takes the experience's dataset as the megabatch."""
    bench = stream.benchmark
    for exp, mb in zip(bench.train_stream, stream.megabatches, strict=True):
        exp.megabatch_size = mb.size
    return bench


def make_benchmark(stream: str = "cifar10", megabatches: int = 8, replay: str = "all",
                   seed: int = 0, **options: Any):
    """The Avalanche benchmark (``CLScenario``) of an ALMA stream.

    ``stream`` is a registered stream (``alma-bench list streams``); ``megabatches`` and
    ``replay`` (``none``, ``all``, ``fraction``, ``buffer``) split it; ``seed`` is a run's
    seed: the benchmark is the stream a suite run with that seed trains on. ``options`` are
    the other stream keys of a suite: the split's (``val_fraction``, ``subset``,
    ``replay_fraction``, ``buffer_size``), the source's (e.g. ``data_root``), or ``seed`` of
    the stream itself, which replaces the one derived from the run's seed.

    Every experience has task label 0 (one task, as Avalanche's strategies expect), and each
    train experience says its megabatch's size (``megabatch_size``). Bad arguments are a
    one-line UserError naming the valid choices.
    """
    if not isinstance(stream, str):
        raise UserError(f"stream must be a stream's name, got {stream!r}. "
                        f"Valid: {', '.join(STREAMS.names())}")
    if isinstance(megabatches, bool) or not isinstance(megabatches, int) or megabatches < 1:
        raise UserError(f"megabatches must be a positive integer, got {megabatches!r}")
    section = {"name": stream, "megabatches": megabatches, "replay": replay, **options}
    split, name, params = split_and_source(section)  # unknown names and keys: UserErrors
    data = STREAMS.create(name, **params).load()
    seeds = Seeds.derive(seed, options.get("seed"))
    return mark_megabatches(build_stream(data, split, seeds.stream, name=name))
