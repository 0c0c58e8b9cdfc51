"""What a sparse plugin reads from the Avalanche strategy it is attached to, at hook time.

A plugin never holds the harness's objects: the experience being trained
(``strategy.experience``) gives its index (``current_experience``), its data (``dataset``,
where a pruner's sample comes from) and its stream (``origin_stream``, where a schedule needs
the stream's length N or its planned optimizer steps); the strategy gives the mini-batch size,
the epochs and the device. So the same plugin runs in the harness, in Avalanche's ``Naive`` on
any benchmark, or on a slice of a stream.

Two conveniences are read when present and have a fallback when not:

* ``experience.megabatch_size``: |M_t|, the megabatch's size before its validation split and
  without replay, marked on the experiences of an ALMA benchmark
  (:func:`alma_bench.run.benchmark.mark_megabatches`). Another benchmark's experience is its
  dataset: |M_t| = ``len(experience.dataset)``.
* ``strategy.sample_batches(indices, seed)``: the harness's template turns a sample into
  batches exactly as its training batches (uint8 images normalised on the device), so a
  pruner scores the very tensors the model trains on. Elsewhere the samples are read one by
  one from the experience's dataset: the same examples in the same order, normalised by the
  dataset (the last bits may differ from the harness's).
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch.utils.data import default_collate

from alma_bench.errors import UserError
from alma_bench.run.data import epoch_generator
from alma_bench.spec.config import derive


def origin_stream(experience):
    """The stream the experience belongs to (a slice's experiences keep the whole stream)."""
    try:
        stream = experience.origin_stream
        len(stream)
    except (AssertionError, AttributeError, TypeError):
        raise UserError("this experience has no stream of known length (origin_stream); "
                        "give the plugin the planned number of experiences") from None
    return stream


def stream_length(experience, planned: int | None = None) -> int:
    """N of a schedule: ``planned`` when given, else the length of the experience's stream."""
    if planned is not None:
        return planned
    return len(origin_stream(experience))


def scheduled(values: list, t: int):
    """``values[t]`` of a schedule over N experiences; past the plan (a stream longer than
    planned) the schedule is complete and holds its last value."""
    return values[min(t, len(values) - 1)]


def planned_offsets(strategy) -> list[int]:
    """The planned optimizer step at which each experience of the stream starts (no early
    stopping: ``train_epochs x ceil(|dataset| / train_mb_size)`` per experience); the last
    entry is the stream's planned total. Schedules keyed to the stream use this clock."""
    epochs, batch = int(strategy.train_epochs), int(strategy.train_mb_size)
    steps = [epochs * -(-len(e.dataset) // batch) for e in origin_stream(strategy.experience)]
    return list(accumulate(steps, initial=0))


def megabatch_size(experience) -> int:
    """|M_t|: the megabatch's size before its validation split, without replay (marked on an
    ALMA benchmark's experiences), else the size of the experience's dataset."""
    size = getattr(experience, "megabatch_size", None)
    return len(experience.dataset) if size is None else int(size)


def sample_indices(n: int, size: int, fraction: float, seed: int) -> torch.Tensor:
    """``round(fraction x size)`` (at least 1, at most n) distinct indices in [0, n), seeded."""
    k = max(1, min(n, int(round(fraction * size))))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def experience_sample(strategy, fraction: float, seed: int, purpose: str = "prune-sample"):
    """A pruner's sample: ``fraction x |M_t|`` examples of the current experience's dataset
    (replay included where the dataset holds it), drawn and ordered by seeds from ``(seed,
    purpose, t)``, as (x, y) batches of ``train_mb_size`` on the strategy's device."""
    exp = strategy.experience
    t = exp.current_experience
    idx = sample_indices(len(exp.dataset), megabatch_size(exp), fraction,
                         derive(seed, purpose, t))
    order = derive(seed, purpose + "-order", t)
    own = getattr(strategy, "sample_batches", None)
    if callable(own):
        return own(idx, order)
    return dataset_batches(exp.dataset, idx, order, int(strategy.train_mb_size),
                           strategy.device)


def dataset_batches(dataset, indices: torch.Tensor, seed: int, batch_size: int, device):
    """(x, y) batches of ``dataset[indices]``, in the order the harness's ``BatchLoader``
    gives them for ``seed``; with the dataset's eval transforms (no training augmentation,
    as the harness's sample)."""
    if hasattr(dataset, "eval"):  # an Avalanche dataset: switch off training transforms
        dataset = dataset.eval()
    order = indices[torch.randperm(len(indices), generator=epoch_generator(seed, 0))]
    batches = []
    for i in range(0, len(order), batch_size):
        x, y = default_collate([dataset[int(j)] for j in order[i : i + batch_size]])[:2]
        batches.append((x.to(device), y.to(device)))
    return batches
