"""Models by name. Each builder is a frozen dataclass with ``build(input_shape, num_classes)``.

Input shape and class count come from the stream, so every model runs on digits (1x8x8) as
well as CIFAR (3x32x32): the convolutional ones end in global average pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from alma_bench.registry import MODELS

#: Widest layer a model parameter may ask for: wider is a typo that would exhaust memory.
MAX_WIDTH = 65_536


@MODELS.register("mlp")
@dataclass(frozen=True)
class MLP:
    """Multi-layer perceptron on flattened pixels (hidden widths configurable); PyTorch's
    default initialisation (alma-bench's own, no reference to follow)."""

    hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self):
        if not all(1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden widths must be in [1, {MAX_WIDTH}], got {list(self.hidden)}")

    def build(self, input_shape, num_classes) -> nn.Module:
        # named layers (fc1, fc2, ..., out), so per-layer densities read well in reports
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = int(torch.tensor(input_shape).prod())
        for i, h in enumerate(self.hidden, 1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU(inplace=True))]
            width = h
        layers.append(("out", nn.Linear(width, num_classes)))
        return nn.Sequential(OrderedDict(layers))


def build_model(config: dict, input_shape, num_classes: int) -> nn.Module:
    """The model ``{"name": ..., **params}`` with its own initialisation (drawn from torch's
    global RNG: seed it first)."""
    params = dict(config)
    return MODELS.create(params.pop("name"), **params).build(input_shape, num_classes)


def _conv_bn(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def _named(i: int, block: list[nn.Module]) -> list[tuple[str, nn.Module]]:
    return list(zip((f"conv{i}", f"bn{i}", f"relu{i}"), block))


@MODELS.register("small-cnn")
@dataclass(frozen=True)
class SmallCNN:
    """Three 3x3 conv-BN-ReLU blocks (16/32/64 channels, stride 2 after the first) + linear.

    alma-bench's own small network (no paper to follow): PyTorch's default initialisation."""

    width: int = 16

    def __post_init__(self):
        # width 0 builds a network with no weights, which trains to a constant guess
        if not 1 <= self.width <= MAX_WIDTH:
            raise ValueError(f"width must be in [1, {MAX_WIDTH}], got {self.width}")

    def build(self, input_shape, num_classes) -> nn.Module:
        w = self.width
        return nn.Sequential(OrderedDict([
            *_named(1, _conv_bn(input_shape[0], w)), *_named(2, _conv_bn(w, 2 * w, 2)),
            *_named(3, _conv_bn(2 * w, 4 * w, 2)),
            ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
            ("fc", nn.Linear(4 * w, num_classes)),
        ]))


@MODELS.register("simple-cnn")
@dataclass(frozen=True)
class SimpleCNN:
    """The 5-layer CNN of the sparsity-schedule paper: 3 conv (32/64/64) + 2 linear (256).

    ``bn``: a BatchNorm2d after each conv, before its ReLU (bn1..bn3, never pruned: masks are
    on Conv2d and Linear weights only). Off, the network is the paper's, module for module.
    Initialisation: PyTorch's defaults (Tessera et al. released no code that says otherwise)."""

    # added after runs were published; recorded (and in the run id) only when set
    later_params: ClassVar[dict] = {"bn": False}

    bn: bool = False

    def build(self, input_shape, num_classes) -> nn.Module:
        c = input_shape[0]
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731

        def block(i: int, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
            conv = [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1))]
            bn = [(f"bn{i}", nn.BatchNorm2d(cout))] if self.bn else []
            return [*conv, *bn, (f"relu{i}", relu())]

        return nn.Sequential(OrderedDict([
            *block(1, c, 32), ("pool1", nn.MaxPool2d(2, ceil_mode=True)),
            *block(2, 32, 64), ("pool2", nn.MaxPool2d(2, ceil_mode=True)),
            *block(3, 64, 64),
            ("pool3", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(256, 256)), ("relu4", relu()), ("fc2", nn.Linear(256, num_classes)),
        ]))


class _BasicBlock(nn.Module):
    """He et al.'s CIFAR block; option-A shortcut (strided identity, zero-padded channels)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            sc = nn.functional.pad(sc, (0, 0, 0, 0, 0, self.pad))
        return torch.relu(out + sc)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR with 16/32/64 channels (He et al. 2016, section 4.2).

    Initialisation: convs He-normal over fan-out (He et al. 2015, as torchvision's ResNets and
    the DSR code's networks), BatchNorm 1/0 and the Linear layer PyTorch's defaults. open_lth's
    cifar_resnet draws He-normal over fan-in for convs and the Linear layer instead, and BN
    weights uniform; the lottery suite runs this network, so its tickets start from this init."""

    def __init__(self, depth: int, in_ch: int, num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn(in_ch, 16))
        blocks, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@MODELS.register("resnet20")
@dataclass(frozen=True)
class ResNet20:
    """CIFAR ResNet-20 (0.27M parameters): small enough for CPU runs."""

    def build(self, input_shape, num_classes) -> nn.Module:
        return CifarResNet(20, input_shape[0], num_classes)


@MODELS.register("resnet56")
@dataclass(frozen=True)
class ResNet56:
    """CIFAR ResNet-56 (0.85M parameters): the standard pruning benchmark on CIFAR-10."""

    def build(self, input_shape, num_classes) -> nn.Module:
        return CifarResNet(56, input_shape[0], num_classes)


def _torchvision_cifar(arch: str, input_shape, num_classes) -> nn.Module:
    import torchvision

    m = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    # CIFAR stem: 3x3 stride-1 first conv and no max-pool (32x32 inputs are too small for 7x7/2)
    m.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


@MODELS.register("resnet18")
@dataclass(frozen=True)
class ResNet18:
    """torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool).

    Initialisation: torchvision's (convs He-normal over fan-out, BN 1/0); the stem conv that
    replaces torchvision's is PyTorch's default."""

    def build(self, input_shape, num_classes) -> nn.Module:
        return _torchvision_cifar("resnet18", input_shape, num_classes)


@MODELS.register("resnet50")
@dataclass(frozen=True)
class ResNet50:
    """torchvision ResNet-50 with the CIFAR stem (the APP paper's model).

    Initialisation: torchvision's (convs He-normal over fan-out, BN 1/0); the stem conv is
    PyTorch's default."""

    def build(self, input_shape, num_classes) -> nn.Module:
        return _torchvision_cifar("resnet50", input_shape, num_classes)


class _WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis) with a 1x1 conv shortcut on change."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if (cin != cout or stride != 1) else None)

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        o = self.conv1(o)
        o = self.conv2(torch.relu(self.bn2(o)))
        return o + sc


def he_fan_out_init(model: nn.Module) -> None:
    """IntelAI/dynamic-reparameterization's ``cifar10_WideResNet.reset_parameters``: every conv
    He-normal over its fan-out (std sqrt(2 / (k * k * out_channels))), BatchNorm weight 1 and
    bias 0, Linear bias 0 (its weight keeps PyTorch's default, as there)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


@MODELS.register("wrn-28-2")
@dataclass(frozen=True)
class WRN28_2:
    """Wide ResNet-28-2 (1.5M parameters): the DSR paper's CIFAR-10 model.

    Initialisation: the DSR paper's code (IntelAI/dynamic-reparameterization, model.py),
    :func:`he_fan_out_init`; ``init: pytorch`` keeps PyTorch's layer defaults instead (the
    std of a 32->32 3x3 conv is then 0.034 where the reference draws 0.083)."""

    depth: int = 28
    widen: int = 2
    init: Literal["reference", "pytorch"] = "reference"

    def __post_init__(self):
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1, got {self.depth}")
        if not 1 <= self.widen <= 64:
            raise ValueError(f"widen must be in [1, 64], got {self.widen}")

    def build(self, input_shape, num_classes) -> nn.Module:
        n = (self.depth - 4) // 6
        widths = [16, 16 * self.widen, 32 * self.widen, 64 * self.widen]
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)]
        cin = widths[0]
        for i, w in enumerate(widths[1:]):
            for j in range(n):
                layers.append(_WideBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                   nn.Flatten(), nn.Linear(cin, num_classes)]
        model = nn.Sequential(*layers)
        if self.init == "reference":
            he_fan_out_init(model)
        return model
