"""One real two-worker loky cluster for a whole test module (each test uses its own
groups), its store the default while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nbqueue
from nbqueue import conf
from nbqueue.disk.directory import drop


@contextmanager
def module_cluster(tmp_path_factory, name: str) -> Iterator[nbqueue.Cluster]:
    directory = str(tmp_path_factory.mktemp(name) / "store")
    conf.reset()
    nbqueue.configure(directory=directory)
    cluster = nbqueue.Cluster(workers=2, directory=directory).start()
    try:
        yield cluster
    finally:
        cluster.stop(wait=5)
        conf.reset()
        drop(directory)
