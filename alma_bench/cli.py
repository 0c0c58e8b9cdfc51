"""alma-bench command line: list | run | show | compare | report | perf.

Heavy imports (torch, Avalanche) happen inside the commands that need them, so ``list`` and
errors answer fast. Every user error prints one line and exits with code 2; exit codes are
listed in alma_bench/errors.py and the README ("Exit codes").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

from alma_bench.analysis.commands import cmd_compare, cmd_report, cmd_show
from alma_bench.errors import UserError
from alma_bench.execute.commands import cmd_run, cmd_train_agent
from alma_bench.execute.options import EXECUTORS, add_cluster_options

KINDS = ("suites", "strategies", "streams", "models", "pruners", "schedules")


def main(argv: list[str] | None = None) -> int:
    from alma_bench.run.memory import tune_malloc

    tune_malloc()  # before any tensor: no page-fault storm in evaluation (alma_bench/run/memory.py)
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)  # torch is not loaded yet: the wait policy still counts
    _set_wait_policy(args)
    # Warnings (e.g. a third-party UserWarning at import, or one raised inside a run, which
    # the executors hand back) are held back while the command runs: an error stays one line,
    # and a command that succeeds shows them at its end, each once; under --quiet only
    # alma-bench's own (e.g. a results file it skipped).
    with warnings.catch_warnings(record=True) as held:
        try:
            code = _command(args, argv)
        except UserError as e:
            print(f"alma-bench: error: {_printable(str(e))}", file=sys.stderr)
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


def _printable(text: str) -> str:
    """Control characters escaped as Python writes them: a message quoting the user's input
    stays one line and cannot repaint the terminal (an ANSI escape in a value)."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: repr(m.group())[1:-1], text)


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
    if getattr(getattr(args, "func", None), "__module__", "") == "alma_bench.perf.command":
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


def _command(args, argv: list[str]) -> int:
    got: list[int] = []
    restore = _interrupting_signals(got)
    try:
        for f in getattr(args, "plugin", None) or []:
            from alma_bench.registry import load_plugin_file

            load_plugin_file(f)
        return args.func(args) or 0
    except KeyboardInterrupt:
        by = f" by {signal.Signals(got[-1]).name}" if got else ""
        print(f"alma-bench: interrupted{by}; finished megabatches are saved; to resume, run "
              f"again: alma-bench {shlex.join(argv)}", file=sys.stderr)
        return 130
    finally:
        restore()


def _interrupting_signals(got: list[int]):
    """SIGTERM and SIGHUP (a batch system's stop, a closed terminal) unwind like Ctrl-C:
    without this they end the process at once, leaving run.lock behind and saying nothing.
    Returns what puts the previous handlers back (the CLI may run inside another program)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        got.append(signum)
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


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
    r.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local (this process or a pool), ray, or slurm (through submitit)")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (executor ray)")
    r.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                   help="GPUs per run as a Ray task (default: 1 when the device is CUDA, else 0)")
    r.add_argument("--rerun", default=None, metavar="LABEL[,LABEL]|all",
                   help="train these runs again from scratch even when done (an entry's "
                        "label covers its grid expansions)")
    add_cluster_options(r)
    r.add_argument("--retry-failed", action="store_true",
                   help="rerun runs that failed before (without it they are skipped and listed)")
    r.add_argument("--no-wait", dest="wait", action="store_false",
                   help="skip runs another alma-bench process is training instead of waiting "
                        "for them; with --executor slurm, submit and return at once")
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
    s.add_argument("results", nargs="+", help="results folders (a run found twice counts once)")
    s.add_argument("--format", default="table", choices=("table", "csv", "markdown", "latex"))
    s.add_argument("--metrics", nargs="+", action="extend", metavar="M",
                   help="summary metrics to show, or a numeric field a strategy adds to its "
                        "rows (default: final_test_acc cer cer_count final_gen_gap "
                        "final_density wall_time)")
    s.set_defaults(func=cmd_show)

    c = sub.add_parser("compare", help="paired differences against a baseline, with 95%% "
                                       "t-intervals over shared seeds")
    c.add_argument("results", nargs="+", help="results folders (a run found twice counts once)")
    c.add_argument("--format", default="text", choices=("text", "csv", "markdown", "latex"))
    c.add_argument("--baseline", default=None, metavar="LABEL",
                   help="group or strategy label to compare against (default: dense if "
                        "present, else the first group)")
    c.add_argument("--metric", dest="metrics", nargs="+", action="extend", metavar="M",
                   help="summary metrics (default: final_test_acc cer)")
    c.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="figures and tables of a results directory")
    rep.add_argument("results", nargs="+", help="results folders (a run found twice counts once)")
    rep.add_argument("--out", default=None,
                     help="output directory (default RESULTS/report, of the first folder)")
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
    from alma_bench.perf.command import configure_parser

    configure_parser(pf)
    return p


def cmd_list(args) -> int:
    from alma_bench import registry
    from alma_bench.spec.config import read_suite_file, suite_names

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


class _GridAction(argparse.Action):
    """``--grid KEY=[...]`` is ``--set grid.KEY=[...]``: one list of suite edits, applied in
    command-line order, and the suite's own ``grid`` section does the expanding."""

    def __call__(self, parser, namespace, value, option_string=None):
        # a copy: argparse shares the default list between parses
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), f"grid.{value}"])


if __name__ == "__main__":
    sys.exit(main())
