"""The ``run`` and ``train-agent`` commands (alma_bench/cli.py parses their options): plan a
suite, say what a dry run would do, execute the runs left to train on the chosen executor with
progress bars, and show the finished runs' table.

Heavy imports (torch, Avalanche) happen inside the commands, so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from alma_bench.errors import UserError, unknown


def cmd_run(args) -> int:
    from alma_bench.execute.plan import choose_threads, plan
    from alma_bench.store.rundir import RunDir

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.ray_gpus is not None and args.ray_gpus < 0:
        raise UserError(f"--ray-gpus must be >= 0, got {args.ray_gpus}")
    _check_cluster_args(args)
    strategies = args.strategies.split(",") if args.strategies else None
    # a Ray or SLURM task: 1 CPU each (the login node's cores say nothing of the nodes')
    remote_auto = args.executor in ("ray", "slurm") and args.threads == "auto"
    suite = plan(args.suite, args.scale, args.sets, strategies, _ints(args.seeds, "--seeds"),
                 threads=1 if remote_auto else args.threads)
    threads, why = choose_threads(1 if remote_auto else args.threads, suite.runs)  # cached
    if remote_auto:
        why = f"auto: one CPU per {'Ray' if args.executor == 'ray' else 'SLURM'} task"
    args.threads = threads  # resolved: the pool is sized by it (_execute)
    out = Path(args.out)
    states = {s.run_id: RunDir(out, s.results_name, s.run_id).inspect()[0] for s in suite.runs}
    rerun = _rerun(getattr(args, "rerun", None), suite.runs)
    todo = [s for s in suite.runs if states[s.run_id] != "done" or s.run_id in rerun]
    if args.dry_run:
        from alma_bench.run.device import resolve_device

        dev = resolve_device(args.device)  # a bad device fails here too
        waiting = {s.run_id for s in todo}
        for spec in suite.runs:
            state = "would train" if spec.run_id in waiting else "done"
            if spec.run_id in rerun and states[spec.run_id] in ("done", "failed"):
                state = f"{states[spec.run_id]}: would train again (--rerun)"
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
        where = ("as Ray tasks" if args.executor == "ray" else "as a SLURM job array"
                 if args.executor == "slurm" else "1 worker (this process)"
                 if workers == 1 else f"{workers} workers")
        print(f"{threads} torch thread{'s' if threads != 1 else ''} per run ({why}); "
              f"{where}")
        for line in _data_checks(suite.runs):
            print(line)
        if suite.runs:
            r = suite.runs[0]
            print("resolved: " + json.dumps({"stream": r.stream, "model": r.model,
                                              "protocol": r.protocol}, default=str))
        return 0
    from alma_bench.run.device import resolve_device

    resolve_device(args.device)  # fail on a bad device before any work
    _prepare(out / suite.results_name)
    _forget(suite.runs, rerun, states, out)
    _note_reused(suite.runs, todo, out, args)
    done = len(suite.runs) - len(todo)
    bad, queued = [], []
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
        bad = [(s, o) for s, o in results if o.state not in ("done", "queued")]
        queued = [s for s, o in results if o.state == "queued"]  # slurm --no-wait
    finished = {s.run_id for s in suite.runs} - {s.run_id for s, _ in bad} - {
        s.run_id for s in queued}
    if finished:  # only this invocation's runs: the folder may hold other --set variants
        from alma_bench.analysis.commands import cmd_show

        cmd_show(argparse.Namespace(results=str(out / suite.results_name),
                                    labels=suite.labels, run_ids=finished))
    return _report_failures(bad, len(suite.runs))


def _data_checks(runs) -> list[str]:
    """``data: <stream>: <where it comes from>`` per distinct data source of the runs, from
    the source's ``check()`` (CIFAR: its files, else the download host; image folders: the
    folders); a source without one says so."""
    from alma_bench.registry import STREAMS
    from alma_bench.spec.config import split_and_source

    out, seen = [], set()
    for spec in runs:
        _, name, params = split_and_source(spec.stream)
        key = json.dumps([name, params], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        source = STREAMS.create(name, **params)
        check = getattr(source, "check", None)
        text = check() if callable(check) else (
            "generated or bundled, nothing to fetch" if name in ("synthetic", "digits")
            else "not checked (the source has no check())")
        out.append(f"data: {name}: {text}")
    return out


def _rerun(text: str | None, runs) -> set[str]:
    """Run ids named by ``--rerun LABEL[,LABEL]|all`` (an entry's label covers its grid
    expansions); an unknown label is a one-line error naming the valid ones."""
    if not text:
        return set()
    wanted = {w.strip() for w in text.split(",") if w.strip()}
    if "all" in wanted:
        return {s.run_id for s in runs}
    labels = {s.label for s in runs} | {s.label.split("[")[0] for s in runs}
    for w in sorted(wanted - labels):
        raise unknown("label for --rerun", w, sorted(labels) + ["all"])
    return {s.run_id for s in runs if s.label in wanted or s.label.split("[")[0] in wanted}


def _forget(runs, rerun: set[str], states: dict, out: Path) -> None:
    """``--rerun``: the named runs' results go (config.json stays), under each run's lock, so
    they train again from megabatch 1; a run another process is training is left to it."""
    from alma_bench.store.locks import RunLock
    from alma_bench.store.rundir import RunDir

    for spec in runs:
        if spec.run_id not in rerun or states[spec.run_id] == "new":
            continue
        rd = RunDir(out, spec.results_name, spec.run_id)
        if not rd.path.is_dir():
            continue
        lock = RunLock(rd.lock)
        owner = lock.try_acquire()
        if owner is not None:
            print(f"alma-bench: --rerun: {spec.label} seed {spec.seed} ({spec.run_id}) is being "
                  f"trained by {owner}; left to it", file=sys.stderr)
            continue
        try:
            rd.reset()
            print(f"alma-bench: --rerun: {spec.label} seed {spec.seed} ({spec.run_id}) trains "
                  "again from megabatch 1", file=sys.stderr)
        finally:
            lock.release()


def _check_cluster_args(args) -> None:
    if args.retries < 0:
        raise UserError(f"--retries must be >= 0, got {args.retries}")
    if args.lock_timeout is not None and args.lock_timeout <= 0:
        raise UserError(f"--lock-timeout must be > 0 seconds, got {args.lock_timeout}")
    if args.gpu_memory is not None and not 0 < args.gpu_memory <= 1:
        raise UserError(f"--gpu-memory must be a fraction in (0, 1], got {args.gpu_memory}")
    if args.lock_timeout is not None:  # this process's locks too (the driver's takeovers)
        from alma_bench.store.locks import TIMEOUT_ENV

        os.environ[TIMEOUT_ENV] = str(args.lock_timeout)


def _gpu_memory(args, workers: int) -> float | None:
    """The fraction of GPU memory one run may allocate: asked, or shared out when several
    runs share a GPU (N pool workers, or a fractional --ray-gpus); 10% stays for the CUDA
    contexts, which PyTorch's allocator does not count."""
    if getattr(args, "gpu_memory", None) is not None:
        return args.gpu_memory
    from alma_bench.execute.executors import _wants_cuda

    if not _wants_cuda(args.device):
        return None
    if args.executor == "ray":
        return 0.9 * args.ray_gpus if args.ray_gpus and args.ray_gpus < 1 else None
    if args.executor == "local" and workers > 1:
        return 0.9 / workers
    return None


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got '{text}'") from None


def _prepare(folder: Path) -> None:
    """Before any work: the results folder must be writable (else one line, exit 3), and
    temporary files of writers that were killed go."""
    from alma_bench.store.files import check_writable, clean_stale_tmp

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
    """One line per finished run reused under a different environment (never silent); a
    label renamed in the suite is written into the reused run's config.json."""
    from alma_bench.run.provenance import invocation, note_reuse
    from alma_bench.store.files import read_json, write_json
    from alma_bench.store.rundir import RunDir

    waiting = {s.run_id for s in todo}
    env = invocation(args.plugin)
    for spec in runs:
        if spec.run_id not in waiting:
            rd = RunDir(out, spec.results_name, spec.run_id)
            config = read_json(rd.config) or {}
            if config.get("label") not in (None, spec.label):
                # a label renamed in the suite: not part of the run's identity, so the run is
                # reused, and its table row shows the suite's name for it now
                write_json(rd.config, {**config, "label": spec.label})
            note_reuse(spec, config, args.device, env)


def _execute(todo, args, out):
    from tqdm import tqdm

    from alma_bench.execute.executors import Job, run_pool, run_ray, run_serial
    from alma_bench.run.provenance import invocation

    job = Job(out=out, device=args.device, plugins=tuple(args.plugin or ()),
              channels_last=args.channels_last, tensorboard=args.tensorboard,
              env=invocation(args.plugin), retry_failed=args.retry_failed, wait=args.wait,
              gpus=args.ray_gpus, avalanche_loggers=args.avalanche_loggers,
              # (the cluster options, absent from a namespace made without the parser)
              retries=getattr(args, "retries", 3), lock_timeout=getattr(args, "lock_timeout", None),
              gpu_memory=_gpu_memory(args, _workers(args.workers, len(todo), args.threads)))
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
        from alma_bench.store.files import read_json
        from alma_bench.store.rundir import RunDir

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
        if args.executor == "slurm":
            from alma_bench.execute.options import slurm_options
            from alma_bench.execute.slurm import run_slurm

            return run_slurm(todo, job, slurm_options(args), **hooks)
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

    if requested is not None:
        return requested
    return max(1, min((os.cpu_count() or 1) // max(1, threads), n_runs))


def cmd_train_agent(args) -> int:
    from alma_bench.spec.config import Seeds, derive
    from alma_bench.strategies.rl_schedule import _rl

    agent = _rl()[0]  # a one-line error without the rl extra
    strategy, config, seed, name = agent.suite_config(args.suite, args.scale, args.sets)
    out = Path(args.out or f"agents/{name}.zip")
    # the seed an in-run rl-schedule of the suite's first seed uses: with the same episodes
    # and envs, the agent that run would train
    s = Seeds.derive(seed).strategy
    model, returns, secs = agent.train_agent(config, args.episodes, args.envs,
                                             seed=derive(s, "rl-agent"),
                                             crn_seeds=strategy.crn_seeds, progress=True,
                                             **strategy.agent_data())
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
