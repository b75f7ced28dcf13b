"""Smoke test of the benchmark suite (benchmarks/run.py): the nbqueue and raw-loky parts,
with tiny sizes. It checks what the suite produces, never how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ("noop", "cpu", "latency", "enqueue", "payload", "results", "memory", "signing",
             "reuse", "sweep", "shared")
TARGETS = {"noop_vs_loky", "noop_vs_huey", "noop_vs_dask", "noop_vs_django-q2",
           "cpu_efficiency", "cpu_vs_loky", "noop_other_process", "payload_results_in_process",
           "payload_arguments_in_process", "payload_results_other_process",
           "payload_arguments_other_process", "latency_in_process", "latency_other_process",
           "enqueue_calls", "async_iter", "result_group", "count_group", "rss_growth",
           "sweep_noop_nbqueue-map", "sweep_noop_nbqueue-iter", "sweep_ms_nbqueue-map",
           "sweep_ms_nbqueue-iter", "sweep_big_memory_nbqueue-map",
           "sweep_big_memory_nbqueue-iter", "shared_task_cost", "shared_caller_memory",
           "shared_worker_memory"}
# measured against peers, which --skip-peers leaves out
PEER_TARGETS = {"noop_vs_huey", "noop_vs_dask", "noop_vs_django-q2", "sweep_noop_nbqueue-map",
                "sweep_noop_nbqueue-iter"}


@pytest.mark.timeout(120)
def test_quick_run_without_peers_writes_every_workload_and_a_verdict_per_target(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--skip-peers",
         "--scale", "0.01", "--json", str(out)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())

    for key in ("date", "machine", "versions", "settings", "workloads", "targets", "table"):
        assert key in report
    assert {"arch", "cpu", "nproc", "python"} <= set(report["machine"])
    assert report["errors"] == []
    assert set(report["workloads"]) == set(WORKLOADS)
    for workload in ("noop", "cpu", "latency", "enqueue", "payload"):
        assert {"loky", "nbqueue"} <= set(report["workloads"][workload]), workload
    for workload in ("results", "memory", "signing", "reuse"):
        assert "nbqueue" in report["workloads"][workload], workload
    assert set(report["workloads"]["sweep"]) == {"loky", "nbqueue-map", "nbqueue-iter",
                                                 "nbqueue-joblib"}
    assert set(report["workloads"]["shared"]) == {"nbqueue"}
    assert "nbqueue-proc" in report["workloads"]["latency"]
    assert "nbqueue-proc" in report["workloads"]["payload"]
    assert set(report["workloads"]["payload"]["nbqueue"]) == {"results out", "arguments in"}
    for system in report["workloads"].values():
        for figures in system.values():
            for figure in figures.values():
                assert figure["value"] >= 0 and len(figure["runs"]) == 1

    verdicts = {t["id"]: t["verdict"] for t in report["targets"]}
    assert set(verdicts) == TARGETS
    for target, verdict in verdicts.items():
        expected = {"not measured"} if target in PEER_TARGETS else {"met", "not met"}
        assert verdict in expected, (target, verdict)
    nbqueue_rows = [r for r in report["table"] if r["system"] == "nbqueue"
                    and r["workload"] in ("noop", "latency")]
    assert nbqueue_rows and all(r["ratio_to_loky"] is not None for r in nbqueue_rows)
    assert "| workload | system |" in run.stdout  # the printed table
