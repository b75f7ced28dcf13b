"""The seed's reference text, example by example, and every entry of its Reference section.

Each example of Django Q's *Tasks* reference text (the API nbqueue follows: its
``async_task``, ``result``, groups, cached results, ``async_iter`` and ``AsyncTask``
sections) is walked as written, with only the import line adapted
(``from nbqueue import ...``). Dotted paths of hooks point at
``tests.tasks_fixtures`` instead of a user's ``hooks`` module. Everything is real:
a private store in a temp directory and, where work must run in the background, a
real two-worker cluster (the ``cluster`` fixture). Every test that uses it runs twice:
with the loky executor, and with the dask executor on a real ``distributed.LocalCluster``
of two worker processes.

Waits are in milliseconds, as in the reference; they are generous so that a slow
machine is not a failure, and every test is bounded by pytest-timeout.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import datetime, timezone

import pytest

import nbqueue
from nbqueue import (AsyncTask, Failure, NoClusterWarning, Success, Task, TaskFunctionError,
                     async_iter, async_task, count_group, delete_cached, fetch, fetch_group,
                     get_broker, queue_size, result, result_group)
from nbqueue.disk.names import humanize
from nbqueue.disk.directory import get_store

from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

WAIT = 10000  # ms: bounded, but never flaky on a slow 2-core machine
ADD = "tests.tasks_fixtures.add"
ECHO = "tests.tasks_fixtures.echo"
BOOM = "tests.tasks_fixtures.boom"
NAP = "tests.tasks_fixtures.nap"


def is_uuid4(text: str) -> bool:
    return isinstance(text, str) and uuid.UUID(text).version == 4 and str(uuid.UUID(text)) == text


@pytest.fixture(autouse=True)
def _clear_hook_lists():
    fx.HOOKED.clear()
    fx.HOOK_TASKS.clear()
    yield
    fx.HOOKED.clear()
    fx.HOOK_TASKS.clear()


@pytest.fixture(scope="module")
def dask_scheduler():
    """One LocalCluster (2 single-threaded worker processes) for the whole module.

    Starting one costs 2-6 s, so the dask half of this module shares it: each test's
    ``Cluster(executor="dask", address=...)`` connects its own client to it, exactly as a
    notebook connects to a scheduler started with ``dask scheduler``. Its scheduler keeps
    dask's defaults (``allowed-failures`` 3), like such a scheduler.
    """
    distributed = pytest.importorskip("distributed", reason='needs "nbqueue[dask]"')
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0") as local:
        yield local.scheduler_address


@pytest.fixture(params=["loky",
                        # one worker runs the dask half: its dask_scheduler is started once
                        pytest.param("dask", marks=pytest.mark.xdist_group("seed-api-dask"))])
def cluster(request, store_dir):
    """A running two-worker cluster on the test's store, with each executor in turn."""
    options = {}
    if request.param == "dask":
        options = {"executor": "dask", "address": request.getfixturevalue("dask_scheduler")}
    running = nbqueue.Cluster(workers=2, directory=store_dir, **options).start()
    yield running
    running.stop(wait=5)


@pytest.fixture
def mixed_group(cluster):
    """A saved group 'mix' of two successes (add) and one failure (boom), all finished."""
    ok1 = async_task(ADD, 1, 2, group="mix")
    ok2 = async_task(ADD, 10, b=20, group="mix")
    bad = async_task(BOOM, "bad input", group="mix", ack_failure=True)
    tasks = fetch_group("mix", wait=WAIT, count=3)
    assert tasks is not None and len(tasks) == 3
    return ok1, ok2, bad


# =====================================================================================
# The examples of the reference text, one test each
# =====================================================================================

def test_example_async_task_and_result(cluster):
    """``async_task('math.copysign', 2, -2)``, with an imported function, ``result``."""
    # create the task
    first = async_task("math.copysign", 2, -2)
    assert is_uuid4(first)

    # or with import and storing the id  (the seed's `import math.copysign` is a typo)
    from math import copysign

    task_id = async_task(copysign, 2, -2)
    assert is_uuid4(task_id) and task_id != first

    # get the result: None if the task has not been executed yet
    task_result = result(task_id)
    assert task_result in (None, -2.0)

    # you can wait for it
    task_result = result(task_id, WAIT)
    assert task_result == -2.0 and isinstance(task_result, float)
    assert result(first, WAIT) == -2.0


def test_example_result_is_none_before_execution(broker):
    """'result returns None if the task has not been executed yet' (no cluster serves it)."""
    with pytest.warns(NoClusterWarning, match="nbqueue.Cluster"):
        task_id = async_task("math.copysign", 2, -2)
    assert result(task_id) is None
    started = time.monotonic()
    assert result(task_id, 200) is None  # waits 200 ms, not 200 s
    assert 0.15 <= time.monotonic() - started < 5
    assert fetch(task_id) is None
    assert queue_size() == 1


def test_example_hook_print_result(cluster, capsys):
    """``async_task('math.modf', 2.5, hook='hooks.print_result')`` prints the result."""
    task_id = async_task("math.modf", 2.5, hook="tests.tasks_fixtures.print_result")
    assert result(task_id, WAIT) == (0.5, 2.0)
    printed = []

    def hook_printed():
        printed.append(capsys.readouterr().out)
        return "(0.5, 2.0)" in "".join(printed)

    wait_for(hook_printed)
    assert fetch(task_id).hook == "tests.tasks_fixtures.print_result"


def test_example_q_options(cluster):
    """The options in a single ``q_options`` dict (hook, group, timeout)."""
    opts = {"hook": "tests.tasks_fixtures.keep_task",
            "group": "math",
            "timeout": 30}

    task_id = async_task("math.modf", 2.5, q_options=opts)

    task = fetch(task_id, WAIT)
    assert task.result == (0.5, 2.0)
    assert task.group == "math"
    assert task.hook == "tests.tasks_fixtures.keep_task"
    assert task.args == (2.5,) and task.kwargs == {}
    hooked = wait_for(lambda: fx.HOOK_TASKS)
    assert hooked[0].id == task_id
    assert opts == {"hook": "tests.tasks_fixtures.keep_task", "group": "math", "timeout": 30}


def test_example_q_options_override_option_keywords(cluster):
    """With q_options, option keywords are the function's own keywords."""
    task_id = async_task(ECHO, 1, group="for-the-function", timeout=7,
                         q_options={"group": "math"})
    task = fetch(task_id, WAIT)
    assert task.group == "math"
    assert task.result == ((1,), {"group": "for-the-function", "timeout": 7})
    assert task.kwargs == {"group": "for-the-function", "timeout": 7}


def test_example_async_task_class(cluster):
    """The AsyncTask class instance example: floor(1.5), then floor(2.5) after new args."""
    # instantiate an async task
    a = AsyncTask("math.floor", 1.5, group="math")

    # you can set or change keywords afterwards
    a.cached = True

    # run it
    first_id = a.run()
    assert a.id == first_id and is_uuid4(first_id)

    # wait indefinitely for the result
    assert a.result(wait=-1) == 1

    # change the args: the result is invalidated until run again
    a.args = (2.5,)
    assert a.started is False
    assert a.result() is None
    assert a.result(wait=200) is None

    # run it again
    a.run()
    assert a.id != first_id

    # wait max 10 seconds for the result
    assert a.result(wait=WAIT) == 2

    # both ran in the cached part, in group 'math'
    assert result(first_id, cached=True) == 1
    assert result(first_id) is None
    assert sorted(result_group("math", cached=True, count=2, wait=WAIT)) == [1, 2]


def test_example_cached_result(cluster):
    """cached=10, ``result(id, wait=..., cached=True)``, fetch(cached=True).save()."""
    # cache the result for 10 seconds
    id = async_task("math.floor", 100, cached=10)

    # wait for the result to appear in the cache (the seed's 50 ms, made generous)
    assert result(id, wait=WAIT, cached=True) == 100
    assert result(id) is None  # it is not in the saved part

    # the expiry is 10 seconds from when it was stored
    _, expire_time = get_store(get_broker().directory).cached._cache.get(id, expire_time=True)
    assert 5 < expire_time - time.time() <= 10

    # or fetch the task object
    task = fetch(id, cached=True)
    assert isinstance(task, Task) and task.cached is True and task.result == 100

    # and then save it to the database
    task.save()
    saved = fetch(id)
    assert saved is not None and saved.result == 100 and saved.cached is False
    assert saved.id == id and saved.name == task.name
    assert result(task.name) == 100


def test_cached_seconds_expire(cluster):
    """``cached=<seconds>``: the result is evicted from the cache after that time."""
    task_id = async_task("math.floor", 7.5, cached=1)
    assert result(task_id, wait=WAIT, cached=True) == 7
    stored = time.monotonic()
    wait_for(lambda: result(task_id, cached=True) is None, seconds=10)
    assert time.monotonic() - stored > 0.3
    assert fetch(task_id, cached=True) is None


def test_example_cached_group(cluster):
    """A hundred cached ``math.frexp`` tasks under group 'frexp' through one broker."""
    # set up a broker instance for better performance
    broker = get_broker()

    # Async a hundred functions under a group label
    for i in range(100):
        async_task("math.frexp",
                   i,
                   group="frexp",
                   cached=True,
                   broker=broker)

    # wait for one hundred results to return (the seed's 50 ms, made generous)
    results = result_group("frexp", wait=30000, count=100, cached=True)
    assert results is not None and len(results) == 100
    assert sorted(results) == sorted(math.frexp(i) for i in range(100))
    assert result_group("frexp") is None  # nothing in the saved part
    assert count_group("frexp", cached=True) == 100


def test_example_async_iter_same_result(cluster):
    """'that exact same result can be achieved by using the more convenient async_iter()'."""
    iter_id = async_iter("math.frexp", range(100), cached=True)
    assert is_uuid4(iter_id)
    results = result(iter_id, wait=30000, cached=True)
    assert results == [math.frexp(i) for i in range(100)]


def test_async_iter_results_in_input_order(cluster):
    """async_iter returns results in input order, whatever order the tasks finish in."""
    items = [(0.4, "a"), (0.0, "b"), (0.2, "c"), (0.0, "d"), (0.1, "e")]
    iter_id = async_iter(NAP, items)
    assert result(iter_id, wait=WAIT) == ["a", "b", "c", "d", "e"]
    task = fetch(iter_id)
    assert task.success is True and task.result == ["a", "b", "c", "d", "e"]


def test_example_sync_buggy_code(store_dir):
    """``async_task('my.buggy.code', sync=True)`` stores a Failure, available at once."""
    # create a synchronous task
    task_id = async_task("my.buggy.code", sync=True)
    assert is_uuid4(task_id)

    # the task will then be available immediately
    task = fetch(task_id)
    assert task is not None

    # and can be examined
    assert not task.success
    message = "An error occurred: {}".format(task.result)
    assert "No module named 'my'" in message
    assert "my.buggy.code" in task.result
    assert isinstance(Failure.get_task(task_id), Failure)
    assert Success.get_task(task_id) is None
    assert task.func == "my.buggy.code"


def test_unresolvable_dotted_path_raises_at_the_call(broker):
    """Without sync, a dotted path that does not resolve is refused by async_task itself."""
    with pytest.raises(TaskFunctionError, match="No module named 'my'"):
        async_task("my.buggy.code")
    with pytest.raises(ImportError):  # TaskFunctionError is an ImportError
        async_task("math.no_such_function", 1)
    assert queue_size() == 0


def test_example_connection_pooling(cluster):
    """Fifty ``math.modf`` tasks through one broker instance."""
    broker = get_broker()
    ids = [async_task("math.modf", 2.5, broker=broker) for _ in range(50)]
    assert len(set(ids)) == 50 and all(is_uuid4(i) for i in ids)
    assert [result(i, WAIT, broker=broker) for i in ids] == [(0.5, 2.0)] * 50
    assert get_broker() is broker
    assert queue_size() == 0


# =====================================================================================
# The async_task options, as the text describes them
# =====================================================================================

def test_option_hook_gets_the_complete_task(cluster):
    """hook: called after execution with the complete Task object."""
    task_id = async_task(ADD, 2, b=3, hook="tests.tasks_fixtures.keep_task")
    hooked = wait_for(lambda: fx.HOOK_TASKS)
    task = hooked[0]
    assert isinstance(task, Task)
    assert (task.id, task.result, task.success, task.args, task.kwargs) == (
        task_id, 5, True, (2,), {"b": 3})
    assert task.hook == "tests.tasks_fixtures.keep_task"


def test_option_hook_object_is_called_as_itself(cluster):
    """A hook object from the cluster's process is that very object (updates our list)."""
    seen = []
    task_id = async_task(ADD, 1, 2, hook=lambda t: seen.append((t.id, t.result)))
    wait_for(lambda: seen)
    assert seen == [(task_id, 3)]


def test_option_group(cluster):
    """group: a group label, checked with the group functions."""
    ids = [async_task(ADD, i, group="adders") for i in range(3)]
    assert sorted(result_group("adders", wait=WAIT, count=3)) == [0, 1, 2]
    assert {t.id for t in fetch_group("adders")} == set(ids)
    assert count_group("adders") == 3


def test_option_save_false(cluster):
    """save=False: a success is not saved (its hook still runs); a failure is kept."""
    ok = async_task(ADD, 1, 1, save=False, hook="tests.tasks_fixtures.hook_record")
    bad = async_task(BOOM, save=False, ack_failure=True,
                     hook="tests.tasks_fixtures.hook_record")
    wait_for(lambda: len(fx.HOOKED) == 2)
    assert (ok, 2) in fx.HOOKED
    assert fetch(ok) is None and result(ok) is None
    assert fetch(bad) is not None and fetch(bad).success is False


def test_option_timeout(cluster):
    """timeout: overrides the cluster's timeout; the task is stopped and is a Failure."""
    task_id = async_task(NAP, 20, "never", timeout=1, ack_failure=True)
    task = fetch(task_id, WAIT)
    assert task is not None and task.success is False
    assert "timed out after 1 s" in task.result
    assert task.time_taken() < 10


def test_option_ack_failure(cluster):
    """ack_failure=True acknowledges a failed task; with False, it stays leased for a
    delivery after `retry`, and its failure is no outcome yet (nothing stored)."""
    acked = async_task(BOOM, ack_failure=True)
    assert fetch(acked, WAIT).success is False
    wait_for(lambda: get_broker().leased() == 0)
    kept = async_task(BOOM, ack_failure=False)
    wait_for(lambda: get_broker().leased() == 1 and len(cluster.inflight) == 0, 20,
             "the first attempt to finish")
    assert fetch(kept, 300) is None
    assert get_broker().leased() == 1  # delivered again after `retry`


def test_option_sync(store_dir):
    """sync=True: the task runs and is stored before async_task returns, no cluster."""
    task_id = async_task(ADD, 40, 2, sync=True)
    assert result(task_id) == 42
    assert queue_size() == 0
    assert fetch(task_id).attempt_count == 1


def test_option_sync_global(store_dir):
    """sync forced globally with configure(sync=True)."""
    nbqueue.configure(sync=True)
    task_id = async_task(ADD, 1, 2)
    assert result(task_id) == 3


def test_option_cached_true(cluster):
    """cached=True: the result goes to the cache part instead of the saved part."""
    task_id = async_task(ADD, 5, 5, cached=True)
    assert result(task_id, WAIT, cached=True) == 10
    assert result(task_id) is None
    _, expire_time = get_store(get_broker().directory).cached._cache.get(task_id, expire_time=True)
    assert expire_time is None  # kept until deleted


def test_option_broker(cluster):
    """broker: a broker instance from get_broker()."""
    broker = get_broker()
    task_id = async_task(ADD, 3, 4, broker=broker)
    assert result(task_id, WAIT, broker=broker) == 7


def test_option_task_name(cluster):
    """task_name: overwrites the auto-generated task name; usable as the task id."""
    task_id = async_task(ADD, 8, 9, task_name="my-own-name")
    assert result("my-own-name", WAIT) == 17
    task = fetch("my-own-name")
    assert task.id == task_id and task.name == "my-own-name"


# =====================================================================================
# Reference: the functions
# =====================================================================================

def test_ref_async_task(cluster):
    """async_task(func, *args, hook, group, timeout, save, sync, cached, broker, q_options,
    **kwargs): puts a task in the queue and returns its uuid (str); options never reach
    the function, other keywords do."""
    broker = get_broker()
    task_id = async_task(ECHO, 1, 2, hook="tests.tasks_fixtures.hook_record", group="ref",
                         timeout=30, save=True, ack_failure=True, sync=False, cached=False,
                         broker=broker, task_name="ref-task", x=1, y="z")
    assert isinstance(task_id, str) and is_uuid4(task_id)
    task = fetch(task_id, WAIT)
    assert task.result == ((1, 2), {"x": 1, "y": "z"})
    assert task.args == (1, 2) and task.kwargs == {"x": 1, "y": "z"}
    assert task.group == "ref" and task.name == "ref-task"
    wait_for(lambda: fx.HOOKED)
    assert fx.HOOKED == [(task_id, ((1, 2), {"x": 1, "y": "z"}))]
    # any cloudpicklable callable, lambdas included
    assert result(async_task(lambda n: n * 2, 21), WAIT) == 42


def test_ref_async_task_bad_input_at_the_call(broker):
    """Bad options, unpicklable arguments and non-callables are refused at the call."""
    import threading

    with pytest.raises(nbqueue.PackingError, match="positional argument 0"):
        async_task(ADD, threading.Lock())
    with pytest.raises(nbqueue.ConfigurationError, match="group"):
        async_task(ADD, 1, group=5)
    with pytest.raises(nbqueue.ConfigurationError, match="q_options"):
        async_task(ADD, 1, q_options={"no_such_option": 1})
    with pytest.raises(TypeError):
        async_task(42)
    assert queue_size() == 0


def test_ref_result(cluster):
    """result(task_id, wait=0, cached=False): by uuid or name; wait in ms; -1 forever."""
    slow = async_task(NAP, 1.5, "late")
    started = time.monotonic()
    assert result(slow, wait=200) is None  # 200 ms, then None (not 200 s)
    assert 0.15 <= time.monotonic() - started < 5

    task_id = async_task(ADD, 20, 22)
    assert result(task_id, wait=WAIT) == 42
    name = fetch(task_id).name
    assert result(name) == 42
    assert result(task_id, cached=True) is None  # not in the cache part

    # wait=-1 waits for completion, not for a truthy value
    none_id = async_task("tests.tasks_fixtures.returns_none")
    assert result(none_id, wait=-1) is None
    assert fetch(none_id) is not None
    zero_id = async_task(NAP, 0.3, 0)
    assert result(zero_id, wait=-1) == 0

    # a failure's result is its error and traceback as text
    bad = async_task(BOOM, "it broke", ack_failure=True)
    text = result(bad, wait=WAIT)
    assert isinstance(text, str) and "ValueError: it broke" in text and "Traceback" in text

    with pytest.raises(ValueError):
        result(task_id, wait=-5)
    assert result(slow, wait=WAIT) == "late"


def test_ref_fetch(cluster):
    """fetch(task_id, wait=0, cached=False) returns the Task, by uuid or name."""
    task_id = async_task(ADD, 1, 1)
    task = fetch(task_id, wait=WAIT)
    assert isinstance(task, Task) and task.id == task_id and task.result == 2
    by_name = fetch(task.name)
    assert by_name == task
    assert fetch(task_id, cached=True) is None
    assert fetch(str(uuid.uuid4())) is None

    cached_id = async_task(ADD, 2, 2, cached=True)
    cached = fetch(cached_id, wait=WAIT, cached=True)
    assert isinstance(cached, Task) and cached.result == 4 and cached.cached is True

    slow = async_task(NAP, 1.5, "slow")
    started = time.monotonic()
    assert fetch(slow, wait=200) is None  # 200 ms, then None (not 200 s)
    assert 0.15 <= time.monotonic() - started < 5
    forever = async_task(ADD, 3, 3)
    assert fetch(forever, wait=-1).result == 6
    assert fetch(slow, wait=-1).result == "slow"


def test_ref_queue_size(broker):
    """queue_size() -> int: packages in the broker, not counting those being processed."""
    assert queue_size() == 0
    with pytest.warns(NoClusterWarning):
        ids = [async_task(NAP, 0.5, i) for i in range(3)]
    size = queue_size()
    assert isinstance(size, int) and size == 3
    assert queue_size(broker=broker) == 3
    with nbqueue.Cluster(workers=2, directory=broker.directory):
        wait_for(lambda: queue_size() == 0)  # taken out of the queue while processed
        assert [result(i, WAIT) for i in ids] == [0, 1, 2]
    assert queue_size() == 0


def test_ref_delete_cached(cluster):
    """delete_cached(task_id, broker=None) deletes a task from the cache backend."""
    task_id = async_task(ADD, 6, 7, cached=True)
    assert result(task_id, WAIT, cached=True) == 13
    assert delete_cached(task_id) is True
    assert result(task_id, cached=True) is None and fetch(task_id, cached=True) is None
    assert delete_cached(task_id) is False

    other = async_task(ADD, 1, 1, cached=True)
    assert result(other, WAIT, cached=True) == 2
    assert delete_cached(other, broker=get_broker()) is True
    assert fetch(other, cached=True) is None


# =====================================================================================
# Reference: Task, its attributes, methods and class methods
# =====================================================================================

def test_task_id(cluster):
    """Task.id: an uuid.uuid4() identifier, the one async_task returned."""
    task_id = async_task(ADD, 1)
    task = fetch(task_id, WAIT)
    assert task.id == task_id and uuid.UUID(task.id).version == 4


def test_task_name(cluster):
    """Task.name: the humanized id, usable where a task id is taken."""
    task_id = async_task(ADD, 1)
    task = fetch(task_id, WAIT)
    assert task.name == humanize(task_id)
    words = task.name.split("-")
    assert len(words) == 4 and all(w.isalpha() for w in words)
    assert fetch(task.name).id == task_id
    assert result(task.name) == 1
    assert Task.get_task(task.name).id == task_id


def test_task_func(cluster):
    """Task.func: the function or reference that was executed."""
    by_path = fetch(async_task("math.copysign", 1, -1), WAIT)
    assert by_path.func == "math.copysign"
    by_object = fetch(async_task(fx.add, 1), WAIT)
    assert by_object.func == "tests.tasks_fixtures.add"


def test_task_hook(cluster):
    """Task.hook: the function to call after execution (None without one)."""
    hooked = fetch(async_task(ADD, 1, hook="tests.tasks_fixtures.hook_record"), WAIT)
    assert hooked.hook == "tests.tasks_fixtures.hook_record"
    assert fetch(async_task(ADD, 1), WAIT).hook is None


def test_task_args(cluster):
    """Task.args: the positional arguments for the function."""
    task = fetch(async_task(ECHO, 1, "two", [3]), WAIT)
    assert task.args == (1, "two", [3]) and isinstance(task.args, tuple)


def test_task_kwargs(cluster):
    """Task.kwargs: the keyword arguments for the function (options excluded)."""
    task = fetch(async_task(ECHO, a=1, b="two", group="kw"), WAIT)
    assert task.kwargs == {"a": 1, "b": "two"}
    assert task.result == ((), {"a": 1, "b": "two"})


def test_task_result(cluster):
    """Task.result: the result object; contains the error if any occurs."""
    ok = fetch(async_task(ECHO, 1, k=2), WAIT)
    assert ok.result == ((1,), {"k": 2})
    bad = fetch(async_task(BOOM, "wrong", ack_failure=True), WAIT)
    assert "ValueError: wrong" in bad.result


def test_task_started_and_stopped(cluster):
    """Task.started: when created by async_task; Task.stopped: when a worker finished it."""
    before = datetime.now(timezone.utc)
    task = fetch(async_task(NAP, 0.2, "x"), WAIT)
    after = datetime.now(timezone.utc)
    assert isinstance(task.started, datetime) and isinstance(task.stopped, datetime)
    assert task.started.tzinfo is not None
    assert before <= task.started <= task.stopped <= after
    assert (task.stopped - task.started).total_seconds() >= 0.2


def test_task_success(cluster):
    """Task.success: was the task executed without problems?"""
    assert fetch(async_task(ADD, 1), WAIT).success is True
    assert fetch(async_task(BOOM, ack_failure=True), WAIT).success is False


def test_task_time_taken(cluster):
    """Task.time_taken(): seconds between started and stopped, queue time included."""
    task = fetch(async_task(NAP, 0.3), WAIT)
    taken = task.time_taken()
    assert isinstance(taken, float)
    assert taken == pytest.approx((task.stopped - task.started).total_seconds(), abs=1e-3)
    assert 0.3 <= taken < 10


def test_task_group_result(mixed_group):
    """Task.group_result(failures=False): results of this task's group."""
    ok1, _, bad = mixed_group
    task = fetch(ok1)
    assert sorted(task.group_result()) == [3, 30]
    with_failures = task.group_result(failures=True)
    assert len(with_failures) == 3
    assert sorted(r for r in with_failures if isinstance(r, int)) == [3, 30]
    assert any(isinstance(r, str) and "bad input" in r for r in with_failures)
    assert fetch(bad).group_result() == task.group_result()
    assert fetch(async_task(ADD, 1, sync=True)).group_result() is None  # no group


def test_task_group_count(mixed_group):
    """Task.group_count(failures=False): every task of the group, as Django Q counts
    (successes and failures); only the failures with True."""
    task = fetch(mixed_group[0])
    assert task.group_count() == 3
    assert task.group_count(failures=True) == 1
    alone = fetch(async_task(ADD, 1, sync=True))
    assert alone.group_count() is None and alone.group_count(failures=True) is None


def test_count_group_counts_every_task_as_django_q(mixed_group):
    """count_group(g) counts successes and failures; failures=True only the failures."""
    assert count_group("mix") == 3
    assert count_group("mix", failures=True) == 1
    assert count_group("no-such-group") == 0


def test_count_group_cached_counts_every_task_too(cluster):
    """The same holds for the cached part of the store."""
    async_task(ADD, 1, 2, group="cmix", cached=True)
    async_task(BOOM, "cached failure", group="cmix", cached=True)
    assert len(fetch_group("cmix", cached=True, count=2, wait=WAIT)) == 2
    assert count_group("cmix", cached=True) == 2
    assert count_group("cmix", cached=True, failures=True) == 1
    assert Task.get_group_count("cmix", cached=True) == 2


def test_task_group_delete_label_only(mixed_group):
    """Task.group_delete(tasks=False): resets the group label on the group's tasks."""
    ok1, ok2, bad = mixed_group
    assert fetch(ok1).group_delete() == 3
    for task_id in mixed_group:
        task = fetch(task_id)
        assert task is not None and task.group is None
    assert result_group("mix", failures=True) is None
    assert count_group("mix") == 0 and count_group("mix", failures=True) == 0


def test_task_group_delete_tasks(mixed_group):
    """Task.group_delete(tasks=True): deletes the group's tasks, this one included."""
    assert fetch(mixed_group[0]).group_delete(tasks=True) == 3
    assert all(fetch(task_id) is None for task_id in mixed_group)
    assert fetch_group("mix") is None


def test_task_save(cluster):
    """Task.save(): a cached task becomes a saved one."""
    task_id = async_task(ADD, 4, 4, cached=True)
    task = fetch(task_id, WAIT, cached=True)
    assert fetch(task_id) is None
    task.save()
    assert task.cached is False
    assert fetch(task_id).result == 8
    assert delete_cached(task_id) is True
    assert result(task_id) == 8  # the saved copy survives the cache


def test_task_get_result(mixed_group):
    """classmethod Task.get_result(task_id): a result by uuid or name."""
    ok1, _, bad = mixed_group
    assert Task.get_result(ok1) == 3
    assert Task.get_result(fetch(ok1).name) == 3
    assert "bad input" in Task.get_result(bad)
    assert Task.get_result(str(uuid.uuid4())) is None


def test_task_get_result_group(mixed_group):
    """classmethod Task.get_result_group(group_id, failures=False)."""
    assert sorted(Task.get_result_group("mix")) == [3, 30]
    assert len(Task.get_result_group("mix", failures=True)) == 3
    assert Task.get_result_group("no-such-group") == []


def test_task_get_task(mixed_group):
    """classmethod Task.get_task(task_id): one task by uuid or name."""
    ok1, _, bad = mixed_group
    task = Task.get_task(ok1)
    assert isinstance(task, Task) and task.id == ok1 and task.result == 3
    assert Task.get_task(task.name) == task
    assert Task.get_task(bad).success is False
    assert Task.get_task(str(uuid.uuid4())) is None


def test_task_get_task_group(mixed_group):
    """classmethod Task.get_task_group(group_id, failures=True)."""
    everything = Task.get_task_group("mix")
    assert {t.id for t in everything} == set(mixed_group)
    assert all(isinstance(t, Task) and t.group == "mix" for t in everything)
    successes = Task.get_task_group("mix", failures=False)
    assert {t.id for t in successes} == set(mixed_group[:2])
    assert all(t.success for t in successes)


def test_task_get_group_count(mixed_group):
    """classmethod Task.get_group_count(group_id, failures=False): every task, as Django Q."""
    assert Task.get_group_count("mix") == 3
    assert Task.get_group_count("mix", failures=True) == 1
    assert Task.get_group_count("no-such-group") == 0


def test_task_delete_group_label_only(mixed_group):
    """classmethod Task.delete_group(group_id, objects=False): deletes the label only."""
    assert Task.delete_group("mix") == 3
    assert Task.get_task_group("mix") == []
    assert all(Task.get_task(t).group is None for t in mixed_group)


def test_task_delete_group_objects(mixed_group):
    """classmethod Task.delete_group(group_id, objects=True): deletes the tasks too."""
    assert Task.delete_group("mix", objects=True) == 3
    assert all(Task.get_task(t) is None for t in mixed_group)
    assert Task.get_group_count("mix") == 0


def test_success(mixed_group):
    """Success: Task filtered on success is True."""
    ok1, ok2, bad = mixed_group
    assert isinstance(Success.get_task(ok1), Success)
    assert issubclass(Success, Task)
    assert Success.get_task(bad) is None
    assert {t.id for t in Success.get_task_group("mix")} == {ok1, ok2}
    assert Success.get_group_count("mix") == 2
    assert Success.get_result(ok1) == 3 and Success.get_result(bad) is None


def test_failure(mixed_group):
    """Failure: Task filtered on success is False."""
    ok1, _, bad = mixed_group
    failure = Failure.get_task(bad)
    assert isinstance(failure, Failure) and failure.success is False
    assert issubclass(Failure, Task)
    assert Failure.get_task(ok1) is None
    assert [t.id for t in Failure.get_task_group("mix")] == [bad]
    assert Failure.get_group_count("mix") == 1
    assert "bad input" in Failure.get_result(bad)


# =====================================================================================
# Reference: AsyncTask, its attributes and methods
# =====================================================================================

def test_async_task_init_args_kwargs(cluster):
    """AsyncTask(func, *args, **kwargs): kwargs hold function keywords and options."""
    a = AsyncTask(ECHO, 1, 2, x=3, group="init")
    assert a.func == ECHO and a.args == (1, 2)
    assert a.kwargs == {"x": 3, "group": "init"}
    assert a.group == "init"
    a.run()
    assert a.result(WAIT) == ((1, 2), {"x": 3})
    assert a.fetch().group == "init"


def test_async_task_id(cluster):
    """AsyncTask.id: only available after run(); a new one on each run."""
    a = AsyncTask(ADD, 1)
    assert a.id is None
    first = a.run()
    assert a.id == first and is_uuid4(first)
    second = a.run()
    assert a.id == second != first
    assert a.result(WAIT) == 1


def test_async_task_started(cluster):
    """AsyncTask.started: whether the task has been run with the current parameters."""
    a = AsyncTask(ADD, 1)
    assert a.started is False
    a.run()
    assert a.started is True
    a.args = (2,)
    assert a.started is False
    a.run()
    assert a.started is True and a.result(WAIT) == 2


def test_async_task_func(cluster):
    """AsyncTask.func: changing it invalidates the result until run again."""
    a = AsyncTask(ADD, 5)
    a.run()
    assert a.result(WAIT) == 5
    a.func = "math.floor"
    assert a.func == "math.floor"
    assert a.result() is None and a.fetch() is None
    a.run()
    assert a.result(WAIT) == 5 and a.fetch().func == "math.floor"


def test_async_task_args(cluster):
    """AsyncTask.args: a tuple of arguments; changing it invalidates the result."""
    a = AsyncTask(ADD, 1, 2)
    a.run()
    assert a.result(WAIT) == 3
    a.args = (10, 20)
    assert a.result() is None
    a.run()
    assert a.result(WAIT) == 30 and a.fetch().args == (10, 20)


def test_async_task_kwargs(cluster):
    """AsyncTask.kwargs: changing (or mutating) them invalidates the result."""
    a = AsyncTask(ADD, 1, b=2)
    a.run()
    assert a.result(WAIT) == 3
    a.kwargs = {"b": 5}
    assert a.result() is None
    a.run()
    assert a.result(WAIT) == 6
    a.kwargs["b"] = 7
    assert a.started is False and a.result() is None
    a.run()
    assert a.result(WAIT) == 8


def test_async_task_kwargs_q_options(cluster):
    """AsyncTask kwargs may hold the options in a q_options dict."""
    a = AsyncTask(ECHO, 1, group="for-echo", q_options={"group": "q"})
    assert a.group == "q"
    a.run()
    assert a.result(WAIT) == ((1,), {"group": "for-echo"})
    assert a.fetch().group == "q"
    a.group = "q2"
    assert a.kwargs["q_options"] == {"group": "q2"}
    assert a.result() is None
    a.run()
    assert a.fetch(WAIT).group == "q2"


def test_async_task_broker(cluster):
    """AsyncTask.broker: an optional broker instance to use."""
    broker = get_broker()
    a = AsyncTask(ADD, 2, 2)
    assert a.broker is None
    a.broker = broker
    assert a.broker is broker and a.kwargs["broker"] is broker
    a.run()
    assert a.result(WAIT) == 4


def test_async_task_sync(store_dir):
    """AsyncTask.sync: run this task inline instead of asynchronously."""
    a = AsyncTask(ADD, 20, 1)
    a.sync = True
    assert a.sync is True
    a.run()
    assert a.result() == 21  # no wait, no cluster
    assert queue_size() == 0


def test_async_task_save(cluster):
    """AsyncTask.save: overrides the global save setting."""
    a = AsyncTask(ADD, 1, 1, hook="tests.tasks_fixtures.hook_record")
    a.save = False
    a.run()
    wait_for(lambda: fx.HOOKED)
    assert fx.HOOKED == [(a.id, 2)]
    assert a.result() is None and fetch(a.id) is None
    a.save = True
    assert a.result() is None  # an option changed: invalidated
    a.run()
    assert a.result(WAIT) == 2


def test_async_task_hook(cluster):
    """AsyncTask.hook: called with the result Task as its first argument."""
    a = AsyncTask(ADD, 3, 3)
    a.hook = "tests.tasks_fixtures.keep_task"
    a.run()
    hooked = wait_for(lambda: fx.HOOK_TASKS)
    assert hooked[0].id == a.id and hooked[0].result == 6


def test_async_task_group(cluster):
    """AsyncTask.group: an optional group identifier."""
    a = AsyncTask(ADD, 1)
    assert a.group is None
    assert a.result_group() is None  # no group
    a.group = "grp"
    a.run()
    assert a.fetch(WAIT).group == "grp"
    assert result_group("grp") == [1]


def test_async_task_cached(cluster):
    """AsyncTask.cached: run the task against the cache result backend."""
    a = AsyncTask(ADD, 9, cached=True)
    assert a.cached is True
    a.run()
    assert a.result(WAIT) == 9
    assert result(a.id, cached=True) == 9 and result(a.id) is None
    assert a.fetch().cached is True


def test_async_task_run(cluster):
    """AsyncTask.run(): sends the task to the cluster; returns the id."""
    a = AsyncTask("math.copysign", 3, -1)
    task_id = a.run()
    assert task_id == a.id and is_uuid4(task_id)
    assert result(task_id, WAIT) == -3.0


def test_async_task_result(cluster):
    """AsyncTask.result(wait=0): None until run with the current parameters; ms; -1."""
    a = AsyncTask(NAP, 0.5, 0)
    assert a.result() is None
    a.run()
    started = time.monotonic()
    assert a.result(wait=100) is None  # 100 ms, then None (not 100 s)
    assert 0.08 <= time.monotonic() - started < 5
    assert a.result(wait=-1) == 0  # a falsy result still returns
    a.kwargs = {"value": "changed"}
    assert a.result(wait=-1) is None  # invalidated: None at once, no hang


def test_async_task_fetch(cluster):
    """AsyncTask.fetch(wait=0): the full Task instance."""
    a = AsyncTask(ADD, 2, b=5)
    assert a.fetch() is None
    a.run()
    task = a.fetch(wait=WAIT)
    assert isinstance(task, Task)
    assert (task.id, task.result, task.args, task.kwargs) == (a.id, 7, (2,), {"b": 5})
    assert a.fetch(wait=-1) == task


def test_async_task_result_group(cluster):
    """AsyncTask.result_group(failures=False, wait=0, count=None)."""
    a = AsyncTask(ADD, 1, 2, group="ag")
    a.run()
    a.args = (3, 4)
    a.run()
    async_task(BOOM, "group failure", group="ag", ack_failure=True)
    assert sorted(a.result_group(wait=WAIT, count=3)) == [3, 7]
    with_failures = a.result_group(failures=True)
    assert len(with_failures) == 3
    assert any(isinstance(r, str) and "group failure" in r for r in with_failures)


def test_async_task_fetch_group(cluster):
    """AsyncTask.fetch_group(failures=True, wait=0, count=None)."""
    a = AsyncTask(ADD, 1, group="fg")
    first = a.run()
    a.args = (2,)
    second = a.run()
    bad = async_task(BOOM, group="fg", ack_failure=True)
    tasks = a.fetch_group(wait=WAIT, count=3)
    assert {t.id for t in tasks} == {first, second, bad}
    assert all(isinstance(t, Task) for t in tasks)
    assert {t.id for t in a.fetch_group(failures=False)} == {first, second}


@pytest.mark.parametrize("bad", [None, 123, "", b"id", ["a"]])
def test_bad_ids_and_group_names_are_clear_errors(store_dir, bad):
    for call in (lambda: result(bad), lambda: fetch(bad), lambda: nbqueue.delete_cached(bad),
                 lambda: count_group(bad), lambda: result_group(bad),
                 lambda: fetch_group(bad), lambda: nbqueue.delete_group(bad)):
        with pytest.raises(nbqueue.ConfigurationError, match="must be a non-empty string"):
            call()


def test_the_store_s_own_keys_are_not_tasks(cluster):
    """'total:ok' is a counter, not a task: no record comes back for it."""
    assert result(async_task(ADD, 1, 1), wait=WAIT) == 2
    assert result("total:ok") is None and fetch("total:ok") is None
    assert result("ok:x") is None and fetch("gp:x") is None


def test_a_task_name_that_looks_like_a_uuid_is_found_by_name(cluster):
    name = "12345678-1234-5678-1234-567812345678"
    task_id = async_task(ADD, 2, 2, task_name=name)
    assert result(task_id, wait=WAIT) == 4
    assert result(name) == 4 and fetch(name).id == task_id
