"""One sweep, in a fresh process: one function over N items on WORKERS processes, results in
input order, as each system does it. Prints {"items_per_s": ..., "seconds": ...} as JSON.

    python sweep_child.py SYSTEM N MS WORKERS [STORE_DIRECTORY]

SYSTEM: joblib, loky-map, pool-map, mpire, nbqueue-map, nbqueue-iter, nbqueue-joblib.
MS: the work of each item in milliseconds (0: a no-op, ``x * x``). The pool (or cluster)
is started and warmed before the clock starts, as a notebook's would be.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def main() -> None:
    system, n, ms, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    func = workloads.square if ms == 0 else workloads.busy_square
    items = [(x, ms) for x in range(n)] if ms else list(range(n))
    expected = [x * x for x in range(n)]
    run, stop = start(system, func, workers, sys.argv[5] if len(sys.argv) > 5 else None, ms)
    run(items[: min(200, n)])  # warm: workers spawned, imports done
    started = time.perf_counter()
    results = run(items)
    seconds = time.perf_counter() - started
    stop()
    if list(results) != expected:
        raise SystemExit(f"{system}: wrong results, e.g. {list(results)[:3]}")
    print(json.dumps({"items_per_s": n / seconds, "seconds": seconds}))


def start(system: str, func, workers: int, directory: str | None, ms: float):
    """(run(items) -> results in input order, stop())."""
    star = ms != 0  # items are (x, ms) pairs
    if system == "joblib":
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers)
        parallel.__enter__()  # one pool for the warm-up and the run
        return (lambda items: parallel(delayed(func)(*i) if star else delayed(func)(i)
                                       for i in items)), (lambda: parallel.__exit__(None, None, None))
    if system == "loky-map":
        from loky import get_reusable_executor

        executor = get_reusable_executor(max_workers=workers)

        def run(items):
            chunk = max(1, len(items) // 200)
            if star:
                return list(executor.map(func, *zip(*items), chunksize=chunk))
            return list(executor.map(func, items, chunksize=chunk))
        return run, (lambda: executor.shutdown(wait=True))
    if system == "pool-map":
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        return ((lambda items: pool.starmap(func, items) if star else pool.map(func, items)),
                (lambda: (pool.close(), pool.join())))
    if system == "mpire":
        from mpire import WorkerPool

        pool = WorkerPool(n_jobs=workers, start_method="spawn")
        pool.__enter__()
        return ((lambda items: pool.map(func, items)),
                (lambda: pool.__exit__(None, None, None)))
    import nbqueue

    nbqueue.configure(directory=directory)
    cluster = nbqueue.Cluster(workers=workers).start()
    if system == "nbqueue-map":
        return ((lambda items: list(nbqueue.map(func, items, timeout=3600))),
                (lambda: cluster.stop()))
    if system == "nbqueue-iter":
        def run(items):
            iter_id = nbqueue.async_iter(func, items)
            return nbqueue.result(iter_id, wait=3_600_000)
        return run, (lambda: cluster.stop())
    if system == "nbqueue-joblib":
        import nbqueue.joblib  # noqa: F401
        from joblib import Parallel, delayed, parallel_config

        def run(items):
            with parallel_config(backend="nbqueue"):
                return Parallel(n_jobs=workers)(
                    delayed(func)(*i) if star else delayed(func)(i) for i in items)
        return run, (lambda: cluster.stop())
    raise SystemExit(f"unknown system {system!r}")


if __name__ == "__main__":
    main()
