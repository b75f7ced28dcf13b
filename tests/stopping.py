"""Stopping a cluster while it holds tasks leased but not started, in every way a user
stops one, for ``test_cluster.py`` (loky) and ``test_executors.py`` (dask).

Each run is a real Python process (``ROUNDS``): two rounds of 20 tasks of 1.5 s on a
2-worker cluster, each stopped 2 s in (by ``stop(wait=...)``, the panel's button, a
cluster started with other options, or the interpreter's exit), then a larger cluster
runs what is left. The process's stderr is what a user sees: it must stay empty. The
``nbqueue`` logger's records are kept apart (its warnings about tasks handed back are
meant for the user) and checked: none is an error or carries a traceback. A recording
``threading.excepthook`` counts every thread that died of an exception.

Every task must then have one outcome, on its first attempt, and no run may go on after
its cluster's stop returned (it would run beside the task's next delivery). A run that
ended just as its workers were killed, its outcome still on its way, is run again: at
least once, as every kill allows; that is counted, and allowed only then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbqueue
from nbqueue.cluster.serving import EXIT_GRACE
from tests import tasks_fixtures as fixtures

ROOT = str(Path(__file__).resolve().parents[1])
TASKS = 20  # per round
ROUNDS = 2  # a second round: a new cluster in a process whose first one stopped
SECONDS = 1.5  # each task
STOP_AFTER = 2.0  # seconds after the cluster started
DRAIN_WORKERS = 2  # the cluster that runs what the rounds left (without their sleep)
# seconds before a stop's kill in which a run that ended may not have sent its outcome
# (``stream.STREAM_DELAY``, then the way to the cluster)
IN_FLIGHT = 1.0
KILL_SLACK = 1.0  # seconds a stop may take past its grace before its workers are dead
GRACE = {"0": 0.0, "0.3": 0.3, "default": 10.0, "panel": 10.0, "replace": 0.0,
         "exit": EXIT_GRACE}  # the ``wait`` of each way's stop

SCRIPT = textwrap.dedent("""
    import json, logging, sys, threading, time, warnings
    import nbqueue
    from nbqueue.errors import NoClusterWarning
    from tests.tasks_fixtures import logged

    def note(*fields):  # a JSON line on stdout, at once: also while the process exits
        print(json.dumps(fields), flush=True)

    warnings.simplefilter("ignore", NoClusterWarning)  # each round queues before its start
    threading.excepthook = lambda args: note(
        "died", args.thread.name if args.thread else "?",
        f"{args.exc_type.__name__}: {args.exc_value}")

    class Note(logging.Handler):
        def emit(self, record):
            note("log", record.levelname, record.getMessage(), bool(record.exc_info))

    logging.getLogger("nbqueue").addHandler(Note())
    logging.getLogger("nbqueue").propagate = False

    def main():
        executor, way, directory, log, first, rounds = sys.argv[1:7]
        first, rounds = int(first), int(rounds)
        options = {"dashboard_address": None} if executor == "dask" else {}
        nbqueue.configure(directory=directory)
        cluster = None
        for r in range(first, first + rounds):
            for i in range(%(tasks)d):
                nbqueue.async_task(logged, log, r * %(tasks)d + i, %(seconds)r, group="stop")
            if way != "replace" or cluster is None:
                cluster = nbqueue.Cluster(workers=2, executor=executor, **options).start()
            time.sleep(%(stop_after)r)
            note("round", len(cluster.inflight), cluster.running_tasks())
            began = time.time()
            if way == "replace":  # other options: the running one stops with stop(wait=0)
                timeout = 30 if cluster.settings.timeout is None else None
                new = nbqueue.Cluster(workers=2, executor=executor, timeout=timeout,
                                      **options).start()
                assert new is not cluster and cluster.stopped
                note("stopped", began, time.time())
                cluster = new
                continue
            elif way == "panel":
                from nbqueue.display.cluster_panel import ClusterPanel
                panel = ClusterPanel(cluster, interval=0.05)
                panel._button.click()  # what the Stop button does: stop() in a thread
                deadline = time.monotonic() + 60
                while not (cluster.stopped and panel._button.description == "stopped"):
                    assert time.monotonic() < deadline, "the panel's stop did not end"
                    time.sleep(0.05)
            elif way == "exit":
                note("exiting", began)
                return  # the script ends here, its cluster running
            elif way == "default":
                cluster.stop()
            else:
                cluster.stop(wait=float(way))
            note("stopped", began, time.time())
        if way == "replace":  # the one that replaced the last
            began = time.time()
            cluster.stop(wait=0)
            note("stopped", began, time.time())

    main()
    """ % {"tasks": TASKS, "seconds": SECONDS, "stop_after": STOP_AFTER})


def run(executor: str, way: str, directory: str, log: Path | str, first: int = 0,
        rounds: int = ROUNDS, timeout: float = 240) -> dict:
    """Run the rounds in a fresh process; its report, after checking that it wrote
    nothing to stderr, that no thread died and that nbqueue logged no error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", SCRIPT, executor, way, directory, str(log),
                           str(first), str(rounds)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    ended = time.time()
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    died = [line[1:] for line in lines if line[0] == "died"]
    records = [line[1:] for line in lines if line[0] == "log"]
    stops = [line[1:] for line in lines if line[0] == "round"]
    windows = [(line[1], line[2], GRACE[way]) for line in lines if line[0] == "stopped"]
    if way == "exit":  # it stops as the interpreter exits, by the end of the process
        windows = [(line[1], ended, GRACE[way]) for line in lines if line[0] == "exiting"]
    assert len(windows) == rounds + (way == "replace"), windows
    assert died == [], died
    assert [r for r in records if r[0] not in ("INFO", "WARNING") or r[2]] == [], records
    assert len(stops) == rounds
    # each stop came with tasks leased that no worker had started
    assert all(held > running for held, running in stops), stops
    print(f"{executor} {way}: (held, running) at each stop {stops}; nbqueue said "
          f"{[r[1][:60] for r in records]}")
    return {"stops": stops, "records": records, "windows": windows}


def drain_and_count(log: Path | str, total: int,
                    windows: list[tuple[float, float, float]]) -> None:
    """A cluster runs what is left; every task has one outcome, on its first attempt; no
    run went on past its cluster's stop (``windows``: when each stop began and returned,
    by the wall clock, and its grace), and a task ran to its end twice only if its first
    run ended just as its workers were killed. What is left runs without its sleep: its
    workers start ``logged_without_sleep``."""
    with fixtures.logged_without_sleep(), nbqueue.Cluster(workers=DRAIN_WORKERS):
        values = nbqueue.result_group("stop", count=total, wait=120_000)
    assert sorted(values) == list(range(total)), sorted(values)
    assert nbqueue.count_group("stop", failures=True) == 0
    tasks = nbqueue.fetch_group("stop")
    assert len(tasks) == total, len(tasks)
    again = {t.args[1]: t.attempt_count for t in tasks if t.attempt_count != 1}
    assert again == {}, f"attempts counted: {again}"
    assert nbqueue.queue_size() == 0 and nbqueue.get_broker().leased() == 0

    started: dict[tuple[str, str], float] = {}
    ended: dict[int, list[tuple[float, float]]] = {}  # task -> (start, end) of runs that ended
    for kind, task, pid, when in (line.split() for line in Path(log).read_text().splitlines()):
        if kind == "start":
            started[task, pid] = float(when)
        else:
            ended.setdefault(int(task), []).append((started.pop((task, pid)), float(when)))
    assert sorted(ended) == list(range(total))
    windows = sorted(windows)
    late, twice = [], {}
    for task, runs in ended.items():
        for start, end in runs:
            stop = next((w for w in windows if w[1] > start), None)  # its cluster's stop
            if stop is not None and end > stop[1]:
                late.append((task, round(end - stop[1], 2)))
        for start, end in runs[:-1]:  # each had its outcome lost, or the task ran again
            stop = next((w for w in windows if w[1] > start), None)
            if stop is None or not (stop[0] - IN_FLIGHT <= end
                                    <= min(stop[1], stop[0] + stop[2] + KILL_SLACK)):
                twice[task] = runs
    assert late == [], f"(task, seconds) of runs that went on past their cluster's stop: {late}"
    assert twice == {}, f"tasks that ran to their end twice, not at a stop: {twice}"
    print(f"{total} tasks, one outcome each; tasks whose run ended just as its workers were "
          f"killed and ran again: {sum(len(r) > 1 for r in ended.values())}")
