"""A root with ``train/<class>/`` and ``test/<class>/`` image folders, decoded once and cached.

The first start decodes every file (threads; torchvision's decoder releases the GIL) and stores
the uint8 tensors in the cache, keyed by the root's path and the names, sizes and mtimes of
its files, so a second start only stats the files and loads one tensor file.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.data import ImageData
from alma_bench.streams._common import cache_dir, channel_stats, check_data_root

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def _listing(split_dir: Path, classes: list[str], every_class: bool) -> list[tuple[str, int]]:
    """(path, class index) of the images of each class folder; ``every_class``: a class
    folder without images is an error (in train/ it would add an output no image teaches)."""
    files = []
    for ci, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            continue
        found = [(e.path, ci) for e in sorted(os.scandir(d), key=lambda e: e.name)
                 if Path(e.name).suffix.lower() in EXTENSIONS and e.is_file()]
        if every_class and not found:
            raise UserError(f"class folder {d} holds no images ({', '.join(sorted(EXTENSIONS))})"
                            "; remove it or add images")
        files += found
    if not files:
        raise UserError(f"{split_dir} holds no images in its class folders")
    return files


def _classes(root: Path) -> list[str]:
    """The class folders of train/; one line when test/ has a class train/ lacks (it would
    be dropped without a word)."""
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if not classes:
        raise UserError(f"{root / 'train'} holds no class folders")
    extra = sorted(e.name for e in os.scandir(root / "test")
                   if e.is_dir() and e.name not in classes)
    if extra:
        raise UserError(f"{root / 'test'} has class folder(s) {', '.join(extra)} that "
                        f"{root / 'train'} lacks; every test class must be trained")
    return classes


def _key(root: Path, files: list[tuple[str, int]]) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for path, ci in files:
        st = os.stat(path)
        h.update(f"{path}|{ci}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode(files: list[tuple[str, int]], threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image, read_file

    def one(path):
        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except Exception as e:  # the decoder's errors name no file
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(f"cannot read image {path} (empty, truncated or not an image: "
                            f"{why}); remove or replace it") from None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        images = list(pool.map(one, [p for p, _ in files], chunksize=256))
    first = tuple(images[0].shape)
    for (path, _), im in zip(files, images):
        if tuple(im.shape) != first:
            raise UserError(f"image {path} is {tuple(im.shape)} (C, H, W) but {files[0][0]} is "
                            f"{first}; resize them to one size first")
    return torch.stack(images), torch.tensor([c for _, c in files], dtype=torch.long)


@STREAMS.register("imagefolder")
@dataclass(frozen=True)
class ImageFolder:
    """Images in class folders under data_root/train and data_root/test (e.g. CIFAR-10 JPEGs)."""

    data_root: str = ""
    threads: int = 4

    def check(self) -> str:
        """Whether the folders are there (``run --dry-run``), without decoding an image."""
        root = Path(self.data_root).expanduser()
        missing = [d for d in ("train", "test") if not (root / d).is_dir()]
        if not self.data_root or missing:
            return f"NOT reachable: {root} lacks {' and '.join(missing) or 'a data_root'}/"
        return f"found in {root}"

    def load(self) -> ImageData:
        if not self.data_root:
            raise UserError("stream 'imagefolder' needs stream.data_root=<dir with train/ test/>")
        root = Path(self.data_root).expanduser()
        check_data_root(root)
        for split in ("train", "test"):
            if not (root / split).is_dir():
                raise UserError(f"data root {root} has no '{split}/' folder of class folders")
        classes = _classes(root)
        train_files = _listing(root / "train", classes, every_class=True)
        test_files = _listing(root / "test", classes, every_class=False)
        key = _key(root, train_files + test_files)
        path = cache_dir() / "imagefolder" / f"{key}.pt"
        if path.exists():
            blob = torch.load(path, weights_only=True)
        else:
            tx, ty = _decode(train_files, self.threads)
            vx, vy = _decode(test_files, self.threads)
            mean, std = channel_stats(tx)
            blob = {"tx": tx, "ty": ty, "vx": vx, "vy": vy, "mean": mean, "std": std}
            from alma_bench.store.files import ensure_dir, save_checkpoint

            ensure_dir(path.parent)
            save_checkpoint(path, blob)  # atomic: a concurrent or killed decode leaves no half file
        return ImageData(blob["tx"], blob["ty"], blob["vx"], blob["vy"], tuple(blob["mean"]),
                         tuple(blob["std"]), classes)
