"""From a loaded suite to the runs to execute: thread count and runs that depend on runs.

A strategy class may declare ``depends_on = ("structure_from",)``: each such parameter names
the label of another entry of the same suite whose outputs it needs (e.g. ``static`` trains
DPR's final mask). The dependent run gets the run id of that entry's run *with the same seed*
in its ``deps`` (so it is part of its identity), executors run the dependency first, and the
runner hands the dependency's folder to the strategy as ``ctx.deps[param]``. A dependency
filtered out by ``--strategies`` is added back: it must run (or be found done) first.
"""

from __future__ import annotations

import dataclasses

from alma_bench import compose
from alma_bench.config import RunSpec, SuiteSpec, load_suite
from alma_bench.errors import UserError


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


def plan(name_or_path: str, scale=None, sets=(), strategies=None, seeds=None,
         threads: int = 1) -> SuiteSpec:
    """Load a suite and resolve its runs for execution (``threads`` torch threads each)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads!r}")
    suite = load_suite(name_or_path, scale, sets, strategies, seeds)
    runs = [dataclasses.replace(r, threads=threads) for r in suite.runs]
    pool = runs
    if strategies and any(dependency_params(r) for r in runs):
        full = load_suite(name_or_path, scale, sets, None, seeds)
        pool = [dataclasses.replace(r, threads=threads) for r in full.runs]
    suite.runs = resolve(runs, pool, suite.name)
    return suite
