"""The ALMA stream (ALGORITHMS.md section 1): megabatches, validation split, replay.

A seeded permutation of the training set (optionally its first ``subset`` entries) is cut into
N equal i.i.d. megabatches with ``numpy.array_split``; each megabatch is split 90/10 into
train/validation. The training set of megabatch t follows the replay policy. Data is held once
as uint8 tensors; megabatches are index arrays into it, so union replay costs no copies.
The Avalanche benchmark (``benchmark``) is built from the same tensors: experience t is
megabatch t, so any Avalanche strategy can consume the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from alma_bench.errors import UserError
from alma_bench.spec.split import AlmaSplit

if TYPE_CHECKING:  # torch loads with the data, not here
    from alma_bench.run.data import ImageData, SampleView

@dataclass
class Megabatch:
    """Index arrays (into the training pool) of one megabatch t."""

    new: np.ndarray  # the new training samples of megabatch t (its 90% training part)
    train: np.ndarray  # what is trained on at t: new + replay
    val: np.ndarray  # validation: the held-out 10% of every megabatch seen so far
    size: int  # |M_t|: the megabatch's size before its validation split


def split_indices(n: int, split: AlmaSplit, seed: int) -> list[Megabatch]:
    """The megabatch index arrays for a pool of ``n`` training samples."""
    if split.subset is not None and split.subset > n:
        raise UserError(f"stream subset {split.subset} exceeds the {n} training samples")
    pool = n if split.subset is None else split.subset
    # checked against the data before any index array exists: array_split into 10**9 parts
    # would exhaust memory first. The last part is the smallest: pool // megabatches samples.
    smallest = pool // split.megabatches
    if smallest - int(round(split.val_fraction * smallest)) < 1:
        raise UserError(f"{split.megabatches} megabatches of {pool} samples leave a "
                        "megabatch with no training sample; use fewer megabatches")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)[:pool]  # outside_indices reads the same permutation's tail
    parts = np.array_split(perm, split.megabatches)
    out: list[Megabatch] = []
    memory = np.empty(0, dtype=np.int64)
    seen = 0  # samples offered to the reservoir so far
    vals: list[np.ndarray] = []
    for part in parts:
        # the part is already in random order, so its head is a seeded random validation split
        n_val = int(round(split.val_fraction * len(part)))
        val, new = part[:n_val], part[n_val:]
        vals.append(val)
        if split.replay == "none":
            train = new
        elif split.replay == "all":
            memory = np.concatenate([memory, new])
            train = memory
        elif split.replay == "fraction":
            keep = rng.random(len(memory)) < split.replay_fraction
            memory = np.concatenate([memory[keep], new])
            train = memory
        else:  # buffer: reservoir of K over everything seen, trained on with the new data
            train = np.concatenate([memory, new])
            memory, seen = _reservoir(memory, new, seen, split.buffer_size, rng)
        out.append(Megabatch(new=new, train=np.asarray(train), val=np.concatenate(vals),
                             size=len(part)))
    return out


def outside_indices(n: int, split: AlmaSplit, seed: int, k: int) -> np.ndarray:
    """Up to ``k`` samples of the pool that the stream of split seed ``seed`` never uses:
    the next entries of the permutation whose head is its ``subset`` (none without a subset).
    Images from the stream's own distribution that none of its networks trains on."""
    if split.subset is None or k <= 0:
        return np.empty(0, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(n)  # split_indices' first draw
    return perm[split.subset: split.subset + k]


def _reservoir(buf, new, seen, k, rng):
    buf = list(buf)
    for idx in new:
        if len(buf) < k:
            buf.append(idx)
        else:
            j = rng.integers(0, seen + 1)
            if j < k:
                buf[j] = idx
        seen += 1
    return np.asarray(buf, dtype=np.int64), seen


@dataclass
class AlmaStream:
    """N megabatches over one ``ImageData``, plus the whole test set."""

    data: ImageData
    megabatches: list[Megabatch]
    name: str = ""
    _bench: object = field(default=None, repr=False)

    @property
    def n_megabatches(self) -> int:
        return len(self.megabatches)

    @property
    def input_shape(self):
        return self.data.input_shape

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def _take(self, idx: np.ndarray):
        import torch

        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return self.data.train_x[i], self.data.train_y[i]

    def train_set(self, t: int):
        """(x uint8, y) trained on at megabatch t (0-based), replay included."""
        return self._take(self.megabatches[t].train)

    def new_set(self, t: int):
        """(x uint8, y) of the new samples of megabatch t only."""
        return self._take(self.megabatches[t].new)

    def val_set(self, t: int):
        return self._take(self.megabatches[t].val)

    def test_set(self):
        return self.data.test_x, self.data.test_y

    @cached_property
    def benchmark(self):
        """The Avalanche benchmark (train/valid streams: one experience per megabatch; test).

        Its datasets are index views over the one copy of the data: union replay over N
        megabatches would otherwise hold about N/2 copies of the training set. Every sample
        carries task label 0 (ALMA has one task), the ``(x, y, t)`` triplets and the
        ``targets_task_labels`` Avalanche's strategies expect (LwF reads it), and every
        experience its ``task_label`` 0.
        """
        from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
        from avalanche.benchmarks.scenarios.task_aware import with_task_labels

        from alma_bench.run.data import SampleView

        d = self.data
        # no valid stream without validation data (val_fraction 0: train on every image, as
        # the DPR paper does); Avalanche cannot label the task of an empty dataset
        streams = {"train": [self.dataset(m.train) for m in self.megabatches]}
        if all(len(m.val) for m in self.megabatches):
            streams["valid"] = [self.dataset(m.val) for m in self.megabatches]
        streams["test"] = [_avalanche(SampleView(d.test_x, d.test_y, None, d.mean, d.std))]
        return with_task_labels(benchmark_from_datasets(**streams))

    def dataset(self, idx):
        """The Avalanche dataset of training-pool samples ``idx``, in that order: normalised
        images, labels, task label 0, and the data attribute ``pool_index`` (``idx`` itself,
        not part of a sample). Avalanche keeps data attributes through its subsets and
        concatenations, so a replay buffer's ``pool_index`` says which samples it holds, and
        ``dataset(buffer.pool_index)`` rebuilds it from a checkpoint."""
        from avalanche.benchmarks.utils import DataAttribute

        from alma_bench.run.data import SampleView

        d = self.data
        idx = np.asarray(idx, dtype=np.int64)
        ds = _avalanche(SampleView(d.train_x, d.train_y, idx, d.mean, d.std))
        return ds.update_data_attribute("pool_index", DataAttribute(idx.tolist(), "pool_index"))


def _avalanche(images: SampleView):
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset

    # Avalanche 0.6's documented way to give a dataset task labels (its public
    # as_taskaware_classification_dataset gives none, and LwF then fails)
    return _make_taskaware_classification_dataset(images, task_labels=0)


def build_stream(data: ImageData, split: AlmaSplit, seed: int, name: str = "") -> AlmaStream:
    """The ALMA stream of ``data`` under ``split`` with split seed ``seed``."""
    return AlmaStream(data, split_indices(len(data.train_y), split, seed), name=name)
