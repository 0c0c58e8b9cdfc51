"""Seeded synthetic images of any size and shape, for tests and benchmarks of the harness."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alma_bench.registry import STREAMS
from alma_bench.run.data import ImageData
from alma_bench.streams._common import channel_stats, check_memory


@STREAMS.register("synthetic")
@dataclass(frozen=True)
class Synthetic:
    """Class prototypes plus seeded noise: learnable, any shape, generated in milliseconds."""

    n_train: int = 512
    n_test: int = 256
    classes: int = 4
    channels: int = 3
    size: int = 8
    noise: float = 60.0  # std of the pixel noise, in 0..255 units
    seed: int = 0

    def __post_init__(self):
        for k in ("n_train", "n_test", "classes", "channels", "size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")

    def load(self) -> ImageData:
        # float32 noise, the sum and the uint8 copy, for train and test: checked up front
        n = (self.n_train + self.n_test) * self.channels * self.size**2
        check_memory(n * 9, f"synthetic stream of {self.n_train}+{self.n_test} images of "
                            f"{self.channels}x{self.size}x{self.size}")
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.channels, self.size, self.size)
        protos = torch.rand((self.classes, *shape), generator=g) * 255

        def sample(n):
            y = torch.randint(0, self.classes, (n,), generator=g)
            x = protos[y] + self.noise * torch.randn((n, *shape), generator=g)
            return x.round().clamp(0, 255).to(torch.uint8), y

        tx, ty = sample(self.n_train)
        vx, vy = sample(self.n_test)
        mean, std = channel_stats(tx)
        return ImageData(tx, ty, vx, vy, mean, std, [f"c{i}" for i in range(self.classes)])
