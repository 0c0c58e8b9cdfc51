"""Where runs execute: in this process, a local process pool, or a Ray cluster.

Each executor takes RunSpecs and returns (spec, summary) pairs; a run's result directory is
its only output, so executors are interchangeable and a killed suite resumes where it was.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from alma_bench.config import RunSpec


@dataclass
class Job:
    """Runtime settings shared by every run of one invocation (not part of run identity)."""

    out: Path
    device: str = "auto"
    plugins: tuple[str, ...] = ()  # plugin files/modules to import in worker processes
    channels_last: bool = False
    tensorboard: str | None = None
    threads: int | None = None


def _worker_init(plugins, threads):
    import torch

    from alma_bench.registry import load_modules

    torch.set_num_threads(threads)
    load_modules(list(plugins))


def _execute(spec: RunSpec, job: Job, progress=None) -> dict:
    from alma_bench.runner import execute

    return execute(spec, job.out, job.device, progress=progress,
                   channels_last=job.channels_last, tensorboard=job.tensorboard)


def run_serial(specs, job: Job, on_done=None, on_megabatch=None):
    """Runs one after another in this process (progress per megabatch)."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    results = []
    for spec in specs:
        summary = _execute(spec, job, progress=on_megabatch)
        results.append((spec, summary))
        if on_done:
            on_done(spec, summary)
    return results


def run_pool(specs, job: Job, workers: int, on_done=None):
    """Runs in ``workers`` processes, each with cores/workers torch threads so they do not
    oversubscribe the CPU (the spawn context keeps CUDA and OpenMP state out of children)."""
    threads = job.threads or max(1, (os.cpu_count() or 1) // workers)
    results = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(job.plugins, threads)) as pool:
        futures = {pool.submit(_execute, s, job): s for s in specs}
        for f in as_completed(futures):
            spec = futures[f]
            summary = f.result()
            results.append((spec, summary))
            if on_done:
                on_done(spec, summary)
    order = {s.run_id: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[r[0].run_id])


def run_ray(specs, job: Job, address: str | None = None, on_done=None):
    """Runs as Ray tasks (one CPU each, or one GPU each when the device is CUDA)."""
    try:
        import ray
    except ImportError:
        from alma_bench.errors import UserError

        raise UserError("executor 'ray' needs Ray: pip install 'alma-bench[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    gpus = 1 if job.device.startswith("cuda") else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(_ray_task)
    refs = {remote.remote(s, job): s for s in specs}
    results = []
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        spec = refs[done[0]]
        summary = ray.get(done[0])
        results.append((spec, summary))
        if on_done:
            on_done(spec, summary)
    return results


def _ray_task(spec, job):
    _worker_init(job.plugins, job.threads or 1)
    return _execute(spec, job)
