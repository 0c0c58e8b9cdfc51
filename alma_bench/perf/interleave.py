"""Arms run in lockstep: blocks of steps of each compared loop, alternating in one process.

Each arm (the bare loop, the harness in a layout, the harness under a strategy, an
evaluation pass) runs in its own thread, but only one thread runs at a time: an arm holds
the baton for one *block* (``block_samples`` samples, or to the end of a megabatch, or to
the end of its run), records the block's time, and hands the baton back. One *round* is one
block of every live arm; rounds alternate forward and reversed order so a drift within a
round does not always favour the same arm. An arm that ends its run is started again (a new
*pass*: fresh model, fresh run folder) while the measurement goes on, so the rounds go on
until ``should_stop`` says every ratio's 95% interval is within the precision asked for, or
the time budget is spent. Host drift over seconds (the reason single whole-run pairs of
this project moved 10%) then hits both arms of a block ratio alike.

Time is counted per training step exactly as the one-shot measurement counts it
(``perf.bare.split_times``'s ``loop_s``): from the end of the previous step, or from the start
of the epoch, to the end of this step, including the batch's loading and every plugin hook
of the step; the time an arm spends outside its batch loops (pruning before a megabatch,
evaluation, checkpoints) and the time it waits for the baton are not counted.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from alma_bench.perf import intervals


class Stopped(BaseException):
    """Raised inside an arm's thread when the measurement ends before its run does (a
    BaseException, so no ``except Exception`` in the loop it runs can swallow it)."""


@dataclass
class Block:
    """One block of one arm: seconds of its timed steps, samples and steps, the round and
    pass it ran in and the (0-based) megabatch of its last step."""

    round: int
    pass_: int
    seconds: float
    samples: int
    steps: int
    megabatch: int | None

    @property
    def per_sample(self) -> float:
        return self.seconds / self.samples


@dataclass
class Arm:
    """One compared loop. ``body(arm)`` runs one pass, calling ``begin_epoch`` where an epoch's
    timed loop starts, ``step`` after every step and ``boundary`` where a megabatch starts;
    it is called again for every pass."""

    name: str
    body: Callable[[Arm], None]
    block_samples: int = 1024
    threads: int | None = None  # torch threads set in the arm's own thread (OpenMP is per thread)
    clock: Callable[[], float] = time.perf_counter  # tests give a synthetic one
    blocks: list[Block] = field(default_factory=list)
    error: str | None = None
    # scheduler state
    round: int = 0
    pass_: int = 0
    finished: bool = True  # no pass running
    _stop: bool = False
    _go: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    # the block being timed
    _t: float = 0.0
    _samples: int = 0
    _steps: int = 0
    _mb: int | None = None
    _last: float = 0.0

    # ------------------------------------------------------------- called in the arm's thread
    def begin_epoch(self) -> None:
        self._last = self.clock()

    def step(self, samples: int, megabatch: int | None = None) -> None:
        now = self.clock()
        self._t += now - self._last
        self._samples += samples
        self._steps += 1
        self._mb = megabatch
        self._last = now
        if self._samples >= self.block_samples:
            self._yield()

    def boundary(self) -> None:
        """A megabatch starts: the block ends here (blocks never straddle megabatches, so
        a block ratio compares steps at the same masks and set sizes)."""
        if self._steps:
            self._yield()

    def _record(self) -> None:
        if self._steps and self._samples:
            self.blocks.append(Block(self.round, self.pass_, self._t, self._samples, self._steps,
                                     self._mb))
        self._t, self._samples, self._steps = 0.0, 0, 0

    def _yield(self) -> None:
        self._record()
        self._done.set()
        self._go.wait()
        self._go.clear()
        if self._stop:
            raise Stopped
        self._last = self.clock()

    def _main(self) -> None:
        self._go.wait()
        self._go.clear()
        try:
            if self._stop:
                raise Stopped
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            self._last = self.clock()
            self.body(self)
            self._record()  # the run's last, partial block
        except Stopped:
            pass
        except BaseException:  # reported by the scheduler, which stops the measurement
            self.error = traceback.format_exc()
        finally:
            self.finished = True
            self._done.set()

    # ------------------------------------------------------------- called by the scheduler
    def start_pass(self) -> None:
        self.pass_ += 1
        self.finished, self._stop = False, False
        self._t, self._samples, self._steps = 0.0, 0, 0
        self._go.clear()
        self._done.clear()
        self._thread = threading.Thread(target=self._main, name=f"perf-arm-{self.name}",
                                        daemon=True)
        self._thread.start()

    def turn(self, round_: int) -> None:
        """Hand this arm the baton for one block and wait until it hands it back."""
        self.round = round_
        self._done.clear()
        self._go.set()
        self._done.wait()
        if self.finished and self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """End the arm's pass where it waits (its run raises ``Stopped`` there)."""
        if self.finished or self._thread is None:
            return
        self._stop = True
        self._done.clear()
        self._go.set()
        self._done.wait()
        self._thread.join()


@dataclass(frozen=True)
class Ratio:
    """``num``'s time per sample over ``den``'s, block by block in the same round;
    ``final_only``: only blocks in the last megabatch (``last_megabatch``) of both arms."""

    name: str
    num: str
    den: str
    last_megabatch: int | None = None


def block_ratios(num: list[Block], den: list[Block], last_megabatch: int | None = None
                 ) -> list[float]:
    """Per-round ratios of time per sample (rounds where both arms ran a block)."""
    by_round = {b.round: b for b in den}
    out = []
    for b in num:
        d = by_round.get(b.round)
        if d is None:
            continue
        if last_megabatch is not None and (b.megabatch != last_megabatch
                                           or d.megabatch != last_megabatch):
            continue
        out.append(b.per_sample / d.per_sample)
    return out


def summaries(arms: dict[str, Arm], ratios: list[Ratio], precision: float,
              min_blocks: int) -> dict:
    return {r.name: intervals.summarise_ratio(
        block_ratios(arms[r.num].blocks, arms[r.den].blocks, r.last_megabatch), precision,
        min_blocks, t_fallback=False) for r in ratios}


def run_rounds(arms: list[Arm], ratios: list[Ratio], *, precision: float = 0.02,
               budget_s: float = 120.0, min_blocks: int = 10, max_rounds: int | None = None,
               log: Callable[[str], None] | None = None, clock=time.perf_counter) -> dict:
    """Alternate blocks of ``arms`` (each restarted when its run ends) until every ratio is
    precise or ``budget_s`` is spent (or ``max_rounds``); returns the ratios' summaries, the
    rounds, passes, seconds, the stop reason and every arm's blocks."""
    by_name = {a.name: a for a in arms}
    t0 = clock()
    rounds, reason = 0, None
    summary: dict = {}
    try:
        while True:
            order = arms if rounds % 2 == 0 else arms[::-1]
            for arm in order:
                for _ in range(2):  # a pass that ended without a new block: start the next
                    n = len(arm.blocks)
                    if arm.finished:
                        arm.start_pass()
                    arm.turn(rounds)
                    if arm.error:
                        raise RuntimeError(f"perf arm {arm.name} failed:\n{arm.error}")
                    if len(arm.blocks) > n:
                        break
            rounds += 1
            summary = summaries(by_name, ratios, precision, min_blocks)
            stop, reason = intervals.should_stop(summary, elapsed_s=clock() - t0,
                                                 budget_s=budget_s)
            if max_rounds is not None and rounds >= max_rounds and not stop:
                stop, reason = True, f"{max_rounds} rounds"
            if log and (stop or rounds % 10 == 0):
                worst = max((s["rel_half_width"] or float("inf") for s in summary.values()),
                            default=None)
                log(f"  interleaved: {rounds} rounds, widest interval +-{worst:.1%}")
            if stop:
                break
    finally:
        for arm in arms:
            arm.stop()
    return {"ratios": summary, "rounds": rounds, "seconds": clock() - t0, "stopped": reason,
            "precision": precision, "budget_s": budget_s, "min_blocks": min_blocks,
            "precise": all(s["precise"] for s in summary.values()),
            "passes": {a.name: a.pass_ for a in arms},
            "interval_method": intervals.ORDER_STATISTICS,
            "blocks": {a.name: [[b.round, b.pass_, b.seconds, b.samples, b.steps, b.megabatch]
                                for b in a.blocks] for a in arms}}
