"""Helpers shared by the stream sources."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def cache_dir() -> Path:
    """Where decoded data sets and downloads go (``ALMA_BENCH_CACHE`` overrides)."""
    root = os.environ.get("ALMA_BENCH_CACHE") or Path.home() / ".cache" / "alma-bench"
    return Path(root)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (computed in chunks)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), 4096):
        chunk = x[i : i + 4096].double() / 255.0
        s += chunk.sum(dim=(0, 2, 3))
        s2 += (chunk**2).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-3).tolist())
