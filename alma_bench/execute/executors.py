"""Where runs execute: in this process, a local process pool, a Ray cluster, or SLURM
(alma_bench/execute/slurm.py, which runs each task's runs with ``run_serial``).

Each executor takes RunSpecs and returns (spec, Outcome) pairs; a run's result directory is
its only output, so executors are interchangeable and a killed suite resumes where it was.
Every executor runs each run under its lock (alma_bench/store/locks.py): several invocations on one
results folder train each run once, and wait for (or skip) runs another one is training. A run
that raises or diverges is recorded as failed in its folder and the others go on; a UserError
(bad input, an unusable results path) stops everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from alma_bench.errors import FATAL_ERRNOS, UserError, store_error
from alma_bench.spec.config import RunSpec
from alma_bench.store.locks import RunLock, holder

POLL = 0.5  # seconds between looks at the lock of a run another process is training


@dataclass
class Outcome:
    """What became of one run: ``done`` (with its summary), ``failed`` (this time: error and
    log), ``skipped`` (failed before, or its dependency did not finish), ``busy`` (another
    process is training it) or ``error`` (a UserError: it stops the invocation)."""

    state: str
    summary: dict | None = None
    error: str | None = None
    log: str | None = None
    owner: str | None = None
    exc: BaseException | None = None
    notes: list[str] = field(default_factory=list)  # lines to print (from worker processes)
    # warnings raised inside the run, as (message, category, filename, lineno): held back and
    # shown by the invocation (never under --quiet), not printed by a worker process
    warnings: list[tuple] = field(default_factory=list)


@dataclass
class Job:
    """Runtime settings shared by every run of one invocation (not part of run identity; the
    thread count is, so it lives on each RunSpec)."""

    out: Path
    device: str = "auto"
    plugins: tuple[str, ...] = ()  # plugin files/modules to import in worker processes
    channels_last: bool = False
    tensorboard: str | None = None
    env: dict | None = None  # provenance of the invocation (command, plugin hashes)
    retry_failed: bool = False  # rerun runs that failed before this invocation started
    wait: bool = True  # a run another process is training: wait for it (else skip it)
    gpus: float | None = None  # GPUs per Ray task (default: 1 when the device is CUDA)
    # a Ray task whose worker or node died is run again this many times (it resumes from its
    # last finished megabatch); a run that raises is recorded as failed, never retried
    retries: int = 3
    # the fraction of a GPU's memory one run may allocate (several runs per GPU): PyTorch's
    # caching allocator raises out-of-memory in that run beyond it, not in its neighbours
    gpu_memory: float | None = None
    lock_timeout: float | None = None  # seconds without a heartbeat: another node's lock is stale
    avalanche_loggers: str | None = None  # Avalanche's metrics and loggers (changes no number)
    started: float = field(default_factory=time.time)


_in_run = False  # a worker is inside a run (its SIGTERM must unwind, not vanish)


def _worker_init(plugins, pool: bool = True, env: dict | None = None):
    import signal

    from alma_bench.registry import load_modules

    if env is not None:  # a fork server's worker has the server's environment: this pool's
        os.environ.clear()  # is the one its runs read (the server outlives an invocation)
        os.environ.update(env)
    if pool:  # Ctrl-C (and a hang-up) is the parent's to handle: it stops pool workers
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # with SIGTERM
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _on_sigterm)
    load_modules(list(plugins))


def _on_sigterm(signum, frame):
    # Inside a run: unwind like Ctrl-C, so the lock is released and no temporary file is left
    # (a megabatch's files are finished first: store.signals_deferred). Idle: just exit.
    if _in_run:
        raise KeyboardInterrupt
    os._exit(128 + signum)


def _execute(spec: RunSpec, job: Job, progress=None, note=None) -> Outcome:
    """One run in this process under its lock; failures are recorded, never raised (a
    UserError comes back as an ``error`` outcome: it stops the whole invocation)."""
    from alma_bench.store.rundir import RunDir

    global _in_run
    notes: list[str] = []
    _settings(job)
    rd = RunDir(job.out, spec.results_name, spec.run_id)
    _in_run = True
    # Held back, in a worker process as in this one: third-party libraries warn inside runs
    # (Avalanche's replay a DeprecationWarning per megabatch), and --quiet must stay quiet.
    # This also undoes the filters a library sets while it runs (Avalanche's "once").
    with warnings.catch_warnings(record=True) as held:
        try:
            outcome = _locked(spec, job, rd, progress, note or notes.append)
        except UserError as e:
            outcome = Outcome("error", error=str(e), exc=e)
        finally:
            _in_run = False
    outcome.notes = notes
    outcome.warnings = list(dict.fromkeys(
        (str(w.message), w.category, w.filename, w.lineno) for w in held))
    return outcome


def _settings(job: Job) -> None:
    """The invocation's settings in this process, which may be a worker on another node: the
    lock timeout (read by alma_bench/store/locks.py) and the bound on GPU memory."""
    from alma_bench.store.locks import TIMEOUT_ENV

    if job.lock_timeout is not None:
        os.environ[TIMEOUT_ENV] = str(job.lock_timeout)
    if job.gpu_memory is not None and _wants_cuda(job.device):
        import torch

        from alma_bench.run.device import resolve_device

        dev = resolve_device(job.device)
        torch.cuda.set_per_process_memory_fraction(job.gpu_memory, dev)


def _locked(spec, job, rd, progress, say) -> Outcome:
    from alma_bench.run.runner import execute
    from alma_bench.store.files import ensure_dir

    def run():
        return execute(spec, job.out, job.device, progress=progress,
                       channels_last=job.channels_last, tensorboard=job.tensorboard,
                       env=job.env, note=say, avalanche_loggers=job.avalanche_loggers)

    if rd.is_done():
        return Outcome("done", summary=run())  # reused (run() says so if the env differs)
    ensure_dir(rd.path)
    lock = RunLock(rd.lock)
    owner = lock.try_acquire()
    if owner is not None:
        return Outcome("busy", owner=str(owner))
    try:
        status = rd.read_status()[0] or {}
        if status.get("state") == "failed":
            # failed before this invocation: rerun only when asked to, and at most once
            if not job.retry_failed or status.get("failed_at", 0) >= job.started:
                return Outcome("skipped", error=status.get("error"), log=str(rd.error_log))
            rd.reset()
        try:
            return Outcome("done", summary=run())
        except UserError:
            raise
        except Exception as e:
            if isinstance(e, OSError) and e.errno in FATAL_ERRNOS:
                raise store_error(e.filename or rd.path, e) from None
            error = (f"{type(e).__name__}: {e}".splitlines() or [""])[0]
            rd.record_failure(error, traceback.format_exc())
            return Outcome("failed", error=error, log=str(rd.error_log))
    finally:
        lock.release()


def _died(spec: RunSpec, job: Job, why: str) -> Outcome:
    """Record the failure of a run whose worker process died (it could not record it)."""
    from alma_bench.store.rundir import RunDir

    rd = RunDir(job.out, spec.results_name, spec.run_id)
    lock = RunLock(rd.lock)
    owner = lock.try_acquire()  # the dead worker's lock is stale: taken over
    if owner is not None:  # another process holds it (it may have the run by now)
        return Outcome("failed", error=f"{why}; its lock is now held by {owner}")
    try:
        rd.record_failure(why, why + "\n")
    finally:
        lock.release()
    return Outcome("failed", error=why, log=str(rd.error_log))


def dependency_order(specs) -> list[RunSpec]:
    """``specs`` with every run after the runs it depends on (stable otherwise)."""
    by_id = {s.run_id: s for s in specs}
    out, seen = [], set()

    def visit(s, path=()):
        if s.run_id in seen:
            return
        if s.run_id in path:
            raise ValueError(f"dependency cycle through run '{s.label}'")
        for dep in (s.deps or {}).values():
            if dep in by_id:
                visit(by_id[dep], (*path, s.run_id))
        seen.add(s.run_id)
        out.append(s)

    for s in specs:
        visit(s)
    return out


class _Schedule:
    """What may start now: runs whose dependencies are done, and runs another process was
    training once its lock is free. Runs that depend on a failed run are skipped."""

    def __init__(self, specs, job: Job, on_done=None, on_failed=None, say=None):
        self.job, self.on_done, self.on_failed = job, on_done, on_failed
        self.say = say or (lambda line: print(f"alma-bench: {line}", file=sys.stderr))
        self.specs = list(specs)
        self.waiting = dependency_order(specs)
        self.unfinished = {s.run_id for s in self.waiting}
        self.bad: set[str] = set()  # failed, skipped, or left to another process
        self.busy: dict[str, RunSpec] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.warned: set[tuple] = set()

    @property
    def open(self) -> bool:
        return bool(self.waiting or self.busy)

    def ready(self) -> list[RunSpec]:
        out = []
        for s in list(self.waiting):  # in dependency order: a skip reaches dependents of
            deps = list((s.deps or {}).values())  # dependents in the same pass
            if blocked := [d for d in deps if d in self.bad]:
                self.waiting.remove(s)
                self.finish(s, Outcome("skipped", error=f"its dependency, run {blocked[0]}, "
                                                        "did not finish"))
            elif not any(d in self.unfinished for d in deps):
                self.waiting.remove(s)
                out.append(s)
        for run_id, s in list(self.busy.items()):
            if holder(self._dir(s).lock) is None:  # released (or its owner died): go on
                del self.busy[run_id]
                out.append(s)
        return out

    def _dir(self, s):
        from alma_bench.store.rundir import RunDir

        return RunDir(self.job.out, s.results_name, s.run_id)

    def finish(self, spec: RunSpec, outcome: Outcome) -> None:
        for line in outcome.notes:
            self.say(line)
        for w in outcome.warnings:
            if w not in self.warned:  # once per invocation, not once per run
                self.warned.add(w)
                # to the invocation's held warnings (alma_bench/cli.py), past the filters:
                # the run's process applied them already
                warnings.showwarning(*w)
        if outcome.state == "error":
            raise outcome.exc
        name = f"run {spec.label} seed {spec.seed} ({spec.run_id})"
        if outcome.state == "busy":
            if self.job.wait:
                self.say(f"{name} is being trained by {outcome.owner}; waiting for it")
                self.busy[spec.run_id] = spec
                return
            self.say(f"{name} is being trained by {outcome.owner}; skipped (--no-wait)")
        self.unfinished.discard(spec.run_id)
        self.outcomes[spec.run_id] = outcome
        if outcome.state == "done":
            if self.on_done:
                self.on_done(spec, outcome.summary)
            return
        self.bad.add(spec.run_id)
        if self.on_failed and outcome.state != "busy":
            self.on_failed(spec, outcome)

    def idle(self, running: bool = False) -> None:
        if not (self.busy or running):
            raise RuntimeError("scheduler stuck: runs wait on runs that never start")
        time.sleep(POLL)

    def results(self) -> list[tuple[RunSpec, Outcome]]:
        return [(s, self.outcomes[s.run_id]) for s in self.specs if s.run_id in self.outcomes]


PROGRESS_EVERY = 2.0  # seconds between progress updates of the pool's running runs


def run_serial(specs, job: Job, on_done=None, on_megabatch=None, on_failed=None, say=None):
    """Runs one after another in this process (dependencies first; progress per megabatch).
    Returns (spec, Outcome) pairs in the order of ``specs``."""
    sched = _Schedule(specs, job, on_done, on_failed, say)
    while sched.open:
        batch = sched.ready()
        if not batch:
            sched.idle()
        for spec in batch:
            sched.finish(spec, _execute(spec, job, progress=on_megabatch, note=sched.say))
    return sched.results()


def run_pool(specs, job: Job, workers: int, on_done=None, on_failed=None, say=None,
             on_progress=None):
    """Runs in ``workers`` processes, forked from a server that has imported what a run needs
    (``_context``: no CUDA or OpenMP state is inherited). A run is submitted once the runs it
    depends on have finished and a worker is free; with more runs than workers the costliest
    go first (alma_bench/execute/cost.py), so no core idles at the end while a long run finishes
    alone. When a worker dies (killed, out of memory) the pool breaks and every run in it
    stops; those runs are retried one at a time, so only a run that kills its worker alone is
    marked failed. ``on_progress(specs)`` is called every few seconds with the runs in
    flight."""
    sched = _Schedule(specs, job, on_done, on_failed, say)
    rank = _ranks(sched.specs, workers)
    pool = _pool(workers, job)
    futures: dict = {}
    queue: list[RunSpec] = []  # ready, not yet submitted: in rank order
    suspects: list[RunSpec] = []
    solo = None  # the suspect running alone
    try:
        while sched.open or futures or suspects or queue:
            if solo is None and suspects and not futures:
                solo = suspects.pop(0)
                futures[pool.submit(_execute, solo, job)] = solo
            elif solo is None and not suspects:
                queue = sorted(queue + sched.ready(), key=lambda s: rank.get(s.run_id, 0))
                while queue and len(futures) < workers:  # only as many as run at once, so a
                    s = queue.pop(0)  # run that becomes ready later can still go first
                    futures[pool.submit(_execute, s, job)] = s
            if not futures:
                sched.idle()
                continue
            timeout = POLL if sched.busy else None
            if on_progress is not None:  # the runs in flight, every couple of seconds
                on_progress(list(futures.values()))
                timeout = min(timeout or PROGRESS_EVERY, PROGRESS_EVERY)
            done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
            crashed = []
            for f in done:
                s = futures.pop(f)
                try:
                    outcome = f.result()
                except BrokenProcessPool:
                    crashed.append(s)
                    continue
                solo = None if s is solo else solo
                sched.finish(s, outcome)
            if crashed or getattr(pool, "_broken", False):
                crashed += futures.values()
                futures.clear()
                if solo is not None:
                    sched.finish(solo, _died(solo, job, "its worker process died (killed by a "
                                                        "signal, e.g. out of memory)"))
                    crashed.remove(solo)
                    solo = None
                suspects += crashed
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _pool(workers, job)
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return sched.results()


def _ranks(specs, workers: int) -> dict[str, int]:
    """Start position of each run: the costliest first when the runs outnumber the workers
    (else every run starts at once and the order does not matter: nothing is estimated)."""
    if len(specs) <= workers:
        return {}
    from alma_bench.execute.cost import longest_first

    return {s.run_id: i for i, s in enumerate(longest_first(specs))}


# What every run imports: loaded once by the fork server, so a pool worker starts in a fraction
# of a second instead of importing torch and Avalanche on its own (15-20 s on 2 cores)
PRELOAD = ("alma_bench.run.runner", "alma_bench.run.training", "alma_bench.strategies",
           "alma_bench.streams")


def _pool(workers: int, job: Job) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=_worker_init,
                               initargs=(job.plugins, True, dict(os.environ)))


def _context():
    """The fork server where the platform has one, else spawn. Workers are forked from a
    server process that has imported ``PRELOAD`` and run no torch op, so no CUDA context and
    no OpenMP thread pool is inherited (it has one thread; spawn's workers start clean too,
    at the cost of their imports). The server starts with this process's environment, so
    OMP_WAIT_POLICY (read when torch loads libgomp) is set before it (alma_bench/cli.py)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return get_context("spawn")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # a server already running keeps its own
    return ctx


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop at once (Ctrl-C, a UserError): SIGTERM every worker; a worker in a run finishes
    writing its megabatch's files (store.signals_deferred), releases the run's lock and
    exits. Runs resume from there."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_ray(specs, job: Job, address: str | None = None, on_done=None, on_failed=None,
            say=None):
    """Runs as Ray tasks on a local instance or the cluster at ``address``: ``threads`` CPUs
    each and ``job.gpus`` GPUs (default 1 when the device is CUDA; a fraction puts several runs
    on one GPU). A run is submitted once the runs it depends on have finished.

    A task whose worker or node dies is retried by Ray (``job.retries`` times) on a node
    that is alive, and the run resumes from its last finished megabatch. The dead node's lock
    is still on the run: the retry finds the run ``busy`` and this driver waits until the lock
    is stale (no heartbeat for ``--lock-timeout`` s; at once when the dead worker was on this
    node), then submits it again. A run that raises is recorded as failed, not retried."""
    try:
        import ray
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'alma-bench[ray]'") from None
    _ray_init(ray, address)
    gpus = job.gpus if job.gpus is not None else float(_wants_cuda(job.device))
    # retried only when a worker or node dies (a run resumes, it is never trained twice);
    # a run's own exception is already an Outcome, so retry_exceptions stays off
    task = ray.remote(max_retries=job.retries, retry_exceptions=False)(_ray_task)
    sched = _Schedule(specs, job, on_done, on_failed, say)
    refs: dict = {}
    try:
        while sched.open or refs:
            for s in sched.ready():
                refs[task.options(num_cpus=s.threads, num_gpus=gpus).remote(s, job)] = s
            if not refs:
                sched.idle()
                continue
            done, _ = ray.wait(list(refs), num_returns=1,
                               timeout=POLL if sched.busy else None)
            for ref in done:
                s = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as e:
                    outcome = _died(s, job, f"its Ray task died ({type(e).__name__}, after "
                                            f"{job.retries} retries)")
                sched.finish(s, outcome)
    except BaseException:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)  # a cancelled task's worker gets KeyboardInterrupt
        raise
    return sched.results()


def _ray_init(ray, address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    except Exception as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"could not start or reach {where}: {first}") from None


def _wants_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def _ray_task(spec, job):
    _worker_init(job.plugins, pool=False)  # ray.cancel interrupts a task with SIGINT
    return _execute(spec, job)
