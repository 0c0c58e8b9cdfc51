"""The device a run trains on (``--device``)."""

from __future__ import annotations

import torch

from alma_bench.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'. Valid: auto, cpu, cuda, cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available. Valid: auto, cpu")
    return d
