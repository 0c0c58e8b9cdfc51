"""Runs that depend on runs: a static mask taken from a dpr run of the same suite and seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, cli_process, sigkill_after, write_suite

from alma_bench.cli import main
from alma_bench.errors import UserError
from alma_bench.execute.plan import plan
from alma_bench.store.files import read_rows

DPR = {"density": 0.3, "rewire_schedule": [[0.0, 2]], "n_prune": 8}


def _suite(tmp_path, dpr_name="dpr", megabatches=3):
    return write_suite(tmp_path / "s.yaml", strategies=[
        {"name": "static", "label": "ticket",
         "params": {"structure": "from_run", "structure_from": "sparse", "init": "original"}},
        {"name": dpr_name, "label": "sparse", "params": DPR},
    ], stream={**TINY["stream"], "megabatches": megabatches}, seeds=[0, 1])


def _runs(out: Path) -> dict:
    found = {}
    for d in (out / "tiny").iterdir():
        cfg = json.loads((d / "config.json").read_text())
        found[(cfg["label"], cfg["seed"])] = (cfg, d)
    return found


def test_dependency_enters_the_id_and_is_added_when_filtered_out(tmp_path):
    suite = plan(str(_suite(tmp_path)), strategies=["ticket"])
    by = {(r.label, r.seed): r for r in suite.runs}
    assert set(by) == {("ticket", 0), ("ticket", 1), ("sparse", 0), ("sparse", 1)}
    for seed in (0, 1):  # same seed pairs, and the dependency comes first
        assert by[("ticket", seed)].deps == {"structure_from": by[("sparse", seed)].run_id}
    order = [r.label for r in suite.runs]
    assert order.index("sparse") < order.index("ticket")


def test_unknown_dependency_is_one_line(tmp_path):
    path = write_suite(tmp_path / "s.yaml", strategies=[
        {"name": "static", "params": {"structure": "from_run", "structure_from": "nope"}}])
    with pytest.raises(UserError, match="structure_from='nope' is not an entry"):
        plan(str(path))


def test_dependent_suite_in_the_pool_uses_its_dependencys_mask(tmp_path):
    # the ticket is listed first: the pool must still run the dpr run of its seed before it
    assert main(["run", str(_suite(tmp_path)), "--out", str(tmp_path / "o"), "--quiet",
                 "--workers", "2"]) == 0
    runs = _runs(tmp_path / "o")
    for seed in (0, 1):
        cfg, ticket = runs[("ticket", seed)]
        dcfg, sparse = runs[("sparse", seed)]
        assert cfg["deps"] == {"structure_from": dcfg["run_id"]}
        final = torch.load(sparse / "artifacts" / "final_masks.pt")
        model = torch.load(ticket / "checkpoint.pt", weights_only=False)["model"]
        for name, mask in final.items():
            assert torch.equal(model[f"{name}.weight_mask"], mask)


def test_sigkill_of_the_dependency_resumes_and_the_dependent_follows(tmp_path):
    suite = _suite(tmp_path, "slow-dpr", megabatches=4)
    common = [str(suite), "--plugin", str(ROOT / "tests" / "plugins" / "slow_dpr.py"),
              "--quiet", "--workers", "1", "--seeds", "0"]
    ref = cli_process("run", *common, "--out", str(tmp_path / "ref"))
    proc = cli_process("run", *common, "--out", str(tmp_path / "killed"))
    status, found = sigkill_after(proc, tmp_path / "killed" / "tiny", 2)
    assert status and status["megabatches_done"] == 2, status  # killed inside the dependency
    assert len(found) == 1  # the dependent had not started
    resumed = cli_process("run", *common, "--out", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    a, b = _runs(tmp_path / "ref"), _runs(tmp_path / "killed")
    assert a.keys() == b.keys() == {("ticket", 0), ("sparse", 0)}
    for key in a:
        strip = lambda d: [{k: v for k, v in r.items() if k != "wall_time"}
                           for r in read_rows(d / "metrics.jsonl")]
        assert strip(a[key][1]) == strip(b[key][1]) and len(strip(a[key][1])) == 4


def test_dpr_trainability_smoke_pairs_each_stream_with_its_own_dpr_run(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "dpr-trainability", "--scale", "smoke", "--strategies",
                 "orig-init-0.1", "--out", str(out), "--quiet", "--workers", "1"]) == 0
    runs = {}
    for d in (out / "dpr-trainability-smoke").iterdir():
        cfg = json.loads((d / "config.json").read_text())
        runs[cfg["label"]] = cfg
    assert set(runs) == {f"{lb}[stream.megabatches={n}]"
                         for lb in ("dpr-0.1", "orig-init-0.1") for n in (1, 2)}
    for n in (1, 2):
        ticket, source = runs[f"orig-init-0.1[stream.megabatches={n}]"], \
            runs[f"dpr-0.1[stream.megabatches={n}]"]
        assert ticket["deps"] == {"structure_from": source["run_id"]}
        assert ticket["stream"]["megabatches"] == source["stream"]["megabatches"] == n


def test_lottery_smoke_runs_with_the_reinitialised_ticket_from_imp(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "lottery", "--scale", "smoke", "--out", str(out), "--quiet",
                 "--workers", "1"]) == 0
    runs = {}
    for d in (out / "lottery-smoke").iterdir():
        cfg = json.loads((d / "config.json").read_text())
        runs[cfg["label"]] = (cfg, d)
    assert set(runs) == {"dense", "imp", "imp-q", "random-pruning", "reinit-ticket"}
    ticket, imp = runs["reinit-ticket"], runs["imp"]
    assert ticket[0]["deps"] == {"structure_from": imp[0]["run_id"]}
    final = torch.load(imp[1] / "artifacts" / "final_masks.pt")
    model = torch.load(ticket[1] / "checkpoint.pt", weights_only=False)["model"]
    for name, mask in final.items():
        assert torch.equal(model[f"{name}.weight_mask"], mask)
    rows = {lb: read_rows(d / "metrics.jsonl") for lb, (_, d) in runs.items()}
    # random pruning follows IMP's densities exactly, with another mask
    assert [r["density"] for r in rows["random-pruning"]] == [r["density"] for r in rows["imp"]]
    assert rows["imp"][-1]["density"] == pytest.approx(0.8 ** 2, abs=1e-3)
