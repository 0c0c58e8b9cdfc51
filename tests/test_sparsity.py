"""Invariant tests for the mask set, pruners and density schedules."""

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from alma_bench.errors import UserError
from alma_bench.registry import PRUNERS, SCHEDULES
from alma_bench.sparsity import MaskSet, app_densities, check_density, erk_densities, prune

DENSITIES = [0.01, 0.05, 0.1, 0.2, 1 / 3, 0.366, 0.5, 0.8, 0.8005, 0.99, 1.0]
SCOPES = [("global", "uniform"), ("layer", "uniform"), ("layer", "erk")]


def net(seed: int = 0) -> nn.Module:
    """3 conv + BN layers and a linear head on 3x8x8 inputs (about 4k weights)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        )  # fmt: skip


def batches(n: int = 2, seed: int = 1, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]  # fmt: skip


def train(model, ms, opt, steps, data, masked=True):
    """SGD steps as the training plugins do them: mask_grads after backward, apply after step."""
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if masked:
            ms.mask_grads()
        opt.step()
        if masked:
            ms.apply()


def subset(new, old):
    return all(not bool((new[n] & ~old[n]).any()) for n in old)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("scope,dist", SCOPES)
def test_prune_to_density_is_exact(density, scope, dist):
    ms = MaskSet(net())
    prune(ms.model, ms, PRUNERS.create("magnitude", scope=scope, distribution=dist), density)
    n = ms.numel()
    if scope == "global":
        assert ms.kept() == round(density * n) and ms.density() == round(density * n) / n
    else:
        targets = ms.layer_densities(density, dist)
        for name, m in ms.masks.items():
            assert int(m.sum()) == round(targets[name] * m.numel())
        assert abs(ms.kept() - density * n) <= len(ms.names) / 2 + 1e-6
    assert all(bool((w[~ms.masks[n]] == 0).all()) for n, w in ms.weights.items())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ties_odd_scores_and_seeds_are_exact_and_deterministic(scope):
    runs = []
    for _ in range(2):
        ms, rand = MaskSet(net()), PRUNERS.create("random", scope=scope)
        prune(ms.model, ms, rand, 0.5, generator=(gen := torch.Generator().manual_seed(9)))
        old = copy.deepcopy(ms.masks)
        ms.prune_to(0.37, {n: torch.ones_like(w) for n, w in ms.weights.items()}, scope=scope)
        for group in [ms.names] if scope == "global" else [[n] for n in ms.names]:
            a, m = (torch.cat([masks[n].view(-1) for n in group]) for masks in (old, ms.masks))
            assert torch.equal(m, a & (a.cumsum(0) <= round(0.37 * a.numel())))  # lowest k alive
        # Scores favouring pruned weights (+inf there, -inf on survivors) must still nest.
        old = copy.deepcopy(ms.masks)
        adverse = {n: torch.where(m, float("-inf"), float("inf")) for n, m in old.items()}
        ms.prune_to(0.2, adverse, scope=scope)
        assert subset(ms.masks, old) and (scope == "layer" or ms.kept() == round(0.2 * ms.numel()))
        with pytest.raises(UserError, match="only shrinks"):
            ms.prune_to(0.6, adverse, scope=scope)
        prune(ms.model, ms, rand, 0.1, generator=gen)
        runs.append(copy.deepcopy(ms.masks))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in ms.names)


@pytest.mark.parametrize("name", ["magnitude", "random", "snip"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_successive_prunes_nest_along_the_app_schedule(name, scope):
    ds = app_densities(8, tau=4.5)
    assert ds == pytest.approx([0.800, 0.716, 0.640, 0.572, 0.512, 0.458, 0.410, 0.366], abs=1e-3)
    geo = SCHEDULES.create("geometric")
    assert [geo.density(t / 7) for t in range(8)] == pytest.approx(ds, abs=1e-12)
    assert app_densities(1) == [0.8]
    ms, data, gen = MaskSet(model := net()), batches(), torch.Generator().manual_seed(3)
    opt, pruner = torch.optim.SGD(model.parameters(), 0.05, 0.9), PRUNERS.create(name, scope=scope)
    for d in [*ds, 0.1]:
        old = copy.deepcopy(ms.masks)
        prune(model, ms, pruner, d, batches=data, generator=gen, optimizer=opt)
        assert subset(ms.masks, old)
        assert scope == "layer" or ms.density() == round(d * ms.numel()) / ms.numel()
        train(model, ms, opt, 2, data)  # weights move between prunes, as in a real stream


def test_masked_weights_and_grads_stay_zero_under_sgd_momentum_and_weight_decay():
    ms = MaskSet(model := net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train(model, ms, opt, 5, batches(3), masked=False)  # builds momentum everywhere
    prune(model, ms, PRUNERS.create("magnitude"), 0.3)  # no optimizer: stale momentum remains
    buf, mask = opt.state[ms.weights["3"]]["momentum_buffer"], ms.masks["3"]
    assert bool((buf[~mask] != 0).any())  # so without apply() masked weights would move
    train(model, ms, opt, 20, batches(3))
    for n, w in ms.weights.items():
        assert bool((w[~ms.masks[n]] == 0).all()) and bool((w.grad[~ms.masks[n]] == 0).all())


@pytest.mark.parametrize("kind", ["sgd", "adam", "amsgrad"])
def test_update_zeroes_optimizer_state_only_where_masks_change(kind):
    ms = MaskSet(model := net())
    sgd, amsg, params = kind == "sgd", kind == "amsgrad", model.parameters()
    opt = torch.optim.SGD(params, 0.1, 0.9) if sgd else torch.optim.Adam(params, 1e-3, amsgrad=amsg)
    data, gen = batches(), torch.Generator().manual_seed(0)
    train(model, ms, opt, 3, data)
    prune(model, ms, PRUNERS.create("magnitude"), 0.5, optimizer=opt)
    train(model, ms, opt, 3, data)  # state is nonzero again at kept positions
    old = copy.deepcopy(ms.masks)  # drop ~30% of the kept weights, regrow 5 pruned per layer
    dropped = {n: m & (torch.rand(m.shape, generator=gen) > 0.3) for n, m in old.items()}
    new = {n: dropped[n] | (ms.regrow_random(n, 5, gen) & ~old[n]) for n in old}
    for n, w in ms.weights.items():  # a stale value at a pruned position must not survive
        w.data[new[n] & ~old[n]] = 1.0
    before = {n: {k: v.clone() for k, v in opt.state[w].items()} for n, w in ms.weights.items()}
    ms.update(new, optimizer=opt)
    keys = ["momentum_buffer"] if sgd else ["exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * amsg
    for n, w in ms.weights.items():
        changed = old[n] ^ new[n]
        assert bool(changed.any()) and torch.equal(ms.masks[n], new[n])
        for k in keys:
            state = opt.state[w][k]
            assert bool((state[changed] == 0).all()), (n, k)
            assert torch.equal(state[~changed], before[n][k][~changed]), (n, k)
            assert bool((before[n][k][changed & old[n]] != 0).any())  # the test can fail
        assert bool((w[new[n] & ~old[n]] == 0).all())  # regrown weights start at zero


def test_snip_matches_definition_and_leaves_the_model_untouched():
    ms = MaskSet(model := net())
    train(model, ms, torch.optim.SGD(model.parameters(), lr=0.1), 2, batches())
    prune(model, ms, PRUNERS.create("magnitude"), 0.5)
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, 0.5 + i)
    model.eval()
    state, grads = copy.deepcopy(model.state_dict()), [p.grad.clone() for p in model.parameters()]
    scores = PRUNERS.create("snip").scores(model, ms, data := batches(3, seed=7))
    assert not model.training and all(v.equal(state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    ref = copy.deepcopy(model).train()  # train-mode BN, gradients summed before the abs
    ref.zero_grad()
    for x, y in data:
        nn.functional.cross_entropy(ref(x), y).backward()
    for n in ms.names:
        w = ref.get_submodule(n).weight
        assert torch.allclose(scores[n], (w.grad * w).abs(), rtol=1e-5, atol=0)
        assert bool((scores[n][~ms.masks[n]] == 0).all()) and bool((scores[n] > 0).any())


def test_erk_densities():
    shapes = {"c1": (16, 3, 3, 3), "c2": (32, 16, 3, 3), "c3": (64, 32, 3, 3), "fc": (10, 64)}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    for density in [0.05, 0.1, 0.3, 0.5, 0.9]:
        d = erk_densities(shapes, density)
        assert sum(d[n] * numel[n] for n in shapes) == pytest.approx(density * sum(numel.values()))
        assert all(0 < v <= 1 for v in d.values())
        assert d["c1"] >= d["c2"] > d["c3"] or d["c2"] == 1.0  # larger layers are sparser
    assert erk_densities(shapes, 0.9)["c1"] == 1.0  # made dense, scale re-solved
    assert erk_densities(shapes, 1.0) == {n: 1.0 for n in shapes}


@pytest.mark.parametrize("name", ["linear", "quadratic", "cubic", "cosine", "constant"])
def test_schedules_endpoints_and_monotone(name):
    s, initial, final = SCHEDULES.create(name), 1.0, 0.1
    assert s.density(1.0, initial, final) == pytest.approx(final)
    assert s.density(0.0, initial, final) == pytest.approx(final if name == "constant" else initial)
    clamped = [s.density(p, initial, final) for p in (-0.5, 0.0, 1.0, 1.5)]
    assert clamped[0] == clamped[1] and clamped[2] == clamped[3]
    values = [s.density(i / 100, initial, final) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert all(final - 1e-12 <= v <= initial + 1e-12 for v in values)
    half = {"linear": 0.5, "quadratic": 0.25, "cubic": 0.125, "cosine": 0.5, "constant": 0.0}
    assert s.density(0.5, 1.0, 0.0) == pytest.approx(half[name])


def test_state_dict_carries_masks_and_dense_layers_stay_dense():
    ms = MaskSet(model := net(), prune_first=False, prune_last=False)
    assert ms.dense_layers == ["0", "11"] and ms.names == ["3", "6"]
    assert MaskSet(net()).dense_layers == []
    first = model[0].weight.detach().clone()
    prune(model, ms, PRUNERS.create("magnitude", scope="layer", distribution="erk"), 0.3)
    assert torch.equal(model[0].weight, first)
    assert all("weight_mask" not in dict(model[i].named_buffers()) for i in (0, 11))
    assert {f"{n}.weight_mask" for n in ms.names} <= set(sd := model.state_dict())
    ms2 = MaskSet(fresh := net(seed=5), prune_first=False, prune_last=False)
    fresh.load_state_dict(sd)
    assert ms2.density() == ms.density() and ms2.layer_density() == ms.layer_density()
    assert all(torch.equal(ms2.masks[n], ms.masks[n]) for n in ms.names)
    snapshot = {k: v.clone() for k, v in sd.items()}  # a best-epoch snapshot restored later
    prune(model, ms, PRUNERS.create("magnitude"), 0.1)
    model.load_state_dict(snapshot)
    assert ms.density() == ms2.density()
    assert MaskSet(model, prune_first=False, prune_last=False).density() == ms.density()


def test_prune_linear_false_keeps_every_linear_dense():
    # APP prunes every conv and no Linear layer, also in models with more than one Linear
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    ms = MaskSet(model, prune_last=False, prune_linear=False)
    assert ms.names == ["0"] and ms.dense_layers == ["2", "4"]
    prune(model, ms, PRUNERS.create("magnitude"), 0.25)
    assert ms.density() == pytest.approx(0.25, abs=1 / model[0].weight.numel())
    assert bool((model[2].weight != 0).all()) and bool((model[4].weight != 0).all())
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UserError, match="nothing left to prune.*prune_linear=true"):
        MaskSet(mlp, prune_linear=False)


def test_registry_and_bad_parameters():
    ms = MaskSet(net())
    for bad in [0, -0.1, 1.5, float("nan"), "x"]:
        with pytest.raises(UserError, match="density must be in"):
            check_density(bad)
        with pytest.raises(UserError, match="density must be in"):
            prune(ms.model, ms, PRUNERS.create("magnitude"), bad)
    assert {"magnitude", "random", "snip"} <= set(PRUNERS.names())
    assert set("constant linear quadratic cubic cosine geometric".split()) <= {*SCHEDULES.names()}
    for params in [{"scope": "row"}, {"distribution": "erk"}, {"distribution": "normal"}]:
        with pytest.raises(UserError):
            PRUNERS.create("magnitude", **params)
    with pytest.raises(UserError):
        SCHEDULES.create("geometric", base=1.5)
    with pytest.raises(ValueError, match="Generator"):
        PRUNERS.create("random").scores(net(), MaskSet(net()), None)


def test_regrow_random_is_pure_and_exact():
    ms = MaskSet(net())
    prune(ms.model, ms, PRUNERS.create("magnitude"), 0.3)
    name, mask = "3", ms.masks["3"].clone()
    exclude = torch.arange(mask.numel()).view(mask.shape) < mask.numel() // 2
    a, b = (ms.regrow_random(name, 40, torch.Generator().manual_seed(1), exclude) for _ in "ab")
    assert torch.equal(a, b) and torch.equal(ms.masks[name], mask)  # deterministic, no side effect
    grown = a & ~mask
    assert int(grown.sum()) == 40 and not bool((grown & exclude).any()) and bool(a[mask].all())
    with pytest.raises(ValueError):
        ms.regrow_random(name, mask.numel(), None)
