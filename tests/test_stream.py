"""The ALMA stream split (ALGORITHMS.md section 1) and its Avalanche benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alma_bench.errors import UserError
from alma_bench.registry import STREAMS
from alma_bench.run.stream import AlmaSplit, build_stream, split_indices


@pytest.mark.parametrize("n, N", [(1000, 8), (1003, 7), (50, 1)])
def test_megabatches_equal_disjoint_and_union_grows(n, N):
    mbs = split_indices(n, AlmaSplit(megabatches=N, replay="all"), seed=3)
    parts = [np.concatenate([m.new, m.val if i == 0 else m.val[len(mbs[i - 1].val):]])
             for i, m in enumerate(mbs)]
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n  # array_split: equal parts
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == n  # disjoint and covering
    for t, m in enumerate(mbs):
        assert set(m.new).isdisjoint(m.val)
        assert set(m.train).isdisjoint(m.val)
        # union replay: the training set of t is the new data of megabatches 1..t
        expected = np.concatenate([mbs[k].new for k in range(t + 1)])
        assert np.array_equal(np.sort(m.train), np.sort(expected))
        assert abs(len(m.val) - round(0.1 * sum(sizes[: t + 1]))) <= t + 1  # 90/10 each
    # union sizes grow as 1, 2, ..., N megabatches
    ratios = [len(m.train) / len(mbs[0].train) for m in mbs]
    assert np.allclose(ratios, np.arange(1, N + 1), rtol=0.05)


def test_split_is_seeded():
    a = split_indices(500, AlmaSplit(megabatches=5), seed=1)
    b = split_indices(500, AlmaSplit(megabatches=5), seed=1)
    c = split_indices(500, AlmaSplit(megabatches=5), seed=2)
    assert all(np.array_equal(x.train, y.train) for x, y in zip(a, b))
    assert not np.array_equal(a[0].train, c[0].train)


def test_replay_none_fraction_buffer():
    none = split_indices(800, AlmaSplit(megabatches=4, replay="none"), 0)
    assert all(np.array_equal(m.train, m.new) for m in none)
    frac = split_indices(8000, AlmaSplit(megabatches=4, replay="fraction", replay_fraction=0.5), 0)
    for t in range(1, 4):
        old = len(frac[t].train) - len(frac[t].new)
        # each earlier sample survived each step with p = 0.5
        expected = sum(len(frac[k].new) * 0.5 ** (t - k) for k in range(t))
        assert abs(old - expected) < 0.1 * expected
        assert set(frac[t].train) - set(frac[t].new) <= set(frac[t - 1].train)
    buf = split_indices(800, AlmaSplit(megabatches=4, replay="buffer", buffer_size=50), 0)
    assert np.array_equal(buf[0].train, buf[0].new)
    for t in range(1, 4):
        assert len(buf[t].train) == len(buf[t].new) + 50


def test_subset_uses_first_k_of_permutation():
    full = split_indices(1000, AlmaSplit(megabatches=4), 0)
    sub = split_indices(1000, AlmaSplit(megabatches=4, subset=200), 0)
    assert sum(len(m.new) + 0 for m in sub) + len(sub[-1].val) == 200
    with pytest.raises(UserError, match="subset 2000 exceeds"):
        split_indices(1000, AlmaSplit(megabatches=4, subset=2000), 0)
    assert len(full[-1].train) > len(sub[-1].train)


@pytest.mark.parametrize("bad, message", [
    ({"megabatches": 0}, "megabatches must be >= 1"),
    ({"val_fraction": 1.0}, "val_fraction must be in"),
    ({"replay_fraction": 1.5}, "replay_fraction must be in"),
])
def test_bad_split_values(bad, message):
    with pytest.raises(ValueError, match=message):
        AlmaSplit(**bad)


def test_avalanche_benchmark_matches_tensors():
    data = STREAMS.create("synthetic", n_train=120, n_test=30).load()
    stream = build_stream(data, AlmaSplit(megabatches=3), seed=0)
    bench = stream.benchmark
    assert len(bench.train_stream) == 3 and len(bench.valid_stream) == 3
    for t, exp in enumerate(bench.train_stream):
        assert exp.current_experience == t
        x, y = stream.train_set(t)
        assert len(exp.dataset) == len(y)
        x0, y0 = exp.dataset[0][:2]
        mean = torch.tensor(data.mean).view(-1, 1, 1)
        std = torch.tensor(data.std).view(-1, 1, 1)
        assert torch.allclose(x0, (x[0].float() / 255 - mean) / std, atol=1e-5)
        assert int(y0) == int(y[0])
    assert len(bench.test_stream[0].dataset) == 30


def test_benchmark_has_task_labels_so_avalanches_lwf_trains_on_it():
    from avalanche.training import LwF

    from alma_bench.run.models import build_model

    data = STREAMS.create("synthetic", n_train=120, n_test=30, classes=3, size=8).load()
    stream = build_stream(data, AlmaSplit(megabatches=3), seed=0)
    bench = stream.benchmark
    for t, exp in enumerate(bench.train_stream):
        assert exp.task_label == 0 and exp.dataset.targets_task_labels.uniques == {0}
        x, y, task = exp.dataset[1]  # (x, y, 0): the samples and their order are unchanged
        assert task == 0 and int(y) == int(stream.train_set(t)[1][1])
        assert list(exp.dataset.pool_index) == stream.megabatches[t].train.tolist()
    assert bench.test_stream[0].dataset[0][2] == 0
    # a replay buffer is rebuilt from the pool indices it records
    again = stream.dataset(stream.megabatches[1].train[[4, 2]])
    assert torch.equal(again[0][0], bench.train_stream[1].dataset[4][0])
    model = build_model({"name": "small-cnn", "width": 4}, stream.input_shape, 3)
    lwf = LwF(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
              criterion=torch.nn.CrossEntropyLoss(), alpha=1.0, temperature=2.0,
              train_mb_size=32, train_epochs=1, evaluator=None)
    for exp in bench.train_stream[:2]:  # LwF reads targets_task_labels after each one
        lwf.train(exp)
    assert lwf.clock.train_exp_counter == 2


def test_digits_is_embedded():
    d = STREAMS.create("digits").load()
    assert d.train_x.dtype == torch.uint8 and d.input_shape == (1, 8, 8)
    assert len(d.train_y) + len(d.test_y) == 1797 and d.num_classes == 10


def test_synthetic_any_shape_and_seeded():
    a = STREAMS.create("synthetic", channels=2, size=5, classes=7, seed=4).load()
    b = STREAMS.create("synthetic", channels=2, size=5, classes=7, seed=4).load()
    assert a.input_shape == (2, 5, 5) and a.num_classes == 7
    assert torch.equal(a.train_x, b.train_x)


def test_imagefolder_decodes_and_caches(tmp_path):
    from torchvision.io import write_png

    root = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, 4, 4), generator=g, dtype=torch.uint8)
                write_png(img, str(root / split / c / f"{i}.png"))
    src = STREAMS.create("imagefolder", data_root=str(root))
    first = src.load()
    assert first.classes == ["cat", "dog"] and first.train_x.shape == (12, 3, 4, 4)
    from torchvision.io import read_image

    assert torch.equal(first.train_x[0], read_image(str(root / "train" / "cat" / "0.png")))
    second = src.load()  # from the cache
    assert torch.equal(first.train_x, second.train_x)
    with pytest.raises(UserError, match="data root does not exist"):
        STREAMS.create("imagefolder", data_root=str(tmp_path / "nope")).load()
