"""Ray across nodes (slow): a cluster of separate node processes on this machine
(``ray.cluster_utils.Cluster``), one node killed mid-run, every run finished once with the rows
of an undisturbed run; and a fractional ``--ray-gpus`` as Ray assigns it to the task. Ray is
not mocked: the nodes are Ray's own raylets, each with its workers."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import ROOT, TINY, rows_by_run, traces, write_suite

from alma_bench.cli import main

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

PLUGIN = str(ROOT / "tests" / "plugins" / "cluster.py")
STORE = 80 * 2**20  # the smallest object store Ray accepts is about 75 MB
# longer than Ray takes to notice the dead node and retry (about 15 s here), so the retry
# finds the dead node's lock still fresh and waits for it to go stale
LOCK_TIMEOUT = 25.0


@pytest.fixture
def cluster(monkeypatch):
    """A head that runs no task and worker nodes added by ``add(name, **resources)``, each
    its own raylet process; ``$ALMA_BENCH_NODE`` tells their locks apart (one host)."""
    c = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, object_store_memory=STORE, include_dashboard=False))
    nodes = {}

    def add(name, **resources):
        monkeypatch.setenv("ALMA_BENCH_NODE", name)  # the raylet and its workers inherit it
        nodes[name] = c.add_node(object_store_memory=STORE, **resources)
        monkeypatch.delenv("ALMA_BENCH_NODE")
        return nodes[name]

    c.add = add
    c.nodes_by_name = nodes
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def suite_of(tmp_path, seeds, megabatches, pace):
    return write_suite(tmp_path / "tiny.yaml", seeds=seeds,
                       stream={**TINY["stream"], "megabatches": megabatches},
                       strategies=[{"name": "trace-dense", "params": {"pace": pace}}])


@pytest.mark.slow
def test_a_run_whose_node_dies_resumes_on_another_node(tmp_path, monkeypatch, cluster,
                                                        capsys):
    from alma_bench.store.locks import pid_alive, read_owner

    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("ALMA_TEST_TRACE", str(trace))  # before the nodes start
    # restored after the test (--lock-timeout also sets it in this process)
    monkeypatch.setenv("ALMA_BENCH_LOCK_TIMEOUT", str(LOCK_TIMEOUT))
    suite = suite_of(tmp_path, seeds=[0, 1, 2], megabatches=6, pace=0.03)
    common = ["run", str(suite), "--plugin", PLUGIN, "--quiet", "--threads", "1"]
    t0 = time.time()
    assert main([*common, "--workers", "1", "--out", str(tmp_path / "ref")]) == 0
    t_ref = time.time() - t0
    ref = rows_by_run(tmp_path / "ref" / "tiny")
    trace.unlink()

    t0 = time.time()
    for name in ("node-a", "node-b", "node-c"):
        cluster.add(name, num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    t_start = time.time() - t0
    out = tmp_path / "ray"
    result = {}

    def drive():
        result["code"] = main([*common, "--executor", "ray", "--lock-timeout", str(LOCK_TIMEOUT),
                               "--out", str(out)])

    driver = threading.Thread(target=drive, daemon=True)
    t0 = time.time()
    driver.start()
    # the first run past megabatch 2: its node goes (raylet, object store and workers)
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and driver.is_alive():
        for status in (out / "tiny").glob("*/status.json") if (out / "tiny").exists() else []:
            try:
                st = json.loads(status.read_text())
            except ValueError:
                continue
            owner = read_owner(status.parent / "run.lock")
            if st["state"] == "running" and st["megabatches_done"] >= 2 and owner is not None:
                victim = (status.parent, owner, st["megabatches_done"])
                break
        time.sleep(0.05)
    assert victim is not None, "no run reached megabatch 2"
    run_dir, owner, at = victim
    t_kill = time.time() - t0
    cluster.remove_node(cluster.nodes_by_name[owner.host], allow_graceful=False)
    driver.join(600)
    t_all = time.time() - t0
    assert not driver.is_alive() and result["code"] == 0

    # every run finished once, with the rows of the undisturbed run
    assert rows_by_run(out / "tiny") == ref and len(ref) == 3
    starts = traces(trace)
    cfg = json.loads((run_dir / "config.json").read_text())
    killed = [s for s in starts if (s["label"], s["seed"]) == (cfg["label"], cfg["seed"])]
    others = [s for s in starts if s not in killed]
    assert len(others) == 2 and all(s["start"] == 0 for s in others)
    assert [s["start"] for s in killed][0] == 0 and len(killed) == 2, starts
    first, again = killed
    assert first["node"] == owner.host and first["pid"] == owner.pid
    assert again["node"] != owner.host and again["start"] >= at  # resumed, elsewhere
    # the dead node's lock was taken over only once its heartbeat was LOCK_TIMEOUT s old (the
    # last touch was at most a heartbeat, LOCK_TIMEOUT / 5, before the kill)
    assert again["at"] - (t0 + t_kill) >= LOCK_TIMEOUT * 0.8 - 0.5
    err = capsys.readouterr().err
    assert f"is being trained by pid {owner.pid} on {owner.host}; waiting for it" in err
    assert not pid_alive(owner.pid)  # the killed worker is gone: no second writer
    print(f"\nkilled {owner.host} (pid {owner.pid}, run {cfg['label']} seed {cfg['seed']}) "
          f"after megabatch {at} at {t_kill:.1f}s; resumed at megabatch {again['start'] + 1} "
          f"on {again['node']} {again['at'] - (t0 + t_kill):.1f}s after the kill; all rows at "
          f"{t_all:.1f}s (cluster start {t_start:.1f}s, undisturbed local runs {t_ref:.1f}s)")


@pytest.mark.slow
def test_fractional_gpus_are_what_ray_assigns(tmp_path, monkeypatch, cluster):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("ALMA_TEST_TRACE", str(trace))
    # a node that says it has one GPU (Ray schedules by the count; no GPU is touched: the
    # runs train on the CPU)
    cluster.add("gpu-node", num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    suite = suite_of(tmp_path, seeds=[0, 1], megabatches=2, pace=0.0)
    t0 = time.time()
    assert main(["run", str(suite), "--plugin", PLUGIN, "--quiet", "--executor", "ray",
                 "--device", "cpu", "--ray-gpus", "0.25", "--out", str(tmp_path / "o")]) == 0
    starts = traces(trace)
    assert len(starts) == 2
    for s in starts:
        assert s["resources"] == {"CPU": 1.0, "GPU": 0.25}, s
    print(f"\nassigned {[s['resources'] for s in starts]}; {time.time() - t0:.1f}s")
