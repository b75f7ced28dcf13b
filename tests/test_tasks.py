"""async_task's input checks, property-based: any option value is either taken or refused
at the call with a clear error; nothing half-enqueued, nothing else raised."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbqueue
from nbqueue import async_task, queue_size
from nbqueue.errors import ConfigurationError, NoClusterWarning
from nbqueue.disk.records import decode_header

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]

values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.integers(), max_size=2), st.just(object()))
OPTION_NAMES = ["group", "save", "timeout", "ack_failure", "cached", "task_name",
                "max_attempts", "sync", "reuse"]


def _valid(name, value):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "group": value is None or isinstance(value, str),
        "save": value is None or isinstance(value, bool),
        "ack_failure": value is None or isinstance(value, bool),
        "sync": value is None or isinstance(value, bool),
        "reuse": value is None or isinstance(value, bool),
        "timeout": value is None or (number and 0 < value < float("inf")),
        "cached": value is None or isinstance(value, bool) or (
            isinstance(value, int) and value > 0),
        "task_name": value is None or (isinstance(value, str) and value != ""),
        "max_attempts": value is None or (isinstance(value, int) and not isinstance(
            value, bool) and value >= 0),
    }[name]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(OPTION_NAMES), value=values, through_q_options=st.booleans())
def test_every_option_value_is_taken_or_refused_at_the_call(store_dir, name, value,
                                                            through_q_options):
    before = queue_size()
    options = {"q_options": {name: value}} if through_q_options else {name: value}
    sync = name == "sync" and value is True
    try:
        task_id = async_task("math.floor", 2.5, **options)
    except (ConfigurationError, TypeError) as exc:
        assert not _valid(name, value), f"{name}={value!r} refused: {exc}"
        assert name in str(exc)
        assert queue_size() == before
    else:
        assert _valid(name, value), f"{name}={value!r} was taken"
        assert isinstance(task_id, str)
        if sync:
            assert nbqueue.result(task_id) == 2
        elif name == "reuse" and value:  # the same call as an earlier example's: given back
            assert queue_size() in (before, before + 1)
        else:
            assert queue_size() == before + 1


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(st.one_of(st.integers(), st.text(), st.binary(), st.floats(),
                               st.dictionaries(st.text(max_size=3), st.integers())),
                     max_size=4))
def test_any_picklable_arguments_make_a_valid_signed_package(broker, args):
    from nbqueue.options import TaskOptions
    from nbqueue.packing import make_package as _package
    options = TaskOptions.take({"broker": broker}, nbqueue.conf.settings())
    header, package = _package("builtins.len", tuple(args), {}, options)
    assert decode_header(broker.key, package) == header
    assert header.func_ref == "builtins.len"


def test_unknown_q_option_and_bad_broker_are_refused(store_dir):
    with pytest.raises(ConfigurationError, match="colour"):
        async_task("math.floor", 1, q_options={"colour": 1})
    with pytest.raises(ConfigurationError, match="q_options must be a dict"):
        async_task("math.floor", 1, q_options=[("group", "g")])
    with pytest.raises(ConfigurationError, match="broker"):
        async_task("math.floor", 1, broker="not a broker")


def test_no_cluster_warning_names_the_command(store_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async_task("math.floor", 1)
    assert any(issubclass(w.category, NoClusterWarning) and "nbqueue cluster --directory"
               in str(w.message) for w in caught)


def test_async_task_without_cached_reads_where_the_cached_setting_put_it(store_dir):
    """``configure(cached=True)`` puts a task's result in the cached part: an AsyncTask
    given no ``cached`` of its own finds it there, inline and awaited alike."""
    nbqueue.configure(cached=True)
    task = nbqueue.AsyncTask("math.floor", 2.5, sync=True)
    task.run()
    assert task.result() == 2
    assert task.fetch().result == 2
    assert nbqueue.result(task.id, cached=True) == 2


# -- Iter: Django Q's, built up call by call ---------------------------------------------

def test_iter_as_django_q_documents_it(store_dir):
    # math.copysign over four pairs, as in Django Q's documentation, run inline
    i = nbqueue.Iter("math.copysign", sync=True)
    assert i.result() is None and i.fetch() is None  # not run yet
    for args in ((1, -1), (2, -1), (3, -4), (5, 6)):
        length = i.append(*args)
    assert length == i.length() == 4
    iter_id = i.run()
    assert i.result() == [-1.0, -2.0, -3.0, 5.0]
    assert i.fetch().success and i.fetch().id == iter_id


def test_iter_on_a_cluster_with_arguments_given_at_once_and_a_failure(store_dir):
    from tests import tasks_fixtures as fixtures
    i = nbqueue.Iter(fixtures.square_or_fail, args=[(1,), (2,)], kwargs={"bad": 3})
    i.append(3)
    with nbqueue.Cluster(workers=2):
        i.run()
        values = i.result(wait=20_000)
    assert values[:2] == [1, 4] and "ValueError: 3 is bad" in values[2]
    assert not i.fetch().success
    with pytest.raises(nbqueue.ConfigurationError, match="no function"):
        nbqueue.Iter().run()
