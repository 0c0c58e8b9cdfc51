"""Helpers shared by the stream sources."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from alma_bench.errors import UserError


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


def check_data_root(root: Path) -> None:
    """A one-line UserError unless ``root`` is a folder that can be read."""
    if not root.exists():
        raise UserError(f"data root does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"data root is a file, not a folder: {root}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"data root cannot be read (permission denied): {root}")


def check_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, a data set larger than this machine's memory (a suite with a
    huge size would otherwise be killed by the kernel's OOM killer, exit 137, no message)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > total:
        raise UserError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than this machine's "
                        f"{total / 2**30:.1f} GiB of memory; make it smaller")
