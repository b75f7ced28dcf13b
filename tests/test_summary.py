"""``nbqueue.summary(group)``: counts, span, slowest, failures by type, two SVG charts, a
DataFrame. Small groups are real tasks (a real cluster, or inline with ``sync=True``);
the 10,000-task group is records made by ``records.make_record``, saved to a real store.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

import nbqueue
from nbqueue import Cause, MissingDependency, async_task
from nbqueue.disk.records import Header, Outcome, make_record
from nbqueue.disk.directory import get_store
from nbqueue.display.summary import FRAME_COLUMNS, MAX_BARS, GroupSummary, summary
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(90)
SVG = "{http://www.w3.org/2000/svg}"
WAIT = 30_000


def _refuse_to_load():
    raise TypeError("this value does not unpickle")


class _Unloadable:
    """Pickles, but does not unpickle, whatever pickles the exception holding it (dask's
    tblib registers a pickler of its own for every exception class)."""

    def __reduce__(self):
        return _refuse_to_load, ()


class Picky(Exception):
    """Pickles, but does not unpickle (its __init__ wants two arguments, and its state
    refuses to load)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code
        self.state = _Unloadable()


def raise_picky():
    raise Picky("picky <message>", 2)


def _rects(svg: str, kind: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == kind]


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def _binned(svg: str) -> int:
    """How many tasks the histogram's bars hold, from their tooltips."""
    return sum(int(r.find(f"{SVG}title").text.split(" task")[0])
               for r in _rects(svg, "nbqueue-bin"))


def _save_made(store_dir: str, group: str, durations: list[float], workers: int = 8) -> None:
    """Records of tasks that ran ``durations`` back to back on ``workers`` processes."""
    now = time.time()
    free = {1000 + i: now for i in range(workers)}
    records = []
    for i, seconds in enumerate(durations):
        pid = min(free, key=free.__getitem__)
        began, free[pid] = free[pid], free[pid] + seconds
        header = Header(str(uuid.uuid4()), f"made-{i}", "made.func", None, None,
                        pickle.dumps(((i,), {})), group=group, enqueued=now)
        ok = i % 100 != 7
        details = None if ok else {"traceback": "Traceback (most recent call last):\n"
                                   '  File "made.py", line 3, in func\n    raise KeyError(i)\n'
                                   f"KeyError: {i}\n"}
        result = pickle.dumps(i) if ok else f"KeyError: {i}"
        records.append(make_record(header, Outcome(header.id, ok, result, began,
                                                   began + seconds, pid=pid,
                                                   details=details), 1))
    get_store(store_dir).save(records)


def test_empty_group_says_so(store_dir):
    shown = summary("nothing-here")
    assert (shown.count, shown.succeeded, shown.failed, shown.span) == (0, 0, 0, 0.0)
    assert shown.first_start is None and shown.last_stop is None and shown.tasks == []
    assert repr(shown) == "no finished tasks in group 'nothing-here'"
    assert "no finished tasks in group &#x27;nothing-here&#x27;" in shown._repr_html_()
    assert shown.slowest() == [] and shown.failures_by_type() == {}
    assert _rects(shown.histogram_svg(), "nbqueue-bin") == []
    assert _rects(shown.timeline_svg(), "nbqueue-bar") == []


def test_nbqueue_summary_stays_the_function():
    """``nbqueue.summary`` is the function, also once the module ``nbqueue.summary`` is
    imported (an import sets the package's attribute to the module)."""
    module = importlib.import_module("nbqueue.display.summary")
    assert nbqueue.summary is module.summary is summary


def test_one_task(store_dir):
    task_id = async_task(fx.add, 1, 2, group="one", sync=True)
    shown = summary("one")
    assert (shown.count, shown.succeeded, shown.failed) == (1, 1, 0)
    assert [t.id for t in shown.tasks] == [task_id] == [t.id for t in shown.slowest()]
    assert len(_rects(shown.timeline_svg(), "nbqueue-bar")) == 1
    assert len(_rects(shown.histogram_svg(), "nbqueue-bin")) == 1
    assert any(t.startswith("every task ran") for t in _texts(shown.histogram_svg()))
    assert repr(shown).startswith("group 'one': 1 task, 1 succeeded, 0 failed;")


def test_cancelled_tasks_are_counted_apart_and_take_no_time(store_dir):
    with pytest.warns(nbqueue.NoClusterWarning):
        queued = [async_task(fx.add, i, group="part") for i in range(2)]
    assert all(nbqueue.cancel(task_id) for task_id in queued)
    for i in range(2):
        async_task(fx.nap, 0.05, i, group="part", sync=True)
    shown = summary("part")
    assert (shown.count, shown.succeeded, shown.failed, shown.cancelled) == (4, 2, 0, 2)
    text = repr(shown)
    assert text.startswith("group 'part': 4 tasks, 2 succeeded, 0 failed, 2 cancelled;"), text
    assert "durations: min 0.05 s" in text  # the naps', not a cancel's 0 ms
    assert {t.id for t in shown.slowest()} == {t.id for t in shown.tasks if t.success}
    assert "(2 that no worker ran not counted)" in " ".join(_texts(shown.histogram_svg()))


def test_a_cluster_group(cluster):
    ids = [async_task(fx.nap, 0.2, i, group="mixed") for i in range(6)]
    ids += [async_task(fx.boom, "no <good>", group="mixed"),
            async_task(fx.nap, 10, timeout=1, group="mixed")]
    assert nbqueue.count_group("mixed") == 0
    nbqueue.result_group("mixed", count=len(ids), wait=WAIT)
    shown = summary("mixed")
    assert (shown.count, shown.succeeded, shown.failed) == (8, 6, 2)
    assert shown.span >= 1.0 and shown.first_start < shown.last_stop
    assert shown.slowest(1)[0].id == ids[-1]  # ran until its timeout
    by_type = shown.failures_by_type()
    assert sorted(by_type) == ["TaskTimeout", "ValueError"]
    assert [t.id for t in by_type["ValueError"]] == [ids[6]]
    assert all(isinstance(t, nbqueue.Failure) for ts in by_type.values() for t in ts)
    timeline = shown.timeline_svg()
    bars = _rects(timeline, "nbqueue-bar")
    assert len(bars) == 8
    names = {t.name for t in shown.tasks}
    assert {b.find(f"{SVG}title").text.split(" (")[0] for b in bars} == names
    pids = {t.pid for t in shown.tasks if t.pid is not None}
    assert {f"pid {p}" for p in pids} <= set(_texts(timeline)) and len(pids) <= 2
    assert _binned(shown.histogram_svg()) == sum(1 for t in shown.tasks if t.pid is not None)
    page = shown._repr_html_()
    assert page.startswith('<div class="nbqueue-summary"') and "<script" not in page
    assert "ValueError</span>: 1 task" in page and "nbqueue-failing-line" in page
    assert "no &lt;good&gt;" in page and "<good>" not in page


@pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")
def test_outcomes_no_worker_gave_have_their_own_row(store_dir):
    ran = [async_task(fx.add, i, group="some-cancelled", sync=True) for i in range(3)]
    dropped = [async_task(fx.add, i, group="some-cancelled") for i in range(2)]
    assert nbqueue.cancel_group("some-cancelled") == 2
    shown = summary("some-cancelled")
    assert (shown.count, shown.failed, shown.cancelled) == (5, 0, 2)  # cancels apart
    timeline = shown.timeline_svg()
    assert len(_rects(timeline, "nbqueue-bar")) == 5 and "no worker" in _texts(timeline)
    cancelled = [b for b in _rects(timeline, "nbqueue-bar")
                 if "decided by the cluster: TaskCancelled" in b.find(f"{SVG}title").text]
    assert len(cancelled) == len(dropped)
    assert _binned(shown.histogram_svg()) == len(ran)
    assert list(shown.failures_by_type()) == ["TaskCancelled"]


def test_a_type_that_cannot_come_back_is_named_as_it_was(store_dir):
    for _ in range(2):
        async_task(raise_picky, group="picky", sync=True)
    async_task(fx.boom, group="picky", sync=True)
    by_type = summary("picky").failures_by_type()
    assert list(by_type) == ["tests.test_summary.Picky", "ValueError"]  # most frequent first
    assert len(by_type["tests.test_summary.Picky"]) == 2
    assert "failures: tests.test_summary.Picky ×2, ValueError ×1" in repr(summary("picky"))


def test_same_durations_make_one_bar(store_dir):
    _save_made(store_dir, "same", [0.25] * 12, workers=3)
    shown = summary("same")
    assert len(_rects(shown.histogram_svg(), "nbqueue-bin")) == 1
    assert _binned(shown.histogram_svg()) == 12
    assert "every task ran 0.25 s" in _texts(shown.histogram_svg())
    assert len(_rects(shown.timeline_svg(), "nbqueue-bar")) == 12
    assert {"pid 1000", "pid 1001", "pid 1002"} <= set(_texts(shown.timeline_svg()))
    assert shown.span == pytest.approx(1.0, abs=0.01)  # 12 x 0.25 s on 3 workers


def test_axes_in_milliseconds_say_so_and_no_caption_says_another_unit(store_dir):
    _save_made(store_dir, "quick", [0.0001, 0.0002, 0.0003, 0.0004, 0.0006], workers=1)
    shown = summary("quick")
    for svg in (shown.histogram_svg(), shown.timeline_svg()):
        texts = _texts(svg)
        ticks = [t for t in texts if t.endswith((" ms", " s")) and t[0].isdigit()]
        assert ticks and all(t.endswith(" ms") for t in ticks), ticks
        assert not [t for t in texts if "seconds" in t], texts  # the ticks carry the unit


@pytest.mark.alone  # bounds a time from above
def test_ten_thousand_tasks_render_quickly_and_stay_bounded(store_dir):
    durations = [0.001 + (i * 7919 % 1000) / 1000 for i in range(10_000)]
    _save_made(store_dir, "big", durations)
    began = time.perf_counter()
    shown = summary("big")
    page, text = shown._repr_html_(), repr(shown)
    elapsed = time.perf_counter() - began
    assert elapsed < 2.0, f"reading and rendering 10,000 tasks took {elapsed:.2f} s"
    assert (shown.count, shown.failed) == (10_000, 100)
    histogram, timeline = shown.histogram_svg(), shown.timeline_svg()
    assert len(_rects(histogram, "nbqueue-bin")) <= 30 and _binned(histogram) == 10_000
    assert len(_rects(timeline, "nbqueue-bar")) == MAX_BARS
    assert "showing 2,000 of 10,000 tasks, sampled evenly by start time" in _texts(timeline)
    assert len(timeline) < 600_000 and len(page) < 700_000
    longest = sorted(range(10_000), key=lambda i: -durations[i])[:3]
    assert [t.name for t in shown.slowest(3)] == [f"made-{i}" for i in longest]
    assert list(shown.failures_by_type()) == ["KeyError"]
    assert "group 'big': 10000 tasks, 9900 succeeded, 100 failed;" in text


def test_to_frame(store_dir):
    pandas = pytest.importorskip("pandas")
    ok = async_task(fx.add, 2, b=3, group="framed", sync=True)
    bad = async_task(fx.boom, "x", group="framed", sync=True)
    frame = summary("framed").to_frame()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == list(FRAME_COLUMNS) and len(frame) == 2
    rows = frame.set_index("id")
    assert rows.loc[ok, "args"] == (2,) and rows.loc[ok, "kwargs"] == {"b": 3}
    assert rows.loc[ok, "result"] == 5 and bool(rows.loc[ok, "success"])
    assert rows.loc[bad, "result"].startswith("ValueError: x")
    assert rows.loc[bad, "cause"] is Cause.RAISED and pandas.isna(rows.loc[ok, "cause"])
    assert rows.loc[ok, "func"] == "tests.tasks_fixtures.add"
    assert rows.loc[ok, "group"] == "framed" and rows.loc[ok, "attempt_count"] == 1
    assert rows.loc[ok, "stopped"] >= rows.loc[ok, "started"]
    assert list(summary("none").to_frame().columns) == list(FRAME_COLUMNS)


def sweep_point(alpha, beta=1.0, *rest, scale=2, **extra):
    return (alpha + beta) * scale


def test_to_frame_expanded_has_a_column_per_argument_by_name(store_dir):
    pytest.importorskip("pandas")
    async_task(sweep_point, 1, 2, group="swept", sync=True)
    async_task(sweep_point, 3, scale=10, group="swept", sync=True)
    async_task(sweep_point, 5, 6, 7, 8, seed=42, group="swept", sync=True)
    async_task(fx.add, 2, b=3, group="swept", sync=True)
    frame = summary("swept").to_frame(expand=True)
    columns = list(frame.columns)
    assert columns[:3] == ["id", "name", "func"]
    assert columns[3:10] == ["alpha", "beta", "scale", "rest", "seed", "a", "b"]
    assert "args" not in columns and "kwargs" not in columns and "result" in columns
    rows = frame.sort_values("started").reset_index(drop=True)
    assert rows.loc[0, ["alpha", "beta", "result"]].tolist() == [1, 2, 6]
    assert rows.loc[1, ["alpha", "scale", "result"]].tolist() == [3, 10, 40]
    assert rows.loc[2, "rest"] == (7, 8) and rows.loc[2, "seed"] == 42
    assert rows.loc[3, ["a", "b", "result"]].tolist() == [2, 3, 5]


def test_to_frame_expanded_names_by_position_what_it_cannot_bind(store_dir):
    pytest.importorskip("pandas")
    async_task("builtins.max", 3, 4, group="unbound", sync=True)  # no signature to read
    async_task(fx.echo, 1, result="kept apart", group="unbound", sync=True)
    frame = summary("unbound").to_frame(expand=True).sort_values("started")
    assert frame["arg0"].tolist()[0] == 3 and frame["arg1"].tolist()[0] == 4
    assert frame["result"].tolist()[0] == 4
    assert frame["args"].tolist()[1] == (1,)  # echo's *args parameter, by its name
    assert frame["result (argument)"].tolist()[1] == "kept apart"


def test_to_frame_without_pandas_says_how_to_install_it(store_dir, monkeypatch):
    async_task(fx.add, 1, group="no-pandas", sync=True)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependency, match=re.escape("pip install pandas")) as raised:
        summary("no-pandas").to_frame()
    assert isinstance(raised.value, ImportError)


def test_a_summary_of_given_tasks(store_dir):
    ids = [async_task(fx.nap, 0.01 * i, group="given", sync=True) for i in range(1, 4)]
    tasks = nbqueue.fetch_group("given")
    shown = GroupSummary("given", tasks)
    assert [t.id for t in shown.slowest(2)] == ids[:0:-1]
    lines = repr(shown).splitlines()
    assert lines[0].startswith("group 'given': 3 tasks, 3 succeeded, 0 failed;")
    assert lines[1].startswith("durations: min ") and lines[2].startswith("slowest: ")
