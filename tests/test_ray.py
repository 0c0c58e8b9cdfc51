"""The Ray executor: runs as Ray tasks on a local instance give the numbers of in-process runs,
and a failing run is recorded while the others finish."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, TINY, write_suite

from alma_bench.cli import main
from alma_bench.store.files import read_rows

ray = pytest.importorskip("ray")

PLUGIN = str(ROOT / "tests" / "plugins" / "reliability.py")


def by_run(out):
    res = {}
    for d in (out / "tiny").iterdir():
        cfg = json.loads((d / "config.json").read_text())
        rows = [{k: v for k, v in r.items() if k != "wall_time"}
                for r in read_rows(d / "metrics.jsonl")]
        res[(cfg["label"], cfg["seed"])] = rows
    return res


@pytest.mark.slow
def test_ray_runs_equal_in_process_runs(tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path / "tiny.yaml", stream={**TINY["stream"], "megabatches": 3},
                        strategies=["dense", "scratch", "boom"], seeds=[0, 1])
    (tmp_path / "boom").touch()
    monkeypatch.setenv("ALMA_TEST_BOOM", str(tmp_path / "boom"))  # before Ray's workers start
    common = ["run", str(suite), "--plugin", PLUGIN, "--quiet"]
    assert main([*common, "--strategies", "dense,scratch", "--workers", "1",
                 "--out", str(tmp_path / "local")]) == 0
    # a local instance without network or dashboard; the executor uses it as it finds it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main([*common, "--executor", "ray", "--out", str(tmp_path / "ray")])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert code == 4, err
    local, remote = by_run(tmp_path / "local"), by_run(tmp_path / "ray")
    assert len(local) == 4 and all(len(r) == 3 for r in local.values())
    assert {k: v for k, v in remote.items() if k[0] != "boom"} == local
    assert "2 of 6 runs did not finish" in err and err.count("RuntimeError: boom") == 2
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "ray").rglob("status.json")]
    assert sorted(s["state"] for s in statuses) == ["done"] * 4 + ["failed"] * 2
