"""Image data as uint8 tensors, batched augmentation, and the fast batch loader.

Every stream source hands over ``ImageData``: uint8 images (N, C, H, W) and int64 labels, kept
in memory once. Normalisation and augmentation happen per batch on the training device, so
the hot loop has no per-sample Python work (what a torchvision DataLoader would add).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


class SampleView(torch.utils.data.Dataset):
    """Per-sample view (normalised float) of ``x[idx]`` (all of ``x`` when ``idx`` is None)
    for Avalanche's own data loaders: what ``AlmaStream.benchmark`` wraps."""

    def __init__(self, x, y, idx, mean, std):
        self.x, self.y = x, y
        self.idx = torch.arange(len(y)) if idx is None else torch.from_numpy(np.asarray(idx))
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.targets = y[self.idx]

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        j = int(self.idx[i])
        return (self.x[j].float() / 255.0 - self.mean) / self.std, int(self.y[j])


class Normalizer:
    """uint8 batch -> float batch, normalised, on a device, optionally channels-last."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.device = torch.device(device)
        c = len(mean)
        self.scale = (1.0 / (255.0 * torch.tensor(std))).view(1, c, 1, 1).to(self.device)
        self.shift = (torch.tensor(mean) / torch.tensor(std)).view(1, c, 1, 1).to(self.device)
        self.channels_last = channels_last

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            # reorder the uint8 batch (a quarter of the bytes of the float one); float() and
            # addcmul keep the layout, so the result is channels-last with no float copy
            x = x.contiguous(memory_format=torch.channels_last)
        # (x/255 - mean)/std as one fused multiply-add
        return torch.addcmul(-self.shift, x.float(), self.scale)


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, for a whole uint8 batch at once.

    Two copies instead of a Python loop over images: ``index_select`` picks each sample's h
    rows (whole padded rows, so it copies runs of bytes), then one ``gather`` along the width
    picks each sample's columns, reversed where the sample is flipped. Measured 5x faster than
    one 4-d advanced-indexing gather (which costs per element), with identical output and the
    same random draws (row offsets, column offsets, flips) from ``generator``.
    """
    b, c, h, w = x.shape
    if padding <= 0:
        flip = torch.rand(b, generator=generator) < 0.5
        return torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    hp, wp = h + 2 * padding, w + 2 * padding
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding)).reshape(b * c * hp, wp)
    rows = torch.arange(b * c).view(b, c, 1) * hp + oy.view(b, 1, 1) + torch.arange(h)
    xr = xp.index_select(0, rows.view(-1)).view(b, c, h, wp)
    j = torch.arange(w)
    cols = ox.view(b, 1) + torch.where(flip.view(b, 1), w - 1 - j, j)
    return xr.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch`` of a ``BatchLoader`` seeded ``seed`` (its order first)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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
        g = epoch_generator(self.seed, self.epoch)
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
