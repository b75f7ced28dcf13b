#!/usr/bin/env python
"""Where the kernel's time goes: py-spy on the noop or enqueue workload, top functions.

    python benchmarks/hotspots.py noop     [--tasks 20000] [--top 10] [--svg out.json]
    python benchmarks/hotspots.py enqueue  [--tasks 100000] [--top 10]

Runs the workload in a child process under ``py-spy record --gil`` (pip install py-spy;
it comes with the bench extra) and samples only that process, the "kernel": the
workers' processes are left out. Each sample is the thread holding the GIL, so the
shares say where the kernel's Python time goes, the resource that async_task and the
cluster's threads share; SQLite's own C code runs without the GIL and is not counted
(diskcache's Python around it is). Prints the functions with the most samples of their
own (self), the nbqueue functions with the most samples in total (inclusive, callees
included), and the share of each thread.

  noop     an in-process cluster with 2 workers; groups of 2,000 no-op tasks
           (async_task in a loop, then result_group(count=..., wait=...))
  enqueue  no cluster: async_task in a loop, flush(), and async_iter, in batches
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def child(workload: str, tasks: int) -> None:
    import workloads

    import nbqueue
    directory = os.path.join(tempfile.mkdtemp(prefix="nbq-hotspots-"), "store")
    nbqueue.configure(directory=directory)
    noop = workloads.noop
    started = time.perf_counter()
    if workload == "noop":
        with nbqueue.Cluster(workers=2, directory=directory):
            nbqueue.result_group("warm", count=0, wait=0)
            for i in range(50):
                nbqueue.async_task(noop, i, group="warm")
            nbqueue.result_group("warm", count=50, wait=120_000)
            started = time.perf_counter()
            size = 2000
            for g in range(max(1, tasks // size)):
                for i in range(size):
                    nbqueue.async_task(noop, i, group=f"g{g}")
                got = nbqueue.result_group(f"g{g}", count=size, wait=600_000)
                assert got is not None and len(got) == size
    else:
        warnings.simplefilter("ignore", nbqueue.NoClusterWarning)
        size = 10_000
        for _ in range(max(1, tasks // size)):
            for i in range(size):
                nbqueue.async_task(noop, i)
            nbqueue.flush()
            nbqueue.async_iter(noop, range(size))
    print(f"{workload}: {tasks} tasks in {time.perf_counter() - started:.2f} s",
          file=sys.stderr)
    shutil.rmtree(os.path.dirname(directory), ignore_errors=True)


FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``module.py:func``, site-packages paths cut."""
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[-1]
            break
    else:
        path = os.path.relpath(path, os.path.dirname(HERE)) if os.path.isabs(path) else path
    return f"{path}:{m.group('func')}"


def report(raw: str, top: int, ticks: float | None = None) -> str:
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    samples = 0
    with open(raw) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
            frames = [f for f in frames if not f.startswith(("thread", "process"))]
            if not frames:
                continue
            samples += n
            threads[thread_name(thread, frames)] += n
            own[short(frames[-1])] += n
            for name in set(short(f) for f in frames):
                total[name] += n
    if ticks:
        head = (f"{samples} samples of the thread holding the GIL in the kernel process; "
                f"the GIL was held in ~{min(100, 100 * samples / ticks):.0f} % of the run "
                "(startup included)")
    else:
        head = f"{samples} samples of the kernel process's threads"
    out = [head, "", f"top {top} by own samples (self time):"]
    for name, n in own.most_common(top):
        out.append(f"  {100 * n / samples:5.1f} %  {name}")
    out += ["", f"top {top} nbqueue functions by total samples (callees included):"]
    for name, n in [(k, v) for k, v in total.most_common() if k.startswith("nbqueue/")][:top]:
        out.append(f"  {100 * n / samples:5.1f} %  {name}")
    out += ["", "by thread:"]
    for name, n in threads.most_common():
        out.append(f"  {100 * n / samples:5.1f} %  {name}")
    return "\n".join(out)


def thread_name(thread: str, frames: list[str]) -> str:
    """The thread's name as py-spy gives it (``thread (id): name``), else its entry point."""
    if ": " in thread:
        return thread.split(": ", 1)[1]
    return short(frames[0]) if frames else thread


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=("noop", "enqueue"))
    p.add_argument("--tasks", type=int, help="default 20,000 (noop), 100,000 (enqueue)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--raw", help="keep py-spy's raw (collapsed stacks) output here")
    p.add_argument("--svg", help="also record a speedscope profile here (a second run)")
    p.add_argument("--no-gil", action="store_true",
                   help="sample every thread py-spy deems active, not only the one holding "
                        "the GIL (here it counts threads blocked in waits as active)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    tasks = args.tasks or (20_000 if args.workload == "noop" else 100_000)
    if args.child:
        child(args.workload, tasks)
        return 0
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    argv = [sys.executable, os.path.abspath(__file__), args.workload, "--tasks", str(tasks),
            "--child"]
    raw = args.raw or tempfile.mktemp(suffix=".txt", prefix="nbq-pyspy-")
    gil = [] if args.no_gil else ["--gil"]
    started = time.perf_counter()
    subprocess.run([spy, "record", "--format", "raw", "--threads", "--function", *gil,
                    "--rate", str(args.rate), "-o", raw, "--"] + argv, check=True)
    seconds = time.perf_counter() - started
    print(report(raw, args.top, None if args.no_gil else seconds * args.rate))
    if args.svg:
        subprocess.run([spy, "record", "--format", "speedscope", "--threads",
                        "--rate", str(args.rate), "-o", args.svg, "--"] + argv, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
