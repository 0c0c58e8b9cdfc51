"""Avalanche's own metrics and loggers beside alma-bench's (``run --avalanche-loggers DIR``).

Off by default: the harness measures its rows itself, and Avalanche's evaluator runs silent
because its per-hook dispatch costs time for nothing (reports/perf.md). On, a run's template
gets Avalanche's ``EvaluationPlugin`` with accuracy and loss (per epoch on the training
batches; per experience and stream on the test stream, evaluated after every megabatch),
written by ``TextLogger`` (``log.txt``), ``CSVLogger`` (``csv/``) and ``TensorboardLogger``
(``tb/``) under ``DIR/<results folder>/<label>/seed<N>``, as ``--tensorboard`` lays out runs.

It changes no number, so it is not part of a run's identity (a test compares the rows with
and without it): the metrics only read the training batches' outputs and losses, and the test
evaluation runs in eval mode after the megabatch's row is measured; the random draws it makes
(a data loader's seed) come before the next megabatch reseeds every generator. Avalanche's
WandBLogger fails with current wandb, its CSVLogger keeps only its own metrics (and starts its
files afresh when a run resumes): read alma-bench's numbers from the run folder, not from
these logs.
"""

from __future__ import annotations

from pathlib import Path


def run_log_dir(root: str | Path, spec) -> Path:
    """``root/<results folder>/<label>/seed<N>``: one folder per run, as ``--tensorboard``."""
    return Path(root) / spec.results_name / spec.label / f"seed{spec.seed}"


def evaluator(log_dir: Path):
    """An EvaluationPlugin with accuracy and loss metrics and Avalanche's three file loggers."""
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import CSVLogger, TensorboardLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    log_dir.mkdir(parents=True, exist_ok=True)
    text = open(log_dir / "log.txt", "a")  # closed by close() at the end of the run
    loggers = [TextLogger(text), CSVLogger(str(log_dir / "csv")),
               TensorboardLogger(log_dir / "tb")]
    return EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                            loss_metrics(epoch=True, experience=True, stream=True),
                            loggers=loggers)


def close(evaluator) -> None:
    """Flush and close the loggers' files."""
    for lg in evaluator.loggers:
        if hasattr(lg, "writer"):  # TensorboardLogger
            lg.writer.close()
        elif hasattr(lg, "close"):  # CSVLogger
            lg.close()
        elif getattr(lg, "file", None) is not None and not lg.file.closed:  # TextLogger
            lg.file.close()
