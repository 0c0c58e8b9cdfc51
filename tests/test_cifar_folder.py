"""Real CIFAR-10 JPEGs (../shared/data/cifar10), when present: a small copy through a run."""

from __future__ import annotations

import shutil

import pytest
from conftest import CIFAR, write_suite

from alma_bench.cli import main
from alma_bench.registry import STREAMS
from alma_bench.store.files import read_rows

pytestmark = [pytest.mark.cifar,
              pytest.mark.skipif(not CIFAR.is_dir(), reason="no ../shared/data/cifar10 here")]


def test_imagefolder_on_real_cifar_images(tmp_path):
    root = tmp_path / "cifar-small"
    for split, n in (("train", 30), ("test", 10)):
        for cls in sorted(p.name for p in (CIFAR / split).iterdir()):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((CIFAR / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    data = STREAMS.create("imagefolder", data_root=str(root)).load()
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.train_y) == 300 and len(data.test_y) == 100
    assert 0.3 < data.mean[0] < 0.7  # natural images, not noise or zeros
    suite = write_suite(tmp_path / "s.yaml", stream={
        "name": "imagefolder", "data_root": str(root), "megabatches": 2, "subset": 200})
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    (run,) = (tmp_path / "o" / "tiny").iterdir()
    rows = read_rows(run / "metrics.jsonl")
    assert len(rows) == 2 and rows[-1]["train_size"] == 180
