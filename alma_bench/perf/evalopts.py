"""``alma-bench perf --run SUITE[:LABEL] --eval-options``: what the run's defaults for
evaluation and memory layout cost, measured so they can be decided by measurement.

On the run's own configuration (its model, stream, thread count), interleaved in blocks
(``perf.interleave``), each ratio with its 95% interval:

* an evaluation pass as the run makes it (``RunContext.accuracy``) over the run's test
  images, at each evaluation batch size and in both memory layouts, against the run's
  default (its ``protocol.eval_batch_size``, contiguous);
* the harness's training steps of the run in channels-last against contiguous (a real run
  of the run's strategy through ``runner.execute``, wrapped in the probe);
* the generalisation gap's train pass with a fixed sample (``protocol.train_eval_sample``):
  the images it would evaluate per run against the whole training sets, the seconds that
  saves at the measured evaluation rate, and what it changes: the train accuracy becomes an
  estimate, with a 95% sampling error of at most 1.96 x 0.5 / sqrt(K).

Nothing here changes a default; reports/perf.md records the measurement that decides them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import tempfile
from pathlib import Path

from alma_bench.perf.arms import LAYOUTS, eval_arm, harness_arm
from alma_bench.perf.interleave import Ratio, run_rounds


def _ints(text: str, flag: str) -> list[int]:
    from alma_bench.errors import UserError

    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise UserError(f"{flag} takes positive integers separated by commas, got '{text}'")
    return out


def measure(target: str, args) -> dict:
    """The interleaved evaluation and layout arms of one run's configuration, and the
    train-sample projection."""
    import torch

    from alma_bench.perf import bare as pb
    from alma_bench.perf import runs
    from alma_bench.registry import MODELS
    from alma_bench.run import runner
    from alma_bench.run.memory import tune_malloc
    from alma_bench.run.stream import build_stream

    tune_malloc()
    batches = _ints(args.eval_batches, "--eval-batches")
    samples = _ints(args.train_eval_samples, "--train-eval-samples")
    spec = runs.resolve(target, args.scale, args.sets, args.threads, args.seed)
    protocol = spec.protocol_obj()
    default = protocol.eval_batch_size
    batches = sorted(set(batches) | {default})
    torch.set_num_threads(spec.threads)
    pb.register_probe()
    data = runner.load_data(spec.stream)
    stream = build_stream(data, spec.split(), spec.seeds().stream, name=spec.stream["name"])
    test_x, test_y = stream.test_set()
    mspec = {k: v for k, v in spec.model.items() if k != "name"}

    def model_fn():
        return MODELS.create(spec.model["name"], **mspec).build(stream.input_shape,
                                                                 stream.num_classes)

    block = 2 * max(batches)  # every batch size fits a block a whole number of times
    eval_arms = [eval_arm(f"eval:{b}:{cl}", model_fn, data.mean, data.std, test_x, test_y, b,
                          bool(cl), block, spec.threads)
                 for cl in LAYOUTS for b in batches]
    base = f"eval:{default}:0"
    ratios = [Ratio(f"eval batch {a.name.split(':')[1]} {LAYOUTS[int(a.name[-1])]} / "
                    f"batch {default} contiguous", a.name, base)
              for a in eval_arms if a.name != base]

    def spec_fn(arm, label):
        params = {"inner": spec.strategy["name"],
                  "inner_params": spec.strategy.get("params") or {}, "arm": arm}
        return dataclasses.replace(spec, label=label, strategy={"name": pb.PROBE,
                                                                "params": params})

    tmp = Path(tempfile.mkdtemp(prefix="alma-perf-eval-"))
    train_arms = [harness_arm(f"train:{cl}", spec_fn, tmp, bool(cl), args.block_samples or 1024,
                              spec.threads) for cl in LAYOUTS]
    ratios.append(Ratio("training steps channels_last / contiguous", "train:1", "train:0"))
    budget = args.budget if args.budget is not None else 600.0
    print(f"  --eval-options on {target}: {len(eval_arms)} evaluation arms, 2 training arms, "
          f"until +-{args.precision:.0%} (budget {budget:.0f} s)", file=sys.stderr)
    arms = [train_arms[0], *eval_arms, train_arms[1]]
    try:
        inter = run_rounds(arms, ratios, precision=args.precision, budget_s=budget,
                           min_blocks=args.min_blocks, max_rounds=args.max_rounds,
                           log=lambda s: print(s, file=sys.stderr))
    finally:
        for a in train_arms:
            pb.ARMS.pop(a.name, None)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    rates = {a.name: statistics.median(b.samples / b.seconds for b in a.blocks)
             for a in arms if a.blocks}
    out = {"target": target, "run_id": spec.run_id, "threads": spec.threads,
           "model": spec.model["name"], "test_images": len(test_y),
           "default": {"eval_batch_size": default, "channels_last": False,
                       "train_eval_sample": protocol.train_eval_sample},
           "images_per_s": rates, "interleaved": inter,
           "train_eval_sample": train_sample_projection(
               [len(stream.train_set(t)[1]) for t in range(stream.n_megabatches)], samples,
               rates.get(base))}
    return out


def train_sample_projection(sizes: list[int], samples: list[int], rate: float | None) -> dict:
    """The gap's train pass per run with the whole training sets (``sizes``, per megabatch)
    and with each fixed sample K: images, seconds at ``rate`` images/s, and the 95% sampling
    error of the train accuracy the sample gives (at most 1.96 x 0.5 / sqrt(K), where the
    accuracy is 50%; smaller near 0% or 100%)."""
    whole = sum(sizes)
    rows = [{"train_eval_sample": None, "images": whole,
             "seconds": whole / rate if rate else None, "accuracy_error_95": 0.0}]
    for k in samples:
        n = sum(min(k, s) for s in sizes)
        rows.append({"train_eval_sample": k, "images": n, "seconds": n / rate if rate else None,
                     "accuracy_error_95": 1.96 * 0.5 / math.sqrt(k)})
    return {"megabatch_train_sizes": sizes, "rows": rows}


def format_rows(r: dict) -> list[tuple[str, str]]:
    from alma_bench.perf.intervals import format_ratio

    inter = r["interleaved"]
    rows = [("run; threads; test images", f"{r['target']} ({r['model']}); {r['threads']}; "
                                          f"{r['test_images']}"),
            ("interleaved rounds; stopped because; seconds",
             f"{inter['rounds']}; {inter['stopped']}; {inter['seconds']:.0f}")]
    rows += [(f"{name} img/s (median block)", f"{v:.0f}") for name, v in
             r["images_per_s"].items()]
    rows += [(name, format_ratio(st)) for name, st in inter["ratios"].items()]
    for row in r["train_eval_sample"]["rows"]:
        k = row["train_eval_sample"]
        secs = "-" if row["seconds"] is None else f"{row['seconds']:.3g} s"
        rows.append((f"gap train pass per run, {'whole sets' if k is None else f'sample {k}'}",
                     f"{row['images']} images, {secs}, train accuracy +-"
                     f"{row['accuracy_error_95']:.1%} (95%)"))
    return rows
