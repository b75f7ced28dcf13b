"""The sweeps of one system, in a fresh process: one function over N items on WORKERS
processes, results in input order, as the system does it; first N no-op items (``x * x``),
then N_MS items of MS milliseconds of work, then (if N_BIG) N_BIG no-op items in one
call, with the growth of this process's peak memory meanwhile (the items and results
made before the clock starts are not counted). Prints {"noop": items/s, "ms": items/s,
"big": items/s, "big_mb": MB} as JSON.

    python sweep_child.py SYSTEM WORKERS STORE_DIRECTORY N N_MS MS [N_BIG]

SYSTEM: joblib, loky-map, pool-map, mpire, nbqueue-map, nbqueue-iter, nbqueue-joblib. The
pool (or cluster) is started and warmed before the clock starts, as a notebook's would be.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def main() -> None:
    system, workers, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n, n_ms, ms = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    n_big = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    run, stop = start(system, workers, directory)
    try:
        list(run(workloads.square, list(range(min(200, n)))))  # warm: workers up, imports done
        figures = {
            "noop": measure(system, run, workloads.square, list(range(n)), n),
            "ms": measure(system, run, workloads.busy_square, [(x, ms) for x in range(n_ms)],
                          n_ms),
        }
        if n_big:
            figures["big"], figures["big_mb"] = measure_big(system, run, n_big)
    finally:
        stop()
    print(json.dumps(figures))


def measure_big(system: str, run, n: int) -> tuple[float, float]:
    """Items per second of one sweep of ``n`` no-op items, and how many MB this process's
    peak resident memory grew meanwhile, past its items and the list of their results."""
    items = list(range(n))
    expected = [x * x for x in items]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak (VmHWM) starts again from here
    before = _status_kb("VmRSS")
    started = time.perf_counter()
    results = list(run(workloads.square, items))
    seconds = time.perf_counter() - started
    grown = max(0.0, (_status_kb("VmHWM") - before) / 1024 - sys.getsizeof(results) / 2**20)
    if results != expected:
        raise SystemExit(f"{system}: wrong results of the big sweep, e.g. {results[:3]}")
    return n / seconds, grown


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def measure(system: str, run, func, items: list, n: int) -> float:
    """Items per second of one sweep, its results checked."""
    started = time.perf_counter()
    results = list(run(func, items))
    seconds = time.perf_counter() - started
    if results != [x * x for x in range(n)]:
        raise SystemExit(f"{system}: wrong results, e.g. {results[:3]}")
    return n / seconds


def start(system: str, workers: int, directory: str):
    """(run(func, items) -> results in input order, stop()); an item that is a tuple is
    spread as arguments."""
    def calls(func, items):
        return (delayed(func)(*i) if isinstance(i, tuple) else delayed(func)(i) for i in items)

    if system == "joblib":
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers)
        parallel.__enter__()  # one pool for the warm-up and the runs
        return ((lambda func, items: parallel(calls(func, items))),
                (lambda: parallel.__exit__(None, None, None)))
    if system == "loky-map":
        from loky import get_reusable_executor

        executor = get_reusable_executor(max_workers=workers)

        def run(func, items):
            chunk = max(1, len(items) // 200)
            columns = zip(*items) if isinstance(items[0], tuple) else (items,)
            return executor.map(func, *columns, chunksize=chunk)
        return run, (lambda: executor.shutdown(wait=True))
    if system == "pool-map":
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        return ((lambda func, items: pool.starmap(func, items) if isinstance(items[0], tuple)
                 else pool.map(func, items)),
                (lambda: (pool.close(), pool.join())))
    if system == "mpire":
        from mpire import WorkerPool

        pool = WorkerPool(n_jobs=workers, start_method="spawn")
        pool.__enter__()
        return ((lambda func, items: pool.map(func, items)),
                (lambda: pool.__exit__(None, None, None)))
    import nbqueue

    nbqueue.configure(directory=directory)
    cluster = nbqueue.Cluster(workers=workers).start()
    if system == "nbqueue-map":
        return ((lambda func, items: nbqueue.map(func, items, timeout=3600)),
                (lambda: cluster.stop()))
    if system == "nbqueue-iter":
        def run_iter(func, items):
            return nbqueue.result(nbqueue.async_iter(func, items), wait=3_600_000)
        return run_iter, (lambda: cluster.stop())
    if system == "nbqueue-joblib":
        import nbqueue.joblib  # noqa: F401
        from joblib import Parallel, delayed, parallel_config

        def run_joblib(func, items):
            with parallel_config(backend="nbqueue"):
                return Parallel(n_jobs=workers)(calls(func, items))
        return run_joblib, (lambda: cluster.stop())
    raise SystemExit(f"unknown system {system!r}")


if __name__ == "__main__":
    main()
