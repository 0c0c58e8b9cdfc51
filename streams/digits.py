"""scikit-learn's bundled 8x8 digits: the embedded default stream, no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alma_bench.registry import STREAMS
from alma_bench.run.data import ImageData
from alma_bench.streams._common import channel_stats


@STREAMS.register("digits")
@dataclass(frozen=True)
class Digits:
    """sklearn 8x8 handwritten digits (1,797 images, 10 classes), fixed 80/20 train/test split."""

    test_fraction: float = 0.2

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def load(self) -> ImageData:
        from sklearn.datasets import load_digits

        d = load_digits()
        # pixel values are 0..16; scale to the 0..255 range every source uses
        x = torch.from_numpy(np.clip(d.images * 16, 0, 255).astype(np.uint8)).unsqueeze(1)
        y = torch.from_numpy(d.target.astype(np.int64))
        # a fixed permutation (not the run seed) so every run is scored on the same test set
        perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
        n_test = int(round(self.test_fraction * len(y)))
        te, tr = perm[:n_test], perm[n_test:]
        mean, std = channel_stats(x[tr])
        return ImageData(x[tr], y[tr], x[te], y[te], mean, std, [str(i) for i in range(10)])
