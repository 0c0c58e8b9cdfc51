"""From a loaded suite to the runs to execute: thread count and runs that depend on runs.

**Threads.** ``threads="auto"`` (the CLI's default) gives each run ``cores // runs`` torch
threads when the invocation has fewer runs than cores and a training batch is large enough
to gain from threads (``MIN_STEP_FLOPS`` forward FLOPs: the stream's data is loaded to know
its input size), else 1 (a pool of one-thread workers). The thread count is part of each
run's identity, so the rule reads only the plan: its runs, done or not (never which are done,
or a re-invocation would give seeds of one label different thread counts), and
``os.cpu_count()``. Suites of at least as many runs as cores keep 1 thread, so the published
reports (made on 2 cores) keep their run ids; on more cores than a suite has runs,
``--threads 1`` reproduces them.

A strategy class may declare ``depends_on = ("structure_from",)``: each such parameter names
the label of another entry of the same suite whose outputs it needs (e.g. ``static`` trains
DPR's final mask). The dependent run gets the run id of that entry's run *with the same seed*
in its ``deps`` (so it is part of its identity), executors run the dependency first, and the
runner hands the dependency's folder to the strategy as ``ctx.deps[param]``. A dependency
filtered out by ``--strategies`` is added back: it must run (or be found done) first.
"""

from __future__ import annotations

import dataclasses
import os

from alma_bench.errors import UserError
from alma_bench.spec import compose
from alma_bench.spec.config import RunSpec, SuiteSpec, load_suite


def dependency_params(spec: RunSpec) -> dict[str, str]:
    """Parameter -> label of the entry it names, for the run's strategy (every part of a
    composition; empty if none)."""
    return compose.dependency_params(spec.strategy)


def resolve(runs: list[RunSpec], pool: list[RunSpec], suite: str) -> list[RunSpec]:
    """``runs`` with ``deps`` filled in, preceded by any dependency runs taken from ``pool``
    (all runs of the suite) that ``runs`` lacks."""
    labels = sorted({r.label for r in pool})
    done: dict[tuple, RunSpec] = {}

    def find(r: RunSpec, label: str, param: str) -> RunSpec:
        # the entry's run with the same seed *and the same stream, model and protocol*, so a
        # suite-level grid (e.g. over stream.megabatches) pairs each point with its own
        # dependency; a grid label "dpr[density=0.1]" answers to its entry's label "dpr"
        same = [d for d in pool if d.seed == r.seed and d.stream == r.stream
                and d.model == r.model and d.protocol == r.protocol
                and (d.label == label or d.label.startswith(label + "["))]
        exact = [d for d in same if d.label == label]
        if len(exact) == 1 or len(same) == 1:
            return (exact or same)[0]
        if not same:
            raise UserError(f"strategy '{r.label}': {param}='{label}' is not an entry of "
                            f"suite {suite} (with seed {r.seed} and the same stream, model and "
                            f"protocol). Valid: {', '.join(labels)}")
        raise UserError(f"strategy '{r.label}': {param}='{label}' matches several runs "
                        f"({', '.join(d.label for d in same)}); name one of them")

    def fix(r: RunSpec, path=()) -> RunSpec:
        key = (r.label, r.seed, r.run_id)
        if key in done:
            return done[key]
        if key in path:
            raise UserError(f"suite {suite}: dependency cycle through '{r.label}'")
        deps = {}
        for param, label in dependency_params(r).items():
            deps[param] = fix(find(r, label, param), (*path, key)).run_id
        done[key] = dataclasses.replace(r, deps=deps or None)
        return done[key]

    fixed = [fix(r) for r in runs]
    wanted = {(r.label, r.seed, r.run_id) for r in runs}
    extra = [d for k, d in done.items() if k not in wanted]
    return extra + fixed


AUTO = "auto"
# Forward FLOPs of one training batch below which a run gains nothing from a second thread.
# Bare-loop speed of 2 threads over 1 on 2 cores, libgomp's default wait policy (issue 16):
# quickstart's small-cnn on 8x8 digits at batch 32 (10 MFLOPs) 0.98x; small-cnn on 16x16
# images at batch 32 (45 MFLOPs) 1.05x, at batch 128 (180 MFLOPs) 1.6x; on 32x32 at batch
# 128 (720 MFLOPs) 1.7x; resnet20 at batch 64 (5.2 GFLOPs) 1.7x.
MIN_STEP_FLOPS = 100e6


def choose_threads(requested: int | str, runs: list[RunSpec]) -> tuple[int, str]:
    """Torch threads per run and why: ``requested`` itself, or for ``"auto"`` the rule of the
    module docstring over the plan's ``runs``."""
    if requested != AUTO:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise UserError(f"--threads must be a positive integer or 'auto', got "
                            f"{requested!r}")
        return requested, "--threads"
    cores, n = os.cpu_count() or 1, len(runs)
    where = f"{n} run{'s' if n != 1 else ''} on {cores} core{'s' if cores != 1 else ''}"
    if not 0 < n < cores:
        return 1, f"auto: {where}, a one-thread worker per core"
    from alma_bench.execute.cost import step_flops

    step = min(step_flops(r) for r in runs)
    if step < MIN_STEP_FLOPS:
        return 1, (f"auto: {where}, but a training batch of {step / 1e6:.3g} MFLOPs is too "
                   f"small to gain from threads (under {MIN_STEP_FLOPS / 1e6:.0f})")
    return cores // n, f"auto: {where}"


def plan(name_or_path: str, scale=None, sets=(), strategies=None, seeds=None,
         threads: int | str = 1) -> SuiteSpec:
    """Load a suite and resolve its runs for execution (``threads`` torch threads each, or
    ``"auto"``: ``choose_threads``)."""
    if threads != AUTO:
        choose_threads(threads, [])  # a bad value fails before the suite is read
    suite = load_suite(name_or_path, scale, sets, strategies, seeds)
    full = suite.runs
    if strategies and any(dependency_params(r) for r in suite.runs):
        full = load_suite(name_or_path, scale, sets, None, seeds).runs
    if threads == AUTO:  # over every run of the plan, the dependencies added back included
        threads = choose_threads(AUTO, resolve(suite.runs, full, suite.name))[0]
    runs = [dataclasses.replace(r, threads=threads) for r in suite.runs]
    pool = runs if full is suite.runs else [dataclasses.replace(r, threads=threads)
                                            for r in full]
    suite.runs = resolve(runs, pool, suite.name)
    return suite
