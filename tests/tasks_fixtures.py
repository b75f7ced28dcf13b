"""Importable task functions and hooks for tests (dotted paths like 'tests.tasks_fixtures.add')."""

from __future__ import annotations

import contextlib
import os
import time

HOOKED: list = []


def add(a, b=0):
    return a + b


def echo(*args, **kwargs):
    return args, kwargs


def boom(message="boom"):
    raise ValueError(message)


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


def returns_none():
    return None


def pid():
    return os.getpid()


def hook_record(task):
    HOOKED.append((task.id, task.result))


def ignore_alarm_then_sleep(seconds):
    """Stands for C code that never returns to the interpreter: the timeout signal is ignored."""
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)
    return "finished"


def die():
    os._exit(3)


def exits(code=None):
    """A task that calls sys.exit, as scripts do."""
    import sys

    sys.exit(code)


def raises(name):
    """Raise a BaseException by its builtin name (KeyboardInterrupt, GeneratorExit ...)."""
    import builtins

    raise getattr(builtins, name)("raised on purpose")


def spawn_children(count, group):
    """A task that enqueues tasks: they go to the store this task came from."""
    import nbqueue

    return [nbqueue.async_task(add, i, 100, group=group) for i in range(count)]


def wait_for_child(seconds, hint_after=0.5):
    """A task that waits for its own child (a deadlock on a single worker): returns what
    the wait gave and the warnings it raised."""
    import warnings

    import nbqueue
    from nbqueue.disk import store

    store.HINT_AFTER = hint_after
    child = nbqueue.async_task(add, 1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = nbqueue.result(child, wait=int(seconds * 1000))
    return value, [str(w.message) for w in caught]


def sized_result(megabytes, tag=0):
    """A result of ``megabytes`` MB, different for each tag."""
    return bytes([tag % 256]) * (megabytes * 1024 * 1024)


def log_run(path, seconds=0.0, value=None):
    """Append 'start' and 'stop' lines with this pid, to count real runs of a task."""
    with open(path, "a") as out:
        out.write(f"start {os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    with open(path, "a") as out:
        out.write(f"stop {os.getpid()} {time.time()}\n")
    return value


def fail_until(path, failures):
    """Raise on the first `failures` runs (counted in a file), then succeed."""
    with open(path, "a") as out:
        out.write("run\n")
    with open(path) as src:
        runs = len(src.read().splitlines())
    if runs <= failures:
        raise RuntimeError(f"run {runs} fails on purpose")
    return runs


# -- helpers for multi-process broker tests (run in 'spawn' children) ------------------


def produce_packages(directory, prefix, count):
    """Enqueue ``count`` distinct packages ``b"<prefix>-<i>"`` into the store at ``directory``."""
    from nbqueue.disk.broker import Broker

    broker = Broker(directory)
    try:
        for i in range(count):
            broker.enqueue(f"{prefix}-{i}".encode())
    finally:
        broker.close()


def consume_packages(directory, out_path, producers_done, deadline_s=60.0, batch=25):
    """Lease and ack until the producers are done and the queue is empty.

    Writes every package received, one per line, to ``out_path``.
    """
    from nbqueue.disk.broker import Broker

    broker = Broker(directory)
    owner = f"consumer-{os.getpid()}"
    seen = []
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            finished = producers_done.is_set()
            leases = broker.lease(owner, batch, 120.0)
            if not leases:
                if finished:
                    break
                time.sleep(0.002)
                continue
            seen.extend(lease.package.decode() for lease in leases)
            broker.ack([lease.token for lease in leases])
    finally:
        broker.close()
        with open(out_path, "w") as out:
            out.write("\n".join(seen))


HOOK_TASKS: list = []


def print_result(task):
    """The seed's ``hooks.print_result``: print the finished task's result."""
    print(task.result)


def keep_task(task):
    """A hook that keeps the complete Task object it was given."""
    HOOK_TASKS.append(task)


def runs(path, kind):
    """The task numbers of the 'start' or 'stop' lines that ``logged`` wrote, in order."""
    try:
        with open(path) as src:
            fields = [line.split() for line in src.read().splitlines()]
    except FileNotFoundError:
        return []
    return [int(f[1]) for f in fields if f and f[0] == kind]


LOGGED_NO_SLEEP = "NBQ_TESTS_LOGGED_NO_SLEEP"  # in a worker's environment: logged runs at once


@contextlib.contextmanager
def logged_without_sleep():
    """Workers spawned meanwhile (on demand, so for the whole block) run ``logged`` at
    once, whatever its ``seconds``: for a cluster that only runs what a test left."""
    os.environ[LOGGED_NO_SLEEP] = "1"
    try:
        yield
    finally:
        del os.environ[LOGGED_NO_SLEEP]


def logged(path, task_no, seconds=0.0):
    """Append one 'start'/'stop' line pair per run, for counting runs and overlaps."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"start {task_no} {os.getpid()} {time.time()}\n".encode())
        if not os.environ.get(LOGGED_NO_SLEEP):
            time.sleep(seconds)
        os.write(fd, f"stop {task_no} {os.getpid()} {time.time()}\n".encode())
    finally:
        os.close(fd)
    return task_no


def ticking(path, task_no, seconds, deaf=False):
    """Write 'start', a 'tick' every 20 ms for ``seconds``, then 'stop' (lines of
    ``kind task_no pid time``): a run's ticks show when it really ran. ``deaf``: ignore
    the cluster's stop signal, so that a cancel must kill the worker."""
    import signal

    if deaf:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"start {task_no} {os.getpid()} {time.time()}\n".encode())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
            os.write(fd, f"tick {task_no} {os.getpid()} {time.time()}\n".encode())
        os.write(fd, f"stop {task_no} {os.getpid()} {time.time()}\n".encode())
    finally:
        os.close(fd)
        if deaf:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    return task_no


def big_result(megabytes):
    return b"x" * (megabytes * 1024 * 1024)


def unpicklable_result():
    import threading

    return threading.Lock()


def segfault():
    import ctypes

    ctypes.string_at(0)


def enqueue_from_client(directory, count, group, seconds, ready_path):
    """A notebook-like client: starts an in-process cluster, enqueues, then waits to be killed."""
    import nbqueue

    nbqueue.configure(directory=directory)
    cluster = nbqueue.Cluster(workers=1, retry=2).start()
    ids = [nbqueue.async_task(nap, seconds, i, group=group) for i in range(count)]
    nbqueue.flush()  # async_task writes behind; the ids below must be in the queue
    with open(ready_path, "w") as out:
        out.write("\n".join(ids))
    time.sleep(600)
    cluster.stop()


def steady_producer(directory, out_path, every, seconds, host_cluster):
    """A caller enqueueing one task every ``every`` s, noting each id and the time
    ``async_task`` returned; it waits to be killed. ``host_cluster``: with a cluster of
    its own running ``seconds``-long tasks, as a notebook with ``Cluster().start()``."""
    import nbqueue

    nbqueue.configure(directory=directory)
    if host_cluster:
        nbqueue.Cluster(workers=2, retry=2).start()
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    number = 0
    while True:
        task_id = nbqueue.async_task(nap, seconds, number, group="steady")
        os.write(fd, f"{task_id} {time.time():.6f}\n".encode())
        number += 1
        time.sleep(every)


def produce_tasks(directory, producer, count):
    import warnings
    import nbqueue

    warnings.simplefilter("ignore")
    nbqueue.configure(directory=directory)
    broker = nbqueue.get_broker()
    ids = [
        nbqueue.async_task(
            "tests.tasks_fixtures.add", producer * count + i, group="many", broker=broker
        )
        for i in range(count)
    ]
    return ids


_BALLAST: list = []


def grow_and_report_pid(megabytes):
    """Keep `megabytes` more memory alive in this worker; return (pid, rss kB)."""
    from nbqueue.worker import rss_kilobytes

    _BALLAST.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid(), rss_kilobytes()


def block_on_pipe():
    """Wait in a read(2) that never returns: a blocking system call."""
    read_end, _write_end = os.pipe()
    return os.read(read_end, 1)


def read_file(path):
    """Fails while the file is missing: a cause the user fixes, then retries the task."""
    with open(path) as src:
        return src.read()


# -- what tasks write, report and raise (nbqueue.capture, nbqueue.tracebacks) ----------


def chatter(lines, width=10, seconds=0.0, value=None):
    """Print ``lines`` numbered lines (stdout, every fifth to stderr), pausing
    ``seconds`` between them, with a warning and an info record in the middle."""
    import logging
    import sys

    for i in range(lines):
        stream = sys.stderr if i % 5 == 4 else sys.stdout
        print(f"line {i:06d} " + "x" * width, file=stream)
        if i == lines // 2:
            logging.getLogger("tests.chatter").warning("halfway at %d", i)
            logging.getLogger("tests.chatter").info("an info record is not kept")
        if seconds:
            time.sleep(seconds)
    return value


def reports(steps, seconds=0.0, fail=False):
    """Report each of ``steps`` steps; raise at the end if ``fail``."""
    import nbqueue

    for i in range(steps):
        nbqueue.report(i + 1, steps, f"step {i + 1}")
        if seconds:
            time.sleep(seconds)
    if fail:
        raise RuntimeError("failed after reporting")
    return steps


def bad_report(value):
    import nbqueue

    nbqueue.report(value)


class Unpicklable(Exception):
    """An exception that pickles but cannot be unpickled (whatever patches the pickling
    of exceptions, as tblib's does once dask is loaded)."""

    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code

    def __reduce__(self):
        return _refuse, (str(self),)


def _refuse(message):
    raise TypeError(f"this exception cannot be rebuilt: {message}")


def raises_unpicklable():
    raise Unpicklable(7, "cannot come back")


def raises_chain():
    """ValueError from KeyError, raised while handling an OSError."""
    try:
        raise OSError("first")
    except OSError:
        try:
            {}["missing"]
        except KeyError as exc:
            raise ValueError("last") from exc


def raises_with_lock():
    """An exception holding a lock: it cannot be pickled at all."""
    import threading

    exc = RuntimeError("holds a lock")
    exc.lock = threading.Lock()
    raise exc


def chatter_then_hang(seconds=60):
    """Print a line, then hang in a way the timeout signal cannot stop (it is ignored)."""
    import signal

    print("before the hang", flush=True)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)


def length(data, tag=None):
    """The length of ``data`` (large arguments travel as files: ``nbqueue.blobs``)."""
    return len(data)


def fails_until(flag, data):
    """Fail until the file ``flag`` exists, then give the length of ``data``."""
    if not os.path.exists(flag):
        raise RuntimeError(f"{flag} is not there yet")
    return len(data)


def doubled_in_place(array):
    """``array`` doubled in place (an argument read from a file must be writable)."""
    array *= 2
    return array


def kills_its_host(path, task_no):
    """Log a start, SIGKILL the cluster host of this worker, and return at once: a task
    that crashes its host every time it runs."""
    import signal

    with open(path, "a") as out:
        out.write(f"start {task_no} {os.getpid()} {time.time()}\n")
    os.kill(os.getppid(), signal.SIGKILL)
    return task_no


def square_or_fail(x, bad=-1):
    """``x * x``; raises ValueError for ``bad``."""
    if x == bad:
        raise ValueError(f"{x} is bad")
    return x * x


def add_or_fail_until(i, path, failures):
    """``i``; raises on the first ``failures`` runs of ``i`` (counted in ``path.<i>``)."""
    fail_until(f"{path}.{i}", failures) if failures else None
    return i


def say_and_report(i, talk):
    """``i``; prints a line and reports its progress if ``talk``."""
    if talk:
        import nbqueue

        print(f"item {i} says hello")
        nbqueue.report(1, 1, f"item {i}")
    return i


def load_model(path, size):
    """A cluster's initializer: 'loads a model' once per worker, noting its pid in ``path``."""
    import nbqueue

    with open(path, "a") as out:
        out.write(f"{os.getpid()}\n")
    nbqueue.worker_state()["model"] = list(range(size))
    nbqueue.worker_state()["uses"] = 0


def use_model(x):
    """(pid, x + the model's length, how many tasks used this worker's model so far)."""
    import nbqueue

    state = nbqueue.worker_state()
    state["uses"] += 1
    return os.getpid(), x + len(state["model"]), state["uses"]


def broken_initializer():
    raise ValueError("the model file is missing")


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as src:
        for line in src:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def shared_slice(array, i, parts):
    """The sum of part ``i`` of ``parts`` of a shared array, with what the worker holds."""
    from nbqueue.disk import shared

    size = len(array) // parts
    total = float(array[i * size : (i + 1) * size].sum())
    return total, array.flags.writeable, os.getpid(), shared.loads_done[0], _memory_kb("RssAnon")


def shared_kinds(nested, scale=None):
    """What a task got for handles at several depths of its arguments."""
    return (
        type(nested["rows"][0]["table"]).__name__,
        nested["rows"][0]["table"]["weights"].sum(),
        bytes(nested["raw"][:3]),
        type(nested["raw"]).__name__,
        scale["factor"],
    )


def logged_sum(path, task_no, *values, seconds=0.0):
    """``logged``, returning the sum of ``values`` (results of other tasks, found at any
    depth of lists and dicts)."""
    logged(path, task_no, seconds)

    def total(value):
        if isinstance(value, dict):
            return sum(total(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(total(v) for v in value)
        return value

    return total(values)
