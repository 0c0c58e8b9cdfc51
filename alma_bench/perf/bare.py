"""Measurement pieces of ``alma-bench perf``: the bare PyTorch loop, the probe that times the
harness from inside, the thread/wait-policy matrix, and the machine description.

Everything here imports torch; ``alma_bench.perf.command`` imports this module only inside
``run`` so that building the CLI parser stays light.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from alma_bench.registry import STRATEGIES
from alma_bench.run.data import random_crop_flip

PROBE = "perf-probe"


def stats(xs: list[float]) -> dict:
    """Median and spread of repeated measurements (spread = (max - min) / median)."""
    xs = [float(x) for x in xs]
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs), "n": len(xs),
            "spread": (max(xs) - min(xs)) / med if med else None}


def machine(threads: int) -> dict:
    """CPU model, cores, torch version, device, threads and the OpenMP wait policy in force."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       None)
    except OSError:
        pass
    import platform

    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "torch": torch.__version__, "device": "cpu", "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default: active)"),
            "python": platform.python_version()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------- the bare loop (the limit)

def _affine(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x_norm = x_uint8 * scale - shift, per channel: normalisation as
    one addcmul, the harness's per-batch cost."""
    c = len(mean)
    scale = (1.0 / (255.0 * torch.tensor(std))).view(1, c, 1, 1)
    shift = (torch.tensor(mean) / torch.tensor(std)).view(1, c, 1, 1)
    return scale, shift


def bare_train(sets, model_fn, *, batch_size: int, epochs: int | list[int], lr: float,
               momentum: float, weight_decay: float, augment: bool, padding: int, mean, std,
               channels_last: bool, seed: int = 0, compile: bool = False, arm=None) -> dict:
    """The limit: plain PyTorch over pre-loaded uint8 tensors, the harness's work per step
    (gather a shuffled batch, batched crop+flip, normalise, forward, backward, SGD step) and
    nothing else. ``sets`` is the list of (x, y) trained on per megabatch, so it sees exactly
    the samples and batch boundaries the harness sees (``epochs``: per megabatch, or one
    number for all, e.g. the epochs a run trained before early stopping). Only the epoch
    loops are timed;
    ``compile`` (torch.compile) is warmed up on one batch first, timed as ``compile_s``.
    ``arm``: a ``perf.interleave.Arm`` told of every epoch start, step and megabatch start
    (it may pause the loop there while the other arms run their blocks)."""
    torch.manual_seed(seed)
    model = model_fn()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    scale, shift = _affine(mean, std)
    compile_s = None
    if compile:
        t0 = time.perf_counter()
        model.compile()
        # two batch sizes: the second compiles the dynamic-batch graph that the short last
        # batch of an epoch needs, so no compilation happens inside the timed loops
        for n in (batch_size, batch_size - 1):
            x0 = sets[0][0][:n]
            x0 = x0.contiguous(memory_format=torch.channels_last) if channels_last else x0
            F.cross_entropy(model(torch.addcmul(-shift, x0.float(), scale)),
                            sets[0][1][:n]).backward()
        model.zero_grad(set_to_none=True)
        compile_s = time.perf_counter() - t0
    loop = 0.0
    samples = steps = 0
    for t, (x, y) in enumerate(sets):
        if arm is not None:
            arm.boundary()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
        for e in range(epochs[t] if isinstance(epochs, list) else epochs):
            g = torch.Generator().manual_seed(seed * 1_000_003 + 1000 * t + e)
            start = time.perf_counter()
            if arm is not None:
                arm.begin_epoch()
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), batch_size):
                idx = order[i : i + batch_size]
                xb, yb = x[idx], y[idx]
                if augment:
                    xb = random_crop_flip(xb, padding, g)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(torch.addcmul(-shift, xb.float(), scale)), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                samples += len(yb)
                steps += 1
                if arm is not None:
                    arm.step(len(yb), t)
            loop += time.perf_counter() - start
    return {"loop_s": loop, "samples": samples, "steps": steps, "compile_s": compile_s}


def augment_rate(x: torch.Tensor, batch_size: int, padding: int, seconds: float = 1.0) -> float:
    """Images per second of batch gather + crop/flip + normalise (the data path of a step)."""
    g = torch.Generator().manual_seed(0)
    n = done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb = random_crop_flip(x[idx], padding, g)
        xb.float().mul_(1 / 255.0)
        done += batch_size
        n += 1
    return done / (time.perf_counter() - start)


@torch.inference_mode()
def bare_eval(model, x: torch.Tensor, batch_size: int, mean, std) -> int:
    """The limit of an evaluation pass: eval mode, normalise, forward, argmax; nothing else.
    Returns the number of images (the caller times it)."""
    scale, shift = _affine(mean, std)
    model.eval()
    for i in range(0, len(x), batch_size):
        model(torch.addcmul(-shift, x[i : i + batch_size].float(), scale)).argmax(1)
    return len(x)


@torch.no_grad()
def eval_rate(model, normalize, x: torch.Tensor, batch_size: int) -> float:
    """Images per second of an evaluation pass (eval mode, as ``RunContext.accuracy``)."""
    was = model.training
    model.eval()
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        model(normalize(x[i : i + batch_size])).argmax(1)
    model.train(was)
    return len(x) / (time.perf_counter() - start)


# ---------------------------------------------------------------- the probe inside the harness

@dataclass
class MegabatchTimes:
    """Timestamps of one megabatch, from the probe's hooks."""

    start: float
    first_epoch: float | None = None
    train_end: float | None = None
    loop_s: float = 0.0  # the batch loops only: what the bare loop is compared with
    steps: int = 0
    samples: int = 0
    epoch_start: float = 0.0
    last_iter: float = 0.0


@dataclass
class ProbeLog:
    ctx: object = None
    mbs: list[MegabatchTimes] = field(default_factory=list)


LOGS: list[ProbeLog] = []  # one per probed run in this process, newest last
#: name -> ``perf.interleave.Arm`` of the interleaved measurement: a probe whose ``arm`` is
#: set reports its steps to that arm instead of logging them
ARMS: dict = {}


class _Head(SupervisedPlugin):
    """First strategy plugin: megabatch start and epoch start (before any strategy hook)."""

    def __init__(self, log: ProbeLog):
        super().__init__()
        self.log = log

    def before_training_exp(self, strategy, **kw):
        self.log.mbs.append(MegabatchTimes(time.perf_counter()))

    def before_training_epoch(self, strategy, **kw):
        m = self.log.mbs[-1]
        m.epoch_start = m.last_iter = time.perf_counter()
        if m.first_epoch is None:
            m.first_epoch = m.epoch_start

    def after_training_exp(self, strategy, **kw):
        self.log.mbs[-1].train_end = time.perf_counter()


class _ArmHead(SupervisedPlugin):
    """First strategy plugin of an interleaved arm: megabatch and epoch starts."""

    def __init__(self, arm):
        super().__init__()
        self.arm = arm

    def before_training_exp(self, strategy, **kw):
        self.arm.boundary()

    def before_training_epoch(self, strategy, **kw):
        self.arm.begin_epoch()


class _ArmTail(SupervisedPlugin):
    """Last strategy plugin of an interleaved arm: the end of each step."""

    def __init__(self, arm, ctx):
        super().__init__()
        self.arm, self.ctx = arm, ctx

    def after_training_iteration(self, strategy, **kw):
        self.arm.step(len(strategy.mb_y), self.ctx.megabatch)


class _Tail(SupervisedPlugin):
    """Last strategy plugin: the end of each step (after every strategy's per-step hooks)."""

    def __init__(self, log: ProbeLog):
        super().__init__()
        self.log = log

    def after_training_iteration(self, strategy, **kw):
        m = self.log.mbs[-1]
        m.last_iter = time.perf_counter()
        m.steps += 1
        m.samples += len(strategy.mb_y)

    def after_training_epoch(self, strategy, **kw):
        # Core plugins (validation) ran before this hook, so the loop ends at the last step.
        m = self.log.mbs[-1]
        m.loop_s += m.last_iter - m.epoch_start


def register_probe() -> None:
    """Register ``perf-probe``: any strategy (``inner``) wrapped between two timing plugins.
    Only this process's registry sees it; it is never listed by the CLI."""
    if PROBE in STRATEGIES:
        return

    @STRATEGIES.register(PROBE)
    @dataclass(frozen=True)
    class PerfProbe:
        """A strategy between two timing plugins (used by alma-bench perf only)."""

        inner: str = "dense"
        inner_params: dict = field(default_factory=dict)
        arm: str = ""  # an interleaved arm (ARMS) to report steps to, instead of a log

        def plugins(self, ctx) -> list:
            from alma_bench.spec import compose  # a composed strategy too

            inner = compose.create(self.inner, self.inner_params).plugins(ctx)
            if self.arm:
                arm = ARMS[self.arm]
                return [_ArmHead(arm), *inner, _ArmTail(arm, ctx)]
            log = ProbeLog(ctx)
            LOGS.append(log)
            return [_Head(log), *inner, _Tail(log)]


def split_times(log: ProbeLog, run_end: float) -> dict:
    """A probed run as totals: batch loops, pruning before training, per-epoch validation, and
    everything after training (evaluation passes, metrics, checkpoint), per megabatch."""
    mbs = log.mbs
    ends = [m.start for m in mbs[1:]] + [run_end]
    walls = [e - m.start for m, e in zip(mbs, ends)]
    return {
        "loop_s": sum(m.loop_s for m in mbs), "samples": sum(m.samples for m in mbs),
        "steps": sum(m.steps for m in mbs), "wall_s": sum(walls),
        "mb_wall_s": walls, "mb_loop_s": [m.loop_s for m in mbs],
        "mb_steps": [m.steps for m in mbs],
        "pre_train_s": sum(m.first_epoch - m.start for m in mbs),
        "in_train_other_s": sum(m.train_end - m.first_epoch - m.loop_s for m in mbs),
        "post_train_s": sum(e - m.train_end for m, e in zip(mbs, ends)),
    }


# ---------------------------------------------------------------- summary

def summarise(raw: dict) -> dict:
    """Medians and spreads of the interleaved repeats; ratios are taken per repeat (pairs
    measured seconds apart under the same load), then their median."""
    def rate(r):
        return r["samples"] / r["loop_s"]

    out: dict = {"bare": {}, "harness": {}, "sparse": {}, "shares": {}}
    layouts = {0: "contiguous", 1: "channels_last"}
    for cl, name in layouts.items():
        out["bare"][name] = stats([rate(r) for r in raw[f"bare:{cl}"]])
    out["compiled"] = {  # torch.compile: shown beside the limit, not part of it
        name: {"images_per_s": stats([rate(r) for r in raw[f"compiled:{cl}"]]),
               "compile_s": stats([r["compile_s"] for r in raw[f"compiled:{cl}"]])}
        for cl, name in layouts.items() if raw.get(f"compiled:{cl}")}
    best = max(layouts, key=lambda c: out["bare"][layouts[c]]["median"])
    limit = [rate(r) for r in raw[f"bare:{best}"]]
    out["bare"]["limit_layout"] = layouts[best]
    out["bare_images_per_s"] = statistics.median(limit)
    for cl, name in layouts.items():
        dense, app, bare = raw[f"dense:{cl}"], raw[f"app:{cl}"], raw[f"bare:{cl}"]
        out["harness"][name] = {
            "images_per_s": stats([rate(r) for r in dense]),
            # time per sample of the harness's batch loops over the limit's
            "vs_limit": stats([lim / rate(d) for lim, d in zip(limit, dense)]),
            "vs_bare_same_layout": stats([rate(b) / rate(d) for b, d in zip(bare, dense)]),
            # whole megabatches: + validation, evaluation passes, metrics, checkpoints
            "whole_vs_limit": stats([lim * d["wall_s"] / d["samples"]
                                     for lim, d in zip(limit, dense)]),
        }
        out["sparse"][name] = {
            # final megabatch: APP's mask is at its final density there
            "final_step_ratio": stats([(a["mb_loop_s"][-1] / a["mb_steps"][-1])
                                       / (d["mb_loop_s"][-1] / d["mb_steps"][-1])
                                       for a, d in zip(app, dense)]),
            "run_loop_ratio": stats([a["loop_s"] / d["loop_s"] for a, d in zip(app, dense)]),
        }
    hl = out["harness"][layouts[best]]
    out["harness_layout"] = layouts[best]
    out["harness_vs_bare_ratio"] = hl["vs_limit"]["median"]
    out["harness_whole_vs_bare_ratio"] = hl["whole_vs_limit"]["median"]
    out["sparse_vs_dense_ratio"] = out["sparse"][layouts[best]]["final_step_ratio"]["median"]
    dense0 = raw["dense:0"]
    out["strategies"] = {  # per-repeat pairs with dense, like every other ratio here
        key.split(":")[0]: {"per_sample_vs_dense": stats([
            (s["loop_s"] / s["samples"]) / (d["loop_s"] / d["samples"])
            for s, d in zip(runs, dense0)])}
        for key, runs in raw.items()
        if key.endswith(":0") and key.split(":")[0] not in ("bare", "dense", "app", "compiled")}
    dense, app = raw[f"dense:{best}"], raw[f"app:{best}"]
    n_mb = len(dense[0]["mb_wall_s"])
    out["shares"] = {
        "test_pass_s": stats([d["test_pass_s"] for d in dense]),
        "eval_images_per_s": {b: stats([d["eval_images_per_s"][b] for d in dense])
                              for b in dense[0]["eval_images_per_s"]},
        # one test-set pass over the mean megabatch wall time of the dense run
        "test_pass_of_megabatch": stats([d["test_pass_s"] * n_mb / d["wall_s"] for d in dense]),
        "eval_and_bookkeeping_of_megabatch": stats(
            [(d["in_train_other_s"] + d["post_train_s"]) / d["wall_s"] for d in dense]),
        "prune_s": stats([a["pre_train_s"] / n_mb for a in app]),
        "prune_of_megabatch": stats([a["pre_train_s"] / a["wall_s"] for a in app]),
    }
    return out



# ---------------------------------------------------------------- threads and wait policy

_CHILD = """
import json, sys, time, torch
from alma_bench.perf.bare import bare_train
from alma_bench.run.models import SmallCNN
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, ({n}, 3, 32, 32), dtype=torch.uint8, generator=g)
y = torch.randint(0, 10, ({n},), generator=g)
kw = dict(batch_size={bs}, epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, augment=True,
          padding=4, mean=(0.5,) * 3, std=(0.25,) * 3, channels_last={cl})
bare_train([(x[:256], y[:256])], lambda: SmallCNN().build((3, 32, 32), 10), **kw)  # warm-up
r = bare_train([(x, y)], lambda: SmallCNN().build((3, 32, 32), 10), **kw)
print(json.dumps(r["samples"] / r["loop_s"]))
"""


def thread_matrix(n: int, batch_size: int, channels_last: bool, timeout: float = 300) -> list:
    """Bare-loop images/s in fresh processes for 1 and 2 threads under each OpenMP wait policy,
    on an idle machine and beside one busy process (what a second worker or another user's job
    does). The policy must be set before libgomp loads, hence one process per cell."""
    rows = []
    for busy in (False, True):
        hog = None
        if busy:  # one spinning process: the load another job puts on a 2-core machine
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            for threads, policy in ((1, None), (2, None), (2, "PASSIVE")):
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if policy:
                    env["OMP_WAIT_POLICY"] = policy
                code = _CHILD.format(threads=threads, n=n, bs=batch_size, cl=channels_last)
                try:
                    out = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                                         capture_output=True, timeout=timeout, check=True)
                    rate = json.loads(out.stdout.strip().splitlines()[-1])
                except (subprocess.SubprocessError, ValueError, IndexError) as e:
                    rate = None
                    print(f"  thread probe failed: {type(e).__name__}", file=sys.stderr)
                rows.append({"threads": threads, "omp_wait_policy": (policy or "default").lower(),
                             "other_process_busy": busy, "images_per_s": rate})
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return rows
