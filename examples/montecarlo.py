"""The main job of `make demo`: estimate pi with a few hundred tasks on a local cluster.

Shows the whole round trip: a cluster started from this process on a temporary
store, a group of tasks with a tqdm bar, a hook, a cached result, and a task that
fails on purpose, shown with its error.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time

from tqdm import tqdm

import nbqueue

TASKS = 400
DARTS = 20_000


def throw_darts(seed: int, darts: int = DARTS) -> int:
    """How many of `darts` random points in the unit square fall inside the quarter circle."""
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(darts))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        nbqueue.configure(directory=f"{tmp}/.nbqueue")
        hooked = []
        with nbqueue.Cluster(workers=2) as cluster:
            print(f"cluster up: {cluster}")
            started = time.perf_counter()
            for seed in range(TASKS):
                nbqueue.async_task(throw_darts, seed, group="pi",
                                   hook=lambda task: hooked.append(task.result))
            with tqdm(total=TASKS, desc="pi", unit="task") as bar:
                done = 0
                while done < TASKS:
                    now = nbqueue.count_group("pi")  # successes and failures
                    bar.update(now - done)
                    done = now
                    time.sleep(0.05)
            hits = nbqueue.result_group("pi", count=TASKS, wait=60_000)
            elapsed = time.perf_counter() - started
            estimate = 4 * sum(hits) / (TASKS * DARTS)

            cached_id = nbqueue.async_task(throw_darts, 12345, cached=60)
            cached = nbqueue.result(cached_id, wait=30_000, cached=True)

            broken_id = nbqueue.async_task(throw_darts, "not a seed", "nor darts",
                                           ack_failure=True)
            broken = nbqueue.fetch(broken_id, wait=30_000)

            deadline = time.monotonic() + 10
            while len(hooked) < TASKS and time.monotonic() < deadline:
                time.sleep(0.01)

        print(f"pi ~ {estimate:.5f} (error {abs(estimate - 3.14159265):.5f}) from "
              f"{TASKS * DARTS:,} darts in {TASKS} tasks, {elapsed:.2f} s, "
              f"{TASKS / elapsed:.0f} tasks/s")
        print(f"hook saw {len(hooked)} results; cached result of one task: {cached}")
        print(f"a task failing on purpose ({broken.name}):")
        print("  " + broken.result.splitlines()[0])
        ok = (len(hits) == TASKS and abs(estimate - 3.14159) < 0.01 and len(hooked) == TASKS
              and cached is not None and broken is not None and not broken.success)
        print("demo", "ok" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
