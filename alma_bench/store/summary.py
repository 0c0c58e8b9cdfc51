"""A finished run's summary (summary.json) from its metrics rows: plain Python, so a reader
of results (``alma-bench show``, without torch) can regenerate a deleted one exactly as the
runner wrote it."""

from __future__ import annotations

import math


def summarize(rows: list[dict]) -> dict:
    """The run summary from its megabatch rows (cer: error rate summed over evaluation points;
    cer_count: misclassified test images summed, as APP's evaluate_cer)."""
    last = rows[-1]
    gaps = [r["gen_gap"] for r in rows]
    return {
        "final_test_acc": last["test_acc"],
        "cer": cer(r["test_acc"] for r in rows),
        "cer_count": int(sum(r["test_errors"] for r in rows)),
        "mean_gen_gap": sum(gaps) / len(gaps),
        "final_gen_gap": last["gen_gap"],
        "final_density": last["density"],
        "density_over": last.get("density_over"),
        "nonzero_params": last["nonzero_params"],
        "flops_dense": last["flops_dense"],
        "flops_effective": last["flops_effective"],
        "train_flops": last["train_flops"],
        "wall_time": sum(r["wall_time"] for r in rows),
        "n_megabatches": len(rows),
        "samples_seen": last["samples_seen"],
    }


def cer(test_accs) -> float:
    """Cumulative error rate: sum over evaluation points of (1 - test accuracy)."""
    return float(math.fsum(1.0 - a for a in test_accs))
