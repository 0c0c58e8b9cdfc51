"""The arms ``alma-bench perf`` interleaves (``perf.interleave``): the bare loop, the harness
in each layout and under each strategy, and evaluation passes; and the ratios between them.

Every harness arm is a real ``runner.execute`` of the probe strategy (``perf.bare``) wrapping
the strategy measured, so its steps are the harness's steps, hooks and all.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from alma_bench.perf import bare as pb
from alma_bench.perf.interleave import Arm, Ratio, run_rounds

LAYOUTS = {0: "contiguous", 1: "channels_last"}


def bare_arm(name: str, sets, model_fn, bare_kw: dict, channels_last: bool,
             block_samples: int, threads: int | None) -> Arm:
    def body(arm: Arm) -> None:
        pb.bare_train(sets, model_fn, channels_last=channels_last, arm=arm,
                      seed=arm.pass_, **bare_kw)

    return Arm(name, body, block_samples=block_samples, threads=threads)


def harness_arm(name: str, spec_fn, tmp: Path, channels_last: bool, block_samples: int,
                threads: int | None, device: str = "cpu") -> Arm:
    """``spec_fn(arm_name, label)``: the RunSpec of one pass, its probe reporting to the arm."""
    from alma_bench.run.runner import execute

    def body(arm: Arm) -> None:
        out = tmp / f"{name.replace(':', '-')}-{arm.pass_}"
        try:
            execute(spec_fn(name, f"{name}-{arm.pass_}"), out, device,
                    channels_last=channels_last)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    pb.ARMS[name] = arm = Arm(name, body, block_samples=block_samples, threads=threads)
    return arm


def eval_arm(name: str, model_fn, mean, std, x, y, batch_size: int, channels_last: bool,
             block_samples: int, threads: int | None, device: str = "cpu") -> Arm:
    """Evaluation passes as a run makes them (``RunContext.accuracy``: eval mode, the run's
    Normalizer, argmax on the device), over ``x`` in chunks of ``block_samples`` images, at
    ``batch_size`` and in a layout."""
    import torch

    from alma_bench.run.data import Normalizer
    from alma_bench.run.training import RunContext

    def body(arm: Arm) -> None:
        model = model_fn().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        ctx = SimpleNamespace(model=model, protocol=SimpleNamespace(eval_batch_size=batch_size),
                              normalize=Normalizer(mean, std, device, channels_last))
        for i in range(0, len(y), block_samples):
            arm.begin_epoch()
            RunContext.accuracy(ctx, x[i : i + block_samples], y[i : i + block_samples])
            arm.step(len(y[i : i + block_samples]))

    return Arm(name, body, block_samples=block_samples, threads=threads)


def perf_ratios(kinds: list[str], last_megabatch: int) -> list[Ratio]:
    """The ratios of ``alma-bench perf``: harness/bare and sparse/dense per layout, each
    strategy's time per sample against dense, and channels-last against contiguous."""
    out = []
    for cl, lay in LAYOUTS.items():
        out += [Ratio(f"harness_vs_bare:{lay}", f"dense:{cl}", f"bare:{cl}"),
                Ratio(f"sparse_vs_dense_final:{lay}", f"app:{cl}", f"dense:{cl}",
                      last_megabatch),
                Ratio(f"sparse_vs_dense_run:{lay}", f"app:{cl}", f"dense:{cl}")]
    out += [Ratio(f"{k}_vs_dense:contiguous", f"{k}:0", "dense:0") for k in kinds]
    out += [Ratio("channels_last_vs_contiguous:bare", "bare:1", "bare:0"),
            Ratio("channels_last_vs_contiguous:harness", "dense:1", "dense:0")]
    return out


def measure(spec_fn, sets, model_fn, bare_kw: dict, kinds: list[str], tmp: Path, *,
            threads: int, block_samples: int, precision: float, budget_s: float,
            min_blocks: int, max_rounds: int | None = None) -> dict:
    """The interleaved measurement of ``alma-bench perf``: arms bare, dense and app in both
    layouts and every strategy in ``kinds`` (contiguous), in the order that puts the arms
    of a ratio next to each other: bare:0, dense:0, app:0, strategies, app:1, dense:1,
    bare:1."""
    def harness(kind, cl):
        name = f"{kind}:{cl}"
        return harness_arm(name, lambda arm, label: spec_fn(kind, label, arm), tmp, bool(cl),
                           block_samples, threads)

    arms = [bare_arm("bare:0", sets, model_fn, bare_kw, False, block_samples, threads),
            harness("dense", 0), harness("app", 0), *(harness(k, 0) for k in kinds),
            harness("app", 1), harness("dense", 1),
            bare_arm("bare:1", sets, model_fn, bare_kw, True, block_samples, threads)]
    try:
        return run_rounds(arms, perf_ratios(kinds, len(sets) - 1), precision=precision,
                          budget_s=budget_s, min_blocks=min_blocks, max_rounds=max_rounds,
                          log=lambda s: print(s, file=sys.stderr))
    finally:
        for a in arms:
            pb.ARMS.pop(a.name, None)
