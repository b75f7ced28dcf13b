#!/usr/bin/env python
"""nbqueue's benchmark suite: nbqueue next to raw loky and its peers.

    python benchmarks/run.py [--quick] [--json out.json] [--only noop,latency,...]
                             [--skip-peers] [--systems loky,nbqueue,...] [--scale F]

Every system is measured in this one process, one after another, on the same
workloads; systems that need a worker process of their own (the huey consumer,
django-q2's qcluster, ``nbqueue cluster``) are started here as subprocesses and
stopped by pid afterwards. Each figure is the median of several repeats, and every
nbqueue figure is also given as a ratio to raw loky measured in the same run, since
this machine is shared and absolute figures are noisy.

Workloads (sizes at --scale 1):
  noop     2,000 no-op tasks, from the first enqueue to all results in hand -> tasks/s
  cpu      200 tasks of 10 ms of pure-Python CPU work -> tasks/s, efficiency vs ideal
  latency  200 sequential single tasks, enqueue then wait for the result -> p50/p95 ms
  enqueue  10,000 async_task calls (no cluster consuming) -> calls/s; async_iter of
           10,000 items -> items/s
  payload  20 tasks that each return 4 MB ("results out"), then 20 tasks that each take
           a 4 MB argument ("arguments in"), all results in hand -> MB/s
  results  result_group of a 10,000-task group, count_group, on a 100,000-task store -> ms
  memory   RSS of a fresh "kernel" process with a running cluster, idle and after
           100,000 tasks (benchmarks/memory_child.py)
  signing  the cost of signing every value of the store: a no-op task's package signed
           and checked (us), and a 4 MB value written and read through the store,
           next to plain diskcache on the same disk (MB/s)
  reuse    what reuse=True costs per async_task call (no cluster running): 2,000 calls
           with reuse off (calls/s), then the extra time of a reuse=True call that sends
           a new task, and the time of one that finds the same call queued or succeeded,
           by dotted path and as a lambda (us)
  sweep    one function over 100,000 no-op items, 2,000 items of 1 ms, then 1,000,000
           no-op items in one call, results in input order, each system its own way
           (benchmarks/sweep_child.py) -> items/s, the caller's peak memory growth
  shared   one 400 MB array read by 1,000 tasks, each system in a fresh process
           (benchmarks/shared_child.py): nbqueue.share, dask's scatter, joblib's
           memory mapping -> seconds, cost per task over a no-op task, the caller's and
           a worker's private memory growth

Prints a markdown table (figures, ratio to raw loky, target, met / not met) and
writes JSON (default benchmarks/results/latest.json).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from importlib import metadata
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
# every worker process of every system must import the workload functions
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != HERE])

import workloads  # noqa: E402

WORKERS = 2
WORKLOADS = ("noop", "cpu", "latency", "enqueue", "payload", "results", "memory", "signing",
             "reuse", "sweep", "shared")
PEERS = ("huey", "dask", "django-q2")
# the sweep: one function over many items, results in input order, each system its own way
# ("loky" there is loky's executor.map with chunks)
SWEEP_PEERS = ("joblib", "pool-map", "mpire")
SWEEP_NBQUEUE = ("nbqueue-map", "nbqueue-iter", "nbqueue-joblib")
SYSTEMS = ("loky", "nbqueue", "nbqueue-proc") + SWEEP_NBQUEUE + PEERS + SWEEP_PEERS
SYSTEM_NAMES = {
    "loky": "raw loky",
    "nbqueue": "nbqueue, in-process cluster",
    "nbqueue-proc": "nbqueue, `nbqueue cluster` process",
    "huey": "huey, SqliteHuey",
    "dask": "dask, LocalCluster",
    "django-q2": "django-q2, ORM on SQLite",
    "joblib": "joblib, Parallel(n_jobs=2)",
    "pool-map": "multiprocessing Pool.map",
    "mpire": "mpire WorkerPool.map",
    "nbqueue-map": "nbqueue.map",
    "nbqueue-iter": "nbqueue async_iter + result",
    "nbqueue-joblib": "joblib on nbqueue's backend",
}
# where a workload runs a system differently, the table says so
WORKLOAD_NAMES = {
    ("enqueue", "nbqueue"): "nbqueue, no cluster running",
    ("enqueue", "huey"): "huey, no consumer running",
    ("enqueue", "django-q2"): "django-q2, no qcluster running",
    ("results", "nbqueue"): "nbqueue, the store the memory run left",
    ("memory", "nbqueue"): "nbqueue, in-process cluster, fresh process",
    ("signing", "nbqueue"): "nbqueue's store, in this process",
    ("reuse", "nbqueue"): "nbqueue, no cluster running",
    ("sweep", "loky"): "loky executor.map(chunksize=N//200)",
    ("shared", "nbqueue"): "nbqueue.share, in-process cluster",
    ("shared", "dask"): "dask, Client.scatter(broadcast=True)",
    ("shared", "joblib"): "joblib, its automatic memory mapping",
}
SIZES = {"noop": 2000, "cpu": 200, "latency": 200, "enqueue": 10_000, "iter": 10_000,
         "group": 10_000, "store": 100_000, "reuse": 2000, "payload": 20,
         "sweep": 100_000, "sweep_ms": 2000, "sweep_big": 1_000_000,
         "shared_mb": 400, "shared_tasks": 1000}
SHARED_PEERS = ("dask", "joblib")  # dask's scatter, joblib's memory mapping
SWEEP_MS = 1.0  # the work of an item of the second sweep
SWEEP_BIG = ("joblib", "nbqueue-map", "nbqueue-iter")  # the systems of the third
SWEEP_BIG_MB = 200.0  # the most nbqueue's caller may grow by on the third
PAYLOAD_BYTES = 4 * 1024 * 1024  # what each payload task moves, one way
CPU_MS = 10.0
WAIT_MS = 600_000  # a result that takes longer than this is a failure of the run


# -- figures -----------------------------------------------------------------------

class Results:
    """Measured figures by (workload, system, figure), with their repeats."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.errors: list[dict[str, str]] = []
        self.notes: dict[str, str] = {}

    def add(self, workload: str, system: str, figure: str, unit: str, runs: list[float],
            better: str, **extra: Any) -> float:
        value = statistics.median(runs)
        self.figures[workload, system, figure] = dict(
            workload=workload, system=system, figure=figure, unit=unit, value=value,
            runs=runs, better=better, **extra)
        print(f"  {workload:<8} {system:<13} {figure:<28} {fmt(value, unit):>12}   "
              f"runs: {', '.join(fmt(r, unit) for r in runs)}", flush=True)
        return value

    def get(self, workload: str, system: str, figure: str) -> float | None:
        entry = self.figures.get((workload, system, figure))
        return None if entry is None else entry["value"]

    def error(self, system: str, workload: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.errors.append({"system": system, "workload": workload, "error": text,
                            "traceback": traceback.format_exc()})
        print(f"  !! {system} {workload}: {text}", flush=True)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "%":
        return f"{value:.1f} %"
    if unit in ("ms",):
        return f"{value:.3g} ms" if value < 10 else f"{value:,.1f} ms"
    if unit == "MB":
        return f"{value:,.1f} MB"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# -- subprocesses, stopped by pid ---------------------------------------------------

class Child:
    """A worker process of a system, in a session of its own, stopped by its pid."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 cwd: str | None = None, log_dir: str | None = None) -> None:
        self.name = name
        self.log_path = os.path.join(log_dir or tempfile.gettempdir(), f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=dict(os.environ, **(env or {})), cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, grace: float = 30.0) -> None:
        """Ask for a graceful stop, then kill the process group it leads if it lingers."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # its own workers, if any outlived it (the group is the one we made)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""


# -- the systems --------------------------------------------------------------------
#
# Each system has the same few operations, so the workloads are written once:
#   many(func, args_list) -> results   enqueue all, then wait for all results
#   one(func, arg) -> result           enqueue one and wait for its result
#   submit_only(n) -> seconds          time n enqueue calls (enqueue workload)

class System:
    key = ""
    workloads: tuple[str, ...] = ()

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def many(self, func: Callable, args: list[Any]) -> list[Any]:
        raise NotImplementedError

    def one(self, func: Callable, arg: Any) -> Any:
        raise NotImplementedError


def run_group(api: Any, group: str, func: Callable, args: list[Any]) -> list[Any]:
    """One call per argument through a Django Q style API (nbqueue's or django-q2's),
    all in ``group``, then every result."""
    for a in args:
        api.async_task(func, a, group=group)
    results = api.result_group(group, count=len(args), wait=WAIT_MS)
    if results is None or len(results) != len(args):
        raise RuntimeError(f"group {group}: {0 if results is None else len(results)} "
                           f"results of {len(args)}")
    return results


class Loky(System):
    key = "loky"
    workloads = ("noop", "cpu", "latency", "enqueue", "payload")

    def start(self) -> None:
        from loky import get_reusable_executor
        self.executor = get_reusable_executor(max_workers=WORKERS, timeout=None)

    def stop(self) -> None:
        self.executor.shutdown(wait=True)

    def many(self, func, args):
        futures = [self.executor.submit(func, a) for a in args]
        return [f.result() for f in futures]

    def one(self, func, arg):
        return self.executor.submit(func, arg).result()

    def enqueue(self, n: int) -> dict[str, float]:
        with Timer() as t:
            futures = [self.executor.submit(workloads.noop, i) for i in range(n)]
        for f in futures:
            f.result()
        return {"calls/s": n / t.seconds}


class Nbqueue(System):
    """nbqueue with a cluster in this process (``proc=False``) or in an ``nbqueue cluster``
    subprocess (``proc=True``); a fresh store for each."""

    key = "nbqueue"
    workloads = ("noop", "cpu", "latency", "enqueue", "payload")

    def __init__(self, tmp: str, proc: bool = False) -> None:
        self.tmp = tmp
        self.proc = proc
        self.cluster: Any = None
        self.child: Child | None = None
        self.groups = 0
        if proc:
            self.key = "nbqueue-proc"
            self.workloads = ("noop", "latency", "payload")

    def fresh_store(self, label: str) -> str:
        import nbqueue
        directory = tempfile.mkdtemp(prefix=f"nbq-{label}-", dir=self.tmp)
        os.rmdir(directory)  # nbqueue creates it, private
        nbqueue.configure(directory=directory)
        self.directory = directory
        return directory

    def start(self) -> None:
        import nbqueue
        from nbqueue.disk.directory import heartbeats
        directory = self.fresh_store(self.key)
        if self.proc:
            self.child = Child("nbqueue-cluster", [
                sys.executable, "-m", "nbqueue", "cluster", "--directory", directory,
                "--workers", str(WORKERS)], log_dir=self.tmp)
            broker = nbqueue.get_broker(directory)
            deadline = time.monotonic() + 120
            while not heartbeats(broker.directory).clusters():
                if not self.child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"nbqueue cluster did not start:\n{self.child.tail()}")
                time.sleep(0.05)
        else:
            self.cluster = nbqueue.Cluster(workers=WORKERS, directory=directory).start()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop(wait=10)
            self.cluster = None
        if self.child is not None:
            self.child.stop(signal.SIGINT)
            self.child = None

    def many(self, func, args):
        import nbqueue
        self.groups += 1
        return run_group(nbqueue, f"bench-{self.groups}", func, args)

    def one(self, func, arg):
        import nbqueue
        return nbqueue.result(nbqueue.async_task(func, arg), wait=WAIT_MS)

    def enqueue(self, n: int) -> dict[str, float]:
        """async_task calls with no cluster consuming: what the producer's calls cost;
        and async_iter of n items."""
        import nbqueue
        self.fresh_store("enqueue")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nbqueue.NoClusterWarning)
            noop = workloads.noop
            with Timer() as calls:
                for i in range(n):
                    nbqueue.async_task(noop, i)
            with Timer() as flush:
                nbqueue.flush()
            with Timer() as it:
                nbqueue.async_iter(noop, range(n))
        return {"calls/s": n / calls.seconds,
                "calls/s incl. flush": n / (calls.seconds + flush.seconds),
                "async_iter items/s": n / it.seconds}


class Huey(System):
    key = "huey"
    workloads = ("noop", "cpu", "latency", "enqueue")

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.child: Child | None = None

    def setup(self) -> None:
        os.environ["NBQUEUE_BENCH_HUEY_DB"] = os.path.join(self.tmp, "huey.db")
        import huey_app
        self.app = huey_app
        self.tasks = {workloads.noop: huey_app.noop, workloads.spin: huey_app.spin}

    def start(self) -> None:
        # process workers (-k process), 2 of them; each polls the queue every 5 ms,
        # as nbqueue's cluster polls its own (-d 0.005 -m 0.005 -b 1: no back-off)
        self.child = Child("huey-consumer", [
            sys.executable, "-m", "huey.bin.huey_consumer", "huey_app.huey", "-w",
            str(WORKERS), "-k", "process", "-d", "0.005", "-m", "0.005", "-b", "1",
            "-C", "-q"], log_dir=self.tmp, cwd=HERE)
        # wait until the consumer answers
        r = self.app.noop(-1)
        if r.get(blocking=True, timeout=120, backoff=1.0, max_delay=0.01) != -1:
            raise RuntimeError(f"huey consumer did not answer:\n{self.child.tail()}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(signal.SIGINT)
            self.child = None

    def _get(self, result):
        # huey's blocking get starts polling at 50 ms; 1 ms polls make its round trip fair
        return result.get(blocking=True, timeout=WAIT_MS / 1000, backoff=1.0, max_delay=0.001)

    def many(self, func, args):
        task = self.tasks[func]
        pending = [task(a) for a in args]
        return [self._get(r) for r in pending]

    def one(self, func, arg):
        return self._get(self.tasks[func](arg))

    def enqueue(self, n: int) -> dict[str, float]:
        """Enqueue calls before the consumer runs (the producer's cost), then flush."""
        noop = self.app.noop
        with Timer() as t:
            for i in range(n):
                noop(i)
        self.app.huey.flush()
        return {"calls/s": n / t.seconds}


class Dask(System):
    key = "dask"
    workloads = ("noop", "cpu", "latency", "enqueue", "payload")

    def start(self) -> None:
        import logging

        from dask.distributed import Client, LocalCluster
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(WORKERS, timeout=120)

    def stop(self) -> None:
        import logging
        # workers that heartbeat into a scheduler already closed log tracebacks: not ours
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        self.client.close()
        self.cluster.close()

    def many(self, func, args):
        futures = [self.client.submit(func, a, pure=False) for a in args]
        return self.client.gather(futures)

    def one(self, func, arg):
        return self.client.submit(func, arg, pure=False).result()

    def enqueue(self, n: int) -> dict[str, float]:
        with Timer() as t:
            futures = [self.client.submit(workloads.noop, i, pure=False) for i in range(n)]
        self.client.gather(futures)
        del futures
        return {"calls/s": n / t.seconds}


class DjangoQ(System):
    key = "django-q2"
    workloads = ("noop", "cpu", "latency", "enqueue")

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.child: Child | None = None
        self.groups = 0

    def setup(self) -> None:
        os.environ["NBQUEUE_BENCH_DJQ_DB"] = os.path.join(self.tmp, "djq.sqlite3")
        os.environ["DJANGO_SETTINGS_MODULE"] = "djq_settings"
        import django
        django.setup()
        from django.core.management import call_command
        call_command("migrate", verbosity=0, interactive=False)
        from django_q import tasks
        from django_q.models import OrmQ
        self.tasks = tasks
        self.OrmQ = OrmQ

    def start(self) -> None:
        self.child = Child("django-q2-qcluster", [sys.executable, "-m", "django", "qcluster"],
                           log_dir=self.tmp, cwd=HERE)
        task_id = self.tasks.async_task(workloads.noop, -1)
        if self.tasks.result(task_id, wait=120_000) != -1:
            raise RuntimeError(f"qcluster did not answer:\n{self.child.tail()}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(signal.SIGTERM)
            self.child = None

    def many(self, func, args):
        self.groups += 1
        return run_group(self.tasks, f"bench-{self.groups}", func, args)

    def one(self, func, arg):
        return self.tasks.result(self.tasks.async_task(func, arg), wait=WAIT_MS)

    def enqueue(self, n: int) -> dict[str, float]:
        """Enqueue calls before the qcluster runs (the producer's cost), then purge.

        At most 2,000 calls: each is one autocommitted INSERT (~5-15 ms), so 10,000
        would take minutes and tell nothing more about the rate."""
        n = min(n, 2000)
        with Timer() as t:
            for i in range(n):
                self.tasks.async_task(workloads.noop, i)
        self.OrmQ.objects.all().delete()
        return {"calls/s": n / t.seconds, "n": n}


# -- the workloads ------------------------------------------------------------------

class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.repeats = args.repeats or (1 if args.quick else 3)
        self.sizes = {k: max(2, int(round(v * args.scale))) for k, v in SIZES.items()}
        self.sizes["group"] = min(self.sizes["group"], self.sizes["store"])
        self.only = set(args.only.split(",")) if args.only else set(WORKLOADS)
        unknown = self.only - set(WORKLOADS)
        if unknown:
            raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}")
        systems = set(args.systems.split(",")) if args.systems else set(SYSTEMS)
        if args.skip_peers:
            systems -= set(PEERS) | set(SWEEP_PEERS)
        self.systems = systems
        self.results = Results()
        self.tmp = tempfile.mkdtemp(prefix="nbqueue-bench-")
        self.load: dict[str, tuple[float, float, float]] = {}  # at each system's start

    def wants(self, workload: str) -> bool:
        return workload in self.only

    def repeat(self, measure: Callable[[], Any]) -> list[Any]:
        return [measure() for _ in range(self.repeats)]

    # each workload, on one started system

    def noop(self, system: System) -> None:
        n = self.sizes["noop"]
        args = list(range(n))

        def once() -> float:
            with Timer() as t:
                results = system.many(workloads.noop, args)
            assert len(results) == n
            return n / t.seconds
        self.results.add("noop", system.key, "tasks/s", "tasks/s", self.repeat(once), "higher",
                         n=n)

    def cpu(self, system: System) -> None:
        n = self.sizes["cpu"]
        args = [CPU_MS] * n
        ideal = WORKERS / (CPU_MS / 1000)

        def once() -> float:
            with Timer() as t:
                system.many(workloads.spin, args)
            return n / t.seconds
        runs = self.repeat(once)
        self.results.add("cpu", system.key, "tasks/s", "tasks/s", runs, "higher", n=n,
                         task_ms=CPU_MS)
        self.results.add("cpu", system.key, "efficiency", "%", [100 * r / ideal for r in runs],
                         "higher", ideal_tasks_per_s=ideal)

    def latency(self, system: System) -> None:
        n = self.sizes["latency"]
        p50s, p95s = [], []
        for _ in range(self.repeats):
            samples = []
            for i in range(n):
                start = time.perf_counter()
                value = system.one(workloads.noop, i)
                samples.append((time.perf_counter() - start) * 1000)
                if value != i:
                    raise RuntimeError(f"round trip {i} returned {value!r}")
            p50s.append(percentile(samples, 0.5))
            p95s.append(percentile(samples, 0.95))
        self.results.add("latency", system.key, "p50", "ms", p50s, "lower", n=n)
        self.results.add("latency", system.key, "p95", "ms", p95s, "lower", n=n)

    def payload(self, system: System) -> None:
        n, size = self.sizes["payload"], PAYLOAD_BYTES
        data = bytes(range(256)) * (size // 256)

        def results_out() -> float:
            with Timer() as t:
                results = system.many(workloads.make_bytes, [size] * n)
            if len(results) != n or any(len(r) != size for r in results):
                raise RuntimeError("a payload result came back short")
            return n * size / 1e6 / t.seconds

        def arguments_in() -> float:
            with Timer() as t:
                results = system.many(workloads.size_of, [data] * n)
            if results != [size] * n:
                raise RuntimeError(f"payload arguments arrived as {results[:3]}...")
            return n * size / 1e6 / t.seconds
        for figure, measure in (("results out", results_out), ("arguments in", arguments_in)):
            self.results.add("payload", system.key, figure, "MB/s", self.repeat(measure),
                             "higher", n=n, bytes=size)

    def enqueue(self, system: System) -> None:
        n = self.sizes["enqueue"]
        runs = self.repeat(lambda: system.enqueue(n))
        for figure in runs[0]:
            if figure == "n":
                continue
            unit = "items/s" if figure.startswith("async_iter") else "calls/s"
            self.results.add("enqueue", system.key, figure, unit,
                             [r[figure] for r in runs], "higher", n=runs[0].get("n", n))

    def warm(self, system: System) -> None:
        system.many(workloads.noop, list(range(50)))
        system.many(workloads.spin, [1.0] * 4)
        system.one(workloads.noop, 0)

    def run_system(self, system: System) -> None:
        wanted = [w for w in system.workloads if self.wants(w)]
        if system.key not in self.systems or not wanted:
            return
        load = os.getloadavg()
        self.load[system.key] = load
        print(f"\n== {SYSTEM_NAMES[system.key]}: {', '.join(wanted)} (load average "
              f"{load[0]:.1f})", flush=True)
        try:
            if hasattr(system, "setup"):
                system.setup()
        except Exception as exc:
            self.results.error(system.key, "setup", exc)
            return
        # the producer's own cost, before any consumer runs (nbqueue, huey, django-q2)
        consumer_less = isinstance(system, (Nbqueue, Huey, DjangoQ))
        if "enqueue" in wanted and consumer_less:
            try:
                self.enqueue(system)
            except Exception as exc:
                self.results.error(system.key, "enqueue", exc)
            wanted.remove("enqueue")
        if not wanted:
            return
        try:
            system.start()
        except Exception as exc:
            self.results.error(system.key, "start", exc)
            try:
                system.stop()
            except Exception:
                pass
            return
        try:
            self.warm(system)
            for workload in wanted:
                try:
                    getattr(self, workload)(system)
                except Exception as exc:
                    self.results.error(system.key, workload, exc)
        except Exception as exc:
            self.results.error(system.key, "warm-up", exc)
        finally:
            try:
                system.stop()
            except Exception as exc:
                self.results.error(system.key, "stop", exc)
        gc.collect()

    # the sweep: each system in a fresh process of its own (benchmarks/sweep_child.py)

    def sweep(self) -> None:
        if not self.wants("sweep"):
            return
        systems = [k for k in ("loky",) + SWEEP_NBQUEUE + SWEEP_PEERS if k in self.systems]
        n, n_ms = self.sizes["sweep"], self.sizes["sweep_ms"]
        n_big = self.sizes["sweep_big"]
        print(f"\n== the sweep: {n:,} no-op items, {n_ms:,} items of {SWEEP_MS:g} ms, results "
              f"in input order: {', '.join(systems)}; then {n_big:,} no-op items in one call "
              f"and the caller's peak memory growth: {', '.join(SWEEP_BIG)}", flush=True)
        figures = {"noop": "no-op items/s", "ms": f"{SWEEP_MS:g} ms items/s"}
        for key in systems:
            child = "loky-map" if key == "loky" else key
            big = n_big if key in SWEEP_BIG else 0
            try:
                runs = self.repeat(lambda c=child, b=big: self._sweep_once(c, n, n_ms, b))
            except Exception as exc:
                self.results.error(key, "sweep", exc)
                continue
            for name, figure in figures.items():
                self.results.add("sweep", key, figure, "items/s", [r[name] for r in runs],
                                 "higher", n=n if name == "noop" else n_ms,
                                 item_ms=0.0 if name == "noop" else SWEEP_MS)
            if big:
                self.results.add("sweep", key, "big no-op items/s", "items/s",
                                 [r["big"] for r in runs], "higher", n=big, item_ms=0.0)
                self.results.add("sweep", key, "big peak memory growth", "MB",
                                 [r["big_mb"] for r in runs], "lower", n=big)

    # one large array read by many tasks: each system in a fresh process
    # (benchmarks/shared_child.py)

    def shared(self) -> None:
        if not self.wants("shared"):
            return
        systems = [k for k in ("nbqueue",) + SHARED_PEERS if k in self.systems]
        size, n = self.sizes["shared_mb"], self.sizes["shared_tasks"]
        print(f"\n== one {size} MB array read by {n:,} tasks: {', '.join(systems)}", flush=True)
        for key in systems:
            try:
                runs = self.repeat(lambda k=key: self._shared_once(k, size, n))
            except Exception as exc:
                self.results.error(key, "shared", exc)
                continue
            add = self.results.add
            add("shared", key, "sharing the array", "s", [r["share_s"] for r in runs], "lower")
            add("shared", key, "the tasks", "s", [r["tasks_s"] for r in runs], "lower", n=n)
            add("shared", key, "cost per task over a no-op", "ms",
                [max(0.0, r["tasks_s"] - r["noop_s"]) * 1000 / n for r in runs], "lower", n=n)
            add("shared", key, "caller's memory growth", "MB", [r["caller_mb"] for r in runs],
                "lower")
            add("shared", key, "a worker's memory growth", "MB", [r["worker_mb"] for r in runs],
                "lower")

    def _shared_once(self, system: str, size: int, n: int) -> dict[str, float]:
        directory = os.path.join(self.tmp, f"shared-{system}-{time.monotonic_ns()}")
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "shared_child.py"), system, str(WORKERS),
             directory, str(size), str(n)],
            capture_output=True, text=True, timeout=1800)
        shutil.rmtree(directory, ignore_errors=True)
        if out.returncode != 0:
            raise RuntimeError(f"shared_child.py {system}: {out.stderr.strip()[-1500:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def _sweep_once(self, system: str, n: int, n_ms: int, n_big: int) -> dict[str, float]:
        directory = os.path.join(self.tmp, f"sweep-{system}-{time.monotonic_ns()}")
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "sweep_child.py"), system, str(WORKERS),
             directory, str(n), str(n_ms), str(SWEEP_MS), str(n_big)],
            capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"sweep_child.py {system}: {out.stderr.strip()[-1500:]}")
        shutil.rmtree(directory, ignore_errors=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # results and memory: nbqueue alone, on a store filled by a fresh "kernel" process

    def memory_and_store(self) -> None:
        if "nbqueue" not in self.systems or not (self.wants("memory") or self.wants("results")):
            return
        store = self.sizes["store"]
        size = self.sizes["group"]
        groups = max(1, store // size)
        print(f"\n== nbqueue, a fresh process with an in-process cluster: {groups * size:,} "
              "tasks (memory), then reads of the store it leaves (results)", flush=True)
        directory = os.path.join(self.tmp, "nbq-store")
        try:
            with Timer() as t:
                out = subprocess.run(
                    [sys.executable, os.path.join(HERE, "memory_child.py"), directory,
                     str(groups), str(size), str(WORKERS)],
                    capture_output=True, text=True, timeout=3600)
            if out.returncode != 0:
                raise RuntimeError(f"memory_child.py exited {out.returncode}:\n"
                                   f"{out.stderr[-3000:]}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
        except Exception as exc:
            self.results.error("nbqueue", "memory", exc)
            return
        print(f"  ({t.seconds:.1f} s)", flush=True)
        if self.wants("memory"):
            tasks = figures["tasks"]
            r = self.results
            r.add("memory", "nbqueue", "RSS idle", "MB", [figures["rss_idle_mb"]], "lower",
                  tasks=tasks)
            r.add("memory", "nbqueue", f"RSS after {tasks:,} tasks", "MB",
                  [figures["rss_after_mb"]], "lower", tasks=tasks)
            r.add("memory", "nbqueue", "RSS peak", "MB", [figures["rss_peak_mb"]], "lower",
                  tasks=tasks)
            r.add("memory", "nbqueue", "RSS growth", "MB", [figures["rss_growth_mb"]], "lower",
                  tasks=tasks)
            # where the growth is: anonymous memory (Python heap, SQLite page caches) or
            # file pages (SQLite's memory-mapped store files)
            r.add("memory", "nbqueue", "growth: anonymous", "MB", [figures["anon_growth_mb"]],
                  "lower", tasks=tasks)
            r.add("memory", "nbqueue", "growth: file pages", "MB", [figures["file_growth_mb"]],
                  "lower", tasks=tasks)
            r.add("memory", "nbqueue", "sustained tasks/s", "tasks/s",
                  [tasks / figures["seconds"]], "higher", tasks=tasks)
        if self.wants("results"):
            self.read_store(directory, groups, size)

    def read_store(self, directory: str, groups: int, size: int) -> None:
        import nbqueue
        broker = nbqueue.get_broker(directory)
        cold = []
        with Timer() as t:
            first = nbqueue.result_group("g0", broker=broker)
        cold.append(t.seconds * 1000)
        if first is None or len(first) != size:
            raise RuntimeError(f"result_group g0: {0 if first is None else len(first)} "
                               f"of {size}")
        runs = []
        for _ in range(self.repeats):
            with Timer() as t:
                values = nbqueue.result_group("g0", broker=broker)
            assert values is not None and len(values) == size
            runs.append(t.seconds * 1000)
        self.results.add("results", "nbqueue", f"result_group of {size:,}", "ms", runs, "lower",
                         n=size, cold_ms=cold[0])
        counts = []
        for _ in range(self.repeats):
            calls = []
            for _ in range(50):
                with Timer() as t:
                    got = nbqueue.count_group("g1" if groups > 1 else "g0", broker=broker)
                calls.append(t.seconds * 1000)
                assert got == size, got
            counts.append(statistics.median(calls))
        self.results.add("results", "nbqueue", f"count_group, store of {groups * size:,}", "ms",
                         counts, "lower", store=groups * size)

    # signing: what checking every value costs, nbqueue alone, in this process

    def signing(self) -> None:
        if "nbqueue" not in self.systems or not self.wants("signing"):
            return
        import diskcache

        from nbqueue.disk import signing
        from nbqueue.disk.records import Header, decode_header, encode_header
        from nbqueue.disk.storage import open_cache
        print("\n== nbqueue: the cost of signing every value of the store", flush=True)
        directory = os.path.join(self.tmp, "nbq-signing")
        key = signing.load_key(signing.private_directory(directory))
        header = Header("0" * 36, "four-alpha-india-bacon", "workloads.noop", "workloads.noop",
                        None, b"\x80\x05" * 10, group="g", enqueued=time.time())
        n = 20_000
        package_us = []
        for _ in range(self.repeats):
            with Timer() as t:
                for _ in range(n):
                    decode_header(key, encode_header(key, header))
            package_us.append(t.seconds / n * 1e6)
        self.results.add("signing", "nbqueue", "pack + unpack, a no-op task's package", "us",
                         package_us, "lower", n=n)
        value = os.urandom(4 * 1024 * 1024)
        stores = (("4 MB value, write + read, signed store", open_cache(
                      os.path.join(directory, "signed"))),
                  ("4 MB value, write + read, plain diskcache", diskcache.Cache(
                      os.path.join(directory, "plain"), eviction_policy="none")))
        rounds = 10
        for figure, cache in stores:
            speeds = []
            for _ in range(self.repeats):
                with Timer() as t:
                    for i in range(rounds):
                        cache.set("v", value)
                        assert len(cache.get("v")) == len(value)
                speeds.append(2 * rounds * 4 / t.seconds)
            self.results.add("signing", "nbqueue", figure, "MB/s", speeds, "higher")
            cache.close()

    # reuse: what reuse=True costs per async_task call, nbqueue alone, in this process

    def reuse(self) -> None:
        if "nbqueue" not in self.systems or not self.wants("reuse"):
            return
        import nbqueue
        print("\n== nbqueue: the cost of reuse=True per async_task call", flush=True)
        n = self.sizes["reuse"]
        noop = workloads.noop
        twin = lambda x: x  # noqa: E731  a function shipped by value, as a notebook's are
        nbq = Nbqueue(self.tmp)
        figures: dict[str, list[float]] = {}

        def timed(calls: Callable[[], None]) -> float:
            with Timer() as t:
                calls()
            nbqueue.flush()
            return t.seconds / n * 1e6  # us a call

        def once() -> None:
            nbq.fresh_store("reuse")
            nbqueue.async_task(noop, -1)  # the store opened, in both ways, before timing
            nbqueue.async_task(noop, -1, reuse=True)
            ids = range(n)
            more = range(n, 2 * n)
            off = timed(lambda: [nbqueue.async_task(noop, i) for i in ids])
            new = timed(lambda: [nbqueue.async_task(noop, i, reuse=True) for i in more])
            queued = timed(lambda: [nbqueue.async_task(noop, i, reuse=True) for i in more])
            for i in ids:  # stored successes to find
                nbqueue.async_task(noop, i, reuse=True, sync=True)
                nbqueue.async_task(twin, i, reuse=True, sync=True)
            found = timed(lambda: [nbqueue.async_task(noop, i, reuse=True) for i in ids])
            found_lambda = timed(lambda: [nbqueue.async_task(twin, i, reuse=True) for i in ids])
            for figure, value in (("calls/s, reuse off", 1e6 / off),
                                  ("reuse=True, new call: more per call",
                                   max(0.0, new - off)),
                                  ("reuse=True, found queued: per call", queued),
                                  ("reuse=True, found success: per call", found),
                                  ("reuse=True, found success, a lambda: per call",
                                   found_lambda)):
                figures.setdefault(figure, []).append(value)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nbqueue.NoClusterWarning)
            for _ in range(self.repeats):
                once()
        for figure, runs in figures.items():
            unit = "calls/s" if figure.startswith("calls/s") else "us"
            self.results.add("reuse", "nbqueue", figure, unit, runs,
                             "higher" if unit == "calls/s" else "lower", n=n)

    def run(self) -> None:
        started = time.perf_counter()
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.load_start = os.getloadavg()
        try:
            self.run_system(Loky())
            self.run_system(Nbqueue(self.tmp))
            self.run_system(Nbqueue(self.tmp, proc=True))
            self.memory_and_store()
            self.signing()
            self.reuse()
            self.sweep()
            self.shared()
            self.run_system(Huey(self.tmp))
            self.run_system(Dask())
            self.run_system(DjangoQ(self.tmp))
        finally:
            self.seconds = time.perf_counter() - started
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- targets ------------------------------------------------------------------------

def evaluate(suite: Suite) -> list[dict[str, Any]]:
    """Each performance target (docs/performance.md), with its value and verdict: met,
    not met, not measured."""
    r = suite.results
    s = suite.sizes
    groups = max(1, s["store"] // s["group"])
    targets: list[dict[str, Any]] = []

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    def target(tid: str, text: str, row: tuple[str, str, str], value: float | None,
               op: str, bound: float, unit: str) -> None:
        if value is None:
            verdict = "not measured"
        elif op == ">=":
            verdict = "met" if value >= bound else "not met"
        else:
            verdict = "met" if value <= bound else "not met"
        targets.append(dict(id=tid, target=text, row=list(row), value=value, op=op,
                            bound=bound, unit=unit, verdict=verdict))

    noop = r.get("noop", "nbqueue", "tasks/s")
    target("noop_vs_loky", "nbqueue ≥ 50 % of raw loky", ("noop", "nbqueue", "tasks/s"),
           ratio(noop, r.get("noop", "loky", "tasks/s")), ">=", 0.5, "×")
    for peer, bound in (("huey", 4), ("dask", 8), ("django-q2", 25)):
        target(f"noop_vs_{peer}", f"nbqueue ≥ {bound}× this", ("noop", peer, "tasks/s"),
               ratio(noop, r.get("noop", peer, "tasks/s")), ">=", bound, "×")
    eff = r.get("cpu", "nbqueue", "efficiency")
    target("cpu_efficiency", "≥ 90 % of ideal", ("cpu", "nbqueue", "efficiency"),
           eff, ">=", 90.0, "%")
    loky_eff = r.get("cpu", "loky", "efficiency")
    target("cpu_vs_loky", "within 3 points of raw loky", ("cpu", "nbqueue", "efficiency"),
           None if eff is None or loky_eff is None else eff - loky_eff, ">=", -3.0, "points")
    target("noop_other_process", "≥ 1.0× raw loky", ("noop", "nbqueue-proc", "tasks/s"),
           ratio(r.get("noop", "nbqueue-proc", "tasks/s"), r.get("noop", "loky", "tasks/s")),
           ">=", 1.0, "×")
    for system, where, bound in (("nbqueue", "in_process", 1.0),
                                 ("nbqueue-proc", "other_process", 0.75)):
        for figure in ("results out", "arguments in"):
            target(f"payload_{figure.split()[0]}_{where}", f"≥ {bound:g}× raw loky",
                   ("payload", system, figure),
                   ratio(r.get("payload", system, figure), r.get("payload", "loky", figure)),
                   ">=", bound, "×")
    target("latency_in_process", "p50 ≤ 1 ms", ("latency", "nbqueue", "p50"),
           r.get("latency", "nbqueue", "p50"), "<=", 1.0, "ms")
    target("latency_other_process", "p50 ≤ 2 ms", ("latency", "nbqueue-proc", "p50"),
           r.get("latency", "nbqueue-proc", "p50"), "<=", 2.0, "ms")
    target("enqueue_calls", "≥ 8,000 calls/s", ("enqueue", "nbqueue", "calls/s"),
           r.get("enqueue", "nbqueue", "calls/s"), ">=", 8000, "calls/s")
    target("async_iter", "≥ 30,000 items/s", ("enqueue", "nbqueue", "async_iter items/s"),
           r.get("enqueue", "nbqueue", "async_iter items/s"), ">=", 30000, "items/s")
    target("result_group", "≤ 300 ms", ("results", "nbqueue", f"result_group of {s['group']:,}"),
           r.get("results", "nbqueue", f"result_group of {s['group']:,}"), "<=", 300.0, "ms")
    count_row = ("results", "nbqueue", f"count_group, store of {groups * s['group']:,}")
    target("count_group", "≤ 5 ms", count_row, r.get(*count_row), "<=", 5.0, "ms")
    target("rss_growth", "≤ 30 MB", ("memory", "nbqueue", "RSS growth"),
           r.get("memory", "nbqueue", "RSS growth"), "<=", 30.0, "MB")
    noop_sweep, ms_sweep = "no-op items/s", f"{SWEEP_MS:g} ms items/s"
    joblib_noop = r.get("sweep", "joblib", noop_sweep)
    for system in ("nbqueue-map", "nbqueue-iter"):
        target(f"sweep_noop_{system}", "≥ 1.0× joblib", ("sweep", system, noop_sweep),
               ratio(r.get("sweep", system, noop_sweep), joblib_noop), ">=", 1.0, "×")
        target(f"sweep_ms_{system}", "≥ 95 % of ideal", ("sweep", system, ms_sweep),
               ratio(r.get("sweep", system, ms_sweep), WORKERS * 1000 / SWEEP_MS), ">=", 0.95,
               "×")
        target(f"sweep_big_memory_{system}", f"≤ {SWEEP_BIG_MB:g} MB",
               ("sweep", system, "big peak memory growth"),
               r.get("sweep", system, "big peak memory growth"), "<=", SWEEP_BIG_MB, "MB")
    size = s["shared_mb"]
    target("shared_task_cost", "≤ 1 ms", ("shared", "nbqueue", "cost per task over a no-op"),
           r.get("shared", "nbqueue", "cost per task over a no-op"), "<=", 1.0, "ms")
    for who, row in (("caller", "caller's memory growth"), ("worker", "a worker's memory growth")):
        target(f"shared_{who}_memory", f"≤ {size // 10} MB (a tenth of the array)",
               ("shared", "nbqueue", row), r.get("shared", "nbqueue", row), "<=", size / 10, "MB")
    return targets


# ratio to raw loky: which loky figure each nbqueue figure is compared with
LOKY_REFERENCE = {
    ("noop", "tasks/s"): ("noop", "tasks/s"),
    ("cpu", "tasks/s"): ("cpu", "tasks/s"),
    ("cpu", "efficiency"): ("cpu", "efficiency"),
    ("latency", "p50"): ("latency", "p50"),
    ("latency", "p95"): ("latency", "p95"),
    ("enqueue", "calls/s"): ("enqueue", "calls/s"),
    ("enqueue", "calls/s incl. flush"): ("enqueue", "calls/s"),
    ("enqueue", "async_iter items/s"): ("enqueue", "calls/s"),
    ("payload", "results out"): ("payload", "results out"),
    ("payload", "arguments in"): ("payload", "arguments in"),
    ("sweep", "no-op items/s"): ("sweep", "no-op items/s"),
    ("sweep", f"{SWEEP_MS:g} ms items/s"): ("sweep", f"{SWEEP_MS:g} ms items/s"),
}


def table_rows(suite: Suite, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = suite.results
    by_row: dict[tuple, list[dict[str, Any]]] = {}
    for t in targets:
        by_row.setdefault(tuple(t["row"]), []).append(t)
    order = {w: i for i, w in enumerate(WORKLOADS)}
    sys_order = {k: i for i, k in enumerate(SYSTEMS)}
    rows = []
    for (workload, system, figure), entry in sorted(
            r.figures.items(), key=lambda kv: (order[kv[0][0]], sys_order[kv[0][1]])):
        ratio = None
        if system.startswith("nbqueue") and (workload, figure) in LOKY_REFERENCE:
            ref_workload, ref_figure = LOKY_REFERENCE[workload, figure]
            ref = r.get(ref_workload, "loky", ref_figure)
            if ref:
                ratio = entry["value"] / ref
        texts, verdicts = [], []
        for t in by_row.get((workload, system, figure), []):
            verdict = t["verdict"]
            if t["value"] is not None and t["unit"] in ("×", "points"):
                verdict += (f" ({t['value']:.2f}×)" if t["unit"] == "×"
                            else f" ({t['value']:+.1f} points)")
            texts.append(t["target"])
            verdicts.append(verdict)
        rows.append(dict(workload=workload, system=system, figure=figure,
                         value=entry["value"], unit=entry["unit"], ratio_to_loky=ratio,
                         target="; ".join(texts) or None, verdict="; ".join(verdicts) or None))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | system | figure | value | × raw loky | target | met? |",
             "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for row in rows:
        ratio = "" if row["ratio_to_loky"] is None else f"{row['ratio_to_loky']:.2f}×"
        name = WORKLOAD_NAMES.get((row["workload"], row["system"]), SYSTEM_NAMES[row["system"]])
        lines.append(f"| {row['workload']} | {name} | {row['figure']} | "
                     f"{fmt(row['value'], row['unit'])} | {ratio} | {row['target'] or ''} | "
                     f"{row['verdict'] or ''} |")
    return "\n".join(lines)


# -- the machine --------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("nbqueue", "loky", "cloudpickle", "diskcache", "dask", "distributed", "huey",
                 "django", "django-q2"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict[str, Any]:
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo") as info:
            mem = round(int(info.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"arch": platform.machine(), "cpu": cpu_model(), "nproc": nproc,
            "memory_gib": mem, "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "hostname": platform.node()}


# -- main ---------------------------------------------------------------------------

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one repeat per figure")
    p.add_argument("--repeats", type=int, help="repeats per figure (default 3, 1 with --quick)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"),
                   help="where to write the JSON (default benchmarks/results/latest.json)")
    p.add_argument("--only", help=f"comma-separated workloads of: {','.join(WORKLOADS)}")
    p.add_argument("--systems", help=f"comma-separated systems of: {','.join(SYSTEMS)}")
    p.add_argument("--skip-peers", action="store_true", help="only raw loky and nbqueue")
    p.add_argument("--show", metavar="JSON",
                   help="print the table of a saved run (no measuring) and exit")
    p.add_argument("--scale", type=float,
                   default=float(os.environ.get("NBQUEUE_BENCH_SCALE", "1")),
                   help="multiply every workload size (a smoke run: 0.01); "
                        "default $NBQUEUE_BENCH_SCALE or 1")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.show:
        with open(args.show) as saved:
            report = json.load(saved)
        m = report["machine"]
        print(f"{report['date']}: {m['cpu']}, {m['nproc']} cores ({m['arch']}), Python "
              f"{m['python']}; {report['settings']['repeats']} repeat(s), scale "
              f"{report['settings']['scale']:g}, {report['seconds']:.0f} s\n")
        print(markdown(report["table"]))
        return 0
    suite = Suite(args)
    info = machine()
    print(f"nbqueue benchmarks: {info['cpu']}, {info['nproc']} cores ({info['arch']}), Python "
          f"{info['python']}; {suite.repeats} repeat(s) per figure, scale {args.scale:g}, "
          f"workers = {WORKERS}", flush=True)
    suite.run()
    targets = evaluate(suite)
    rows = table_rows(suite, targets)
    table = markdown(rows)
    met = sum(t["verdict"] == "met" for t in targets)
    missed = [t for t in targets if t["verdict"] == "not met"]
    print("\n" + table + "\n")
    print(f"targets: {met} met, {len(missed)} not met, "
          f"{sum(t['verdict'] == 'not measured' for t in targets)} not measured")
    for t in missed:
        print(f"  not met: {t['id']}: {t['target']} ({'/'.join(t['row'])} = "
              f"{t['value']:.4g} {t['unit']})")
    for e in suite.results.errors:
        print(f"  error: {e['system']} {e['workload']}: {e['error']}")
    print(f"run time {suite.seconds:.0f} s; load average (1 min) at the start "
          f"{suite.load_start[0]:.1f}, at the end {os.getloadavg()[0]:.1f}, on "
          f"{info['nproc']} cores")
    report = {
        "date": suite.started_at.isoformat(timespec="seconds"),
        "machine": info, "versions": versions(),
        "settings": {"workers": WORKERS, "repeats": suite.repeats, "quick": args.quick,
                     "scale": args.scale, "sizes": suite.sizes, "cpu_task_ms": CPU_MS,
                     "only": sorted(suite.only), "systems": sorted(suite.systems)},
        "load_average": {"start": suite.load_start, "end": os.getloadavg(),
                         "at_each_system": suite.load},
        "seconds": suite.seconds,
        "workloads": {w: {} for w in WORKLOADS},
        "targets": targets, "table": rows, "markdown": table, "errors": suite.results.errors,
        "systems": {k: SYSTEM_NAMES[k] for k in SYSTEMS},
    }
    for (workload, system, figure), entry in suite.results.figures.items():
        report["workloads"][workload].setdefault(system, {})[figure] = entry
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2, default=str)
        print(f"wrote {args.json}")
    return 1 if suite.results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
