"""The registry: decorator, duplicate names, validated parameters, entry points."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Literal

import pytest

from alma_bench.errors import UserError
from alma_bench.registry import MODELS, STRATEGIES, STREAMS, Registry


def make_registry():
    reg = Registry("widget")

    @reg.register("alpha")
    @dataclass(frozen=True)
    class Alpha:
        """First widget."""

        density: float = 0.5
        steps: int = 10
        mode: Literal["a", "b"] = "a"
        name: str | None = None

    return reg, Alpha


def test_create_validates_and_coerces():
    reg, alpha = make_registry()
    obj = reg.create("alpha", density=1, steps=3, mode="b")
    assert obj == alpha(density=1.0, steps=3, mode="b")
    assert isinstance(obj.density, float)
    assert reg.names() == ["alpha"]
    assert reg.get("alpha").description == "First widget."
    assert reg.get("alpha").params() == {"density": 0.5, "steps": 10, "mode": "a", "name": None}


def test_duplicate_name_is_an_error():
    reg, _ = make_registry()
    with pytest.raises(ValueError, match="duplicate widget name 'alpha'"):
        @reg.register("alpha")
        class Other:
            pass


@pytest.mark.parametrize("params, message", [
    ({"densty": 0.3}, r"unknown parameter\(s\) densty for widget 'alpha'\. Valid: density, mode"),
    ({"steps": "ten"}, "parameter 'steps' must be an integer"),
    ({"steps": 1.5}, "parameter 'steps' must be an integer"),
    ({"density": "x"}, "parameter 'density' must be a number"),
    ({"mode": "c"}, "parameter 'mode' must be one of a, b"),
])
def test_bad_parameters_name_the_valid_ones(params, message):
    reg, _ = make_registry()
    with pytest.raises(UserError, match=message):
        reg.create("alpha", **params)


def test_unknown_name_suggests_closest():
    reg, _ = make_registry()
    with pytest.raises(UserError, match="unknown widget 'alpah'. Did you mean 'alpha'"):
        reg.create("alpah")


def test_builtins_register_through_entry_points():
    groups = {g: [ep.value for ep in importlib.metadata.entry_points(group=g)]
              for g in ("alma_bench.strategies", "alma_bench.streams", "alma_bench.models")}
    assert "alma_bench.strategies" in groups["alma_bench.strategies"]
    assert "alma_bench.streams" in groups["alma_bench.streams"]
    assert {"dense", "scratch"} <= set(STRATEGIES.names())
    assert {"digits", "synthetic", "cifar10", "cifar100", "imagefolder"} <= set(STREAMS.names())
    assert {"mlp", "small-cnn", "simple-cnn", "resnet20", "resnet56", "resnet18", "resnet50",
            "wrn-28-2"} <= set(MODELS.names())


@pytest.mark.parametrize("name", ["mlp", "small-cnn", "simple-cnn", "resnet20", "resnet18",
                                  "wrn-28-2"])
def test_models_take_shape_from_the_stream(name):
    import torch

    for shape, classes in [((1, 8, 8), 10), ((3, 32, 32), 7)]:
        model = MODELS.create(name).build(shape, classes)
        assert model(torch.zeros(2, *shape)).shape == (2, classes)


def test_resnet_sizes_match_he_et_al():
    n20 = sum(p.numel() for p in MODELS.create("resnet20").build((3, 32, 32), 10).parameters())
    n56 = sum(p.numel() for p in MODELS.create("resnet56").build((3, 32, 32), 10).parameters())
    assert 0.26e6 < n20 < 0.28e6 and 0.84e6 < n56 < 0.86e6
