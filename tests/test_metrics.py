"""CER, summaries and FLOPs (ALGORITHMS.md section 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alma_bench.run.metrics import cer, effective_flops, layer_density, layer_flops, summarize


def row(acc, errors, gap=0.1):
    return {"test_acc": acc, "test_errors": errors, "gen_gap": gap, "density": 0.5,
            "nonzero_params": 10, "flops_dense": 100, "flops_effective": 50, "train_flops": 7,
            "wall_time": 1.0, "samples_seen": 3}


def test_cer_hand_computed():
    # error rates 0.5, 0.25, 0.1 -> CER 0.85; counts 50 + 25 + 10 = 85 on a 100-image test set
    rows = [row(0.5, 50, 0.2), row(0.75, 25, 0.1), row(0.9, 10, 0.0)]
    s = summarize(rows)
    assert s["cer"] == pytest.approx(0.85)
    assert s["cer_count"] == 85
    assert s["final_test_acc"] == 0.9
    assert s["mean_gen_gap"] == pytest.approx(0.1) and s["final_gen_gap"] == 0.0
    assert s["wall_time"] == 3.0
    assert cer([1.0, 1.0]) == 0.0


def test_flops_per_layer_and_effective():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 5))
    total, per = layer_flops(model, (1, 4, 4))
    conv = 2 * (1 * 9) * 2 * 16  # 2 x MACs: in*k*k per output, 2 channels, 16 positions
    lin = 2 * 32 * 5
    assert per == {"0": conv, "2": lin}
    assert total == conv + lin
    eff = effective_flops(total, per, {"0": 0.5, "2": 1.0})
    assert eff == pytest.approx(total - conv / 2)


def test_layer_density_prefers_masks():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin)
    with torch.no_grad():
        lin.weight[0].zero_()
    assert layer_density(model) == {"0": 0.75}
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:2] = False
    lin.register_buffer("weight_mask", mask)
    assert layer_density(model) == {"0": 0.5}  # a kept weight at exactly 0 still counts
