"""alma-bench command line: list | run | show | compare | report | perf.

Heavy imports (torch, Avalanche) happen inside the commands that need them, so ``list`` and
errors answer fast. Every user error prints one line and exits with code 2; exit codes are
listed in alma_bench/errors.py and the README ("Exit codes").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from alma_bench.errors import UserError

KINDS = ("suites", "strategies", "streams", "models", "pruners", "schedules")


def main(argv: list[str] | None = None) -> int:
    from alma_bench.memory import tune_malloc

    tune_malloc()  # before any tensor: no page-fault storm in evaluation (alma_bench/memory.py)
    parser = _parser()
    args = parser.parse_args(argv)  # torch is not loaded yet: the wait policy still counts
    _set_wait_policy(args)
    # Warnings (e.g. a third-party UserWarning at import, or one raised inside a run, which
    # the executors hand back) are held back while the command runs: an error stays one line,
    # and a command that succeeds shows them at its end, each once; under --quiet only
    # alma-bench's own (e.g. a results file it skipped).
    with warnings.catch_warnings(record=True) as held:
        try:
            code = _command(args)
        except UserError as e:
            print(f"alma-bench: error: {e}", file=sys.stderr)
            return e.exit_code
        except OSError as e:  # a path the command reads or writes is not usable
            where = f"{e.filename}: " if e.filename else ""
            print(f"alma-bench: error: {where}{e.strerror or e}", file=sys.stderr)
            return 3
    quiet = getattr(args, "quiet", False)
    shown = set()
    for w in held:
        key = (str(w.message), w.category, w.filename, w.lineno)
        if key not in shown and not (quiet and not _own_code(w.filename)):
            shown.add(key)
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code


def _set_wait_policy(args) -> None:
    """OMP_WAIT_POLICY, unless the user set it; libgomp reads it once, when torch loads, and
    worker processes (and the pool's fork server) inherit it. Measured on 2 cores (issue 16):
    a run's 2 OpenMP threads alone are 1.2-1.8x faster under libgomp's default (spin a while,
    then sleep) than PASSIVE, which sleeps at once and is woken through the kernel at every
    parallel op; beside another busy process the default collapses (2x slower than PASSIVE).
    One-thread runs (a pool's workers) start no OpenMP thread: there it changes nothing. So
    the default stays for ``run`` on the local executor whose own runs cannot put more torch
    threads than cores on the machine (``--threads auto``, or N x workers <= cores), and
    PASSIVE is set for everything else. On a machine shared with other jobs, export
    OMP_WAIT_POLICY=PASSIVE."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return  # too late to matter, or the user's choice
    if (policy := _wait_policy(args)) is not None:
        os.environ["OMP_WAIT_POLICY"] = policy


def _wait_policy(args) -> str | None:
    """PASSIVE, or None (libgomp's default) for a local ``run`` that cannot oversubscribe."""
    if getattr(getattr(args, "func", None), "__module__", "") == "alma_bench.perf":
        return None  # perf measures one process alone, under the policy a single run gets
    if getattr(args, "func", None) is cmd_run and args.executor == "local":
        if args.threads == "auto":  # cores // runs threads, cores // threads workers at most
            return None
        cores = os.cpu_count() or 1
        if args.threads * (args.workers or max(1, cores // args.threads)) <= cores:
            return None
    return "PASSIVE"


def _own_code(filename: str) -> bool:
    """Whether ``filename`` is alma-bench's (its package, built-in strategies and streams)."""
    import importlib.util

    roots = [Path(d).resolve() for m in ("alma_bench", "alma_bench.strategies",
                                         "alma_bench.streams")
             for d in (importlib.util.find_spec(m).submodule_search_locations or [])]
    path = Path(filename).resolve()
    return any(path.is_relative_to(r) for r in roots)


def _command(args) -> int:
    try:
        for f in getattr(args, "plugin", None) or []:
            from alma_bench.registry import load_plugin_file

            load_plugin_file(f)
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("alma-bench: interrupted; finished megabatches are saved, run again to resume",
              file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from alma_bench import __version__

    p = argparse.ArgumentParser(prog="alma-bench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"alma-bench {__version__}")
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
    r.add_argument("--grid", dest="sets", action=_GridAction, metavar="KEY=[V1,V2]",
                   help="one run per value (cartesian over several --grid), e.g. "
                        "protocol.lr=[0.1,0.01] or strategies.osp-snip.density=[0.1,0.2]; "
                        "the same as --set grid.KEY=[...]")
    r.add_argument("--out", default="results", help="results directory (default: results)")
    r.add_argument("--plugin", action="append", metavar="FILE", help="load a plugin file")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    r.add_argument("--workers", type=int, default=None,
                   help="parallel runs in a process pool (default: cores / threads, at most "
                        "one per run)")
    r.add_argument("--executor", choices=("local", "ray"), default="local")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (executor ray)")
    r.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                   help="GPUs per run as a Ray task (default: 1 when the device is CUDA, else 0)")
    r.add_argument("--retry-failed", action="store_true",
                   help="rerun runs that failed before (without it they are skipped and listed)")
    r.add_argument("--no-wait", dest="wait", action="store_false",
                   help="skip runs another alma-bench process is training instead of waiting "
                        "for them")
    r.add_argument("--threads", type=_threads, default="auto", metavar="N|auto",
                   help="torch threads per run. auto (default): cores // runs when the "
                        "invocation has fewer runs than cores, else 1 (1 under Ray). Part of "
                        "each run's identity: CPU kernels split their sums by thread count, so "
                        "numbers differ with it")
    r.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    r.add_argument("--tensorboard", metavar="DIR",
                   help="TensorBoard logs, one directory per run (DIR/suite/label/seedN)")
    r.add_argument("--avalanche-loggers", metavar="DIR",
                   help="also run Avalanche's evaluation plugin with its Text, CSV and "
                        "TensorBoard loggers, one directory per run (DIR/suite/label/seedN); "
                        "slower, changes no number")
    r.add_argument("--dry-run", action="store_true", help="print the resolved runs and stop")
    r.add_argument("--quiet", action="store_true",
                   help="no progress bars and no third-party warnings")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("show", help="table of a results directory (mean and std over seeds "
                                    "per config)")
    s.add_argument("results")
    s.add_argument("--format", default="table", choices=("table", "csv", "markdown", "latex"))
    s.add_argument("--metrics", nargs="+", action="extend", metavar="M",
                   help="summary metrics to show (default: final_test_acc cer cer_count "
                        "final_gen_gap final_density wall_time)")
    s.set_defaults(func=cmd_show)

    c = sub.add_parser("compare", help="paired differences against a baseline, with 95%% "
                                       "t-intervals over shared seeds")
    c.add_argument("results")
    c.add_argument("--baseline", default=None, metavar="LABEL",
                   help="group or strategy label to compare against (default: dense if "
                        "present, else the first group)")
    c.add_argument("--metric", dest="metrics", nargs="+", action="extend", metavar="M",
                   help="summary metrics (default: final_test_acc cer)")
    c.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="figures and tables of a results directory")
    rep.add_argument("results")
    rep.add_argument("--out", default=None, help="output directory (default RESULTS/report)")
    rep.add_argument("--command", default=None,
                     help="the command to record as having made the results (default: this one)")
    rep.add_argument("--format", default="png", metavar="FMT[,FMT]",
                     help="figure formats, comma-separated: png, pdf, svg (default png; the "
                          "README embeds the png, else the first)")
    rep.set_defaults(func=cmd_report)

    ag = sub.add_parser("train-agent", help="train a RecurrentPPO schedule agent for a suite's "
                                            "rl-schedule (stream, model, protocol, params)")
    ag.add_argument("suite")
    ag.add_argument("--episodes", type=int, default=25, help="training episodes (default 25)")
    ag.add_argument("--envs", type=int, default=1,
                    help="parallel environments, one process and torch thread each when > 1")
    ag.add_argument("--out", default=None,
                    help="agent file (.zip; its env config is written beside it as .json); "
                         "default agents/<suite>[-<scale>].zip")
    ag.add_argument("--scale", help="scale preset of the suite")
    ag.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a suite field, as in run")
    ag.set_defaults(func=cmd_train_agent)

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


def _threads(text: str) -> int | str:
    """``--threads``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got '{text}'")
    return n


def cmd_run(args) -> int:
    from alma_bench.plan import choose_threads, plan
    from alma_bench.store import RunDir

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.ray_gpus is not None and args.ray_gpus < 0:
        raise UserError(f"--ray-gpus must be >= 0, got {args.ray_gpus}")
    strategies = args.strategies.split(",") if args.strategies else None
    ray_auto = args.executor == "ray" and args.threads == "auto"  # a Ray task: 1 CPU each
    suite = plan(args.suite, args.scale, args.sets, strategies, _ints(args.seeds, "--seeds"),
                 threads=1 if ray_auto else args.threads)
    threads, why = choose_threads(1 if ray_auto else args.threads, suite.runs)  # cached
    why = "auto: one CPU per Ray task" if ray_auto else why
    args.threads = threads  # resolved: the pool is sized by it (_execute)
    out = Path(args.out)
    states = {s.run_id: RunDir(out, s.results_name, s.run_id).inspect()[0] for s in suite.runs}
    todo = [s for s in suite.runs if states[s.run_id] != "done"]
    if args.dry_run:
        from alma_bench.runner import resolve_device

        dev = resolve_device(args.device)  # a bad device fails here too
        waiting = {s.run_id for s in todo}
        for spec in suite.runs:
            state = "would train" if spec.run_id in waiting else "done"
            if states[spec.run_id] == "failed":
                state = "failed: would retry" if args.retry_failed else "failed: skipped"
            deps = f" after {','.join(spec.deps.values())}" if spec.deps else ""
            print(f"{spec.run_id}  {spec.label:16s} seed={spec.seed}  {state}{deps}  "
                  f"strategy={spec.strategy}")
        print(f"{len(suite.runs)} runs of suite '{suite.name}'"
              + (f" (scale {suite.scale})" if suite.scale else "")
              + f": {len(suite.runs) - len(todo)} done, {len(todo)} would train on {dev}; "
              f"results in {out / suite.results_name}")
        workers = _workers(args.workers, len(todo), threads)
        where = ("as Ray tasks" if args.executor == "ray" else "1 worker (this process)"
                 if workers == 1 else f"{workers} workers")
        print(f"{threads} torch thread{'s' if threads != 1 else ''} per run ({why}); "
              f"{where}")
        if suite.runs:
            r = suite.runs[0]
            print("resolved: " + json.dumps({"stream": r.stream, "model": r.model,
                                              "protocol": r.protocol}, default=str))
        return 0
    from alma_bench.runner import resolve_device

    resolve_device(args.device)  # fail on a bad device before any work
    _prepare(out / suite.results_name)
    _note_reused(suite.runs, todo, out, args)
    done = len(suite.runs) - len(todo)
    bad = []
    if not todo:
        print(f"all {len(suite.runs)} runs of suite '{suite.name}' were already done "
              f"(results in {out / suite.results_name})")
    else:
        # failed runs still go to the executor: it skips them (under their lock) and says so
        failed = 0 if args.retry_failed else sum(states[s.run_id] == "failed" for s in todo)
        if done or failed:
            print(f"{done} of {len(suite.runs)} runs already done"
                  + (f", {failed} failed before (skipped)" if failed else "")
                  + f"; running {len(todo) - failed}")
        results = _execute(todo, args, out)
        bad = [(s, o) for s, o in results if o.state != "done"]
    finished = {s.run_id for s in suite.runs} - {s.run_id for s, _ in bad}
    if finished:  # only this invocation's runs: the folder may hold other --set variants
        cmd_show(argparse.Namespace(results=str(out / suite.results_name),
                                    labels=suite.labels, run_ids=finished))
    return _report_failures(bad, len(suite.runs))


def _prepare(folder: Path) -> None:
    """Before any work: the results folder must be writable (else one line, exit 3), and
    temporary files of writers that were killed go."""
    from alma_bench.store import check_writable, clean_stale_tmp

    check_writable(folder)
    for run in folder.iterdir():
        if run.is_dir():
            clean_stale_tmp(run)


def _report_failures(bad, total: int) -> int:
    """One line per run that did not finish; exit code 4 when there is any (else 0)."""
    if not bad:
        return 0
    print(f"alma-bench: {len(bad)} of {total} runs did not finish (exit code 4):",
          file=sys.stderr)
    for spec, o in bad:
        what = {"failed": "failed", "skipped": "failed before, skipped (--retry-failed reruns "
                "it)" if o.log else "skipped", "busy": "left to another process"}[o.state]
        log = f"; traceback in {o.log}" if o.log else ""
        print(f"  {spec.label} seed {spec.seed} ({spec.run_id}): {what}: {o.error or o.owner}"
              f"{log}", file=sys.stderr)
    return 4


def _note_reused(runs, todo, out, args) -> None:
    """One line per finished run reused under a different environment (never silent)."""
    from alma_bench.provenance import invocation, note_reuse
    from alma_bench.store import RunDir, read_json

    waiting = {s.run_id for s in todo}
    env = invocation(args.plugin)
    for spec in runs:
        if spec.run_id not in waiting:
            note_reuse(spec, read_json(RunDir(out, spec.results_name, spec.run_id).config) or {},
                       args.device, env)


def _execute(todo, args, out):
    from tqdm import tqdm

    from alma_bench.executors import Job, run_pool, run_ray, run_serial
    from alma_bench.provenance import invocation

    job = Job(out=out, device=args.device, plugins=tuple(args.plugin or ()),
              channels_last=args.channels_last, tensorboard=args.tensorboard,
              env=invocation(args.plugin), retry_failed=args.retry_failed, wait=args.wait,
              gpus=args.ray_gpus, avalanche_loggers=args.avalanche_loggers)
    runs_bar = tqdm(total=len(todo), desc="runs", unit="run", disable=args.quiet,
                    position=0, leave=True)
    mb_bar = None  # the megabatches of the run in progress (serial runs only)
    mb_done = 0  # its megabatches done

    def end_run():
        nonlocal mb_bar
        if mb_bar is not None:
            mb_bar.close()
            mb_bar = None

    def on_done(spec, summary):
        end_run()
        runs_bar.update(1)
        runs_bar.set_postfix_str(f"{spec.label} seed {spec.seed}: "
                                 f"acc {summary['final_test_acc']:.3f}")

    def on_failed(spec, outcome):
        end_run()
        runs_bar.update(1)
        runs_bar.set_postfix_str(f"{spec.label} seed {spec.seed}: {outcome.state}")

    def on_progress(running):
        # the pool's runs, each with its megabatch, read from the status files the workers
        # write after every megabatch (no channel between processes needed)
        from alma_bench.store import RunDir, read_json

        parts = []
        for spec in running:
            st = read_json(RunDir(out, spec.results_name, spec.run_id).status) or {}
            n = st.get("n_megabatches") or "?"
            parts.append(f"{spec.label} s{spec.seed} mb {st.get('megabatches_done', 0)}/{n}")
        runs_bar.set_postfix_str(" | ".join(parts), refresh=True)

    def say(line):  # a line between progress bars, not through them
        tqdm.write(f"alma-bench: {line}", file=sys.stderr)

    def on_megabatch(t, n, row):
        nonlocal mb_bar, mb_done
        if mb_bar is not None and (mb_bar.total != n or t != mb_done + 1):
            end_run()  # another run (its predecessor neither finished nor failed)
        mb_done = t  # (a disabled bar, under --quiet, does not count)
        took = f", last {row['wall_time']:.1f}s" if row.get("wall_time") is not None else ""
        postfix = f"test acc {row['test_acc']:.3f}{took}"  # with the megabatch's own time
        if mb_bar is None:
            # The bar starts when the run's first megabatch of this invocation has ended, at
            # t done: megabatches trained before (a resumed run's) and this one are its start
            # (``initial``), not progress made in no time, so tqdm's rate counts only the
            # megabatches it sees trained.
            mb_bar = tqdm(total=n, initial=t, desc="  megabatches", unit="mb", postfix=postfix,
                          disable=args.quiet, position=1, leave=False)
        else:
            mb_bar.set_postfix_str(postfix, refresh=False)
            mb_bar.update(1)

    try:
        hooks = dict(on_done=on_done, on_failed=on_failed, say=say)
        if args.executor == "ray":
            return run_ray(todo, job, args.ray_address, **hooks)
        if (workers := _workers(args.workers, len(todo), args.threads)) > 1:
            return run_pool(todo, job, workers, on_progress=on_progress, **hooks)
        return run_serial(todo, job, on_megabatch=on_megabatch, **hooks)
    finally:
        end_run()
        runs_bar.close()


def _workers(requested: int | None, n_runs: int, threads: int = 1) -> int:
    """Small models train faster as parallel one-thread runs than as one multi-thread run
    (measured: see reports/perf.md), so a grid uses every core by default: cores / threads
    workers (``threads`` resolved, never ``auto``), at most one per run left to train."""
    import os

    if requested is not None:
        return requested
    return max(1, min((os.cpu_count() or 1) // max(1, threads), n_runs))


def cmd_show(args) -> int:
    from alma_bench import tables
    from alma_bench.results import load, summary_table

    res = load(args.results)
    runs = res.runs
    ids = getattr(args, "run_ids", None)
    if ids is not None:
        runs = runs[runs["run_id"].isin(ids)]
    metrics = tables.check_metrics(runs, getattr(args, "metrics", None), tables.DEFAULT_METRICS)
    # groups are labelled for the rows shown: after a run, only this invocation's config
    table = tables.in_order(summary_table(runs, metrics), getattr(args, "labels", None))
    text = tables.render(table, metrics, getattr(args, "format", "table"))
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_compare(args) -> int:
    from alma_bench import compare, tables
    from alma_bench.results import load

    runs = load(args.results).runs
    metrics = tables.check_metrics(runs, args.metrics, compare.DEFAULT_METRICS)
    print(compare.format_text(compare.paired(runs, args.baseline, metrics)))
    return 0


class _GridAction(argparse.Action):
    """``--grid KEY=[...]`` is ``--set grid.KEY=[...]``: one list of suite edits, applied in
    command-line order, and the suite's own ``grid`` section does the expanding."""

    def __call__(self, parser, namespace, value, option_string=None):
        # a copy: argparse shares the default list between parses
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), f"grid.{value}"])


def cmd_train_agent(args) -> int:
    from alma_bench.config import Seeds, derive
    from alma_bench.strategies.rl_schedule import _rl

    agent = _rl()[0]  # a one-line error without the rl extra
    strategy, config, seed, name = agent.suite_config(args.suite, args.scale, args.sets)
    out = Path(args.out or f"agents/{name}.zip")
    # the seed an in-run rl-schedule of the suite's first seed uses: with the same episodes
    # and envs, the agent that run would train
    s = Seeds.derive(seed).strategy
    model, returns, secs = agent.train_agent(config, args.episodes, args.envs,
                                             seed=derive(s, "rl-agent"),
                                             train_fraction=strategy.train_fraction,
                                             progress=True)
    agent.save_agent(model, out, config, {"episodes": len(returns), "returns": returns,
                                          "train_s": secs, "suite": args.suite,
                                          "scale": args.scale, "sets": args.sets})
    # an unseen network (a new initialisation) on the full training set, deterministically
    ev = agent.evaluate(model, config, seed=derive(s, "rl-unseen"))
    last = returns[-10:]
    print(f"agent saved to {out} (config {agent.config_path(out)}): {len(returns)} episodes in "
          f"{secs:.1f} s, mean reward of the last {len(last)} {sum(last) / len(last):.3f}")
    print(f"unseen network: final val acc {ev['val_acc']:.3f} at density {ev['density']:.4f} "
          f"over {len(ev['schedule'])} decisions")
    return 0


def cmd_report(args) -> int:
    from alma_bench.report import make_report

    cmd = args.command or ("alma-bench report " + args.results
                           + (f" --out {args.out}" if args.out else "")
                           + (f" --format {args.format}" if args.format != "png" else ""))
    path = make_report(args.results, args.out, command=cmd, formats=args.format)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
