"""alma-bench command line: list | run | show | report | perf.

Heavy imports (torch, Avalanche) happen inside the commands that need them, so ``list`` and
errors answer fast. Every user error prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from alma_bench.errors import UserError

KINDS = ("suites", "strategies", "streams", "models", "pruners", "schedules")


def main(argv: list[str] | None = None) -> int:
    if "torch" not in sys.modules:
        # Spinning OpenMP threads collapse (2-4x slower) when another process shares the
        # cores; passive waiting costs nothing alone (reports/perf.md). libgomp reads this
        # once, when torch loads, and worker processes inherit it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        for f in getattr(args, "plugin", None) or []:
            from alma_bench.registry import load_plugin_file

            load_plugin_file(f)
        return args.func(args) or 0
    except UserError as e:
        print(f"alma-bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alma-bench: interrupted; finished megabatches are saved, run again to resume",
              file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alma-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list suites or registered components")
    ls.add_argument("kind", nargs="?", default="suites", choices=KINDS)
    ls.add_argument("--plugin", action="append", metavar="FILE", help="load a plugin file")
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("run", help="run a suite (a shipped name or a YAML file)")
    r.add_argument("suite")
    r.add_argument("--scale", help="scale preset of the suite (e.g. smoke, quick, paper)")
    r.add_argument("--strategies", help="comma-separated strategy labels to run")
    r.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite field, e.g. protocol.epochs=2 or stream.subset=5000")
    r.add_argument("--out", default="results", help="results directory (default: results)")
    r.add_argument("--plugin", action="append", metavar="FILE", help="load a plugin file")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    r.add_argument("--workers", type=int, default=None,
                   help="parallel runs in a process pool (default: one per CPU core, at most "
                        "one per run; each gets cores/workers torch threads)")
    r.add_argument("--executor", choices=("local", "ray"), default="local")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (executor ray)")
    r.add_argument("--threads", type=int, default=None, help="torch threads per run")
    r.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    r.add_argument("--tensorboard", metavar="DIR", help="write per-megabatch TensorBoard scalars")
    r.add_argument("--dry-run", action="store_true", help="print the resolved runs and stop")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("show", help="table of a results directory (mean and std over seeds)")
    s.add_argument("results")
    s.set_defaults(func=cmd_show)

    rep = sub.add_parser("report", help="figures and tables of a results directory")
    rep.add_argument("results")
    rep.add_argument("--out", default=None, help="output directory (default RESULTS/report)")
    rep.add_argument("--command", default=None,
                     help="the command to record as having made the results (default: this one)")
    rep.set_defaults(func=cmd_report)

    pf = sub.add_parser("perf", help="measure the harness against a bare PyTorch loop")
    from alma_bench.perf import configure_parser

    configure_parser(pf)
    return p


def cmd_list(args) -> int:
    from alma_bench import registry
    from alma_bench.config import read_suite_file, suite_names

    if args.kind == "suites":
        for name in suite_names():
            raw = read_suite_file(name)
            scales = ", ".join(sorted(raw.get("scales") or {}))
            print(f"{name:18s} {raw.get('description', '').strip().splitlines()[0]}"
                  + (f"  [scales: {scales}]" if scales else ""))
        return 0
    reg = getattr(registry, args.kind.upper())
    for e in reg.entries():
        print(f"{e.name:18s} {e.description}")
        params = e.params()
        if params:
            print("    " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
    return 0


def _fmt(v) -> str:
    return "(required)" if v is dataclasses.MISSING else repr(v)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got '{text}'") from None


def cmd_run(args) -> int:
    from alma_bench.config import load_suite
    from alma_bench.store import RunDir

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    strategies = args.strategies.split(",") if args.strategies else None
    suite = load_suite(args.suite, args.scale, args.sets, strategies, _ints(args.seeds, "--seeds"))
    out = Path(args.out)
    if args.dry_run:
        for spec in suite.runs:
            print(f"{spec.run_id}  {spec.label:16s} seed={spec.seed}  "
                  f"stream={spec.stream['name']} model={spec.model['name']} "
                  f"strategy={spec.strategy}")
        print(f"{len(suite.runs)} runs of suite '{suite.name}'"
              + (f" (scale {suite.scale})" if suite.scale else ""))
        return 0
    from alma_bench.runner import resolve_device

    resolve_device(args.device)  # fail on a bad device before any work
    todo = [s for s in suite.runs if not RunDir(out, s.results_name, s.run_id).is_done()]
    done = len(suite.runs) - len(todo)
    if not todo:
        print(f"all {len(suite.runs)} runs of suite '{suite.name}' were already done "
              f"(results in {out / suite.results_name})")
    else:
        if done:
            print(f"{done} of {len(suite.runs)} runs already done; running {len(todo)}")
        _execute(todo, args, out)
    # only this invocation's runs: the folder may hold runs of other --set variants
    cmd_show(argparse.Namespace(results=str(out / suite.results_name), labels=suite.labels,
                                run_ids={s.run_id for s in suite.runs}))
    return 0


def _execute(todo, args, out):
    from tqdm import tqdm

    from alma_bench.executors import Job, run_pool, run_ray, run_serial

    job = Job(out=out, device=args.device, plugins=tuple(args.plugin or ()),
              channels_last=args.channels_last, tensorboard=args.tensorboard,
              threads=args.threads)
    runs_bar = tqdm(total=len(todo), desc="runs", unit="run", disable=args.quiet,
                    position=0, leave=True)
    mb_bar = None

    def on_done(spec, summary):
        runs_bar.update(1)
        runs_bar.set_postfix_str(f"{spec.label} seed {spec.seed}: "
                                 f"acc {summary['final_test_acc']:.3f}")

    def on_megabatch(t, n, row):
        nonlocal mb_bar
        if mb_bar is None or t == 1 or mb_bar.total != n:
            if mb_bar is not None:
                mb_bar.close()
            mb_bar = tqdm(total=n, desc="  megabatches", unit="mb", disable=args.quiet,
                          position=1, leave=False)
            mb_bar.update(t - 1)
        mb_bar.update(1)
        mb_bar.set_postfix_str(f"test acc {row['test_acc']:.3f}")

    try:
        if args.executor == "ray":
            run_ray(todo, job, args.ray_address, on_done=on_done)
        elif (workers := _workers(args.workers, len(todo))) > 1:
            run_pool(todo, job, workers, on_done=on_done)
        else:
            run_serial(todo, job, on_done=on_done, on_megabatch=on_megabatch)
    finally:
        if mb_bar is not None:
            mb_bar.close()
        runs_bar.close()


def _workers(requested: int | None, n_runs: int) -> int:
    """Small models train faster as parallel one-thread runs than as one multi-thread run
    (measured: see reports/perf.md), so a grid uses every core by default."""
    import os

    if requested is not None:
        return requested
    return max(1, min(os.cpu_count() or 1, n_runs))


def cmd_show(args) -> int:
    from alma_bench.results import load, summary_table

    res = load(args.results)
    runs = res.runs
    ids = getattr(args, "run_ids", None)
    if ids is not None:
        runs = runs[runs["run_id"].isin(ids)]
    table = summary_table(runs)
    print(format_table(table, getattr(args, "labels", None)))
    return 0


def format_table(table, order=None) -> str:
    """Mean ± std over seeds per strategy, as aligned text."""
    cols = [("final_test_acc", "final acc %", 100), ("cer", "CER", 1),
            ("cer_count", "CER count", 1), ("final_gen_gap", "gap %", 100),
            ("final_density", "density", 1), ("wall_time", "time s", 1)]
    rows = []
    for _, r in table.iterrows():
        cells = [str(r["label"]), str(int(r["n_seeds"]))]
        for key, _, scale in cols:
            m, s = r.get(f"{key}_mean"), r.get(f"{key}_std")
            cells.append(_pm(m, s, scale))
        rows.append(cells)
    if order:
        rank = {label: i for i, label in enumerate(order)}
        rows.sort(key=lambda c: rank.get(c[0], len(rank)))
    header = ["strategy", "seeds", *[c[1] for c in cols]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _pm(m, s, scale) -> str:
    import math

    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return f"{m * scale:.2f}"
    return f"{m * scale:.2f} ± {s * scale:.2f}"


def cmd_report(args) -> int:
    from alma_bench.report import make_report

    cmd = args.command or ("alma-bench report " + args.results
                           + (f" --out {args.out}" if args.out else ""))
    path = make_report(args.results, args.out, command=cmd)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
