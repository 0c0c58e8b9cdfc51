"""alma-bench: a benchmark suite for anytime learning at macroscale (ALMA)."""

from alma_bench.registry import MODELS, PRUNERS, SCHEDULES, STRATEGIES, STREAMS

__version__ = "0.1.0"

register_strategy = STRATEGIES.register
register_stream = STREAMS.register
register_model = MODELS.register

__all__ = ["MODELS", "PRUNERS", "SCHEDULES", "STRATEGIES", "STREAMS", "__version__",
           "register_model", "register_strategy", "register_stream"]
