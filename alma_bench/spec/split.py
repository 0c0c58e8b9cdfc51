"""The ALMA split: how a data set becomes a stream of megabatches (``AlmaSplit``, the
stream-independent part of a stream spec), and the training-set size each megabatch is expected
to have, from the split alone (``train_sizes``: the data is not loaded). The split itself, on
loaded data, is alma_bench/run/stream.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The pool a stream of unknown size counts as (no ``stream.subset``, no ``n_train``).
NOMINAL_POOL = 50_000

Replay = Literal["none", "all", "fraction", "buffer"]


@dataclass(frozen=True)
class AlmaSplit:
    """How a data set becomes an ALMA stream (the stream-independent part of a stream spec)."""

    megabatches: int = 8
    replay: Replay = "all"
    replay_fraction: float = 0.5  # p for replay=fraction: each old sample survives a step w.p. p
    buffer_size: int = 1000  # K for replay=buffer (reservoir)
    val_fraction: float = 0.1
    subset: int | None = None  # use the first k of the permutation (CPU-sized CIFAR runs)

    def __post_init__(self):
        if self.megabatches < 1:
            raise ValueError(f"megabatches must be >= 1, got {self.megabatches}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.replay_fraction <= 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1], got {self.replay_fraction}")
        if self.buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {self.buffer_size}")
        if self.subset is not None and self.subset < self.megabatches:
            raise ValueError(f"subset must be >= megabatches, got {self.subset}")


def train_sizes(spec) -> list[float]:
    """Expected training-set size of each megabatch (replay included), from the split alone."""
    split = spec.split()
    pool = split.subset or spec.stream.get("n_train") or NOMINAL_POOL
    m = split.megabatches
    new = pool / m * (1 - split.val_fraction)  # each megabatch's new training samples
    sizes, memory = [], 0.0
    for _ in range(m):
        if split.replay == "none":
            train = new
        elif split.replay == "all":
            memory += new
            train = memory
        elif split.replay == "fraction":  # each old sample survives a step with p
            memory = memory * split.replay_fraction + new
            train = memory
        else:  # buffer: the reservoir of K plus the new samples
            train = new + memory
            memory = min(split.buffer_size, memory + new)
        sizes.append(train)
    return sizes
