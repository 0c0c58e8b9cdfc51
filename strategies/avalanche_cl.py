"""Avalanche's continual-learning strategies as alma-bench strategies, ``avalanche:<name>``.

Each entry is a frozen dataclass of the Avalanche plugin's parameters, validated like every
strategy's (an unknown one is a one-line error naming the valid ones), whose ``plugins(ctx)``
returns Avalanche's own plugin: trained by the harness's template under the suite's protocol,
measured with the same metrics as every strategy, its state checkpointed so a resumed run
matches an uninterrupted one (alma_bench/run/cl_plugins.py). The plugin classes are imported only
when a run builds them: listing strategies imports no Avalanche.

Defaults are Avalanche's where it has one; where it has none (``ewc_lambda``, ``si_lambda``,
GEM's two) they are ours and say so. A run's id covers the name and every parameter; bump a
class's ``revision`` when a change here, or an Avalanche upgrade it follows, changes numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from alma_bench.errors import UserError
from alma_bench.registry import STRATEGIES


def _positive(**values) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def _non_negative(**values) -> None:
    for name, v in values.items():
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


@STRATEGIES.register("avalanche:replay")
@dataclass(frozen=True)
class AvalancheReplay:
    """Experience replay (Avalanche ReplayPlugin): each step adds a batch from a buffer."""

    revision: ClassVar[int] = 1

    mem_size: int = 200
    batch_size_mem: int | None = None  # buffer samples per step; None: the protocol's batch
    storage_policy: Literal["experience_balanced", "class_balanced"] = "experience_balanced"

    def __post_init__(self):
        _positive(mem_size=self.mem_size, batch_size_mem=self.batch_size_mem)

    def plugins(self, ctx) -> list:
        if ctx.protocol.augment:
            # from the second megabatch on, ReplayPlugin replaces the harness's batches with
            # its own loader over the Avalanche datasets, which know no protocol.augment
            raise UserError("avalanche:replay does not apply protocol.augment (its batches "
                            "come from Avalanche's ReplayDataLoader); set augment: false")
        from alma_bench.run.cl_plugins import Replay

        return [Replay(self.mem_size, self.batch_size_mem, self.storage_policy,
                       pool=ctx.stream.dataset)]


@STRATEGIES.register("avalanche:ewc")
@dataclass(frozen=True)
class AvalancheEWC:
    """Elastic weight consolidation (Avalanche EWCPlugin): a Fisher-weighted pull to the past."""

    revision: ClassVar[int] = 1

    ewc_lambda: float = 1.0  # Avalanche has no default
    mode: Literal["separate", "online"] = "separate"
    decay_factor: float | None = None  # online mode only, and required there
    keep_importance_data: bool = False

    def __post_init__(self):
        _non_negative(ewc_lambda=self.ewc_lambda)
        if (self.mode == "online") != (self.decay_factor is not None):
            raise ValueError("decay_factor is required by mode online and only used there")

    def plugins(self, ctx) -> list:
        from alma_bench.run.cl_plugins import EWC

        return [EWC(self.ewc_lambda, self.mode, self.decay_factor, self.keep_importance_data)]


@STRATEGIES.register("avalanche:lwf")
@dataclass(frozen=True)
class AvalancheLwF:
    """Learning without forgetting (Avalanche LwFPlugin): distil the previous model."""

    revision: ClassVar[int] = 1

    alpha: float = 1.0
    temperature: float = 2.0

    def __post_init__(self):
        _non_negative(alpha=self.alpha)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def plugins(self, ctx) -> list:
        from alma_bench.run.cl_plugins import LwF

        return [LwF(self.alpha, self.temperature)]


@STRATEGIES.register("avalanche:gem")
@dataclass(frozen=True)
class AvalancheGEM:
    """Gradient episodic memory (Avalanche GEMPlugin): project steps that raise past losses."""

    revision: ClassVar[int] = 1

    patterns_per_experience: int = 256  # Avalanche has no default
    memory_strength: float = 0.5  # Avalanche has no default (its examples use 0.5)

    def __post_init__(self):
        _positive(patterns_per_experience=self.patterns_per_experience)
        _non_negative(memory_strength=self.memory_strength)

    def plugins(self, ctx) -> list:
        from alma_bench.run.cl_plugins import GEM

        return [GEM(self.patterns_per_experience, self.memory_strength)]


@STRATEGIES.register("avalanche:er_ace")
@dataclass(frozen=True)
class AvalancheERACE:
    """ER-ACE (Avalanche ER_ACE as hooks): class-balanced replay with asymmetric CE."""

    revision: ClassVar[int] = 1

    mem_size: int = 200
    batch_size_mem: int = 10

    def __post_init__(self):
        _positive(mem_size=self.mem_size, batch_size_mem=self.batch_size_mem)

    def plugins(self, ctx) -> list:
        from alma_bench.run.cl_plugins import ERACE

        return [ERACE(self.mem_size, self.batch_size_mem, pool=ctx.stream.dataset)]


@STRATEGIES.register("avalanche:si")
@dataclass(frozen=True)
class AvalancheSI:
    """Synaptic intelligence (Avalanche SynapticIntelligencePlugin): path-integral importance."""

    revision: ClassVar[int] = 1

    si_lambda: float = 1.0  # Avalanche has no default
    eps: float = 1e-7
    excluded_parameters: tuple[str, ...] = ()  # name patterns (BatchNorm is always excluded)

    def __post_init__(self):
        _non_negative(si_lambda=self.si_lambda)
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")

    def plugins(self, ctx) -> list:
        from alma_bench.run.cl_plugins import SI

        return [SI(self.si_lambda, self.eps, list(self.excluded_parameters))]


@STRATEGIES.register("avalanche:mas")
@dataclass(frozen=True)
class AvalancheMAS:
    """Memory aware synapses (Avalanche MASPlugin): output-sensitivity importance."""

    revision: ClassVar[int] = 1

    lambda_reg: float = 1.0
    alpha: float = 0.5  # weight of the previous importance when it is updated

    def __post_init__(self):
        _non_negative(lambda_reg=self.lambda_reg)
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def plugins(self, ctx) -> list:
        from alma_bench.run.cl_plugins import MAS

        return [MAS(self.lambda_reg, self.alpha)]
