"""alma-bench perf: the harness measured against a bare PyTorch loop, in one process.

Bare loop (both memory layouts), dense and masked-sparse runs through the real harness
(``runner.execute``: stream, Avalanche template, plugins, metrics, checkpoints) are repeated
interleaved over the same samples, batch size and thread count; medians and spreads are
reported. Data start, augmentation, thread settings and the parallel executor are measured
around them. Top-level imports stay light: ``configure_parser`` runs for every CLI command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from alma_bench.perf.report import _table, format_table, write_report

TARGETS = {  # the targets: key -> (limit, "max" or "min")
    "harness_vs_bare_ratio": (1.05, "max"),
    "sparse_vs_dense_ratio": (1.10, "max"),
    "cached_start_s": (3.0, "max"),
    "workers_speedup": (1.6, "min"),
}
#: built-ins measured besides dense and app (rl-schedule trains an agent first: not a loop
#: cost; Avalanche's continual-learning strategies are Avalanche's loops, not alma-bench's)
def strategy_kinds() -> list[str]:
    from alma_bench.registry import STRATEGIES

    return [n for n in STRATEGIES.names()
            if STRATEGIES.get(n).cls.__module__.startswith("alma_bench.strategies")
            and n not in ("dense", "app", "rl-schedule") and not n.startswith("avalanche:")]


# the CIFAR-10 JPEG folders of this workspace, relative to the repository
DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10"


def configure_parser(p) -> None:
    """Options of ``alma-bench perf``."""
    p.add_argument("--model", default="small-cnn", help="model name (default small-cnn)")
    p.add_argument("--stream", default=None,
                   help="imagefolder (CIFAR-10 JPEG folders, the default when --data-root "
                        "exists) or synthetic (3x32x32; the fallback and --quick)")
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="train/ test/ image folders")
    p.add_argument("--quick", action="store_true",
                   help="minutes: synthetic data, 2 repeats, interleaved ratios for 150 s at "
                        "most, no decode/parallel/thread/end-to-end runs")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--report", default="reports/perf.md",
                   help="markdown report (written unless --quick; default reports/perf.md)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: one per core, what a single run uses)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (5; quick 2)")
    p.add_argument("--subset", type=int, default=8000, help="training images used (stream.subset)")
    p.add_argument("--megabatches", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    i = p.add_argument_group("precise ratios: the arms interleaved in blocks of steps "
                             "(alma_bench/perf/interleave.py)")
    i.add_argument("--precision", type=float, default=0.02,
                   help="stop when every ratio's 95%% interval is within +-this fraction of "
                        "its median (default 0.02)")
    i.add_argument("--budget", type=float, default=None, metavar="S",
                   help="seconds the interleaved rounds may take at most (default 600; "
                        "quick 150)")
    i.add_argument("--block-samples", type=int, default=None,
                   help="training samples per block of an arm (default 1024; quick 512; a "
                        "block also ends where a megabatch does)")
    i.add_argument("--min-blocks", type=int, default=10,
                   help="blocks a ratio needs before it may count as precise (default 10)")
    i.add_argument("--max-rounds", type=int, default=None, help=argparse.SUPPRESS)  # tests
    e = p.add_argument_group("end to end: one real run against its floor (alma_bench/perf/runs.py)")
    e.add_argument("--run", dest="runs", action="append", default=[], metavar="SUITE[:LABEL]",
                   help="measure only this run (its first seed) end to end: whole run / bare "
                        "training + evaluation loops, with the breakdown; repeatable. Without "
                        "it, the full measurement includes quickstart and a resnet20 config")
    e.add_argument("--scale", default=None, help="scale of the --run suites")
    e.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite field of the --run suites (as alma-bench run)")
    e.add_argument("--seed", type=int, default=None, help="the --run seed (default: the first)")
    e.add_argument("--pairs", type=int, default=1, metavar="N",
                   help="at least N run/floor pairs (an interval needs 2; the distribution-free "
                        "one 6); pairs then go on until --run-budget is spent, 45 pairs, or "
                        "(from 6 pairs) the ratio is within --precision")
    e.add_argument("--run-budget", type=float, default=300.0, metavar="S",
                   help="pairs go on (beyond --pairs) while the pairs so far took less "
                        "than S seconds (default 300)")
    e.add_argument("--eval-options", action="store_true",
                   help="with --run: instead of run/floor, compare evaluation batch sizes and "
                        "layouts (interleaved evaluation passes over the run's test images), "
                        "the harness's training in both layouts, and what a fixed train "
                        "sample for the generalisation gap would save (perf/evalopts.py)")
    e.add_argument("--eval-batches", default="128,256,512,1024", metavar="B,B",
                   help="evaluation batch sizes --eval-options compares")
    e.add_argument("--train-eval-samples", default="1000,2000,5000", metavar="K,K",
                   help="train_eval_sample values --eval-options projects")
    g = p.add_argument_group("the GPU path (alma_bench/perf/gpu.py; make gpu-check)")
    g.add_argument("--gpu-check", action="store_true",
                   help="determinism (one megabatch of each published suite's paper scale, "
                        "twice), throughput of resnet20, wrn-28-2, resnet50 and the Simple CNN, "
                        "and N = 1, 2, 4, 8 concurrent runs; writes --json and --gpu-report")
    g.add_argument("--device", default=None, help="--gpu-check's device (default cuda)")
    g.add_argument("--gpu-tiny", action="store_true",
                   help="tiny sizes, N = 1, 2: the plumbing in seconds (with --device cpu)")
    g.add_argument("--gpu-epochs", type=int, default=1,
                   help="epochs of the determinism megabatch (default 1; 0: the suite's own)")
    g.add_argument("--gpu-report", default=None,
                   help="markdown report (default reports/gpu.md; none under --gpu-tiny)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Measure, print the table, write the JSON and (unless --quick) the markdown report."""
    # OpenMP's wait policy is the one a single run gets (cli._wait_policy: libgomp's default,
    # unless the user exported one); the thread matrix below measures both policies.
    from alma_bench.errors import UserError

    for k in ("batch_size", "megabatches", "epochs", "subset", "block_samples", "min_blocks",
              "pairs"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be >= 1")
    if not 0 < args.precision < 1:
        raise UserError("--precision is a fraction in (0, 1), e.g. 0.02")
    if args.gpu_check:
        from alma_bench.perf import gpu

        return gpu.run(args, _command(args))
    if args.eval_options:
        if len(args.runs) != 1:
            raise UserError("--eval-options measures one --run SUITE[:LABEL]")
        from alma_bench.perf import evalopts

        result = {"command": _command(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "eval_options": evalopts.measure(args.runs[0], args)}
        print(_table(evalopts.format_rows(result["eval_options"])))
        _write_json(args.json, result)
        return 0
    if args.runs:
        result = {"command": _command(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "end_to_end": end_to_end(
                      [{"name": t, "target": t, "scale": args.scale, "sets": args.sets}
                       for t in args.runs], args)}
        from alma_bench.perf import runs as perf_run

        table = _table([row for r in result["end_to_end"].values()
                        for row in perf_run.format_rows(r)])
        print(table)
        _write_json(args.json, result)
        return 0
    result = measure(args)
    table = format_table(result)
    print(table)
    _write_json(args.json, result)
    if not args.quick and args.report:
        write_report(Path(args.report), result, table)
        print(f"report written to {args.report}")
    return 0


def _write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON written to {path}")


def end_to_end(configs: list[dict], args) -> dict:
    """name -> the end-to-end measurement of each configuration (perf_run.measure_run)."""
    from alma_bench.perf import runs as perf_run

    out = {}
    for c in configs:
        print(f"  end to end: {c['target']} {' '.join(c['sets'])}", file=sys.stderr)
        out[c["name"]] = perf_run.measure_run(
            c["target"], c["scale"], c["sets"], threads=args.threads, seed=args.seed,
            min_pairs=args.pairs, min_s=args.run_budget, precision=args.precision)
    return out


def _command(args) -> str:
    """The command line that reproduces this measurement (options that differ from defaults)."""
    defaults = argparse.ArgumentParser()
    configure_parser(defaults)
    base = vars(defaults.parse_args([]))
    parts = ["alma-bench perf"]
    for k, v in vars(args).items():
        if k in base and k != "func" and v != base[k]:
            flag = "--" + k.replace("_", "-")
            parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


def measure(args) -> dict:
    """Every measurement of the issue, as one JSON-ready dict."""
    from alma_bench.run.memory import tune_malloc

    tune_malloc()  # the bare loops and the harness under the settings every run has
    t_import = time.perf_counter()
    import torch

    from alma_bench.perf import bare as pb
    from alma_bench.run.runner import execute, load_data
    from alma_bench.run.stream import build_stream
    from alma_bench.spec.config import RunSpec

    import_s = time.perf_counter() - t_import
    budget = args.budget if args.budget is not None else (150.0 if args.quick else 600.0)
    block_samples = args.block_samples or (512 if args.quick else 1024)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    pb.register_probe()
    skipped: dict[str, str] = {}
    result: dict = {"command": _command(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "quick": bool(args.quick), "machine": pb.machine(threads),
                    "load_before": pb.load_average(), "import_s": import_s}
    tmp = Path(tempfile.mkdtemp(prefix="alma-perf-"))
    old_cache = os.environ.get("ALMA_BENCH_CACHE")
    # a fresh cache dir: the first decode is really first, and the user's cache is untouched
    os.environ["ALMA_BENCH_CACHE"] = str(tmp / "cache")
    try:
        stream, data_info = _data(args, pb, skipped)
        result["data"] = data_info
        bs, reps = args.batch_size, args.repeats or (2 if args.quick else 5)
        protocol = {"epochs": args.epochs, "batch_size": bs, "lr": 0.05, "momentum": 0.9,
                    "weight_decay": 5e-4, "lr_schedule": "cosine", "augment": True,
                    "eval_batch_size": 1024}
        model = {"name": args.model}

        def spec(inner, label, s=stream, arm=""):
            return RunSpec(suite="perf", label=label, seed=0, stream=s, model=model,
                           protocol=protocol, threads=threads,
                           strategy={"name": pb.PROBE, "params": {"inner": inner, "arm": arm}})

        probe = spec("dense", "dense")
        data = load_data(stream)
        alma = build_stream(data, probe.split(), probe.seeds().stream)
        sets = [alma.train_set(t) for t in range(alma.n_megabatches)]
        from alma_bench.registry import MODELS

        mspec = {k: v for k, v in model.items() if k != "name"}
        model_fn = lambda: MODELS.create(args.model, **mspec).build(alma.input_shape,
                                                                     alma.num_classes)
        bare_kw = dict(batch_size=bs, epochs=args.epochs, lr=0.05, momentum=0.9,
                       weight_decay=5e-4, augment=True, padding=4, mean=data.mean, std=data.std)
        result["config"] = {"model": args.model, "stream": stream, "protocol": protocol,
                            "repeats": reps, "threads": threads, "sets": [len(y) for _, y in sets]}
        result["data"]["augment_images_per_s"] = pb.augment_rate(data.train_x, bs, 4,
                                                                 0.3 if args.quick else 2.0)
        # warm-up: kernels, allocator, and Avalanche's one-off import and dataset machinery
        warm = dict(stream, megabatches=1, subset=min(len(data.train_y), 2 * bs))
        for cl in (False, True):
            pb.bare_train(sets[:1], model_fn, channels_last=cl, **bare_kw)
            t0 = time.perf_counter()
            execute(spec("dense", "warm", warm), tmp / f"warm{cl}", "cpu", channels_last=cl)
            result.setdefault("harness_first_run_s", time.perf_counter() - t0)
        variants = [(kind, cl) for kind in ("bare", "dense", "app") for cl in (False, True)]
        # every other built-in strategy at its defaults, in the contiguous layout: time per
        # training sample against dense in the same process (rewiring is inside the loop)
        # (--quick: the rewiring ones only)
        variants += [(kind, False) for kind in strategy_kinds()
                     if not args.quick or kind in ("gmp", "dpr", "prune-regrow")]
        if not args.quick:  # torch.compile, in the layout eager code is fastest in on CPUs
            variants.append(("compiled", True))
        raw: dict = {f"{k}:{int(cl)}": [] for k, cl in variants}
        for r in range(reps):  # interleaved, and rotated so no variant always runs first
            for kind, cl in variants[r % len(variants):] + variants[: r % len(variants)]:
                key = f"{kind}:{int(cl)}"
                print(f"  repeat {r + 1}/{reps}: {kind} {'channels-last' if cl else 'contiguous'}",
                      file=sys.stderr)
                if kind in ("bare", "compiled"):
                    raw[key].append(pb.bare_train(sets, model_fn, channels_last=cl,
                                                  compile=kind == "compiled", **bare_kw))
                    continue
                execute(spec(kind, f"{kind}-{r}-{cl}"), tmp / f"{key.replace(':', '')}-{r}",
                        "cpu", channels_last=cl)
                log = pb.LOGS[-1]
                times = pb.split_times(log, time.perf_counter())
                if kind == "dense":  # one test-set pass of the final model, timed alone
                    ctx, test_x = log.ctx, log.ctx.stream.test_set()[0]
                    t0 = time.perf_counter()
                    ctx.accuracy(*ctx.stream.test_set())
                    times["test_pass_s"] = time.perf_counter() - t0
                    # evaluation batch size: large batches overflow this CPU's caches
                    times["eval_images_per_s"] = {b: pb.eval_rate(ctx.model, ctx.normalize,
                                                                  test_x, b)
                                                  for b in (128, 256, 1024)}
                raw[key].append(times)
        result.update(pb.summarise(raw))
        result["repeats"] = raw  # every repeat's loop times, per variant ("kind:channels_last")
        kinds = sorted({k for k, cl in variants if k not in ("bare", "dense", "app", "compiled")})
        print(f"  interleaved blocks until +-{args.precision:.0%} (budget {budget:.0f} s)",
              file=sys.stderr)
        from alma_bench.perf import arms

        inter = arms.measure(lambda kind, label, arm: spec(kind, label, arm=arm), sets,
                             model_fn, bare_kw, kinds, tmp, threads=threads,
                             block_samples=block_samples, precision=args.precision,
                             budget_s=budget, min_blocks=args.min_blocks,
                             max_rounds=args.max_rounds)
        apply_interleaved(result, inter)
        if args.quick:
            skipped["workers_speedup"] = "--quick skips the parallel quickstart runs"
            skipped["threads"] = "--quick skips the thread/wait-policy matrix"
            result["parallel"] = {"workers_speedup": None}
            result["threads"] = None
        else:
            print("  quickstart with 1 and 2 workers", file=sys.stderr)
            result["parallel"] = _parallel(tmp, skipped)
            print("  threads x OpenMP wait policy, alone and beside a busy process",
                  file=sys.stderr)
            result["threads"] = pb.thread_matrix(1536, bs, True)
        from alma_bench.perf.runs import DEFAULT_RUNS

        # in fresh results folders; the data cache is warm (decoded above), as for any run
        result["end_to_end"] = ({} if args.quick else
                                end_to_end([dict(c) for c in DEFAULT_RUNS], args))
        result["workers_speedup"] = result["parallel"]["workers_speedup"]
    finally:
        if old_cache is None:
            os.environ.pop("ALMA_BENCH_CACHE", None)
        else:
            os.environ["ALMA_BENCH_CACHE"] = old_cache
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    result["cached_start_s"] = result["data"].get("cached_start_s")
    result["first_decode_s"] = result["data"].get("first_decode_s")
    result["load_after"] = pb.load_average()
    result["skipped"] = skipped
    result["targets"] = _targets(result)
    return result


def apply_interleaved(result: dict, inter: dict) -> None:
    """The interleaved ratios into the result: ``result["interleaved"]`` holds them all (with
    every block); the headline keys read by the targets, the table and older consumers
    (``harness_vs_bare_ratio``, ``sparse_vs_dense_ratio``, ``strategies.K.per_sample_vs_dense``)
    now carry the interleaved medians, with ``*_interval`` beside them. The one-shot repeats'
    figures stay where they were (``harness``, ``sparse``), as descriptive spreads."""
    r = inter["ratios"]
    result["interleaved"] = inter
    # the layout the bare loop is faster in (the limit), decided by the interleaved blocks
    cl = r["channels_last_vs_contiguous:bare"]["median"]
    lay = "channels_last" if cl is not None and cl < 1 else "contiguous"
    result["ratio_layout"] = lay
    for key, name in (("harness_vs_bare", f"harness_vs_bare:{lay}"),
                      ("sparse_vs_dense", f"sparse_vs_dense_final:{lay}")):
        result[f"{key}_interval"] = r[name]
        if r[name]["median"] is not None:  # else the one-shot repeats' median stays
            result[f"{key}_ratio"] = r[name]["median"]
    for kind, st in result.get("strategies", {}).items():
        name = f"{kind}_vs_dense:contiguous"
        if name in r and r[name]["median"] is not None:
            st["per_sample_vs_dense_repeats"] = st["per_sample_vs_dense"]
            st["per_sample_vs_dense"] = r[name]


def _data(args, pb, skipped) -> tuple[dict, dict]:
    """The stream spec to measure on, with the first decode and the cached start timed."""
    from alma_bench.run.runner import load_data

    split = {"megabatches": args.megabatches, "replay": "all"}
    root = Path(args.data_root).expanduser()
    name = args.stream or ("imagefolder" if root.is_dir() and not args.quick else "synthetic")
    info: dict = {"stream": name}
    if name == "imagefolder":
        from alma_bench.registry import STREAMS

        source = {"name": name, "data_root": str(root)}
        t0 = time.perf_counter()
        data = load_data(source)  # empty cache dir: decodes every JPEG and writes the cache
        info["first_decode_s"] = time.perf_counter() - t0
        starts = []
        for _ in range(1 if args.quick else 3):
            t0 = time.perf_counter()
            STREAMS.create(name, data_root=str(root)).load()
            starts.append(time.perf_counter() - t0)
        info["cached_start"] = pb.stats(starts)
        info["cached_start_s"] = info["cached_start"]["median"]
        info["train_images"] = len(data.train_y)
        return {**source, **split, "subset": min(args.subset, len(data.train_y))}, info
    if name != "synthetic":  # any other registered stream: measured as it is, no decode
        skipped["first_decode_s"] = skipped["cached_start_s"] = f"stream '{name}' is not decoded"
        return {"name": name, **split}, info
    why = ("--quick uses synthetic data" if args.quick else
           f"no image folders at {root}: synthetic 3x32x32 data instead")
    if not args.quick and args.stream is None:
        print(f"alma-bench perf: {why}", file=sys.stderr)
    elif args.stream:
        why = "--stream synthetic: no image folders decoded"
    skipped["first_decode_s"] = skipped["cached_start_s"] = why
    # quick: 1024 images, megabatch sets of 2, 4, 6 and 8 steps, enough for blocks of 4
    n = min(1024, args.subset) if args.quick else args.subset
    return {"name": "synthetic", "n_train": n, "n_test": 128 if args.quick else 2000,
            "classes": 10, "channels": 3, "size": 32, **split}, info


def _parallel(tmp: Path, skipped: dict) -> dict:
    """Wall time of ``alma-bench run quickstart`` with 1 and with 2 workers (fresh processes,
    so imports and worker start-up are included, as a user sees them)."""
    import subprocess

    out: dict = {"suite": "quickstart"}
    for workers in (1, 2):
        cmd = [sys.executable, "-m", "alma_bench.cli", "run", "quickstart", "--quiet",
               "--workers", str(workers), "--out", str(tmp / f"qs{workers}")]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        out[f"workers_{workers}_s"] = time.perf_counter() - t0
        if done.returncode != 0:
            skipped["workers_speedup"] = f"quickstart failed: {done.stderr.strip()[-300:]}"
            out["workers_speedup"] = None
            return out
    out["workers_speedup"] = out["workers_1_s"] / out["workers_2_s"]
    return out


def _targets(r: dict) -> dict:
    out = {}
    for key, (limit, kind) in TARGETS.items():
        v = r.get(key)
        met = None if v is None else (v <= limit if kind == "max" else v >= limit)
        miss = None if v is None or met else (v / limit - 1 if kind == "max" else 1 - v / limit)
        out[key] = {"value": v, "target": f"{'<=' if kind == 'max' else '>='} {limit}",
                    "met": met, "missed_by": miss}
        iv = r.get(key.replace("_ratio", "_interval")) if key.endswith("_ratio") else None
        if iv and iv.get("ci") and iv["ci"][0] is not None:
            lo, hi = iv["ci"]
            out[key]["ci"] = [lo, hi]
            # the whole interval on the right side of the limit: met (or missed) beyond doubt
            out[key]["met_by_interval"] = hi <= limit if kind == "max" else lo >= limit
            out[key]["missed_by_interval"] = (lo > limit if kind == "max" else hi < limit)
    return out
