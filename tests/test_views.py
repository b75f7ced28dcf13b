"""How a stored task shows itself: ``repr`` (one line) and ``_repr_html_`` (a card).

Tasks are real: run inline with ``sync=True`` into a real store, read back with
``fetch``; the cancelled one is decided without a worker, as a cluster's verdicts are.
"""

from __future__ import annotations

import html
import re

import pytest

import nbqueue
from nbqueue import Failure, async_task, fetch
from nbqueue.display.views import failing_line, format_seconds, short, task_html, task_line
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(60)
FAILING = re.compile(r'<span class="nbqueue-failing-line"[^>]*>(.*?)</span>')


def wrapped_failure(message):
    """Prints, then fails with a chained exception: the card must point at the outer raise."""
    print(f"<progress> & {message}")
    try:
        fx.boom(message)
    except ValueError as exc:
        raise RuntimeError(f"wrapped <{message}>") from exc


def chatty(lines):
    for i in range(lines):
        print(f"line {i:03d}")
    return lines


def _refuse():
    raise RuntimeError("cannot load <here>")


class LoadsBadly:
    """Pickles fine, fails to unpickle: stands for a class the reading process lacks."""

    def __reduce__(self):
        return _refuse, ()


def returns_unloadable():
    return LoadsBadly()


def test_success_line_and_card(store_dir):
    task = fetch(async_task(fx.add, 2, 3, group="sums", sync=True))
    line = repr(task)
    assert line == task_line(task)
    assert line.startswith(f"<Task {task.name!r} tests.tasks_fixtures.add(2, 3) → 5 · ran ")
    assert line.endswith(" · group 'sums'>") and "\n" not in line
    card = task._repr_html_()
    assert card == task_html(task)
    assert card.startswith('<div class="nbqueue-task"') and card.endswith("</div>")
    assert "tests.tasks_fixtures.add" in card and "(2, 3)" in card
    assert "✓ succeeded" in card and f"worker pid {task.pid}" in card
    assert "<script" not in card and "nbqueue-failing-line" not in card
    assert "<details" not in card  # no traceback, no output


def test_failure_card_highlights_the_failing_line(store_dir):
    task = Failure.get_task(async_task(wrapped_failure, "a&b", sync=True))
    line = repr(task)
    assert line.startswith(f"<Failure {task.name!r} tests.test_views.wrapped_failure('a&b') "
                           "failed: RuntimeError: wrapped <a&b> · ran ")
    card = task._repr_html_()
    assert "✗ failed" in card and "tests.test_views.wrapped_failure" in card
    assert "RuntimeError: wrapped &lt;a&amp;b&gt;" in card and "<a&b>" not in card
    marked = FAILING.findall(card)
    assert len(marked) == 1  # the outer raise, not fx.boom's line of the cause
    assert html.unescape(marked[0]).strip() == 'raise RuntimeError(f"wrapped <{message}>") from exc'
    assert "raise ValueError(message)" in card  # the cause's section is shown too
    assert "The above exception was the direct cause" in card
    assert "&lt;progress&gt; &amp; a&amp;b" in card  # the output, escaped


def test_output_keeps_its_last_lines_and_says_how_many_are_left_out(store_dir):
    task = fetch(async_task(chatty, 100, sync=True))
    card = task_html(task)
    assert "line 099" in card and "line 060" in card and "line 059" not in card
    assert "60 earlier lines not shown" in card and "output (100 lines)" in card
    short = task_html(fetch(async_task(chatty, 3, sync=True)))
    assert "line 000" in short and "not shown" not in short


@pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")
def test_an_outcome_no_worker_gave_has_no_failing_line(store_dir):
    task_id = async_task(fx.nap, 5, group="cancelled")
    assert nbqueue.cancel(task_id)
    task = fetch(task_id)
    assert task.pid is None
    line = repr(task)
    assert "tests.tasks_fixtures.nap(5) failed: TaskCancelled: the task was cancelled" in line
    assert " after enqueue" in line and " ran " not in line
    card = task_html(task)
    assert "why it failed" in card and "TaskCancelled" in card
    assert "nbqueue-failing-line" not in card


def test_unreadable_arguments_and_results_never_raise(store_dir):
    bad_args = fetch(async_task(fx.echo, LoadsBadly(), sync=True))
    assert not bad_args.success
    assert "echo(<unreadable: RuntimeError: cannot load <here>>)" in repr(bad_args)
    assert "&lt;unreadable: RuntimeError: cannot load &lt;here&gt;&gt;" in task_html(bad_args)
    bad_result = fetch(async_task(returns_unloadable, sync=True))
    assert bad_result.success
    assert repr(bad_result).split(" · ")[0].endswith(
        "returns_unloadable() → <unreadable: RuntimeError: cannot load <here>>")
    assert "&lt;unreadable: RuntimeError" in task_html(bad_result)


def test_huge_arguments_and_results_are_summarised(store_dir):
    task = fetch(async_task(fx.echo, list(range(100_000)), "x" * 100_000, b"\0" * 1_000_000,
                            key={"deep": [[[1]]]}, sync=True))
    line = repr(task)
    assert len(line) < 300 and "[0, 1, 2, 3, 4, 5, ...]" in line
    assert short(b"\0" * 1_000_000).startswith("b'\\x00") and len(short(b"\0" * 10**6)) < 80
    assert len(task_html(task)) < 5000


def test_failing_line_of_traceback_texts():
    carets = ["Traceback (most recent call last):", '  File "a.py", line 1, in <module>',
              "    f()", '  File "a.py", line 3, in f', "    return 1 / 0",
              "           ~~^~~", "ZeroDivisionError: division by zero"]
    assert failing_line(carets) == 4
    handled = carets + ["", "During handling of the above exception, another exception "
                        "occurred:", "", "Traceback (most recent call last):",
                        '  File "a.py", line 7, in g', "    raise KeyError(x)", "KeyError: 1"]
    assert failing_line(handled) == len(handled) - 2
    assert failing_line(["TaskTimeout: timed out after 1 s"]) is None
    assert failing_line(['  File "<dynamic-code>", line 2, in f', "ValueError: x"]) is None


def test_seconds_read_well():
    assert format_seconds(2.2e-5) == "0.022 ms"
    assert format_seconds(0.514) == "0.51 s"
    assert format_seconds(12.34) == "12.3 s"
    assert format_seconds(125) == "2 min 05 s"
    assert format_seconds(7300) == "2 h 01 min"
    assert format_seconds(None) == "?"
