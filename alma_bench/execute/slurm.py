"""SLURM through submitit: a suite's runs as one job array, and ``alma-bench run`` again shows
where they are.

Each array task runs a chunk of runs (``--slurm-runs-per-task``; a run and the runs that
depend on it always share a task) with ``run_serial``, so a task trains each run under its lock
and skips a run that is done: the results folder stays the only output and the only state.
The only other file is the list of submissions, ``<out>/.slurm/<suite>/submitted.jsonl``
(run id, job id), beside submitit's own logs, so that a later invocation tells a queued run
from a run nobody is going to train.

Preemption and time limits: SLURM signals a task before it stops it (submitit asks for
``--signal=USR2@90``); submitit then calls the task's ``checkpoint``, which hands back the
same task, and requeues it. The signal waits until the megabatch being written is on disk
(``store.files.signals_deferred``), and the run, started again, resumes from its last finished
megabatch by its own resume. A task that dies without requeueing (killed, node lost, out of
requeues) is resubmitted by a waiting ``alma-bench run`` (``--retries`` times), or by the next
``alma-bench run``; its runs resume the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from alma_bench.errors import UserError
from alma_bench.execute.executors import (
    Job,
    Outcome,
    _died,
    _worker_init,
    dependency_order,
    run_serial,
)
from alma_bench.spec.config import RunSpec

POLL = 5.0  # seconds between looks at the queue and the run folders while waiting
CLUSTERS = ("slurm", "local", "debug")  # submitit's executors: local and debug, for tests
# sacct's states of a job that has not ended (submitit reads them)
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING",
          "SUSPENDED", "UNKNOWN", "READY"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class SlurmOptions:
    """What a task asks SLURM for (``--slurm-*`` options); ``extra`` goes to sbatch as
    ``--KEY=VALUE`` (``--slurm account=abc --slurm mem=16G``)."""

    partition: str | None = None
    time_min: int = 240
    gpus: int | None = None  # per task (default: 1 when the device is CUDA)
    cpus: int | None = None  # per task (default: the run's threads)
    mem_gb: float | None = None
    extra: dict = field(default_factory=dict)
    runs_per_task: int = 1
    max_parallel: int | None = None  # tasks of the array running at once
    requeues: int = 3  # timeouts a task may be requeued after (preemptions do not count)
    cluster: str = "slurm"
    wait: bool = True  # wait for the runs (else submit and return)
    retries: int = 3  # a task that died is resubmitted this many times


def parse_extra(pairs) -> dict:
    """``--slurm KEY=VALUE`` pairs as a dict (one line if a pair has no ``=``)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm takes KEY=VALUE (an sbatch option without its dashes), "
                            f"got '{pair}'")
        out[key.strip().lstrip("-")] = value.strip()
    return out


class Task:
    """One array task: its runs, one after another, under their locks. submitit requeues it
    with ``checkpoint`` (the same task: the runs resume from their own checkpoints)."""

    def __init__(self, specs: list[RunSpec], job: Job):
        self.specs = list(specs)
        # inside a task a busy run is waited for: its lock is a dead task's (it goes stale) or
        # an older task's that finishes it
        self.job = dataclasses.replace(job, wait=True)

    def __call__(self) -> list[tuple[str, str, str | None]]:
        _worker_init(self.job.plugins, pool=False)

        def say(line):
            print(f"alma-bench: {line}", file=sys.stderr, flush=True)

        return [(s.run_id, o.state, o.error) for s, o in run_serial(self.specs, self.job,
                                                                     say=say)]

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def chunks(specs: list[RunSpec], per_task: int) -> list[list[RunSpec]]:
    """Tasks of at most ``per_task`` runs (more only for a group of runs that depend on one
    another, which shares a task, dependencies first)."""
    group = {s.run_id: s.run_id for s in specs}

    def root(r):
        while group[r] != r:
            r = group[r]
        return r

    for s in specs:
        for dep in (s.deps or {}).values():
            if dep in group:
                group[root(s.run_id)] = root(dep)
    groups: dict[str, list[RunSpec]] = {}
    for s in dependency_order(specs):
        groups.setdefault(root(s.run_id), []).append(s)
    out: list[list[RunSpec]] = []
    for g in groups.values():
        if out and len(out[-1]) + len(g) <= per_task:
            out[-1].extend(g)
        else:
            out.append(list(g))
    return out


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("executor 'slurm' needs submitit: pip install 'alma-bench[slurm]'") \
            from None
    return submitit


def folder(job: Job, specs: list[RunSpec]) -> Path:
    """submitit's logs and the submissions of one results folder."""
    return Path(job.out) / ".slurm" / specs[0].results_name


def _executor(submitit, opts: SlurmOptions, job: Job, specs, logs: Path):
    if opts.cluster not in CLUSTERS:
        raise UserError(f"--slurm-cluster must be one of {', '.join(CLUSTERS)}, got "
                        f"'{opts.cluster}'")
    if opts.cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("executor 'slurm': sbatch is not on PATH (run from a SLURM login node; "
                        "--slurm-cluster local runs the tasks on this machine through "
                        "submitit's local executor)")
    from alma_bench.execute.executors import _wants_cuda

    ex = submitit.AutoExecutor(folder=logs / "%j", cluster=opts.cluster,
                               slurm_max_num_timeout=opts.requeues)
    gpus = opts.gpus if opts.gpus is not None else int(_wants_cuda(job.device))
    params = dict(name=f"alma-{specs[0].results_name}", timeout_min=opts.time_min,
                  cpus_per_task=opts.cpus or max(s.threads for s in specs), tasks_per_node=1,
                  nodes=1)
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.max_parallel:
        params["slurm_array_parallelism"] = opts.max_parallel
    if opts.extra:
        params["slurm_additional_parameters"] = dict(opts.extra)
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError) as e:  # submitit names the parameter it does not know
        raise UserError(f"executor 'slurm': {(str(e).splitlines() or [''])[0]}") from None
    return ex


# -- what the queue and the folders say -------------------------------------------------------

def read_submissions(logs: Path) -> dict[str, dict]:
    """Run id -> its latest submission (job id, cluster, time)."""
    out: dict[str, dict] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in (logs / "submitted.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line)
                out[rec["run_id"]] = rec
    return out


def _record(logs: Path, pairs) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"run_id": s.run_id, "job_id": j.job_id, "cluster": c,
                                "at": time.time()}) + "\n" for s, j, c in pairs)
    fd = os.open(logs / "submitted.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "a") as f:  # one write: concurrent submitters never mix lines
        f.write(lines)


def job_state(submitit, logs: Path, rec: dict) -> str:
    """``queued``, ``running`` or ``ended``, as the scheduler sees the job of ``rec``."""
    if rec.get("cluster") in ("local", "debug"):  # a local job's id is its controller's pid
        from alma_bench.store.locks import pid_alive

        with contextlib.suppress(ValueError):
            return "running" if pid_alive(int(str(rec["job_id"]).split("_")[0])) else "ended"
        return "ended"
    try:
        state = submitit.SlurmJob(logs / "%j", str(rec["job_id"])).state.split()[0]
    except Exception:  # sacct not answering: do not submit it twice
        return "queued"
    return "queued" if state in QUEUED else "running" if state in RUNNING else "ended"


def states(specs, job: Job, submitit, logs: Path) -> dict[str, tuple[str, str]]:
    """Run id -> (state, detail): done, failed, running (its lock is held), queued (its job
    has not ended), interrupted (a checkpoint and no job: it resumes when submitted) or new."""
    from alma_bench.store.locks import holder
    from alma_bench.store.rundir import RunDir

    subs = read_submissions(logs)
    cache: dict[str, str] = {}
    out = {}
    for s in specs:
        rd = RunDir(job.out, s.results_name, s.run_id)
        state = rd.inspect()[0]
        rec = subs.get(s.run_id)
        if state in ("done", "failed"):
            out[s.run_id] = (state, "")
            continue
        if (owner := holder(rd.lock)) is not None:
            out[s.run_id] = ("running", f"by {owner}")
            continue
        if rec is not None:
            key = str(rec["job_id"])
            if key not in cache:
                cache[key] = job_state(submitit, logs, rec)
            if cache[key] != "ended":
                out[s.run_id] = ("queued", f"job {key}")
                continue
        out[s.run_id] = ("interrupted" if state == "running" or rd.checkpoint.exists()
                         else "new", "")
    return out


def _show(specs, st, say) -> None:
    counts: dict[str, int] = {}
    for s in specs:
        state, detail = st[s.run_id]
        counts[state] = counts.get(state, 0) + 1
        if state in ("running", "queued", "failed", "interrupted"):
            say(f"  {s.run_id}  {s.label} seed {s.seed}: {state}"
                + (f" ({detail})" if detail else ""))
    order = ("done", "running", "queued", "failed", "interrupted", "new")
    say("SLURM: " + ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)))


# -- submit and wait ------------------------------------------------------------------------

def run_slurm(specs, job: Job, opts: SlurmOptions, on_done=None, on_failed=None, say=None):
    """Submit the runs not done, queued or running as one job array; with ``opts.wait`` wait
    for every run of ``specs`` and return (spec, Outcome) pairs, else return at once with the
    runs left ``queued``."""
    submitit = _submitit()
    say = say or (lambda line: print(f"alma-bench: {line}", file=sys.stderr))
    specs = list(specs)
    if not specs:
        return []
    logs = folder(job, specs)
    st = states(specs, job, submitit, logs)
    _show(specs, st, say)
    outcomes: dict[str, Outcome] = {}
    for s in specs:
        if st[s.run_id][0] == "failed" and not job.retry_failed:
            outcomes[s.run_id] = _failed_before(s, job)
    from alma_bench.store.rundir import RunDir

    retry = [s for s in specs if st[s.run_id][0] == "failed" and job.retry_failed]
    for s in retry:  # rerun from scratch, as the other executors do
        RunDir(job.out, s.results_name, s.run_id).reset()
    todo = [s for s in specs if st[s.run_id][0] in ("new", "interrupted")] + retry
    jobs = _submit(submitit, opts, job, todo, logs, say) if todo else {}
    if not opts.wait:
        left = [s for s in specs if s.run_id not in outcomes]
        if left:
            say(f"{len(left)} runs queued or running; `alma-bench run` with the same options "
                "shows where they are")
        return [(s, outcomes.get(s.run_id) or Outcome("queued")) for s in specs]
    watch = [s for s in specs if s.run_id not in outcomes]
    subs = read_submissions(logs)
    _wait(submitit, opts, job, watch, jobs, subs, logs, outcomes, on_done, on_failed, say)
    return [(s, outcomes[s.run_id]) for s in specs if s.run_id in outcomes]


def _failed_before(s: RunSpec, job: Job) -> Outcome:
    from alma_bench.store.rundir import RunDir

    rd = RunDir(job.out, s.results_name, s.run_id)
    status = rd.read_status()[0] or {}
    return Outcome("skipped", error=status.get("error"), log=str(rd.error_log))


def _submit(submitit, opts, job, todo, logs, say) -> dict:
    """One job array of the runs ``todo``; run id -> its submitit job."""
    ex = _executor(submitit, opts, job, todo, logs)
    tasks = chunks(todo, max(1, opts.runs_per_task))
    try:
        with ex.batch():
            submitted = [ex.submit(Task(chunk, job)) for chunk in tasks]
    except Exception as e:  # sbatch refused (a bad partition, account, option)
        first = (str(e).strip().splitlines() or [type(e).__name__])
        raise UserError(f"executor 'slurm': submission failed: {first[-1]}") from None
    jobs, pairs = {}, []
    for chunk, j in zip(tasks, submitted):
        for s in chunk:
            jobs[s.run_id] = j
            pairs.append((s, j, opts.cluster))
    _record(logs, pairs)
    ids = sorted({j.job_id for j in submitted})
    say(f"submitted {len(todo)} runs as {len(tasks)} tasks ({opts.cluster}: job "
        f"{ids[0] if len(ids) == 1 else ', '.join(ids)}); logs in {logs}")
    return jobs


def _wait(submitit, opts, job, watch, jobs, subs, logs, outcomes, on_done, on_failed, say):
    """Until every run of ``watch`` is done or failed: a task that ended without finishing
    its runs (killed, node lost, out of requeues) is resubmitted, ``opts.retries`` times."""
    from alma_bench.store.files import read_json
    from alma_bench.store.rundir import RunDir

    tries: dict[str, int] = {}
    left = list(watch)
    while left:
        ended = []
        for s in list(left):
            rd = RunDir(job.out, s.results_name, s.run_id)
            state = rd.inspect()[0]
            if state == "done":
                outcomes[s.run_id] = Outcome("done", summary=read_json(rd.summary))
            elif state == "failed":
                status = rd.read_status()[0] or {}
                outcomes[s.run_id] = Outcome("failed", error=status.get("error"),
                                             log=str(rd.error_log))
            elif _ended(submitit, logs, jobs.get(s.run_id), subs.get(s.run_id)):
                ended.append(s)
                continue
            else:
                continue
            left.remove(s)
            o = outcomes[s.run_id]
            if o.state == "done" and on_done:
                on_done(s, o.summary)
            elif o.state != "done" and on_failed:
                on_failed(s, o)
        again = []
        for s in ended:
            j = jobs.get(s.run_id)
            why = _task_error(j)
            if why is None and tries.get(s.run_id, 0) < opts.retries:
                tries[s.run_id] = tries.get(s.run_id, 0) + 1
                again.append(s)
                continue
            why = why or f"its SLURM task ended {opts.retries + 1} times before the run finished"
            logs_at = f" (logs: {j.paths.stderr})" if j is not None else ""
            outcomes[s.run_id] = _died(s, job, why + logs_at)
            left.remove(s)
            if on_failed:
                on_failed(s, outcomes[s.run_id])
        if again:
            say(f"{len(again)} runs' tasks ended before they finished; resubmitted (they "
                "resume from their last finished megabatch)")
            jobs.update(_submit(submitit, opts, job, again, logs, say))
        if left:
            time.sleep(POLL)


def _ended(submitit, logs, j, rec) -> bool:
    if j is not None:
        return j.done()
    if rec is None:  # never submitted (cannot happen for a watched run): nothing will train it
        return True
    return job_state(submitit, logs, rec) == "ended"


def _task_error(j) -> str | None:
    """The first line of the exception a task raised (a UserError, a bug), or None when it
    was killed (no result: its runs are worth resubmitting)."""
    if j is None or not j.paths.result_pickle.exists():
        return None
    with contextlib.suppress(Exception):
        e = j.exception()
        if e is not None:
            lines = [x for x in str(e).splitlines() if x.strip() and not x.startswith("-")]
            err = [x for x in lines if "Error" in x and not x.startswith("Job ")]
            return "its SLURM task failed: " + (err[-1] if err else lines[0]).strip()
    return None
