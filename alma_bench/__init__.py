"""alma-bench: a benchmark suite for anytime learning at macroscale (ALMA)."""

from alma_bench.registry import MODELS, PRUNERS, SCHEDULES, STRATEGIES, STREAMS

__version__ = "0.1.0"

register_strategy = STRATEGIES.register
register_stream = STREAMS.register
register_model = MODELS.register

__all__ = ["MODELS", "PRUNERS", "SCHEDULES", "STRATEGIES", "STREAMS", "__version__",
           "make_benchmark", "register_model", "register_stream", "register_strategy"]


def __getattr__(name: str):
    # imported on first use: building a benchmark imports Avalanche (seconds), and
    # ``import alma_bench`` must stay cheap for listing and validating suites
    if name == "make_benchmark":
        from alma_bench.benchmark import make_benchmark

        return make_benchmark
    raise AttributeError(f"module 'alma_bench' has no attribute {name!r}")
