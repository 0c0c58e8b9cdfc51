"""Result folders written by hand, following the store's schema: tests of tables, grouping and
comparisons need no training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

STREAM = {"name": "digits", "megabatches": 2, "replay": "all"}
MODEL = {"name": "small-cnn", "width": 16}
PROTOCOL = {"epochs": 2, "lr": 0.05, "milestones": []}


def write_run(suite_dir: Path, label: str, seed: int, acc: float, cer: float | None = None,
              strategy: str = "dense", params: dict | None = None, protocol: dict | None = None,
              scale: str | None = None, identity: bool = True, extra: dict | None = None) -> Path:
    """One finished run of 2 megabatches whose final test accuracy is ``acc``; ``identity``
    False writes a config.json as older versions did (no ``identity`` field)."""
    strat = {"name": strategy, "params": params or {}}
    ident = {"stream": STREAM, "model": MODEL, "protocol": {**PROTOCOL, **(protocol or {})},
             "strategy": strat, "seed": seed, "threads": 1, "core_revision": 2, **(extra or {})}
    run_id = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    config = {"run_id": run_id, "suite": suite_dir.name, "scale": scale, "label": label,
              "seed": seed, "strategy": strat, "stream": STREAM, "model": MODEL,
              "protocol": ident["protocol"], "threads": 1, "version": "0.1.0"}
    if identity:
        config["identity"] = ident
    cer = 2 * (1 - acc) if cer is None else cer
    rows = [{"megabatch": t, "test_acc": acc - 0.1 * (2 - t), "density": 1.0,
             "layer_density": {"conv.weight": 1.0}, "wall_time": 1.0} for t in (1, 2)]
    summary = {"final_test_acc": acc, "cer": cer, "cer_count": 100 * cer,
               "final_gen_gap": 0.01, "final_density": 1.0, "flops_effective": 1e6,
               "wall_time": 2.0, "n_megabatches": 2}
    run = suite_dir / run_id
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "status.json").write_text(json.dumps({"state": "done", "megabatches_done": 2,
                                                 "n_megabatches": 2}))
    return run
