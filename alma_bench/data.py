"""Image data as uint8 tensors, batched augmentation, and the fast batch loader.

Every stream source hands over ``ImageData``: uint8 images (N, C, H, W) and int64 labels, kept
in memory once. Normalisation and augmentation happen per batch on the training device, so
the hot loop has no per-sample Python work (what a torchvision DataLoader would add).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageData:
    """A classification data set as tensors: what every stream source returns."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    classes: list[str]

    def __post_init__(self):
        for name in ("train_x", "test_x"):
            t = getattr(self, name)
            if t.dtype != torch.uint8 or t.dim() != 4:
                raise ValueError(
                    f"{name} must be uint8 (N, C, H, W), got {t.dtype} {tuple(t.shape)}")
        self.train_y = self.train_y.long()
        self.test_y = self.test_y.long()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Normalizer:
    """uint8 batch -> float batch, normalised, on a device, optionally channels-last."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.device = torch.device(device)
        c = len(mean)
        self.scale = (1.0 / (255.0 * torch.tensor(std))).view(1, c, 1, 1).to(self.device)
        self.shift = (torch.tensor(mean) / torch.tensor(std)).view(1, c, 1, 1).to(self.device)
        self.channels_last = channels_last

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.to(self.device, non_blocking=True).float()
        # (x/255 - mean)/std as one fused multiply-add
        x = torch.addcmul(-self.shift, x, self.scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, for a whole uint8 batch at once.

    One gather over the padded batch: per-sample offsets become index grids, so the cost is a
    single indexing op instead of a Python loop over images.
    """
    b, c, h, w = x.shape
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h)[None, :]).view(b, 1, h, 1)
        cols = (ox[:, None] + torch.arange(w)[None, :]).view(b, 1, 1, w)
        bi = torch.arange(b).view(b, 1, 1, 1)
        ci = torch.arange(c).view(1, c, 1, 1)
        x = xp[bi, ci, rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)


class BatchLoader:
    """Iterates shuffled ``[x, y, task]`` mini-batches of tensors, as Avalanche's loop expects.

    Each ``iter()`` is one epoch, with its own generator seeded from (seed, epoch), so the data
    order of epoch e of megabatch t is a pure function of the run seed: a resumed run sees the
    same batches as an uninterrupted one without saving any RNG state.
    """

    def __init__(self, x, y, batch_size, normalize: Normalizer, *, seed: int, shuffle=True,
                 augment: bool = False, padding: int = 4):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.normalize = normalize
        self.seed = seed
        self.shuffle = shuffle
        self.augment = augment
        self.padding = padding
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.y)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            xb = self.x[idx]
            if self.augment:
                xb = random_crop_flip(xb, self.padding, g)
            yb = self.y[idx].to(self.normalize.device, non_blocking=True)
            # task label 0: ALMA has one task; Avalanche's forward reads it from the batch
            yield [self.normalize(xb), yb, torch.zeros_like(yb)]
