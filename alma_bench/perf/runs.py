"""``alma-bench perf --run SUITE[:LABEL]``: one real run against its floor, in one process.

The run goes through ``runner.execute`` as ``alma-bench run`` does, with a
``timing.Breakdown`` that says where its wall time goes. Its floor is the work it cannot
avoid, measured right after it in the same process, thread count and malloc settings: the
bare training loop (``perf_bare.bare_train``) over the same megabatch training sets for the
epochs each megabatch actually trained, plus bare evaluation passes (``perf_bare.bare_eval``)
over the images the protocol evaluates (per-epoch validation, the test set and the training
set per megabatch). ``ratio`` is the run's wall time over the floor; process start-up (the
imports a worker pays once) is measured in a fresh interpreter and reported beside it.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the configurations ``make perf`` measures end to end: quickstart's dense run, and the
#: issue's typical small-scale configuration (resnet20, 10k CIFAR-10 images, 8 megabatches
#: with union replay, 3 epochs per megabatch, batch 64, multistep LR, augmentation)
DEFAULT_RUNS = (
    {"name": "quickstart", "target": "quickstart:dense", "scale": None, "sets": []},
    {"name": "resnet20-cifar10-10k", "target": "app-cifar10:dense", "scale": "quick",
     "sets": ["model={name: resnet20}", "stream.subset=10000", "protocol.batch_size=64",
              "protocol.augment=true", "protocol.lr=0.1", "protocol.lr_schedule=multistep",
              "protocol.milestones=[2]"]},
)
#: every key ``end_to_end`` holds per configuration (tests/test_perf.py checks them)
KEYS = ("target", "run_id", "threads", "wall_s", "floor_s", "ratio", "startup_s",
        "ratio_with_startup", "cpu_user_s", "cpu_system_s", "minor_faults", "floor",
        "breakdown", "counts", "load_before", "load_after", "pairs", "ratios",
        "ratio_quartiles", "ratio_interval", "breakdown_pairs", "passes")
#: the order-statistic interval needs 6 pairs for 95%; the measurement may stop early on
#: precision only from there (below it, the t-interval on log ratios is reported)
MIN_PAIRS_TO_STOP = 6


def parse_target(target: str) -> tuple[str, str | None]:
    suite, _, label = target.partition(":")
    return suite, (label or None)


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": r.ru_utime, "system": r.ru_stime, "minflt": r.ru_minflt,
            "majflt": r.ru_majflt, "t": time.perf_counter()}


def _delta(a: dict, b: dict) -> dict:
    return {"wall_s": b["t"] - a["t"], "cpu_user_s": b["user"] - a["user"],
            "cpu_system_s": b["system"] - a["system"], "minor_faults": b["minflt"] - a["minflt"],
            "major_faults": b["majflt"] - a["majflt"]}


#: what a run worker imports before its first run (plus the run's strategy module)
STARTUP_MODULES = ("alma_bench.run.runner", "alma_bench.run.training", "alma_bench.registry")


def startup_s(strategy_module: str | None = None) -> float:
    """Wall time of a fresh interpreter importing what a run worker imports."""
    mods = [*STARTUP_MODULES, *([strategy_module] if strategy_module else [])]
    code = "import " + ", ".join(mods)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def resolve(target: str, scale=None, sets=(), threads: int | None = None,
            seed: int | None = None):
    """The RunSpec of the first run of ``target`` (or of ``seed``) as ``alma-bench run`` plans
    it (its thread count and run id), with its data loaded once (the disk cache warm)."""
    from alma_bench.errors import UserError
    from alma_bench.execute.plan import plan
    from alma_bench.registry import STREAMS
    from alma_bench.spec.config import split_and_source

    suite_name, label = parse_target(target)
    wanted = [label] if label else None
    if seed is None:  # the first seed of the entry
        runs = [r for r in plan(suite_name, scale, list(sets), wanted, None).runs
                if label is None or r.label == label]
        if not runs:
            raise UserError(f"no run of '{target}' to measure")
        seed = runs[0].seed
    # a plan of this one run: under --threads auto it gets the threads `alma-bench run` gives
    # a single run (alma_bench/execute/plan.py), with the same run id
    suite = plan(suite_name, scale, list(sets), wanted, [seed], threads=threads or "auto")
    spec = next(r for r in suite.runs if label is None or r.label == label)
    if spec.deps:
        raise UserError(f"'{target}' depends on other runs ({', '.join(spec.deps)}); "
                        "measure a run without dependencies")
    _, source, params = split_and_source(spec.stream)
    STREAMS.create(source, **params).load()  # the disk cache is warm, as for any later run
    return spec


def measure_run(target: str, scale=None, sets=(), threads: int | None = None,
                seed: int | None = None, device: str = "cpu", min_s: float = 300.0,
                max_pairs: int = 45, min_pairs: int = 1, precision: float = 0.02) -> dict:
    """The end-to-end measurement of the first run of ``target`` (or of ``seed``), with
    ``threads`` torch threads (default: what ``alma-bench run`` gives that single run).
    Pairs go on until ``min_pairs`` are done and then until ``min_s`` seconds are spent,
    ``max_pairs`` are done, or (from 6 pairs on) the ratio's 95% interval is within
    ``precision`` of its median."""
    import torch

    from alma_bench.perf import bare as pb
    from alma_bench.perf import intervals
    from alma_bench.run.memory import tune_malloc

    tune_malloc()  # as every run does; the floor is measured under the same settings
    spec = resolve(target, scale, sets, threads, seed)
    threads = spec.threads
    protocol = spec.protocol_obj()
    out: dict = {"target": target, "scale": scale, "sets": list(sets), "run_id": spec.run_id,
                 "threads": threads, "load_before": pb.load_average()}
    strategy_mod = type(_strategy(spec)).__module__
    out["startup_s"] = startup_s(strategy_mod)
    torch.set_num_threads(threads)
    # A short run's single pair is noise: on this machine quickstart's pairs read 0.83 to
    # 1.68 within ten minutes (the host's speed drifts over seconds; the same bare loop took
    # 2.9 to 4.6 s). Run and floor are measured in pairs, back to back, until ``min_s``
    # seconds are spent (or ``max_pairs`` pairs), every other pair with the floor first so a
    # drift within a pair does not favour one side; the report is the median pair, with
    # every pair's ratio and their quartiles beside it. A long run stays a single pair.
    pairs, t0 = [], time.perf_counter()

    def more() -> bool:
        if len(pairs) < max(1, min_pairs):
            return True
        if len(pairs) >= max_pairs or time.perf_counter() - t0 >= min_s:
            return False
        return not (len(pairs) >= MIN_PAIRS_TO_STOP and intervals.summarise_ratio(
            [p["ratio"] for p in pairs], precision, MIN_PAIRS_TO_STOP)["precise"])

    while more():
        pairs.append(_pair(spec, protocol, device, floor_first=len(pairs) % 2 == 1,
                           epochs=pairs[0]["epochs"] if pairs else None))
        print(f"  pair {len(pairs)}: ratio {pairs[-1]['ratio']:.3f}", file=sys.stderr)
    ratios = [p["ratio"] for p in pairs]
    median = sorted(range(len(pairs)), key=ratios.__getitem__)[len(pairs) // 2]
    out.update(pairs[median])
    out["pairs"], out["ratios"] = len(pairs), ratios
    out["ratio_quartiles"] = (statistics.quantiles(ratios, n=4) if len(ratios) > 1
                              else [ratios[0]] * 3)
    # the ratio's 95% interval over the pairs (intervals.median_interval: order statistics
    # from 6 pairs, a t-interval on log ratios below), and the breakdown of every pair
    out["ratio_interval"] = intervals.summarise_ratio(ratios, precision, MIN_PAIRS_TO_STOP)
    out["breakdown_pairs"] = {k: [p["breakdown"][k] for p in pairs] for k in out["breakdown"]}
    out["passes"] = passes(pairs)
    out["ratio_with_startup"] = (out["wall_s"] + out["startup_s"]) / out["floor_s"]
    out["load_after"] = pb.load_average()
    return out


#: the run's evaluation passes: breakdown part -> the count of images it evaluated
PASSES = {"test_pass": "test_images", "train_pass": "train_images",
          "val_pass": "final_val_images", "validation": "val_images"}


def passes(pairs: list[dict]) -> dict:
    """Each evaluation pass as the run's own timer recorded it (``run/timing.Breakdown``),
    the median over the pairs: seconds in the run, images, images/s, and seconds per
    megabatch (the test pass and the generalisation gap's train pass run once per megabatch;
    ``validation`` is the per-epoch validation, ``val_pass`` a final one not reused)."""
    out = {}
    for part, count in PASSES.items():
        secs = statistics.median(p["breakdown"][part] for p in pairs)
        images = pairs[0]["counts"].get(count, 0)
        n_mb = len(pairs[0]["epochs"])
        out[part] = {"seconds": secs, "images": images,
                     "images_per_s": images / secs if secs else None,
                     "seconds_per_megabatch": secs / n_mb if n_mb else None,
                     "share_of_run": secs / statistics.median(p["wall_s"] for p in pairs)}
    return out


def _pair(spec, protocol, device: str, floor_first: bool = False,
          epochs: list[int] | None = None) -> dict:
    """One real run of ``spec`` in a temporary folder and its floor in this process, the run
    first, or the floor first when ``floor_first`` (it then needs the run's ``epochs`` per
    megabatch, known from an earlier pair: a run's epochs are a function of its seed)."""
    if floor_first:
        floor = _floor(spec, protocol, epochs)
        out = _run_once(spec, device)
    else:
        out = _run_once(spec, device)
        floor = _floor(spec, protocol, out["epochs"])
    out["floor"] = floor
    out["floor_s"] = floor["train_s"] + floor["eval_s"]
    out["ratio"] = out["wall_s"] / out["floor_s"]
    out["faults_vs_floor"] = (out["minor_faults"] / floor["minor_faults"]
                              if floor["minor_faults"] else None)
    return out


def _run_once(spec, device: str) -> dict:
    from alma_bench.run import runner
    from alma_bench.run.timing import Breakdown
    from alma_bench.store.files import read_rows
    from alma_bench.store.rundir import RunDir

    timer = Breakdown()
    runner._DATA_CACHE.clear()  # planning may have loaded it (--threads auto): time the start
    with tempfile.TemporaryDirectory(prefix="alma-perf-run-") as tmp:
        before = _usage()
        runner.execute(spec, Path(tmp), device, timer=timer)
        run = _delta(before, _usage())
        rows = read_rows(RunDir(Path(tmp), spec.results_name, spec.run_id).metrics)
    out = {k: run[k] for k in ("wall_s", "cpu_user_s", "cpu_system_s", "minor_faults",
                               "major_faults")}
    bd = timer.result()
    out["breakdown"], out["counts"] = bd["seconds"], bd["counts"]
    out["epochs"] = [int(r["epochs_trained"]) for r in rows]
    return out


def _floor(spec, protocol, epochs: list[int]) -> dict:
    """The bare training loop and bare evaluation passes over what the run trained on and
    evaluated, on the same data and threads."""
    from alma_bench.perf import bare as pb
    from alma_bench.registry import MODELS
    from alma_bench.run import runner
    from alma_bench.run.stream import build_stream

    data = runner.load_data(spec.stream)
    stream = build_stream(data, spec.split(), spec.seeds().stream, name=spec.stream["name"])
    sets_t = [stream.train_set(t) for t in range(stream.n_megabatches)]
    mspec = {k: v for k, v in spec.model.items() if k != "name"}

    def model_fn():
        return MODELS.create(spec.model["name"], **mspec).build(stream.input_shape,
                                                                  stream.num_classes)

    kw = dict(batch_size=protocol.batch_size, lr=protocol.lr, momentum=protocol.momentum,
              weight_decay=protocol.weight_decay, augment=protocol.augment,
              padding=protocol.crop_padding, mean=data.mean, std=data.std, channels_last=False)
    before = _usage()
    train = pb.bare_train(sets_t, model_fn, epochs=epochs, **kw)
    model = model_fn()
    t0 = time.perf_counter()
    images = 0
    ebs = protocol.eval_batch_size
    for t, (x, _) in enumerate(sets_t):
        vx = stream.val_set(t)[0]
        for _ in range(epochs[t]):  # per-epoch validation
            images += pb.bare_eval(model, vx, ebs, data.mean, data.std)
        images += pb.bare_eval(model, stream.test_set()[0], ebs, data.mean, data.std)
        k = protocol.train_eval_sample
        images += pb.bare_eval(model, x[:k] if k else x, ebs, data.mean, data.std)
    eval_s = time.perf_counter() - t0
    floor = _delta(before, _usage())
    return {"train_s": train["loop_s"], "eval_s": eval_s, "samples": train["samples"],
            "steps": train["steps"], "eval_images": images,
            "cpu_user_s": floor["cpu_user_s"], "cpu_system_s": floor["cpu_system_s"],
            "minor_faults": floor["minor_faults"]}


def _strategy(spec):
    from alma_bench.spec import compose

    return compose.create(spec.strategy["name"], spec.strategy["params"])


# --------------------------------------------------------------------------- the report

def _g(v, fmt="{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def format_rows(r: dict) -> list[tuple[str, str]]:
    """Rows of the perf table for one end-to-end measurement."""
    from alma_bench.perf.intervals import format_ratio

    b, fl, n = r["breakdown"], r["floor"], r["target"]
    wall = r["wall_s"]

    def share(s):
        return f"{s:.3g} s ({s / wall:.1%})" if wall else f"{s:.3g} s"

    pairs = r.get("ratios") or [r["ratio"]]
    rows = [(f"{n}: whole run / floor (training + evaluation loops)",
             f"{r['ratio']:.3f} ({wall:.3g} s / {r['floor_s']:.3g} s; {r['threads']} thread(s))"),
            (f"{n}: run and floor pairs (the median reported): quartiles; ratios",
             f"{len(pairs)} pairs: " + " / ".join(f"{x:.3f}" for x in r.get(
                 "ratio_quartiles", [r["ratio"]] * 3)) + "; "
             + ", ".join(f"{x:.2f}" for x in pairs)),
            (f"{n}: whole run / floor: median and 95% interval over the pairs",
             format_ratio(r.get("ratio_interval"))),
            (f"{n}: floor: bare training s / bare evaluation s",
             f"{fl['train_s']:.3g} / {fl['eval_s']:.3g} ({fl['samples']} samples, "
             f"{fl['eval_images']} images)"),
            (f"{n}: process start-up (imports) s; ratio with it",
             f"{r['startup_s']:.3g}; {r['ratio_with_startup']:.3f}")]
    rows += [(f"{n}: breakdown (median pair): {part.replace('_', ' ')}", share(s))
             for part, s in b.items()]
    for part, ps in (r.get("passes") or {}).items():
        rows.append((f"{n}: {part.replace('_', ' ')} (median of pairs): s, s per megabatch, "
                     "images, img/s",
                     f"{ps['seconds']:.3g}, {_g(ps['seconds_per_megabatch'])}, {ps['images']}, "
                     f"{_g(ps['images_per_s'], '{:.0f}')} ({ps['share_of_run']:.1%} of the run)"))
    rows += [(f"{n}: CPU user / system s (floor)",
              f"{r['cpu_user_s']:.3g} / {r['cpu_system_s']:.3g} "
              f"({fl['cpu_user_s']:.3g} / {fl['cpu_system_s']:.3g})"),
             (f"{n}: minor page faults (floor)", f"{r['minor_faults']} ({fl['minor_faults']})"),
             (f"{n}: validation passes reused", str(r["counts"].get("val_passes_reused")))]
    return rows
