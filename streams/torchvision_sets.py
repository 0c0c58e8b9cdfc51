"""CIFAR-10 and CIFAR-100 through torchvision (downloaded where the machine can)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.data import ImageData
from alma_bench.streams._common import cache_dir, channel_stats, check_data_root

#: torchvision's folder of each set under its root, and where it downloads from
_FILES = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}
_HOST = ("www.cs.toronto.edu", 443)


def _check(cls_name: str, data_root: str | None, download: bool) -> str:
    """Where the set would come from, checked without loading it (``run --dry-run``): its
    files under the root, else whether the download host answers (3 s)."""
    import socket

    root = Path(data_root).expanduser() if data_root else cache_dir() / "data"
    if (root / _FILES[cls_name]).is_dir():
        return f"found in {root}"
    if not download:
        return f"NOT reachable: {root / _FILES[cls_name]} is missing and download is off"
    try:
        socket.create_connection(_HOST, timeout=3).close()
    except OSError as e:
        return (f"NOT reachable: not in {root}, and the download host {_HOST[0]} does not "
                f"answer ({type(e).__name__}); pass stream.data_root=<dir with the torchvision "
                "files> or use stream.name=imagefolder")
    return f"not in {root}; the run downloads it from {_HOST[0]} (reachable)"


def _load(cls_name: str, data_root: str | None, download: bool) -> ImageData:
    import torchvision

    root = Path(data_root).expanduser() if data_root else cache_dir() / "data"
    if data_root:
        check_data_root(root)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except Exception as e:  # no network, or a partial download: say what to do instead
        raise UserError(
            f"could not load {cls_name} from {root} ({type(e).__name__}: {e}); pass "
            "stream.data_root=<dir with the torchvision files>, or use stream.name=imagefolder "
            "with a folder of train/<class>/ and test/<class>/ images"
        ) from None

    def tensors(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.long)

    tx, ty = tensors(tr)
    vx, vy = tensors(te)
    mean, std = channel_stats(tx)
    return ImageData(tx, ty, vx, vy, mean, std, list(tr.classes))


@STREAMS.register("cifar10")
@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 via torchvision (50k train / 10k test, 32x32 RGB, 10 classes)."""

    data_root: str | None = None
    download: bool = True

    def load(self) -> ImageData:
        return _load("CIFAR10", self.data_root, self.download)

    def check(self) -> str:
        return _check("CIFAR10", self.data_root, self.download)


@STREAMS.register("cifar100")
@dataclass(frozen=True)
class Cifar100:
    """CIFAR-100 via torchvision (50k train / 10k test, 32x32 RGB, 100 classes)."""

    data_root: str | None = None
    download: bool = True

    def load(self) -> ImageData:
        return _load("CIFAR100", self.data_root, self.download)

    def check(self) -> str:
        return _check("CIFAR100", self.data_root, self.download)
