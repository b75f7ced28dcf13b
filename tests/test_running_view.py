"""nbqueue.display.running_view without a kernel: the rows' text, and ``RunningView``
fed running tasks as ``live.running`` gives them (dicts), with a real store for the
outcome of the task chosen once it finishes.

The progress panel that reads a real cluster's running tasks into this view is tested
in ``tests/test_group_panel.py``.
"""

from __future__ import annotations

import re
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from nbqueue import async_task
from nbqueue.disk.directory import get_store
from nbqueue.display.running_view import (
    LINES,
    MESSAGE_WIDTH,
    ROWS,
    RunningView,
    _clock,
    elapsed_text,
    progress_text,
    running_note,
    tasks_html,
)
from tests import tasks_fixtures as fx

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning"),
]
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def _running(name=None, output="", progress=None, task_id=None):
    """A running task as ``live.running`` lists it."""
    return {
        "id": task_id or str(uuid.uuid4()),
        "name": name,
        "started": NOW - timedelta(seconds=5),
        "progress": progress,
        "output": output,
    }


@pytest.fixture
def view(store_dir):
    return RunningView(get_store(store_dir).part(False), threading.Lock())


def _shown(view):
    """The state line of the output shown, and its lines."""
    text = view.output.value
    state = re.search(r"class='nbqueue-output-state'>([^<]*)<", text).group(1)
    pre = re.search(r"<pre[^>]*>(.*)</pre>", text, re.S)
    return state, (pre.group(1).split("\n") if pre else [])


def _choices(view):
    return list(view.choose.options)


# -- text -----------------------------------------------------------------------------


def test_a_duration_that_cannot_be_known_is_shown_as_unknown():
    for unknown in (None, float("nan"), float("inf")):
        assert _clock(unknown) == "--:--"
    assert _clock(59.6) == "01:00"  # rounded to the second
    assert elapsed_text(NOW + timedelta(seconds=3), NOW) == "00:00"  # a clock ahead: never < 0


def test_a_row_shows_its_message_on_one_line_cut_to_its_width_and_unnamed_tasks_by_id():
    said = "first\n  second\tthird " + "y" * 200
    task = _running(progress=(1, 2, said))
    text = tasks_html([task], NOW)
    message = re.search(r"nbqueue-task-message'[^>]*>([^<]*)<", text).group(1)
    assert message.startswith("first second third y") and message.endswith("…")
    assert len(message) == MESSAGE_WIDTH
    name = re.search(r"nbqueue-task-name'[^>]*>([^<]*)<", text).group(1)
    assert name == task["id"][:8]  # no name: the start of its id
    assert ">00:05<" in text


# -- RunningView ------------------------------------------------------------------------


def test_with_no_task_running_the_view_shows_nothing(view):
    view.update([])
    view.draw(NOW)
    assert view.list.value == "" and view.output.value == ""
    assert _choices(view) == [] and view.choose.layout.display == "none"
    assert view.selected is None


def test_the_choices_name_every_running_task_once_and_nothing_is_chosen_for_the_user(view):
    tasks = [_running("fit"), _running("fit"), _running(None)]
    view.update(tasks)
    view.draw(NOW)
    assert _choices(view) == [
        ("fit", tasks[0]["id"]),
        (f"fit ({tasks[1]['id'][:8]})", tasks[1]["id"]),
        (tasks[2]["id"][:8], tasks[2]["id"]),
    ]
    assert view.choose.layout.display is None  # shown
    assert view.choose.value is None and view.selected is None and view.output.value == ""
    assert view.list.value.count("<tr class='nbqueue-task'>") == 3


def test_a_chosen_task_shows_the_last_lines_of_its_output_escaped(view):
    output = "".join(f"<line {i}>\n" for i in range(40))
    tasks = [_running("chatty", output), _running("quiet")]
    view.update(tasks)
    view.draw(NOW)
    view.choose.value = tasks[0]["id"]  # as a user picks it
    state, lines = _shown(view)
    assert state == "running"
    assert lines == [f"&lt;line {i}&gt;" for i in range(40 - LINES, 40)]
    view.choose.value = tasks[1]["id"]
    assert _shown(view) == ("running · no output yet", [])


def test_a_chosen_task_no_longer_running_stays_chosen_until_its_outcome_is_stored(view):
    gone = _running("gone", "its last line\n")
    view.update([gone])
    view.draw(NOW)
    view.choose.value = gone["id"]
    view.update([])  # not running, and no outcome stored (yet)
    view.draw(NOW)
    assert _shown(view) == ("no longer running", ["its last line"])
    assert _choices(view) == [("gone · not running", gone["id"])]
    assert view.choose.value == gone["id"]


def test_a_chosen_task_that_finished_shows_its_stored_outcome_and_output(view, store_dir):
    task_id = async_task(fx.chatter, 30, task_name="chatter", sync=True)  # stored at once
    other = _running("other")
    chosen = _running("chatter", "line 000001 as last read\n", task_id=task_id)
    view.update([chosen, other])
    view.draw(NOW)
    view.choose.value = task_id
    view.update([other])  # it left the running tasks: its outcome is read from the store
    view.draw(NOW)
    state, lines = _shown(view)
    assert state == "finished · done"
    assert len(lines) == LINES and lines[-1] == "line 000029 xxxxxxxxxx"  # the stored output
    assert _choices(view) == [("other", other["id"]), ("chatter · finished", task_id)]
    view.update([other])  # read once: kept as it is
    assert view.outcome is not None and view.outcome["state"] == "done"


def test_choosing_a_task_that_finished_since_the_list_was_drawn_keeps_the_choice(view):
    first, second = _running("first", "one\n"), _running("second", "two\n")
    view.update([first, second])
    view.draw(NOW)
    view.choose.value = first["id"]
    view.update([first])  # second finished; the dropdown still offers it
    view.choose.value = second["id"]
    assert view.selected["id"] == first["id"] and view.choose.value == first["id"]
    assert _shown(view) == ("running", ["one"])


def test_clock():
    assert _clock(None) == "--:--"
    assert _clock(65) == "01:05"
    assert _clock(3725) == "1:02:05"



def test_running_rows_figures():
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert progress_text(None) == ""
    assert progress_text((3, 10, "x")) == "3/10 · 30 %"
    assert progress_text((2.5, 10.0, None)) == "2.5/10 · 25 %"
    assert progress_text((7, None, "x")) == "7"  # no total: done alone
    assert progress_text((0, 0, None)) == "0/0"
    assert elapsed_text(None, now) == "starting"
    assert elapsed_text(None, now, leased=True) == "leased"  # held, waiting for a worker
    assert elapsed_text(now - timedelta(seconds=75), now) == "01:15"
    tasks = [{"id": f"id{i:08d}", "name": f"t<{i}>", "started": None if i else now,
              "progress": (i, 20, f"at <{i}>") if i % 2 else None} for i in range(11)]
    text = tasks_html(tasks, now)
    assert text.count("<tr class='nbqueue-task'>") == ROWS == 8
    assert "and 3 more" in text and "t&lt;7&gt;" in text and "t&lt;8&gt;" not in text
    assert ">00:00<" in text and text.count(">starting<") == 7
    assert "at &lt;3&gt;" in text and ">3/20 · 15 %<" in text
    assert tasks_html([], now) == ""
    assert running_note(tasks) == "at <9>"  # the most advanced one that says something
    assert running_note([{"progress": (5, None, "no total")},
                         {"progress": (1, 4, "a quarter")}]) == "a quarter"
    assert running_note([{"progress": None}, {"progress": (1, 2, None)}]) == ""
    assert len(running_note([{"progress": (1, 2, "y" * 100)}])) == 40
