"""The shared-array workload of one system, in a fresh process: TASKS tasks that each
take one array of SIZE_MB (float64) and read one element of it, on WORKERS processes.
Prints JSON: "share_s" (storing or scattering the array), "tasks_s" (the tasks, from
the first send to the last result), "noop_s" (the same tasks with no array, measured
first, in the same pool), "caller_mb" (growth of this process's private memory, RssAnon,
past the array, over the whole run) and "worker_mb" (the largest private memory of a
worker process that ran the tasks, over the baseline's).

    python shared_child.py SYSTEM WORKERS STORE_DIRECTORY SIZE_MB TASKS

SYSTEM: nbqueue (``share``), dask (``Client.scatter(broadcast=True)``), joblib
(``Parallel``'s automatic memory mapping of large arrays).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import workloads  # noqa: E402


def main() -> None:
    system, workers, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    size_mb, tasks = int(sys.argv[4]), int(sys.argv[5])
    array = np.arange(size_mb * 2**20 // 8, dtype=np.float64)
    step = len(array) // tasks
    gc.collect()
    caller_before = workloads._memory_kb("RssAnon")
    prepare, run, stop = start(system, workers, directory)
    try:
        run(workloads.element_noop, None, 1)  # warm: workers up, imports done
        started = time.perf_counter()
        baseline = run(workloads.element_noop, None, tasks, step)
        noop_s = time.perf_counter() - started
        started = time.perf_counter()
        handle = prepare(array)
        share_s = time.perf_counter() - started
        started = time.perf_counter()
        outcomes = run(workloads.array_element, handle, tasks, step)
        tasks_s = time.perf_counter() - started
    finally:
        stop()
    if [value for value, _, _ in outcomes] != [float(i * step) for i in range(tasks)]:
        raise SystemExit(f"{system}: wrong results, e.g. {outcomes[:3]}")
    base = {}
    for _, pid, anon in baseline:
        base[pid] = max(base.get(pid, 0), anon)
    grown = max(anon - min(base.values()) for _, _, anon in outcomes)
    print(json.dumps({
        "share_s": share_s,
        "tasks_s": tasks_s,
        "noop_s": noop_s,
        "caller_mb": max(0, workloads._memory_kb("RssAnon") - caller_before) / 1024,
        "worker_mb": max(0, grown) / 1024,
    }))


def start(system: str, workers: int, directory: str):
    """(prepare(array) -> what a task is given, run(func, given, count, step=1) -> the
    outcomes in order, stop())."""
    if system == "joblib":
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers)
        parallel.__enter__()

        def run(func, given, count, step=1):
            return parallel(delayed(func)(given, i * step) for i in range(count))
        return (lambda array: array), run, (lambda: parallel.__exit__(None, None, None))
    if system == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)

        def run(func, given, count, step=1):
            futures = [client.submit(func, given, i * step, pure=False) for i in range(count)]
            return client.gather(futures)

        def stop():
            client.close()
            cluster.close()
        return (lambda array: client.scatter(array, broadcast=True)), run, stop
    if system == "nbqueue":
        import nbqueue

        nbqueue.configure(directory=directory)
        cluster = nbqueue.Cluster(workers=workers).start()

        def run(func, given, count, step=1):
            ids = [nbqueue.async_task(func, given, i * step) for i in range(count)]
            return [nbqueue.result(task_id, wait=600_000) for task_id in ids]
        return (lambda array: nbqueue.share(array)), run, (lambda: cluster.stop())
    raise SystemExit(f"unknown system {system!r}")


if __name__ == "__main__":
    main()
