"""``alma-bench perf --gpu-check`` (``make gpu-check``): the GPU path, checked in minutes.

Three parts, written as JSON and as ``reports/gpu.md``:

1. **Determinism.** The first run (without dependencies) of each published suite at its
   paper scale (the suite's own scale where it has none), one megabatch, twice on the
   device in fresh folders: the two metrics rows must be identical (every field but
   ``wall_time``). Epochs are capped (``--gpu-epochs``, 1 by default) to fit the check in
   minutes; where a suite's data cannot be loaded (a machine with no network and no data
   folder), its stream is replaced by synthetic images of the same shape and count, and the
   report says so: determinism does not depend on what the pixels show.
2. **Throughput.** One dense run per model (resnet20, wrn-28-2, resnet50, the Simple CNN)
   on synthetic 3x32x32 images, batch 128, after a warm-up run: training images per second,
   from the run's own timer (``run/timing.Breakdown``: the template's training time).
3. **Concurrency.** ``alma-bench run quickstart --strategies dense --workers N --device D``
   with N seeds, N = 1, 2, 4, 8, in fresh processes as a user starts them: wall time against
   N x the one-run time (speedup = N x t(1) / t(N)).

``--gpu-tiny`` shrinks every part (tiny synthetic data, N = 1 and 2) so that ``--device cpu``
tests the plumbing in seconds (tests/test_perf_gpu.py); it measures nothing worth reading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the suites `make reports` publishes (the Makefile's report-* targets)
PUBLISHED = ("quickstart", "app-cifar10", "app-long", "dpr-trainability",
             "sparsity-schedules", "lottery", "alma-cl")
MODELS = ("resnet20", "wrn-28-2", "resnet50", "simple-cnn")
WORKERS = (1, 2, 4, 8)
#: a source that fails to load is replaced by synthetic images of its shape: classes, count
SHAPES = {"cifar10": (10, 50000, 10000), "cifar100": (100, 50000, 10000),
          "imagefolder": (10, 50000, 10000)}


class _OneMegabatch(BaseException):
    """Ends a run after its first committed megabatch (raised from ``progress``)."""


def _stop_after_first(done: int, total: int, row: dict) -> None:
    raise _OneMegabatch


def environment(device: str) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None, "python": sys.version.split()[0]}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        out.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=30)
            out["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    else:
        from alma_bench.perf.bare import machine

        out["card"] = f"none (CPU: {machine(torch.get_num_threads())['cpu']})"
    return out


def _first_run(suite: str, tiny: bool, epochs: int | None):
    from alma_bench.execute.plan import plan
    from alma_bench.spec.config import load_suite

    scales = load_suite(suite).scales if not tiny else []
    scale = "paper" if "paper" in scales else None
    sets = [f"protocol.epochs={epochs}"] if epochs else []
    runs = [r for r in plan(suite, scale, sets, None, None).runs if not r.deps]
    return runs[0], scale


def _data_or_synthetic(spec, tiny: bool):
    """The spec, its stream replaced by synthetic images when its data cannot be loaded (or
    always under --gpu-tiny); and a note saying which."""
    from alma_bench.registry import STREAMS
    from alma_bench.spec.config import SPLIT_KEYS, split_and_source

    _, source, params = split_and_source(spec.stream)
    if not tiny:
        try:
            STREAMS.create(source, **params).load()
            return spec, source
        except Exception as e:  # no network, no data folder: say so and go on
            why = f"{type(e).__name__}: {str(e)[:120]}"
    else:
        why = "--gpu-tiny"
    classes, n_train, n_test = (4, 96, 32) if tiny else SHAPES.get(source, (10, 50000, 10000))
    stream = {k: v for k, v in spec.stream.items() if k in SPLIT_KEYS or k == "seed"}
    stream.update(name="synthetic", n_train=n_train, n_test=n_test, classes=classes,
                  channels=3, size=32 if not tiny else 16)
    if tiny:  # a few images: no subset, at most 2 megabatches
        stream.pop("subset", None)
        stream["megabatches"] = min(2, stream.get("megabatches", 1))
    return dataclasses.replace(spec, stream=stream), f"synthetic instead of {source} ({why})"


def determinism(device: str, tiny: bool, epochs: int | None, suites=PUBLISHED,
                save=None) -> list[dict]:
    """One megabatch of each suite's first run, twice; ``save()`` after each suite."""
    out = []
    for suite in suites:
        print(f"  determinism: {suite}", file=sys.stderr)
        try:
            out.append(_determinism_one(suite, device, tiny, epochs))
        except Exception as e:  # e.g. an op with no deterministic CUDA kernel: say which
            out.append({"suite": suite, "identical": False, "error": _error(e),
                        "differing_fields": [], "seconds": []})
        if save:
            save()
    return out


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()[:400]}"


def _determinism_one(suite: str, device: str, tiny: bool, epochs: int | None) -> dict:
    from alma_bench.run import runner
    from alma_bench.store.files import read_rows
    from alma_bench.store.rundir import RunDir

    spec, scale = _first_run(suite, tiny, epochs)
    spec, data = _data_or_synthetic(spec, tiny)
    if tiny:
        spec = dataclasses.replace(spec, model={"name": "small-cnn", "width": 4})
    rows, secs = [], []
    with tempfile.TemporaryDirectory(prefix="alma-gpu-det-") as tmp:
        for i in range(2):
            t0 = time.perf_counter()
            try:
                runner.execute(spec, Path(tmp) / str(i), device, progress=_stop_after_first)
            except _OneMegabatch:
                pass
            secs.append(time.perf_counter() - t0)
            got = read_rows(RunDir(Path(tmp) / str(i), spec.results_name, spec.run_id).metrics)
            rows.append({k: v for k, v in got[0].items() if k != "wall_time"})
    # as JSON text: NaN equals NaN, and nested values compare exactly
    diff = sorted(k for k in rows[0] | rows[1]
                  if json.dumps(rows[0].get(k)) != json.dumps(rows[1].get(k)))
    return {"suite": suite, "scale": scale or "(default)", "label": spec.label,
            "seed": spec.seed, "model": spec.model["name"], "data": data,
            "epochs": spec.protocol.get("epochs"), "identical": not diff,
            "differing_fields": diff, "seconds": secs, "test_acc": rows[0].get("test_acc")}


def throughput(device: str, tiny: bool, models=MODELS, threads: int = 1, save=None
               ) -> list[dict]:
    """Training images/s of one dense run per model, after a warm-up run of the same model;
    ``save()`` after each model."""
    n, bs = (32, 16) if tiny else (8192, 128)
    out = []
    for name in models:
        print(f"  throughput: {name}", file=sys.stderr)
        try:
            out.append(_throughput_one(name, device, tiny, n, bs, threads))
        except Exception as e:
            out.append({"model": name, "batch_size": bs, "error": _error(e),
                        "images_per_s": None})
        if save:
            save()
    return out


def _throughput_one(name: str, device: str, tiny: bool, n: int, bs: int, threads: int) -> dict:
    from alma_bench.run import runner
    from alma_bench.run.timing import Breakdown
    from alma_bench.spec.config import RunSpec
    from alma_bench.store.files import read_rows
    from alma_bench.store.rundir import RunDir

    rates = []
    # a warm-up run (kernels, allocator, cuDNN's choices), then the measured one
    for n_train in ((n,) if tiny else (max(2 * bs, n // 8), n)):
        stream = {"name": "synthetic", "n_train": n_train, "n_test": bs, "classes": 10,
                  "channels": 3, "size": 32, "megabatches": 1, "replay": "all",
                  "val_fraction": 0.0}
        protocol = {"epochs": 1, "batch_size": bs, "lr": 0.05, "momentum": 0.9,
                    "weight_decay": 5e-4, "augment": True, "patience": None,
                    "eval_batch_size": 1024}
        spec = RunSpec(suite="perf-gpu", label=name, seed=0, stream=stream,
                       model={"name": name}, protocol=protocol, threads=threads,
                       strategy={"name": "dense", "params": {}})
        timer = Breakdown()
        with tempfile.TemporaryDirectory(prefix="alma-gpu-tp-") as tmp:
            runner.execute(spec, Path(tmp), device, timer=timer)
            rows = read_rows(RunDir(Path(tmp), spec.results_name, spec.run_id).metrics)
        train_s = timer.result()["seconds"]["training"]
        rates.append((rows[-1]["samples_seen"], train_s))
    samples, secs = rates[-1]
    return {"model": name, "batch_size": bs, "samples": samples, "train_s": secs,
            "images_per_s": samples / secs if secs else None}


def concurrency(device: str, tiny: bool, workers=WORKERS, timeout_s: float = 240
                ) -> list[dict]:
    """Wall time of N concurrent quickstart dense runs (one per seed) on one device."""
    out = []
    with tempfile.TemporaryDirectory(prefix="alma-gpu-cc-") as tmp:
        for n in workers:
            print(f"  concurrency: {n} run(s)", file=sys.stderr)
            cmd = [sys.executable, "-m", "alma_bench.cli", "run", "quickstart", "--quiet",
                   "--strategies", "dense", "--seeds", ",".join(map(str, range(n))),
                   "--workers", str(n), "--device", device, "--out", f"{tmp}/n{n}"]
            if tiny:
                cmd += ["--scale", "smoke", "--set", "protocol.epochs=1",
                        "--set", "stream.megabatches=2", "--threads", "1"]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True,
                                      env=os.environ.copy(), timeout=timeout_s)
                rc, err = done.returncode, done.stderr.strip()[-500:]
            except subprocess.TimeoutExpired:
                rc, err = None, f"timed out after {timeout_s} s"
            row = {"runs": n, "wall_s": time.perf_counter() - t0, "ok": rc == 0}
            if rc != 0:
                row["error"] = err
            out.append(row)
    one = next((r["wall_s"] for r in out if r["runs"] == 1 and r["ok"]), None)
    for r in out:
        r["n_times_one_s"] = r["runs"] * one if one else None
        r["speedup"] = r["runs"] * one / r["wall_s"] if one and r["ok"] else None
    return out


def check(args, save=None) -> dict:
    """Every part of the GPU check, as one JSON-ready dict; ``save(result)`` after every
    suite, model and part, so a check cut off at its time limit still leaves what it did."""
    import torch

    from alma_bench.errors import UserError

    device = args.device or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--gpu-check: no CUDA device here (torch.cuda.is_available() is "
                        "False); --device cpu runs its plumbing")
    tiny = bool(args.gpu_tiny)
    t0 = time.perf_counter()
    r: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tiny": tiny,
               "environment": environment(device), "determinism": [], "throughput": [],
               "concurrency": [], "complete": False}

    def checkpoint():
        r["seconds"] = time.perf_counter() - t0
        r["all_identical"] = all(d["identical"] for d in r["determinism"])
        if save:
            save(r)

    suites = PUBLISHED[:2] if tiny else PUBLISHED
    r["determinism"] = determinism(device, tiny, args.gpu_epochs or None, suites,
                                   save=checkpoint)
    r["throughput"] = throughput(device, tiny, threads=args.threads or 1, save=checkpoint)
    r["concurrency"] = concurrency(device, tiny, WORKERS[:2] if tiny else WORKERS)
    r["complete"] = True
    checkpoint()
    return r


def format_report(r: dict, command: str) -> str:
    e = r["environment"]
    lines = [
        "# alma-bench on a GPU", "",
        f"Made by `{command}` on {r['date']} in {r.get('seconds', 0):.0f} s"
        + (" (--gpu-tiny: plumbing only, no number here is a measurement)." if r["tiny"]
           else ".")
        + ("" if r.get("complete") else " **Incomplete: the check was cut off here.**"),
        f"Card: {e.get('card')}"
        + (f", {e['memory_gib']} GiB, {e['multiprocessors']} SMs, driver {e.get('driver')}"
           if "memory_gib" in e else "")
        + f"; torch {e['torch']} (CUDA {e['cuda']}, cuDNN {e['cudnn']}), Python {e['python']}, "
          f"device `{e['device']}`.", "",
        "## Determinism: one megabatch, twice", "",
        f"Every field of the metrics row but `wall_time` compared. All identical: "
        f"**{'yes' if r.get('all_identical') else 'NO'}**.", "",
        "| suite | scale | run | model | epochs | data | identical | s (run 1, run 2) |",
        "|---|---|---|---|---|---|---|---|"]
    for d in r["determinism"]:
        if "error" in d:
            lines.append(f"| {d['suite']} | | | | | | FAILED: {d['error'][:200]} | |")
            continue
        same = "yes" if d["identical"] else "NO: " + ", ".join(d["differing_fields"])
        lines.append(f"| {d['suite']} | {d['scale']} | {d['label']} seed {d['seed']} | "
                     f"{d['model']} | {d['epochs']} | {d['data']} | {same} | "
                     f"{d['seconds'][0]:.1f}, {d['seconds'][1]:.1f} |")
    lines += ["", "## Throughput: one dense run per model", "",
              "Synthetic 3x32x32 images, 1 epoch, crop+flip augmentation, after a warm-up "
              "run; training time from the run's own timer.", "",
              "| model | batch | samples | training s | images/s |", "|---|---|---|---|---|"]
    for t in r["throughput"]:
        if "error" in t:
            lines.append(f"| {t['model']} | {t['batch_size']} | FAILED: {t['error'][:200]} | | |")
            continue
        rate = "-" if t["images_per_s"] is None else f"{t['images_per_s']:.0f}"
        lines.append(f"| {t['model']} | {t['batch_size']} | {t['samples']} | "
                     f"{t['train_s']:.2f} | {rate} |")
    lines += ["", "## Concurrent runs on one device", "",
              "`alma-bench run quickstart --strategies dense --seeds 0..N-1 --workers N`, "
              "fresh processes; speedup = N x t(1) / t(N).", "",
              "| runs N | wall s | N x one run s | speedup |", "|---|---|---|---|"]
    for c in r["concurrency"]:
        if not c["ok"]:
            lines.append(f"| {c['runs']} | failed: {c.get('error', '')[-120:]} | - | - |")
            continue
        nx = "-" if c["n_times_one_s"] is None else f"{c['n_times_one_s']:.1f}"
        sp = "-" if c["speedup"] is None else f"{c['speedup']:.2f}"
        lines.append(f"| {c['runs']} | {c['wall_s']:.1f} | {nx} | {sp} |")
    return "\n".join(lines) + "\n"


def run(args, command: str) -> int:
    # the published report unless --gpu-tiny (plumbing), which writes only where it is told
    report = args.gpu_report or (None if args.gpu_tiny else "reports/gpu.md")

    def save(r: dict) -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
        if report:
            Path(report).parent.mkdir(parents=True, exist_ok=True)
            Path(report).write_text(format_report(r, command))

    r = check(args, save)
    print(format_report(r, command))
    if report:
        print(f"report written to {report}", file=sys.stderr)
    ok = r["all_identical"] and all(c["ok"] for c in r["concurrency"])
    return 0 if ok and not any("error" in t for t in r["throughput"]) else 1
