"""StepTally: the chunked on-device sums equal the per-step ones they replace."""

import torch

from alma_bench.run.tally import StepTally, hits, non_finite


def test_chunked_hits_equal_per_step_count_across_chunk_boundaries():
    g = torch.Generator().manual_seed(0)
    steps = [(torch.randn(n, 7, generator=g), torch.randint(0, 7, (n,), generator=g))
             for n in (32, 32, 5, 32, 17, 1, 32, 32, 9, 3)]
    direct = sum(int((o.argmax(1) == y).sum()) for o, y in steps)
    for every in (1, 3, 4, 64):
        tally = StepTally(hits, every=every)
        for s in steps:
            tally.add(s)
        assert len(tally.buffer) < every  # memory held stays bounded
        assert int(tally.total()) == direct
        assert tally.buffer == []


def test_non_finite_counts_every_bad_step_and_nothing_added_is_none():
    assert StepTally(non_finite).total() is None
    losses = [torch.tensor([1.0]), torch.tensor(float("nan")), torch.tensor([2.0]),
              torch.tensor(float("inf")), torch.tensor(3.0)]
    tally = StepTally(non_finite, every=2)
    for v in losses:
        tally.add(v)
    assert int(tally.total()) == 2
    # finite losses whose plain sum overflows are not reported as a divergence
    big = StepTally(non_finite, every=2)
    for _ in range(3):
        big.add(torch.tensor(3e38))
    assert int(big.total()) == 0
