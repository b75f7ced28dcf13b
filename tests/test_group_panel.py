"""A group's live progress panel (``nbqueue.display.group_panel``): the ipywidgets panel and
the tqdm bar, read from a real store while a real cluster runs the group."""

from __future__ import annotations

import re
import _thread
import subprocess
import sys
import textwrap
import signal
import threading
import time

import pytest

import nbqueue
from nbqueue import AsyncTask, async_iter, async_task, count_group, result, result_group
from nbqueue.display import group_panel
from nbqueue.display.group_panel import (GroupProgress, in_notebook)
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")]  # queued first


def test_not_a_notebook_here():
    assert in_notebook() is False


def test_terminal_progress_is_a_tqdm_bar_that_completes(cluster):
    for i in range(30):
        async_task(fx.nap, 0.02, i, group="bar")
    panel = nbqueue.progress("bar")
    assert panel.widget is None and panel._tqdm.total == 30  # total from this process
    assert panel.wait(30)
    assert (panel.done, panel.failed, panel.shown_total) == (30, 0, 30)
    assert panel.state == "success"
    assert panel._tqdm.n == 30
    assert "30 done · 0 failed" in panel.summary()


def test_widget_panel_turns_green_when_complete(cluster):
    for i in range(20):
        async_task(fx.add, i, group="green")
    panel = GroupProgress("green", total=20, widget=True)
    assert panel.wait(30)
    panel.stop()
    assert panel._bar.value == panel._bar.max == 20
    assert panel._bar.bar_style == "success"
    assert "complete" in panel._title.value
    assert "100 %" in panel._label.value and "20 done" in panel._label.value


def test_widget_panel_turns_red_on_failure(cluster):
    async_task(fx.add, 1, group="red")
    async_task(fx.boom, group="red", ack_failure=True)
    panel = GroupProgress("red", total=2, widget=True)
    assert panel.wait(30)
    panel.stop()
    assert panel._bar.bar_style == "danger" and panel.state == "danger"
    assert "finished with failures" in panel._title.value and "1 failed" in panel._label.value


def test_a_complete_panel_updates_again_when_its_failures_are_retried(cluster, tmp_path):
    flag = str(tmp_path / "flag")
    for i in range(3):
        async_task(fx.fails_until, flag, "x" * i, group="again")
    async_task(fx.add, 1, group="again")
    panel = GroupProgress("again", widget=True)
    assert panel.wait(30) and panel.state == "danger"
    assert "1 done · 3 failed · 0 cancelled" in panel._label.value
    open(flag, "w").close()
    assert nbqueue.retry_group("again") == 3
    # its state is read a moment before the panel is drawn complete and says so
    wait_for(lambda: panel.state == "success" and panel.wait(0), 30, "the panel complete again")
    assert "4 done · 0 failed · 0 cancelled" in panel._label.value
    assert panel._bar.bar_style == "success" and "complete" in panel._title.value


def test_a_complete_panel_updates_again_when_another_process_retries(cluster, tmp_path):
    flag = str(tmp_path / "flag")
    for i in range(2):
        async_task(fx.fails_until, flag, "x" * i, group="elsewhere")
    # no one holds the panel (as with result_group's): this process keeps it
    assert GroupProgress("elsewhere", widget=True).wait(30)
    (panel,) = [p for p in _finished_panels() if p.group == "elsewhere"]
    assert panel.state == "danger"
    open(flag, "w").close()
    code = (f"import nbqueue\nnbqueue.configure(directory={cluster.directory!r})\n"
            "print(nbqueue.retry_group('elsewhere'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "2", done.stderr
    wait_for(lambda: panel.state == "success", 30, "the panel complete again, all done")
    assert "2 done · 0 failed · 0 cancelled" in panel._label.value


def _finished_panels():
    return [p for panels in group_panel._finished._panels.values() for p in panels]


def test_a_panel_says_when_no_cluster_serves_its_store(store_dir):
    with pytest.warns(nbqueue.NoClusterWarning):
        async_task(fx.add, 1, group="unserved")
    panel = GroupProgress("unserved", widget=True)
    wait_for(lambda: "waiting: no cluster serves its store" in panel._title.value, 10,
             "the panel saying no cluster serves the store")
    panel.stop()


def test_progress_while_waiting(cluster):
    for i in range(10):
        async_task(fx.add, i, group="waiting")
    assert sorted(result_group("waiting", count=10, wait=20_000, progress=True)) == list(range(10))
    assert len(nbqueue.fetch_group("waiting", count=10, wait=20_000, progress=True)) == 10
    iter_id = async_iter(fx.add, range(5), progress=True)
    assert result(iter_id, wait=20_000) == [0, 1, 2, 3, 4]
    task = AsyncTask(fx.add, 4, group="at-progress")
    task.run()
    assert task.result(wait=20_000, progress=True) == 4


# -- every figure true when shown, final only when it says so ------------------------------

def _finished(group: str) -> int:
    return count_group(group) + count_group(group, failures=True)


def _last_tqdm_figure(err: str) -> tuple[int, int]:
    """The done/total of the last frame a tqdm bar drew."""
    figures = re.findall(r"\| *(\d+)/(\d+) \[", err)
    assert figures, err
    return tuple(map(int, figures[-1]))


def test_tqdm_bar_ends_on_the_final_figure_after_stop(store_dir, capsys):
    """The loop drew 0/40 long ago; stop() must draw 40/40 before it closes the bar."""
    for i in range(40):
        async_task(fx.nap, 0.005, i, group="final")
    nbqueue.flush()
    panel = GroupProgress("final", widget=False, interval=3600)  # the loop never redraws
    assert panel.done + panel.failed == 0
    with nbqueue.Cluster(workers=2, directory=store_dir):
        wait_for(lambda: _finished("final") == 40, 60, "the group finishing")
        panel.stop()
    assert panel.done + panel.failed == 40 and panel.state == "success"
    assert _last_tqdm_figure(capsys.readouterr().err) == (40, 40)
    assert panel._tqdm.disable  # closed, once: nothing is drawn after the final figure
    panel.refresh()
    assert capsys.readouterr().err == ""


def test_result_group_progress_bar_ends_at_40_of_40(cluster, capsys):
    for i in range(40):
        async_task(fx.add, i, group="forty")
    assert sorted(result_group("forty", count=40, wait=30_000, progress=True)) == list(range(40))
    assert _last_tqdm_figure(capsys.readouterr().err) == (40, 40)


@pytest.fixture
def default_sigint():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal, whatever handler an earlier test
    of this process left behind (an event loop's would take it instead)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupted_wait_stops_its_tqdm_bar(store_dir, capsys, default_sigint):
    """Ctrl-C in ``result_group(..., progress=True)`` outside Jupyter: the bar stops on the
    figures it has, and draws nothing more over what the terminal shows next."""
    for i in range(3):
        async_task(fx.add, i, group="interrupted")
    nbqueue.flush()
    threading.Timer(0.5, _thread.interrupt_main).start()  # what Ctrl-C does
    with pytest.raises(KeyboardInterrupt):
        result_group("interrupted", count=3, wait=30_000, progress=True)
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "nbqueue-progress"],
             10, "the bar's thread ending")
    assert _last_tqdm_figure(capsys.readouterr().err) == (0, 3)  # true: none ran
    time.sleep(2 * group_panel.INTERVAL)  # the bar drew every INTERVAL while it lived
    assert capsys.readouterr().err == ""


def test_stopped_panel_says_it_is_no_longer_updated(store_dir):
    for i in range(3):
        async_task(fx.add, i, group="left")
    panel = GroupProgress("left", widget=True, interval=3600)
    panel.stop()
    assert panel.state == "running" and not panel.finished.is_set()
    assert "waiting: no cluster serves its store · no longer updated" in panel._title.value
    assert "0 done" in panel._label.value


def test_ipython_display_of_a_shown_panel_adds_nothing(cluster, capsys):
    from IPython.core.formatters import DisplayFormatter

    async_task(fx.add, 1, group="shown")
    bar = GroupProgress("shown", total=1, widget=False)
    shown = GroupProgress("shown", total=1, widget=True)  # displayed by __init__
    assert shown.wait(30) and bar.wait(30)
    capsys.readouterr()
    formatter = DisplayFormatter()
    assert formatter.format(bar) == ({}, {})  # the tqdm bar is already on screen
    assert formatter.format(shown) == ({}, {})  # the widget is already on screen
    assert capsys.readouterr().out == ""
    shown._shown = False  # a widget not on screen yet is displayed, once
    assert formatter.format(shown) == ({}, {})
    assert capsys.readouterr().out.count("VBox(") == 1
    assert formatter.format(shown) == ({}, {}) and capsys.readouterr().out == ""
    for panel in (bar, shown):
        text = repr(panel)
        assert text.startswith("<GroupProgress 'shown': 1 done · 0 failed") and "\n" not in text


def test_panel_as_a_cells_last_line_shows_no_text_copy(cluster):
    """In a real IPython shell, ``panel`` as a cell's last line adds no stale text."""
    result(async_task(fx.add, 1, group="cell"), wait=20_000)
    script = textwrap.dedent(f"""
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_cell("import nbqueue; nbqueue.configure(directory={cluster.directory!r})")
        shell.run_cell("from nbqueue.display.group_panel import GroupProgress")
        print("--widget--", flush=True)
        shell.run_cell("GroupProgress('cell', total=1, widget=True)")
        print("--bar--", flush=True)
        shell.run_cell("GroupProgress('cell', total=1, widget=False)")
        print("--end--", flush=True)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and "Error" not in run.stdout, run.stdout + run.stderr
    widget_part = run.stdout.split("--widget--")[1].split("--bar--")[0]
    bar_part = run.stdout.split("--bar--")[1].split("--end--")[0]
    assert widget_part.count("VBox(") == 1  # the panel, shown once by __init__
    # this shell writes its "Out[0]: " prompt first; no result text may follow it
    assert "<GroupProgress" not in run.stdout, run.stdout
    assert bar_part.replace("Out[0]: ", "").strip() == "", run.stdout
    assert "1/1" in run.stderr  # the tqdm bar itself


def test_detached_panel_runs_on_until_the_group_is_complete(store_dir):
    for i in range(20):
        async_task(fx.add, i, group="detached")
    async_task(fx.boom, group="detached", ack_failure=True)
    nbqueue.flush()
    stopped = GroupProgress("detached", widget=True, interval=0.05)
    detached = GroupProgress("detached", widget=True, interval=0.05)
    stopped.stop()  # stops updating now
    detached.detach()  # its owner stopped waiting: it goes on by itself
    with nbqueue.Cluster(workers=2, directory=store_dir):
        assert detached.wait(60)
    wait_for(lambda: not detached._thread.is_alive(), 10, "the panel's thread ending")
    assert (detached.done, detached.failed, detached.shown_total) == (20, 1, 21)
    assert detached._bar.value == detached._bar.max == 21
    assert detached._bar.bar_style == "danger" and detached.state == "danger"
    assert "finished with failures" in detached._title.value
    assert "20 done · 1 failed · 0 cancelled · 0 running · 21 total" in detached._label.value
    assert (stopped.done, stopped.failed) == (0, 0) and not stopped.finished.is_set()
    assert "no longer updated" in stopped._title.value


# -- the running tasks under the bar --------------------------------------------------------

def reporting(steps, pause, label):
    """A task that prints a line and reports its progress at every step (workers import it
    as ``tests.test_group_panel.reporting``)."""
    for step in range(1, steps + 1):
        print(f"{label} line {step}")
        nbqueue.report(step, steps, f"{label} at step {step}")
        time.sleep(pause)
    return label


def _row(panel, label):
    """(done, total, pct, step in the message, elapsed) of ``label``'s row, or None."""
    found = re.search(r"<td class='nbqueue-task-progress'[^>]*>(\d+)/(\d+) · (\d+) %</td>"
                      rf"<td class='nbqueue-task-message'[^>]*>{label} at step (\d+)</td>"
                      r"<td class='nbqueue-task-elapsed'[^>]*>([^<]*)</td>",
                      panel._view.list.value)
    return found and found.groups()


def _shown_output(panel):
    """(the state line, the lines in the <pre>) of the selected task's output area."""
    text = panel._view.output.value
    state = re.search(r"class='nbqueue-output-state'>([^<]*)<", text).group(1)
    pre = re.search(r"<pre[^>]*>(.*)</pre>", text, re.S)
    return state, (pre.group(1).split("\n") if pre else [])


def test_widget_panel_lists_running_tasks_and_the_selected_ones_output(cluster):
    short = async_task(reporting, 40, 0.1, "short", group="rows")
    long = async_task(reporting, 100, 0.1, "long", group="rows")
    panel = GroupProgress("rows", total=2, widget=True)
    view = panel._view
    rows = wait_for(lambda: _row(panel, "short") and _row(panel, "long")
                    and (_row(panel, "short"), _row(panel, "long")), 30,
                    "both tasks listed with their reports")
    for (done, total, pct, step, elapsed), steps in zip(rows, (40, 100)):
        assert done == step and total == str(steps)  # one report: figures and message
        assert pct == f"{100 * int(done) / steps:.0f}"
        assert re.fullmatch(r"\d\d:\d\d", elapsed)  # its worker said when it started
    assert view.output.value == "" and view.choose.value is None  # nothing selected yet

    wait_for(lambda: short in [v for _, v in view.choose.options], 10, "short offered")
    view.choose.value = short  # as a user picks it, in the kernel's thread
    state, lines = _shown_output(panel)  # at once, from what the panel last read
    assert state == "running" and lines and len(lines) <= 15
    assert all(re.fullmatch(r"short line \d+", line) for line in lines)
    assert [int(line.split()[-1]) for line in lines] == list(
        range(int(lines[0].split()[-1]), int(lines[-1].split()[-1]) + 1))  # the last ones

    wait_for(lambda: _shown_output(panel)[0] == "finished · done", 30,
             "the selected task shown finished")
    assert _shown_output(panel)[1] == [f"short line {i}" for i in range(26, 41)]
    assert view.choose.value == short  # kept, while the group runs on
    assert _row(panel, "long") and not _row(panel, "short")
    assert [v for _, v in view.choose.options] == [long, short]

    view.choose.value = long  # another one: the finished one's output goes
    assert _shown_output(panel)[0] == "running"
    assert [v for _, v in view.choose.options] == [long]

    assert panel.wait(60)
    assert panel.state == "success" and "2 done · 0 failed · 0 cancelled · 0 running" in panel._label.value
    assert view.list.value == "" and "nbqueue-task" not in view.list.value
    state, lines = _shown_output(panel)
    assert state == "finished · done"
    assert lines == [f"long line {i}" for i in range(86, 101)]  # the stored output's end
    assert nbqueue.fetch(long).output.endswith("long line 100\n")
    panel.stop()


def test_tqdm_bar_shows_a_running_message_read_about_once_a_second(cluster, monkeypatch):
    calls = []
    real = group_panel.running

    def spy(group, broker=None):
        if group == "note":  # this test's panel only
            calls.append((threading.current_thread() is threading.main_thread(),
                          time.monotonic()))
        return real(group, broker)

    monkeypatch.setattr(group_panel, "running", spy)
    async_task(reporting, 40, 0.1, "slow", group="note")
    async_task(reporting, 40, 0.05, "fast", group="note")
    panel = GroupProgress("note", total=2, widget=False, interval=0.05)
    wait_for(lambda: re.search(r"running=\d, .* left, (slow|fast) at step \d+$",
                               panel._tqdm.postfix),
             30, "a running task's message on the bar")
    assert panel.wait(60)
    # complete: nothing runs, and no time is left
    assert re.fullmatch(r"failed=0, cancelled=0, running=0, \d+\.\d tasks/s", panel._tqdm.postfix)
    assert len(calls) >= 2 and not any(main for main, _ in calls)  # only the panel's thread
    gaps = [b - a for (_, a), (_, b) in zip(calls, calls[1:])]
    assert min(gaps) >= 0.9, gaps  # not every 0.05 s tick


def test_a_held_task_that_reports_nothing_shows_no_figures(cluster):
    async_task(fx.nap, 3, group="quiet")
    panel = GroupProgress("quiet", total=1, widget=True)
    wait_for(lambda: "nbqueue-task-name" in panel._view.list.value, 30, "the task listed")
    row = panel._view.list.value
    assert "<td class='nbqueue-task-progress' style='padding-right:1em'></td>" in row
    assert "<td class='nbqueue-task-message' style='padding-right:1em'></td>" in row
    assert panel.wait(30)
    assert panel._view.list.value == ""
    panel.stop()


