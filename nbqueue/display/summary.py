"""``nbqueue.summary(group)``: what happened in a group, at a glance.

The counts and span of a finished group, a histogram of task durations and a timeline
of tasks per worker (inline SVG, built as strings: no plotting dependency), the slowest
tasks, and the failures grouped by exception type with one traceback each. Everything
is computed once from one read of the group, so a 10,000-task group shows at once;
``to_frame()`` gives one row per task to pandas, if it is installed.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections import defaultdict
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any, NamedTuple

from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store
from nbqueue.disk.records import Cause
from nbqueue.disk.store import check_name
from nbqueue.display.views import (
    FAIL_COLOR,
    MUTED,
    OK_COLOR,
    badge,
    clip,
    format_seconds,
    format_time,
    safely,
    traceback_html,
)
from nbqueue.errors import MissingDependency, RemoteError
from nbqueue.models import Failure, Success, Task
from nbqueue.worker.callables import resolve

if TYPE_CHECKING:
    import pandas

WIDTH = 640
BINS = 30
MAX_BARS = 2000  # bars drawn on the timeline; more tasks are sampled evenly
FRAME_COLUMNS = (
    "id",
    "name",
    "func",
    "args",
    "kwargs",
    "success",
    "result",
    "cause",
    "started",
    "stopped",
    "duration",
    "attempt_count",
    "group",
    "began",
    "pid",
)
_FONT = 'font-family="sans-serif" font-size="11"'


class _Span(NamedTuple):
    """A task as the timeline draws it: seconds from the group's first enqueue."""

    task: Task
    start: float
    stop: float
    worker: int | None  # None: the cluster decided its outcome (no worker ran it)


def summary(group: str, cached: bool = False, broker: Broker | None = None) -> GroupSummary:
    """A summary of the finished tasks of ``group`` (of the cached part with
    ``cached=True``) that Jupyter displays with charts; see ``GroupSummary``."""
    check_name("group", group)
    store = get_store((broker or get_broker()).directory)
    records = store.part(cached).group_records(group, failures=True)
    return GroupSummary(
        group, [(Success if r["success"] else Failure)(r, store, cached) for r in records]
    )


class GroupSummary:
    """The finished tasks of a group: counts, span, slowest tasks, failures by type,
    a duration histogram and a worker timeline (``histogram_svg``, ``timeline_svg``)."""

    def __init__(self, group: str, tasks: list[Task]) -> None:
        self.group = group
        self.tasks = list(tasks)
        self.count = len(self.tasks)
        self.succeeded = sum(1 for t in self.tasks if t.success)
        self.cancelled = sum(1 for t in self.tasks if t.cause is Cause.CANCELLED)
        self.failed = self.count - self.succeeded - self.cancelled  # the cancelled apart
        self.first_start: datetime | None = min((t.started for t in self.tasks), default=None)
        self.last_stop: datetime | None = max((t.stopped for t in self.tasks), default=None)
        self.span = (
            0.0
            if self.first_start is None or self.last_stop is None
            else max(0.0, (self.last_stop - self.first_start).total_seconds())
        )
        self._durations = [_ran(t) for t in self.tasks]
        # the tasks a worker ran (or of a record that does not say): a task cancelled or
        # timed out before it began took no time, and is no task of 0 ms
        self._ran = [i for i, t in enumerate(self.tasks) if t.pid is not None or t.began is None]
        self._by_type: dict[str, list[Task]] | None = None

    def slowest(self, n: int = 5) -> list[Task]:
        """The ``n`` tasks that ran longest (enqueue to finish for old records)."""
        ranked = heapq.nlargest(n, self._ran, key=self._durations.__getitem__)
        return [self.tasks[i] for i in ranked]

    def failures_by_type(self) -> dict[str, list[Task]]:
        """The failures by their exception's type name, the most frequent type first."""
        if self._by_type is None:
            found: dict[str, list[Task]] = defaultdict(list)
            for task in self.tasks:
                if not task.success:
                    found[_type_name(task)].append(task)
            self._by_type = dict(sorted(found.items(), key=lambda kv: -len(kv[1])))
        return self._by_type

    def histogram_svg(self) -> str:
        """Durations of the tasks a worker ran, in about 30 bins, as an SVG string; a
        bar's tooltip names its tasks and their durations."""
        ran = [(self._durations[i], self.tasks[i]) for i in self._ran]
        return _histogram(ran, self.count - len(ran))

    def timeline_svg(self) -> str:
        """One row per worker process, each task a bar from when it began to when it
        stopped (at most MAX_BARS, sampled evenly); outcomes the cluster decided (a
        timeout kill, a worker death, a cancel) in a last row, "no worker"."""
        return _timeline(self._spans(), self.count)

    def to_frame(self, expand: bool = False) -> pandas.DataFrame:
        """One row per task (columns FRAME_COLUMNS). Needs pandas.

        ``expand=True`` puts one column per argument in place of ``args`` and ``kwargs``,
        named by the function's signature (``arg0``, ``arg1`` ... and the keywords'
        names where the function cannot be found here), so a sweep's parameters and
        results are one table. An argument named like a column of its own is suffixed
        `` (argument)``."""
        try:
            import pandas
        except ImportError:
            raise MissingDependency(
                "GroupSummary.to_frame needs pandas, which is not installed: pip install pandas"
            ) from None
        if not expand:
            rows = [[_frame_value(task, c) for c in FRAME_COLUMNS] for task in self.tasks]
            return pandas.DataFrame(rows, columns=list(FRAME_COLUMNS))
        own = [c for c in FRAME_COLUMNS if c not in ("args", "kwargs")]
        named = [_arguments(task) for task in self.tasks]
        params = list(dict.fromkeys(name for arguments in named for name in arguments))
        shown = [f"{p} (argument)" if p in own else p for p in params]
        at = own.index("func") + 1
        columns = own[:at] + shown + own[at:]
        rows = [
            [_frame_value(task, c) for c in own[:at]]
            + [arguments.get(p) for p in params]
            + [_frame_value(task, c) for c in own[at:]]
            for task, arguments in zip(self.tasks, named, strict=True)
        ]
        return pandas.DataFrame(rows, columns=columns)

    def _spans(self) -> list[_Span]:
        if self.first_start is None:
            return []
        zero = self.first_start
        spans = []
        for task in self.tasks:
            stop = (task.stopped - zero).total_seconds()
            if task.pid is None or task.began is None:
                spans.append(_Span(task, stop, stop, None))
            else:
                spans.append(_Span(task, (task.began - zero).total_seconds(), stop, task.pid))
        return spans

    def _headline(self) -> str:
        if not self.count:
            return f"no finished tasks in group {self.group!r}"
        work = sum(self._durations[i] for i in self._ran)
        parallel = f" (×{work / self.span:.1f} in parallel)" if self.span > 0 else ""
        cancelled = f", {self.cancelled} cancelled" if self.cancelled else ""
        return (
            f"group {self.group!r}: {self.count} task{'s' if self.count != 1 else ''}, "
            f"{self.succeeded} succeeded, {self.failed} failed{cancelled}; "
            f"{format_seconds(work)} of work over {format_seconds(self.span)}{parallel}"
        )

    def __repr__(self) -> str:
        lines = [self._headline()]
        if not self.count:
            return lines[0]
        known = [self._durations[i] for i in self._ran]
        if known:
            lines.append(
                f"durations: min {format_seconds(min(known))}, median "
                f"{format_seconds(_median(known))}, max "
                f"{format_seconds(max(known))}"
            )
            lines.append(
                "slowest: "
                + ", ".join(f"{t.name!r} {format_seconds(_ran(t))}" for t in self.slowest(3))
            )
        if self.failed or self.cancelled:
            lines.append(
                "failures: "
                + ", ".join(
                    f"{name} ×{len(tasks)}" for name, tasks in self.failures_by_type().items()
                )
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        style = "font-size:13px;margin:4px 0"
        if not self.count:
            return f'<div class="nbqueue-summary" style="{style}">{escape(self._headline())}</div>'
        head = (
            f"<div><b>{escape(self._headline())}</b></div>"
            f'<div style="{MUTED}">first enqueued {format_time(self.first_start)}, '
            f"last finished {format_time(self.last_stop)}</div>"
        )
        parts = [
            head,
            '<h4 style="margin:10px 0 2px">durations</h4>',
            self.histogram_svg(),
            '<h4 style="margin:10px 0 2px">timeline per worker</h4>',
            self.timeline_svg(),
            _slowest_html(self.slowest(5)),
        ]
        if self.failed or self.cancelled:
            parts.append(_failures_html(self.failures_by_type()))
        return f'<div class="nbqueue-summary" style="{style}">' + "".join(parts) + "</div>"


# -- reading tasks --------------------------------------------------------------------


def _ran(task: Task) -> float:
    """Seconds the task ran; for a record without that, enqueue to finish."""
    duration = task.duration
    return duration if duration is not None else task.time_taken()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _type_name(task: Task) -> str:
    ok, exc = safely(lambda: task.exception)
    if not ok or exc is None:
        return "Exception"
    return exc.type_name if isinstance(exc, RemoteError) else type(exc).__name__


def _arguments(task: Task) -> dict[str, Any]:
    """A task's arguments by parameter name, as its function's signature binds them (a
    ``*args`` parameter keeps its tuple, a ``**kwargs`` one is spread into its keys);
    by position (``arg0`` ...) and keyword where the function or its arguments cannot be
    read here."""
    ok, args = safely(lambda: task.args)
    ok_kw, kwargs = safely(lambda: task.kwargs)
    if not ok or not ok_kw:
        return {"args": args if ok else None, "kwargs": kwargs if ok_kw else None}
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    try:
        bound = inspect.signature(resolve(task.func)).bind(*args, **kwargs)
    except Exception:  # a notebook's function, a builtin, arguments that do not bind
        return {**{f"arg{i}": value for i, value in enumerate(args)}, **kwargs}
    found: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            found.update(value)
        else:
            found[name] = value
    return found


def _frame_value(task: Task, column: str) -> Any:
    if column in ("args", "kwargs", "result"):
        return safely(lambda: getattr(task, column))[1]
    return getattr(task, column)


# -- HTML parts -----------------------------------------------------------------------


def _slowest_html(tasks: list[Task]) -> str:
    cell = "text-align:left;padding:1px 12px 1px 0"
    rows = "".join(
        f'<tr><td style="{cell}">{escape(repr(t.name))}</td>'
        f'<td style="{cell}"><code>{escape(clip(t.func, 60))}</code></td>'
        f'<td style="{cell}">{format_seconds(_ran(t))}</td>'
        f'<td style="{cell}">{t.pid if t.pid is not None else "–"}</td>'
        f'<td style="{cell}">{"✓ ok" if t.success else "✗ failed"}</td></tr>'
        for t in tasks
    )
    head = "".join(
        f'<th style="{cell}">{h}</th>' for h in ("task", "function", "ran", "worker pid", "outcome")
    )
    return (
        '<h4 style="margin:10px 0 2px">slowest</h4>'
        f'<table style="border-collapse:collapse"><tr>{head}</tr>{rows}</table>'
    )


def _failures_html(by_type: dict[str, list[Task]], most: int = 10) -> str:
    parts = ['<h4 style="margin:10px 0 2px">failures by type</h4>']
    for name, tasks in list(by_type.items())[:most]:
        example = tasks[0]
        parts.append(
            f'<details><summary style="cursor:pointer">{badge(escape(name), FAIL_COLOR)}: '
            f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}, "
            f"e.g. {escape(repr(example.name))} ({escape(clip(example.func, 60))})"
            f"</summary>{traceback_html(example.traceback or '')}</details>"
        )
    if len(by_type) > most:
        parts.append(
            f'<div style="{MUTED}">… and {len(by_type) - most} more types: '
            "<code>failures_by_type()</code> has them all</div>"
        )
    return "".join(parts)


# -- SVG ------------------------------------------------------------------------------


def _ticks(low: float, high: float, count: int = 5) -> tuple[list[float], float]:
    """Round values between ``low`` and ``high`` for an axis (multiples of 1, 2 or 5
    times 10**k), and that step."""
    if high <= low:
        return [low], 1.0
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [i * step for i in range(first, last + 1)], step


def _label(value: float, step: float) -> str:
    unit = "s"
    if step < 0.001 and abs(value) < 1:
        value, step, unit = value * 1000, step * 1000, "ms"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f} {unit}"


def _svg(height: int, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}">'
        + "".join(body)
        + "</svg>"
    )


def _x_axis(
    left: float, right: float, y: float, low: float, high: float, caption: str
) -> list[str]:
    """A horizontal axis at ``y`` for values ``low``..``high`` (seconds); each tick says
    its unit (s or ms), so the caption names none."""
    scale = (right - left) / (high - low) if high > low else 0.0
    parts = [f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#888"/>']
    ticks, step = _ticks(low, high)
    for tick in ticks:
        x = left + (tick - low) * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle" fill="currentColor" '
            f"{_FONT}>{escape(_label(tick, step))}</text>"
        )
    parts.append(
        f'<text x="{(left + right) / 2:.1f}" y="{y + 29}" text-anchor="middle" '
        f'fill="currentColor" {_FONT}>{escape(caption)}</text>'
    )
    return parts


def _message(text: str) -> str:
    return _svg(30, [f'<text x="4" y="19" fill="currentColor" {_FONT}>{escape(text)}</text>'], text)


def _histogram(known: list[tuple[float, Task]], unrun: int) -> str:
    if not known:
        return _message("no task durations to show: no worker ran any")
    low, high = min(d for d, _ in known), max(d for d, _ in known)
    if low < 0.2 * high:  # the axis starts at 0 unless that squeezes the bars
        low = 0.0
    bins = BINS if high > low else 1
    width = (high - low) / bins
    counts: list[list[tuple[float, Task]]] = [[] for _ in range(bins)]
    for duration, task in known:
        index = min(bins - 1, int((duration - low) / width)) if width else 0
        counts[index].append((duration, task))
    left, right, top, bottom = 40.0, WIDTH - 20.0, 10.0, 130.0
    tallest = max(len(c) for c in counts)
    bar = (right - left) / bins if bins > 1 else 60.0
    start = left if bins > 1 else (left + right - bar) / 2
    body = [
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" fill="currentColor" {_FONT}>'
        f"{tallest}</text>",
        f'<text x="{left - 4}" y="{bottom}" text-anchor="end" fill="currentColor" {_FONT}>0</text>',
    ]
    for i, members in enumerate(counts):
        if not members:
            continue
        h = max(1.0, (bottom - top) * len(members) / tallest)
        names = ", ".join(f"{t.name} ({format_seconds(d)})" for d, t in members[:3])
        more = f" and {len(members) - 3} more" if len(members) > 3 else ""
        title = (
            f"{len(members)} task{'s' if len(members) != 1 else ''}, "
            f"{format_seconds(low + i * width)}–{format_seconds(low + (i + 1) * width)}"
            f": {names}{more}"
        )
        body.append(
            f'<rect class="nbqueue-bin" x="{start + i * bar + 0.5:.1f}" '
            f'y="{bottom - h:.1f}" width="{max(1.0, bar - 1):.1f}" height="{h:.1f}" '
            f'fill="#4c78a8"><title>{escape(clip(title, 300))}</title></rect>'
        )
    note = f" ({unrun} that no worker ran not counted)" if unrun else ""
    if high > low:
        body += _x_axis(left, right, bottom, low, high, "how long each task ran" + note)
    else:
        body.append(
            f'<text x="{(left + right) / 2}" y="{bottom + 15}" text-anchor="middle" '
            f'fill="currentColor" {_FONT}>every task ran {escape(format_seconds(low))}'
            f"{escape(note)}</text>"
        )
    return _svg(int(bottom + 36), body, "histogram of task durations")


def _sample(spans: list[_Span]) -> list[_Span]:
    if len(spans) <= MAX_BARS:
        return spans
    ordered = sorted(spans, key=lambda s: s.start)
    return [ordered[i * len(ordered) // MAX_BARS] for i in range(MAX_BARS)]


def _timeline(spans: list[_Span], total: int) -> str:
    if not spans:
        return _message("no tasks to show")
    first_seen: dict[int | None, float] = {}
    for span in sorted(spans, key=lambda s: s.start):
        first_seen.setdefault(span.worker, span.start)
    rows: list[int | None] = sorted(
        (w for w in first_seen if w is not None), key=first_seen.__getitem__
    )
    if None in first_seen:
        rows.append(None)
    row_of = {worker: i for i, worker in enumerate(rows)}
    pitch = max(1.0, min(18.0, 400.0 / len(rows)))
    left, right, top = 80.0, WIDTH - 20.0, 6.0
    bottom = top + pitch * len(rows)
    end = max(s.stop for s in spans) or 1.0
    scale = (right - left) / end
    body = []
    if pitch >= 9:
        body += [
            f'<text x="{left - 6}" y="{top + i * pitch + pitch * 0.7:.1f}" '
            f'text-anchor="end" fill="currentColor" {_FONT}>'
            f"{'no worker' if w is None else f'pid {w}'}</text>"
            for i, w in enumerate(rows)
        ]
    else:
        body.append(
            f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" fill="currentColor" '
            f"{_FONT}>{len(rows) - (None in row_of)} workers</text>"
        )
    for span in _sample(spans):
        body.append(
            _bar(
                span,
                left + span.start * scale,
                (span.stop - span.start) * scale,
                top + row_of[span.worker] * pitch,
                pitch,
            )
        )
    body += _x_axis(left, right, bottom, 0.0, end, "time since the first task was enqueued")
    height = bottom + 36
    if len(spans) > MAX_BARS:
        body.append(
            f'<text x="{left}" y="{height + 4}" fill="currentColor" {_FONT}>showing '
            f"{MAX_BARS:,} of {total:,} tasks, sampled evenly by start time</text>"
        )
        height += 12
    return _svg(int(height), body, "timeline of tasks per worker")


def _bar(span: _Span, x: float, width: float, y: float, pitch: float) -> str:
    task = span.task
    if span.worker is None:
        what = f"decided by the cluster: {clip(str(task.traceback or ''), 120)}"
    else:
        what = f"ran {format_seconds(span.stop - span.start)} on pid {span.worker}"
    title = f"{task.name} ({clip(task.func, 60)}) {what}"
    color = OK_COLOR if task.success else FAIL_COLOR
    return (
        f'<rect class="nbqueue-bar" x="{x:.1f}" y="{y + 1:.1f}" '
        f'width="{max(1.5, width - 1):.1f}" height="{max(0.8, pitch - 2):.1f}" '
        f'fill="{color}"><title>{escape(title)}</title></rect>'
    )
