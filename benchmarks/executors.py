#!/usr/bin/env python
"""Throughput of nbqueue's two executors on this machine: loky and dask.

    .venv/bin/python benchmarks/executors.py [--workers N] [--repeat 3] [--scale 1.0]

The same ``Cluster`` API runs the same groups with ``executor="loky"`` and with
``executor="dask"`` (a ``distributed.LocalCluster`` of N single-threaded processes that
the cluster starts itself). Each figure is the time from the first ``async_task`` to
all results in hand (``result_group(..., count=n, wait=-1)``), the median of
``--repeat`` runs, each on a fresh group, after one warm-up group. Workloads:

  noop    1,000 tasks that return their argument: the per-task overhead
  10ms    200 tasks that sleep 10 ms: the overhead next to short real work
          (the ideal is 200 x 10 ms / N workers)

Prints a table; start-up (``Cluster.start`` until the first result) is shown apart.
Needs ``pip install "nbqueue[dask]"``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import nbqueue
from nbqueue import async_task, result, result_group


def noop(i):
    return i


def sleep_10ms(i):
    time.sleep(0.01)
    return i


WORKLOADS = {"noop": (noop, 1000), "10ms": (sleep_10ms, 200)}


def run_group(func, count: int, group: str) -> float:
    started = time.perf_counter()
    for i in range(count):
        async_task(func, i, group=group, save=True)
    results = result_group(group, count=count, wait=-1)
    elapsed = time.perf_counter() - started
    if results is None or sorted(results) != list(range(count)):
        raise RuntimeError(f"group {group}: wrong results")
    return elapsed


def measure(executor: str, workers: int, repeat: int, scale: float,
            directory: str) -> dict[str, object]:
    nbqueue.configure(directory=os.path.join(directory, executor))
    options = {"dashboard_address": None} if executor == "dask" else {}
    started = time.perf_counter()
    cluster = nbqueue.Cluster(workers=workers, executor=executor, **options).start()
    try:
        result(async_task(noop, 0), wait=-1)
        startup = time.perf_counter() - started
        figures: dict[str, object] = {"startup": startup}
        for name, (func, count) in WORKLOADS.items():
            count = max(1, int(count * scale))
            run_group(func, count, f"{name}-warmup")
            times = [run_group(func, count, f"{name}-{r}") for r in range(repeat)]
            figures[name] = (count, statistics.median(times), times)
        return figures
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the task counts (0.05 for a smoke run)")
    parser.add_argument("--executors", default="loky,dask")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="nbqueue-bench-") as directory:
        for executor in args.executors.split(","):
            rows[executor] = measure(executor, args.workers, args.repeat, args.scale,
                                     directory)
    print(f"\n{args.workers} workers, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}; median of {args.repeat} runs, first async_task to "
          "all results\n")
    print("| executor | workload | tasks | median s | tasks/s | runs (s) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for executor, figures in rows.items():
        for name in WORKLOADS:
            count, median, times = figures[name]
            runs = ", ".join(f"{t:.3f}" for t in times)
            print(f"| {executor} | {name} | {count} | {median:.3f} | {count / median:,.0f} "
                  f"| {runs} |")
    ideal = max(1, int(200 * args.scale)) * 0.01 / args.workers
    print(f"\n10ms ideal with {args.workers} workers: {ideal:.3f} s")
    print("start-up (Cluster.start to the first result): " + ", ".join(
        f"{e} {f['startup']:.2f} s" for e, f in rows.items()))
    return 0


if __name__ == "__main__":  # the dask LocalCluster spawns its workers: guard the main
    sys.exit(main())
