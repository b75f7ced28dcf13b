"""The memory workload, run by benchmarks/run.py in a fresh process (the "kernel").

Starts an in-process nbqueue cluster on DIRECTORY, measures this process's RSS once it
is idle, then runs GROUPS x SIZE no-op tasks (group "g0", "g1", ...) without reading any
result, and measures the RSS again. The store it leaves behind (GROUPS x SIZE saved
results) is what the results workload reads. Prints one JSON line.

    python benchmarks/memory_child.py DIRECTORY GROUPS SIZE [WORKERS]
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

import nbqueue  # noqa: E402


def status(field: str = "VmRSS") -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return status("VmRSS")


def settled_rss() -> dict[str, float]:
    """RSS once garbage is collected, and its parts: anonymous memory (the Python heap,
    SQLite's page caches) and file pages (SQLite's memory-mapped store files, libraries)."""
    gc.collect()
    time.sleep(0.5)
    gc.collect()
    return {"rss": rss_mb(), "anon": status("RssAnon"), "file": status("RssFile")}


def main() -> int:
    directory, groups, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    warnings.simplefilter("ignore", nbqueue.NoClusterWarning)
    trace = os.environ.get("NBQUEUE_BENCH_TRACEMALLOC") == "1"  # diagnosis only: slow
    if trace:
        import tracemalloc
        tracemalloc.start(25)
    nbqueue.configure(directory=directory)
    rss_start = rss_mb()
    cluster = nbqueue.Cluster(workers=workers, directory=directory).start()
    for i in range(100):  # spawn and warm the workers, open every part of the store
        nbqueue.async_task(workloads.noop, i, group="warmup")
    nbqueue.result_group("warmup", count=100, wait=120_000)
    nbqueue.delete_group("warmup", tasks=True)
    idle = settled_rss()
    rss_idle = idle["rss"]
    if trace:
        heap_idle = tracemalloc.take_snapshot()

    peak = [rss_idle]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    total = groups * size
    started = time.perf_counter()
    for g in range(groups):
        for i in range(size):
            nbqueue.async_task(workloads.noop, i, group=f"g{g}")
    enqueued = time.perf_counter()
    deadline = time.monotonic() + 1800
    finished = 0
    while time.monotonic() < deadline:
        finished = sum(nbqueue.count_group(f"g{g}") + nbqueue.count_group(f"g{g}", failures=True)
                       for g in range(groups))
        if finished >= total:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    after = settled_rss()
    rss_after = after["rss"]
    traced: dict[str, object] = {}
    if trace:
        diff = tracemalloc.take_snapshot().compare_to(heap_idle, "traceback")
        traced = {"python_heap_growth_mb": sum(d.size_diff for d in diff) / 2**20,
                  "top": [{"mb": d.size_diff / 2**20, "count": d.count_diff,
                           "where": d.traceback.format()[-6:]} for d in diff[:8]]}
    failures = sum(nbqueue.count_group(f"g{g}", failures=True) for g in range(groups))
    cluster.stop(wait=10)
    print(json.dumps({
        "tasks": total, "finished": finished, "failures": failures,
        "seconds": elapsed, "enqueue_seconds": enqueued - started,
        "rss_start_mb": rss_start, "rss_idle_mb": rss_idle, "rss_after_mb": rss_after,
        "rss_peak_mb": max(peak[0], rss_after), "rss_growth_mb": rss_after - rss_idle,
        "anon_growth_mb": after["anon"] - idle["anon"],
        "file_growth_mb": after["file"] - idle["file"], "idle": idle, "after": after,
        **traced,
    }), flush=True)
    return 0 if finished >= total else 1


if __name__ == "__main__":
    sys.exit(main())
