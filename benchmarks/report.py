#!/usr/bin/env python
"""Write docs/performance.md from a benchmark run's JSON (default: the latest).

    python benchmarks/report.py [results.json] [--out docs/performance.md]

``make bench`` runs it after ``benchmarks/run.py``, so the page always shows the
figures of the last run, with the machine and versions it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import markdown  # noqa: E402  (the same table the run prints)

INTRO = """# Performance

```bash
make bench   # creates .venv with the bench extra (dask, huey, django-q2), runs benchmarks/run.py
```

`benchmarks/run.py` measures nbqueue next to raw loky (`get_reusable_executor(max_workers=2)`,
submit + result) and three peers, in one process, one system after another, on the same
workloads with 2 workers each: huey (`SqliteHuey`, a consumer with 2 *process* workers),
dask (`LocalCluster`, 2 worker processes, 1 thread each) and django-q2 (ORM broker on
SQLite, `qcluster` with 2 workers). The queues that are polled (huey's, django-q2's) are
polled every 5 ms, as nbqueue's are by default (nbqueue's every 1 ms right after a task
finished); huey's results are polled every 1 ms (its own default starts at 50 ms),
django-q2's every 10 ms (fixed in its `result`).
The consumers that need a process of their own (huey's, django-q2's, `nbqueue cluster`)
are started by the script and stopped by pid. Workloads: **noop**, 2,000 no-op tasks from
the first enqueue to all results in hand; **cpu**, 200 tasks of 10 ms of pure-Python CPU
time each, with efficiency = tasks/s against the ideal of 2 cores (200 tasks/s);
**latency**, 200 sequential round trips (enqueue, then wait for the result); **enqueue**,
10,000 calls with no consumer running (django-q2: 2,000), and `async_iter` of 10,000
items; **payload**, 20 tasks that each return 4 MB (results out), then 20 tasks that each
take a 4 MB argument (arguments in), in MB/s; **results**, `result_group` of a 10,000-task group and `count_group` on a store of
100,000 results; **memory**, the RSS of a fresh process (the "kernel") with a running
cluster, idle and after 100,000 tasks whose results it never reads; **signing**, what
checking every value of the store costs: a no-op task's package signed and checked, and a
4 MB value written and read through the store next to plain diskcache; **reuse**, 2,000
`async_task` calls with `reuse` off, then what `reuse=True` adds to a call that sends a
new task, and what a call costs that finds the same call queued or succeeded (by dotted
path, and as a lambda). Each figure is the median of 3 repeats. It prints the table below and writes JSON with every repeat, the
machine, the load average and the package versions (`benchmarks/results/latest.json`).
`--quick` (one repeat), `--only noop,latency`, `--skip-peers`, `--scale 0.1` and
`--json FILE` narrow a run; `BENCH_ARGS=... make bench` passes them on.
`python benchmarks/hotspots.py noop` (or `enqueue`) runs a workload under py-spy and prints
where the kernel's time goes.

**How to read it.** The machine is shared, so absolute figures move by tens of percent from
run to run; the column **× raw loky** divides each nbqueue figure by raw loky's, measured in
the same run, minutes apart. For rates (tasks/s, calls/s, items/s) it is the share of loky's
rate nbqueue reaches (0.42× = 42 %); for times (p50, p95) it is how many times longer
nbqueue takes. The peers' rows carry the target "nbqueue ≥ N× this": met when nbqueue's
noop rate is at least N times theirs. The cpu efficiency target is absolute, so it also
counts the other load on the machine: check it against raw loky's efficiency in the same
run.
"""


def page(report: dict) -> str:
    machine, versions = report["machine"], report["versions"]
    load = report["load_average"]
    targets = report["targets"]
    met = sum(t["verdict"] == "met" for t in targets)
    missed = [f"{' '.join(t['row'])} ({t['target']})" for t in targets
              if t["verdict"] == "not met"]
    used = ", ".join(f"{name} {version}" for name, version in sorted(versions.items())
                     if version and name != "python")
    head = (f"## The latest run\n\n{report['date'][:16].replace('T', ' ')} UTC: "
            f"{machine['cpu']}, {machine['nproc']} cores ({machine['arch']}), "
            f"{machine['memory_gib']} GiB, Python {machine['python']}; {used}. Load average "
            f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end; "
            f"{report['settings']['repeats']} repeat(s) per figure, "
            f"{report['seconds']:.0f} s in all. {met} of {len(targets)} targets met"
            + (f"; not met: {'; '.join(missed)}." if missed else ".") + "\n")
    errors = "".join(f"\n- {error}" for error in report.get("errors", []))
    if errors:
        head += "\nWorkloads that failed:" + errors + "\n"
    return INTRO + "\n" + head + "\n" + markdown(report["table"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?",
                        default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"))
    args = parser.parse_args(argv)
    with open(args.results) as src:
        report = json.load(src)
    with open(args.out, "w") as out:
        out.write(page(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
