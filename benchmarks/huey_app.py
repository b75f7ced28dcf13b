"""The huey peer: a SqliteHuey on the database file named by NBQUEUE_BENCH_HUEY_DB.

Imported by benchmarks/run.py (the producer) and by the consumer it starts:
``python -m huey.bin.huey_consumer huey_app.huey -w 2 -k process ...``.
"""

from __future__ import annotations

import os

import workloads
from huey import SqliteHuey

huey = SqliteHuey("nbqueue-bench", filename=os.environ.get("NBQUEUE_BENCH_HUEY_DB",
                                                           "huey-bench.db"),
                  results=True, store_none=True, utc=True)

noop = huey.task(name="noop")(workloads.noop)
spin = huey.task(name="spin")(workloads.spin)
