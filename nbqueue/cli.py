"""The ``nbqueue`` command: run a cluster from a terminal, print a store's figures, or
serve the dashboard of every store of this user.

nbqueue cluster --workers 4 [--directory .nbqueue] [--timeout 60] ...
nbqueue cluster --executor dask [--address tcp://host:8786] ...
nbqueue info [--directory .nbqueue]
nbqueue dashboard [--directory .nbqueue] [--port 8789] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from nbqueue import __version__, conf
from nbqueue.disk.signing import KEY_FILE
from nbqueue.errors import ConfigurationError, MissingDependency, NbqueueError, StoreError


def _cluster(args: argparse.Namespace) -> int:
    from nbqueue.cluster import Cluster

    options = {
        name: getattr(args, name)
        for name in (
            "workers",
            "retry",
            "max_attempts",
            "save_limit",
            "bulk",
            "label",
            "directory",
            "max_rss",
        )
    }
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.ack_failures is not None:
        options["ack_failures"] = args.ack_failures
    if args.address is not None and args.executor != "dask":
        raise ConfigurationError(
            "--address is the address of a dask scheduler: give --executor dask too"
        )
    if args.address is not None:
        options["address"] = args.address
    if args.dashboard_address is not None:
        if args.executor != "dask":
            raise ConfigurationError("--dashboard-address needs --executor dask")
        options["dashboard_address"] = args.dashboard_address
    cluster = Cluster(executor=args.executor, **options)
    stop = {"asked": False}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        print("\nnbqueue: stopping gracefully (again to force) ...", file=sys.stderr)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    print(
        f"nbqueue: cluster {cluster.id[:8]} serving {cluster.directory} with "
        f"{cluster.workers} {cluster.executor_name} workers (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    if cluster.info().get("dashboard"):
        print(
            f"nbqueue: dask dashboard at {cluster.info()['dashboard']}", file=sys.stderr, flush=True
        )
    try:
        while not stop["asked"] and cluster.running:
            time.sleep(0.2)
    finally:
        cluster.stop(wait=args.grace)
        print(f"nbqueue: stopped; {cluster.done} done, {cluster.failed} failed", file=sys.stderr)
    if cluster.error is not None:
        print(f"nbqueue: the cluster stopped on its own: {cluster.error}", file=sys.stderr)
        return 1
    return 0


INFO_GROUPS = 10  # the newest groups `nbqueue info` prints (all of them with --json)


def _info(args: argparse.Namespace) -> int:
    from nbqueue.disk.directory import get_broker, get_store, heartbeats
    from nbqueue.figures import StoreFigures

    given = args.directory or conf.settings().directory
    path = os.path.abspath(given)
    # opening a store creates it: a mistyped --directory must not leave an empty one behind
    if not os.path.isfile(os.path.join(path, KEY_FILE)):
        what = "no such directory" if not os.path.exists(path) else "no nbqueue store in it"
        raise StoreError(
            f"there is no store at {path} ({what}). Check the path; to make a "
            f"store there, start a cluster on it (`nbqueue cluster --directory "
            f"{given}`) or enqueue a task after configure(directory={given!r})"
        )
    broker = get_broker(given)
    saved_ok, saved_failed = get_store(broker.directory).saved.totals()
    store = StoreFigures(broker.directory).read()  # what every view shows
    clusters = heartbeats(broker.directory).clusters()
    figures = {
        "directory": broker.directory,
        "queued": broker.size(),
        "waiting": len(broker.waiting()),
        "running": sum(c.get("running", 0) for c in clusters),
        "leased": broker.leased(),
        "done": saved_ok,
        "failed": saved_failed,
        "clusters": clusters,
        "groups": store["groups"],
    }
    fs = broker.place.filesystem
    figures["filesystem"] = fs.name if fs is not None else "unknown"
    figures["network_filesystem"] = bool(fs is not None and fs.network)
    stopped = heartbeats(broker.directory).stopped_clusters()
    figures["stopped_clusters"] = stopped
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return 0
    print(f"store     {figures['directory']}")
    where = (
        "local"
        if not figures["network_filesystem"]
        else (
            "network: read only here; see allow_network_fs"
            if broker.place.refusal is not None
            else "network: written, as allow_network_fs says"
        )
    )
    print(f"fs        {figures['filesystem']} ({where})")
    # queued + waiting (for other tasks' results) + leased (held by a cluster: running,
    # or next in a worker) + done + failed is every task sent to the store, not deleted
    for name in ("queued", "waiting", "leased", "running", "done", "failed"):
        print(f"{name:<9} {figures[name]}")
    if not clusters:
        print("clusters  none alive: start one with `nbqueue cluster`")
    for c in clusters:
        print(
            f"cluster   {c['id'][:8]} pid {c['pid']} on {c['host']}: {c['workers']} "
            f"{c['executor']} workers, {c['done']} done, {c['failed']} failed, "
            f"{c['rate']} tasks/s"
        )
        if c.get("dashboard"):
            print(f"          dashboard {c['dashboard']}")
        if c.get("waiting"):
            print(f"          waiting: {c['waiting']}")
    for c in stopped:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["stopped"]))
        print(f"stopped   {c['id'][:8]} pid {c['pid']} on {c['host']} at {when}: {c['error']}")
    for g in figures["groups"][:INFO_GROUPS]:
        rate = f", {g['rate']} tasks/s" if g["rate"] is not None else ""
        print(
            f"group     {g['name']}: {g['done']} done, {g['failed']} failed, "
            f"{g['cancelled']} cancelled of {g['total']}; {g['state']}{rate}"
        )
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import asyncio

    try:
        from nbqueue.dashboard.server import serve
    except ImportError as exc:  # tornado
        raise MissingDependency(
            f"the dashboard needs tornado ({exc}): pip install tornado"
        ) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"nbqueue: serving on {args.host}: anyone who can reach it and has the token "
            "sees and controls your stores",
            file=sys.stderr,
        )
    directories = [args.directory] if args.directory else []
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop serving
        asyncio.run(serve(directories, args.host, args.port))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nbqueue", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"nbqueue {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "cluster",
        help="run a worker cluster in the foreground",
        description="Run a worker cluster in the foreground until Ctrl-C. Tasks given as "
        "dotted paths import from the working directory first (as with "
        "`python -m`), so start it in the folder of the notebook whose modules "
        "they name.",
    )
    run.add_argument("--directory", help="the store directory (default .nbqueue)")
    run.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    run.add_argument("--timeout", type=float, help="seconds a task may run")
    run.add_argument("--retry", type=float, help="seconds before a lost task is re-delivered")
    run.add_argument(
        "--max-attempts",
        dest="max_attempts",
        type=int,
        help="deliveries before a task is given up (0 = unlimited)",
    )
    failures = run.add_mutually_exclusive_group()
    failures.add_argument(
        "--retry-failures",
        dest="ack_failures",
        action="store_false",
        default=None,
        help="deliver a task that raised again after --retry "
        "seconds, up to --max-attempts (by default its failure is final)",
    )
    failures.add_argument(
        "--ack-failures",
        dest="ack_failures",
        action="store_true",
        default=None,
        help="a task that raised is final (the default)",
    )
    run.add_argument(
        "--save-limit", dest="save_limit", type=int, help="successes kept in the store (0 = all)"
    )
    run.add_argument("--bulk", type=int, help="tasks leased per queue transaction")
    run.add_argument("--label", help="a name shown in `nbqueue info`")
    run.add_argument(
        "--max-rss",
        dest="max_rss",
        type=int,
        help="kilobytes a worker may grow to before it is replaced",
    )
    run.add_argument(
        "--executor",
        choices=["loky", "dask"],
        default="loky",
        help="where tasks run: loky processes of the cluster's own (default), "
        'or dask.distributed (pip install "nbqueue[dask]")',
    )
    run.add_argument(
        "--address",
        help="with --executor dask: a running scheduler, like "
        "tcp://host:8786 (default: start a LocalCluster of --workers processes)",
    )
    run.add_argument(
        "--dashboard-address",
        dest="dashboard_address",
        help="with --executor dask and no --address: where the LocalCluster "
        "serves its dashboard (default 127.0.0.1:8787)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds running tasks get to finish on stop (default 10)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log what the cluster does")
    run.set_defaults(handler=_cluster)
    info = sub.add_parser("info", help="print queue, running, done and failed counts")
    info.add_argument("--directory", help="the store directory (default .nbqueue)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)
    board = sub.add_parser(
        "dashboard",
        help="serve the dashboard of every store of this user",
        description="Serve the dashboard (every store of this user: clusters, groups, "
        "running tasks, failures) on 127.0.0.1, at the URL it prints, whose token signs "
        "the browser in. From another machine, tunnel to it: ssh -L 8789:127.0.0.1:8789 host.",
    )
    board.add_argument("--directory", help="a store to list as well (stores list themselves)")
    board.add_argument("--port", type=int, default=8789, help="port (default 8789; taken: any)")
    board.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    board.set_defaults(handler=_dashboard)
    return top


def main(argv: list[str] | None = None) -> int:
    # As `python -m nbqueue` does: modules beside the notebook (a task 'mymod.work') import
    # in this process and in the loky workers, which start with this process's sys.path.
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
        return args.handler(args)
    except NbqueueError as exc:
        print(f"nbqueue: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
