"""TaskOptions: the options of a call taken out of its keywords once, checked, the settings'
defaults filled in, and frozen."""

from __future__ import annotations

import dataclasses

import pytest

import nbqueue
from nbqueue import conf
from nbqueue.disk import directory as directory_module
from nbqueue.errors import ConfigurationError
from nbqueue.options import OPTION_NAMES, TaskOptions
from nbqueue.tasks import AsyncTask, _Option

pytestmark = pytest.mark.timeout(60)


def _take(**kwargs):
    return TaskOptions.take(kwargs, conf.settings())


def test_options_are_frozen_and_have_no_dict(broker):
    options = _take(group="g")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.group = "other"
    with pytest.raises((AttributeError, TypeError)):
        options.colour = "red"  # slots: no attribute outside the fields
    assert not hasattr(options, "__dict__")
    changed = dataclasses.replace(options, group="h", iter="i")
    assert (changed.group, changed.iter, options.group, options.iter) == ("h", "i", "g", None)


def test_the_options_are_taken_out_and_the_function_keywords_left(broker):
    kwargs = {"group": "g", "timeout": 5, "task_name": "n", "x": 1, "iter": 2}
    options = TaskOptions.take(kwargs, conf.settings())
    assert kwargs == {"x": 1, "iter": 2}  # iter is not an option of a call: the function's
    assert (options.group, options.timeout, options.task_name, options.iter) == ("g", 5, "n", None)
    assert options.broker is broker


def test_q_options_is_the_only_source_when_given(broker):
    kwargs = {"group": "for-the-function", "q_options": {"group": "q", "save": False}}
    options = TaskOptions.take(kwargs, conf.settings())
    assert kwargs == {"group": "for-the-function"}
    assert (options.group, options.save) == ("q", False)
    kwargs = {"q_options": None, "sync": 1}
    assert TaskOptions.take(kwargs, conf.settings()).group is None
    assert kwargs == {"sync": 1}


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"group": 5}, "'group'"),
        ({"task_name": ""}, "'task_name'"),
        ({"save": 1}, "'save'"),
        ({"ack_failure": "no"}, "'ack_failure'"),
        ({"sync": 0}, "'sync'"),
        ({"reuse": "yes"}, "'reuse'"),
        ({"timeout": 0}, "'timeout'"),
        ({"timeout": float("inf")}, "'timeout'"),
        ({"cached": -1}, "'cached'"),
        ({"max_attempts": -1}, "'max_attempts'"),
        ({"max_attempts": True}, "'max_attempts'"),
        ({"broker": "not a broker"}, "'broker' must come from get_broker"),
        ({"q_options": [("group", "g")]}, "q_options must be a dict"),
        ({"q_options": {"colour": 1}}, "unknown option.*colour.*the options are: hook"),
        ({"q_options": {"iter": "i"}}, "unknown option.*iter"),
        ({"q_options": {"group": 5}}, "'group'"),
    ],
)
def test_a_bad_option_is_refused_naming_it(store_dir, given, named):
    with pytest.raises(ConfigurationError, match=named):
        _take(**given)


def test_defaults_come_from_the_settings_and_none_means_the_default(store_dir):
    options = _take()
    assert (options.sync, options.cached, options.reuse) == (False, False, False)
    assert options.broker is nbqueue.get_broker()
    assert (options.hook, options.group, options.save, options.timeout) == (None,) * 4
    assert (options.ack_failure, options.task_name, options.max_attempts, options.iter) == (
        None,
    ) * 4
    nbqueue.configure(sync=True, cached=60, reuse=True)
    options = _take(group="g")
    assert (options.sync, options.cached, options.reuse) == (True, 60, True)
    options = _take(sync=None, cached=None, reuse=None)
    assert (options.sync, options.cached, options.reuse) == (True, 60, True)
    options = _take(sync=False, cached=False, reuse=False)  # given: they win
    assert (options.sync, options.cached, options.reuse) == (False, False, False)


def test_a_call_given_no_option_shares_one_instance_while_nothing_changed(store_dir, tmp_path):
    first = _take()
    assert _take(x=1) is first and _take(broker=None) == first
    assert _take(group="g") is not first
    nbqueue.configure(cached=True)  # new settings: new defaults
    cached = _take()
    assert cached is not first and cached.cached is True and _take() is cached
    directory_module.drop(store_dir)  # a new broker of the same store: a new instance
    renewed = _take()
    assert renewed is not cached and renewed.broker is nbqueue.get_broker()
    other = nbqueue.get_broker(str(tmp_path / "other"))
    try:
        assert _take(broker=other).broker is other and _take().broker is renewed.broker
    finally:
        directory_module.drop(str(tmp_path / "other"))


def test_calls_given_the_very_same_objects_share_the_last_instance(store_dir):
    group, hook = "g", print
    first = _take(group=group, hook=hook, timeout=5)
    assert _take(group=group, hook=hook, timeout=5) is first  # a loop's calls
    assert _take(group=group, hook=hook) is not first
    # equal but not the same: True == 1, yet cached=1 is one second
    assert _take(cached=True).cached is True
    one = _take(cached=1)
    assert one.cached == 1 and one.cached is not True
    assert _take(cached=True).cached is True
    with pytest.raises(ConfigurationError, match="'group'"):
        _take(group=5)  # checked: nothing of the last call's is taken for it
    nbqueue.configure(sync=True)
    synced = _take(group=group, hook=hook, timeout=5)
    assert synced is not first and synced.sync is True


def test_asynctask_declares_exactly_the_options_of_a_call():
    declared = [name for name, value in vars(AsyncTask).items() if isinstance(value, _Option)]
    assert sorted(declared) == sorted(OPTION_NAMES)
    fields = [f.name for f in dataclasses.fields(TaskOptions)]
    assert sorted(fields) == sorted([*OPTION_NAMES, "iter"])
