"""`alma-bench perf --quick`: runs in seconds and writes every JSON field. No timing is
asserted: the numbers depend on the machine and its load."""

from __future__ import annotations

import json
import subprocess
import sys

REQUIRED = ("harness_vs_bare_ratio", "sparse_vs_dense_ratio", "cached_start_s",
            "first_decode_s", "workers_speedup", "bare_images_per_s", "machine")


def test_perf_quick_writes_every_field(tmp_path):
    out = tmp_path / "perf.json"
    # a fresh process, as a user runs it (perf registers a probe strategy in its registry)
    # one repeat and a few interleaved rounds: the plumbing, not the precision
    done = subprocess.run(
        [sys.executable, "-m", "alma_bench.cli", "perf", "--quick", "--json", str(out),
         "--report", str(tmp_path / "perf.md"), "--repeats", "1", "--subset", "384",
         "--budget", "30", "--max-rounds", "7"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in r, key
    for key in ("harness_vs_bare_ratio", "sparse_vs_dense_ratio", "bare_images_per_s"):
        assert isinstance(r[key], float) and r[key] > 0, key
    for key in ("cpu", "cores", "torch", "device", "threads"):
        assert r["machine"][key] not in (None, ""), key
    # skipped under --quick: present as null, with the reason
    for key in ("workers_speedup", "cached_start_s", "first_decode_s"):
        assert r[key] is None and r["skipped"][key], key
    assert set(r["targets"]) >= {"harness_vs_bare_ratio", "workers_speedup"}
    # time per sample against dense, measured in the same process, for the rewiring strategies
    # (interleaved blocks: every ratio a median with its interval, or none yet)
    for kind in ("gmp", "dpr", "prune-regrow"):
        ratio = r["strategies"][kind]["per_sample_vs_dense"]
        assert ratio["n"] >= 1 and ratio["median"] > 0 and "ci" in ratio, kind
    inter = r["interleaved"]
    assert inter["rounds"] <= 7 and inter["stopped"] in ("7 rounds", "time budget spent",
                                                         "precision met")
    hb = inter["ratios"]["harness_vs_bare:contiguous"]
    assert hb["n"] == inter["rounds"]  # one block of each arm per round
    if hb["n"] >= 6:
        assert hb["ci"][0] <= hb["median"] <= hb["ci"][1]
    assert set(inter["blocks"]) >= {"bare:0", "bare:1", "dense:0", "dense:1", "app:0", "gmp:0"}
    assert r["harness_vs_bare_interval"]["median"] == r["harness_vs_bare_ratio"]
    assert "| interleaved harness vs bare" in done.stdout
    assert "| harness/limit time per sample" in done.stdout  # the printed table
    assert not (tmp_path / "perf.md").exists()  # --quick leaves the published report alone
