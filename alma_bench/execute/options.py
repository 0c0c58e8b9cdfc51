"""The ``run`` command's options for running beyond one process: retries, lock timeout, GPU
memory per run, and SLURM's (alma_bench/execute/slurm.py). Kept here, beside the executors
that read them; alma_bench/cli.py adds them to ``run``. Importing this module is cheap."""

from __future__ import annotations

import argparse

EXECUTORS = ("local", "ray", "slurm")


def add_cluster_options(r: argparse.ArgumentParser) -> None:
    g = r.add_argument_group("clusters (executors ray and slurm) and GPUs")
    g.add_argument("--retries", type=int, default=3, metavar="N",
                   help="a run whose Ray worker, node or SLURM task died is started again up "
                        "to N times (default 3); it resumes from its last finished megabatch")
    g.add_argument("--lock-timeout", type=float, default=None, metavar="S",
                   help="seconds without a heartbeat after which a run's lock held on another "
                        "node is taken over (default 300, or $ALMA_BENCH_LOCK_TIMEOUT); every "
                        "process sharing the results folder must use the same value")
    g.add_argument("--gpu-memory", type=float, default=None, metavar="F",
                   help="the fraction of the GPU's memory one run may allocate (default "
                        "0.9/N with --workers N on CUDA, 0.9 x --ray-gpus under Ray); a run "
                        "beyond it fails alone with out-of-memory")
    g.add_argument("--slurm-partition", default=None, metavar="P", help="SLURM partition")
    g.add_argument("--slurm-time", type=int, default=240, metavar="MIN",
                   help="time limit of a task in minutes (default 240); a task that reaches "
                        "it is requeued and its run resumes")
    g.add_argument("--slurm-gpus", type=int, default=None, metavar="N",
                   help="GPUs per task (default 1 when the device is CUDA, else 0)")
    g.add_argument("--slurm-cpus", type=int, default=None, metavar="N",
                   help="CPUs per task (default: the runs' --threads)")
    g.add_argument("--slurm-mem-gb", type=float, default=None, metavar="GB",
                   help="memory per task in GB")
    g.add_argument("--slurm", dest="slurm_extra", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm account=abc --slurm "
                        "qos=normal --slurm constraint=a100 (repeatable)")
    g.add_argument("--slurm-runs-per-task", type=int, default=1, metavar="K",
                   help="runs per array task, trained one after another (default 1; more for "
                        "short runs)")
    g.add_argument("--slurm-max-parallel", type=int, default=None, metavar="N",
                   help="tasks of the array running at once (sbatch --array=...%%N)")
    g.add_argument("--slurm-requeues", type=int, default=3, metavar="N",
                   help="times a task is requeued after reaching its time limit (default 3; "
                        "preemptions do not count)")
    g.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="submitit's executor: slurm (default), or local to run the tasks as "
                        "processes on this machine (no SLURM needed)")


def slurm_options(args):
    """The SLURM options of a parsed ``run`` command."""
    from alma_bench.errors import UserError
    from alma_bench.execute.slurm import SlurmOptions, parse_extra

    for name in ("slurm_time", "slurm_runs_per_task"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return SlurmOptions(partition=args.slurm_partition, time_min=args.slurm_time,
                        gpus=args.slurm_gpus, cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb,
                        extra=parse_extra(args.slurm_extra),
                        runs_per_task=args.slurm_runs_per_task,
                        max_parallel=args.slurm_max_parallel, requeues=args.slurm_requeues,
                        cluster=args.slurm_cluster, wait=args.wait, retries=args.retries)
