"""Issue 28's perf modes, their plumbing only (seconds, tiny sizes, no timing asserted): the GPU
check on CPU, the evaluation-options mode, and ``perf --run``'s interval over pairs."""

from __future__ import annotations

import argparse
import json

from conftest import write_suite

from alma_bench.perf import command, evalopts, gpu, intervals
from alma_bench.perf import runs as perf_run


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    command.configure_parser(p)
    return p.parse_args(list(argv))


def test_gpu_check_plumbing_on_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository's reports/
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    args = _args("--gpu-check", "--device", "cpu", "--gpu-tiny", "--json", str(out),
                 "--gpu-report", str(md))
    assert gpu.run(args, "alma-bench perf --gpu-check --device cpu --gpu-tiny") == 0
    r = json.loads(out.read_text())
    assert r["tiny"] and r["all_identical"]
    assert [d["suite"] for d in r["determinism"]] == list(gpu.PUBLISHED[:2])
    for d in r["determinism"]:
        assert d["identical"] and d["differing_fields"] == [] and len(d["seconds"]) == 2
    assert [t["model"] for t in r["throughput"]] == list(gpu.MODELS)
    assert all(t["images_per_s"] > 0 for t in r["throughput"])
    assert [c["runs"] for c in r["concurrency"]] == [1, 2]
    assert all(c["ok"] for c in r["concurrency"]), r["concurrency"]
    assert r["concurrency"][1]["n_times_one_s"] == 2 * r["concurrency"][0]["wall_s"]
    text = md.read_text()
    for heading in ("## Determinism", "## Throughput", "## Concurrent runs"):
        assert heading in text
    assert not (tmp_path / "reports").exists()


def test_gpu_check_refuses_cuda_without_a_gpu(monkeypatch):
    import pytest
    import torch

    from alma_bench.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        gpu.check(_args("--gpu-check"))


def test_eval_options_plumbing(tmp_path):
    suite = write_suite(tmp_path / "s.yaml")
    args = _args("--run", f"{suite}:dense", "--eval-options", "--threads", "1",
                 "--eval-batches", "16,32", "--train-eval-samples", "8", "--budget", "60",
                 "--max-rounds", "2")
    r = evalopts.measure(args.runs[0], args)
    inter = r["interleaved"]
    assert inter["rounds"] <= 2
    names = set(inter["ratios"])
    assert "training steps channels_last / contiguous" in names
    default = r["default"]["eval_batch_size"]
    assert f"eval batch 16 channels_last / batch {default} contiguous" in names
    assert set(r["images_per_s"]) >= {f"eval:{default}:0", "eval:16:1", "train:0", "train:1"}
    rows = r["train_eval_sample"]["rows"]
    assert rows[0]["train_eval_sample"] is None and rows[1]["train_eval_sample"] == 8
    assert rows[1]["images"] <= rows[0]["images"]
    assert rows[1]["accuracy_error_95"] > 0
    assert evalopts.format_rows(r)


def test_train_sample_projection():
    p = evalopts.train_sample_projection([100, 200, 300], [150], rate=100.0)
    whole, k = p["rows"]
    assert whole["images"] == 600 and whole["seconds"] == 6.0
    assert k["images"] == 100 + 150 + 150 and k["accuracy_error_95"] == 1.96 * 0.5 / 150**0.5


def test_perf_run_reports_an_interval_over_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr(perf_run, "startup_s", lambda module=None: 1.0)
    suite = write_suite(tmp_path / "s.yaml")
    r = perf_run.measure_run(f"{suite}:dense", threads=1, min_pairs=3, max_pairs=3, min_s=0)
    iv = r["ratio_interval"]
    assert r["pairs"] == 3 and iv["n"] == 3
    assert iv["ci_method"] == intervals.T_LOG  # 3 pairs: below the 6 of the order statistics
    assert iv["ci"][0] <= iv["median"] <= iv["ci"][1]
    assert all(len(v) == 3 for v in r["breakdown_pairs"].values())
    for part in ("test_pass", "train_pass"):
        assert r["passes"][part]["images"] > 0 and r["passes"][part]["seconds"] >= 0
    rows = dict(perf_run.format_rows(r))
    assert any("95% interval over the pairs" in k for k in rows)


def test_gpu_check_records_a_failing_part_and_saves_as_it_goes(tmp_path, monkeypatch):
    def fail_on_second(suite, device, tiny, epochs):
        if suite == gpu.PUBLISHED[1]:
            raise RuntimeError("no deterministic kernel for this op")
        return {"suite": suite, "scale": "paper", "label": "dense", "seed": 0, "model": "m",
                "data": "synthetic", "epochs": 1, "identical": True, "differing_fields": [],
                "seconds": [1.0, 1.0], "test_acc": 0.5}

    monkeypatch.setattr(gpu, "_determinism_one", fail_on_second)
    monkeypatch.setattr(gpu, "_throughput_one", lambda name, *a: {
        "model": name, "batch_size": 2, "samples": 4, "train_s": 1.0, "images_per_s": 4.0})
    monkeypatch.setattr(gpu, "concurrency", lambda *a, **k: [
        {"runs": 1, "wall_s": 1.0, "ok": True, "n_times_one_s": 1.0, "speedup": 1.0}])
    saved = []
    r = gpu.check(_args("--gpu-check", "--device", "cpu", "--gpu-tiny"),
                  save=lambda r: saved.append(json.dumps(r)))
    assert len(saved) == 2 + len(gpu.MODELS) + 1  # after each suite, each model, the end
    assert not json.loads(saved[0])["complete"] and r["complete"]
    assert not r["all_identical"]
    assert "no deterministic kernel" in r["determinism"][1]["error"]
    text = gpu.format_report(r, "cmd")
    assert "FAILED: RuntimeError: no deterministic kernel" in text
