"""How a stored task shows itself: one line of text, and a self-contained HTML card.

``task_line`` is ``repr(task)``; ``task_html`` is what Jupyter displays. Both only
read the task and never raise: an argument or result that cannot be unpickled here
shows as ``<unreadable: ...>``. The HTML has inline styles only and no script, so it
renders the same in JupyterLab, a static notebook viewer and an exported page. The
helpers below (seconds, short reprs, tracebacks) are shared with ``nbqueue.display.summary``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from datetime import datetime
from html import escape
from typing import Any

# Text keeps the theme's own colour (its contrast is the theme's); colour marks what is
# not text, or sits behind white text at 4.5:1 or more (``badge``), in light and dark themes.
OK_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
RUNNING_COLOR = "#1565c0"
WARN_COLOR = "#bf360c"
MUTED = "color:var(--jp-content-font-color2,#555)"
PRE_STYLE = (
    "margin:4px 0;padding:6px 8px;background:rgba(127,127,127,0.10);"
    "border-radius:3px;white-space:pre-wrap;overflow-wrap:break-word;"
    "font-size:12px;line-height:1.35;max-height:32em;overflow:auto"
)
# a traceback's lines are code: never wrapped mid-token, scrolled sideways instead
TRACEBACK_STYLE = PRE_STYLE.replace(
    "white-space:pre-wrap;overflow-wrap:break-word", "white-space:pre"
)
HIGHLIGHT_STYLE = "background:rgba(229,57,53,0.22);font-weight:bold;box-shadow:-3px 0 0 #e53935"
OUTPUT_LINES = 40  # lines of output shown, the last ones
OUTPUT_CHARS = 8000
TRACEBACK_LINES = 400
_CHAIN = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


class _Short(reprlib.Repr):
    """reprlib's Repr, which also shortens bytes before it makes their repr."""

    repr_bytes = repr_bytearray = reprlib.Repr.repr_str


_repr = _Short()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 6


# -- text helpers ---------------------------------------------------------------------


def badge(text: str, colour: str, css_class: str = "") -> str:
    """``text`` (HTML) in white on ``colour``: legible in light and dark themes alike."""
    klass = f' class="{css_class}"' if css_class else ""
    return (
        f'<span{klass} style="background:{colour};color:#fff;padding:0 5px;'
        f'border-radius:3px">{text}</span>'
    )


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis where cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def short(value: Any, limit: int = 80) -> str:
    """A repr of ``value`` that is never huge (nested containers and strings shortened)."""
    try:
        return clip(_repr.repr(value), limit)
    except Exception as exc:  # a __repr__ that raises
        return f"<{type(value).__name__} with a failing repr: {clip(str(exc), 40)}>"


def unreadable(exc: BaseException) -> str:
    return f"<unreadable: {type(exc).__name__}: {clip(str(exc), 60)}>"


def safely(read: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, what ``read()`` returns), or (False, an ``<unreadable: ...>`` text)."""
    try:
        return True, read()
    except Exception as exc:  # unpickling a class this process cannot import, etc.
        return False, unreadable(exc)


def call_text(task: Any, limit: int = 60) -> str:
    """The task's arguments as a call's parentheses: ``(1, 'a', key=2)``, shortened."""
    ok, arguments = safely(lambda: (task.args, task.kwargs))
    if not ok:
        return f"({arguments})"
    args, kwargs = arguments
    parts = [short(a, 40) for a in args[:6]] + [
        f"{k}={short(v, 40)}" for k, v in list(kwargs.items())[:6]
    ]
    if len(args) > 6 or len(kwargs) > 6:
        parts.append("…")
    return "(" + clip(", ".join(parts), limit - 2) + ")"


def error_text(task: Any) -> str:
    """The first line of a failure's text: ``ValueError: boom``."""
    _, text = safely(lambda: task.result)
    return str(text).split("\n", 1)[0].strip()


def result_text(task: Any, limit: int = 60) -> str:
    """A short repr of a success's result, or a failure's error line."""
    if not task.success:
        return clip(error_text(task), limit)
    ok, value = safely(lambda: task.result)
    return short(value, limit) if ok else value


def format_seconds(seconds: float | None) -> str:
    """``0.51 s``, ``12.3 s``, ``2 min 05 s``, ``0.022 ms``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 0.01:
        return f"{seconds * 1000:.2g} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_time(when: datetime | None) -> str:
    return "?" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def ran_text(task: Any) -> str:
    """``ran 0.51 s`` (the attempt a worker ran); for an outcome no worker gave (a
    cancel, a death) or an old record, ``ended 2.00 s after enqueue``."""
    if task.duration is not None and task.pid is not None:
        return f"ran {format_seconds(task.duration)}"
    return f"ended {format_seconds(task.time_taken())} after enqueue"


# -- the line -------------------------------------------------------------------------


def task_line(task: Any) -> str:
    """The task in one readable line: ``<Task 'name' math.floor(3.7) → 3 · ran 0.01 s>``."""
    try:
        head = f"<{type(task).__name__} {task.name!r} {task.func}{call_text(task, 40)}"
        if task.success:
            parts = [f"{head} → {result_text(task, 60)}"]
        else:
            parts = [f"{head} failed: {clip(error_text(task), 80)}"]
        if task.attempt_count > 1:
            parts.append(f"attempt {task.attempt_count}")
        parts.append(ran_text(task))
        if task.group:
            parts.append(f"group {clip(str(task.group), 40)!r}")
        return " · ".join(parts) + ">"
    except Exception as exc:  # a damaged record: still a line
        return f"<{type(task).__name__} {unreadable(exc)}>"


# -- tracebacks and output ------------------------------------------------------------


def failing_line(lines: list[str]) -> int | None:
    """The index of the code line of the innermost frame of the last exception of a
    traceback's chain, or None when the text has no such line (a cluster's verdict)."""
    start = 0
    for i, line in enumerate(lines):
        if line.strip() in _CHAIN:
            start = i + 1
    last = None
    for i in range(start, len(lines)):
        if lines[i].startswith('  File "'):
            last = i
    if last is None or last + 1 >= len(lines):
        return None
    code = lines[last + 1]
    if not code.startswith("    ") or not code.strip() or set(code.strip()) <= set("^~"):
        return None
    return last + 1


def traceback_html(text: str) -> str:
    """A traceback in a <pre>, escaped, its failing line highlighted (see
    ``failing_line``); very long ones keep their last TRACEBACK_LINES lines."""
    lines = text.rstrip("\n").split("\n")
    mark = failing_line(lines)
    first = max(0, len(lines) - TRACEBACK_LINES)
    shown = []
    for i in range(first, len(lines)):
        line = escape(lines[i])
        if i == mark:
            line = f'<span class="nbqueue-failing-line" style="{HIGHLIGHT_STYLE}">{line}</span>'
        shown.append(line)
    note = (
        f'<div style="{MUTED}">… {first} earlier lines not shown; '
        f"<code>task.traceback</code> has them all</div>"
        if first
        else ""
    )
    return f'{note}<pre style="{TRACEBACK_STYLE}">' + "\n".join(shown) + "</pre>"


def output_html(text: str) -> str:
    """The task's output in a <details> element, open, showing its last OUTPUT_LINES
    lines (and at most OUTPUT_CHARS characters) with a note of what was left out."""
    lines = text.rstrip("\n").splitlines()
    hidden = max(0, len(lines) - OUTPUT_LINES)
    shown = "\n".join(lines[hidden:])
    cut = len(shown) > OUTPUT_CHARS
    if cut:
        shown = "…" + shown[-OUTPUT_CHARS:]
    notes = []
    if hidden:
        notes.append(f"{hidden} earlier line{'s' if hidden != 1 else ''} not shown")
    if cut:
        notes.append("long lines cut")
    note = (
        f'<div style="{MUTED}">… {"; ".join(notes)}: <code>task.output</code> has all of it</div>'
        if notes
        else ""
    )
    return (
        f'<details open><summary style="cursor:pointer">output ({len(lines)} '
        f"line{'s' if len(lines) != 1 else ''})</summary>{note}"
        f'<pre class="nbqueue-output" style="{PRE_STYLE};max-height:none">'
        f"{escape(shown)}</pre></details>"
    )


# -- the card -------------------------------------------------------------------------


def _rows(task: Any) -> list[tuple[str, str]]:
    """(label, HTML) of the card's table."""
    rows = [
        ("function", f"<code>{escape(task.func)}</code>"),
        ("arguments", f"<code>{escape(call_text(task, 300))}</code>"),
    ]
    if task.success:
        rows.append(("result", f"<code>{escape(result_text(task, 300))}</code>"))
    else:
        rows.append(
            (
                "error",
                f'<code style="border-left:3px solid {FAIL_COLOR};padding-left:4px">'
                f"{escape(clip(error_text(task), 300))}</code>",
            )
        )
    timing = [ran_text(task)]
    if task.began is not None:
        waited = max(0.0, (task.began - task.sent).total_seconds())
        timing.append(f"waited {format_seconds(waited)} in the queue")
    if task.pid is not None:
        timing.append(f"worker pid {task.pid}")
    rows.append(("time", escape(" · ".join(timing))))
    rows.append(
        (
            "when",
            escape(f"enqueued {format_time(task.started)}, finished {format_time(task.stopped)}"),
        )
    )
    rows.append(("attempts", str(task.attempt_count)))
    if task.progress:
        done, total, message = (tuple(task.progress) + (None, None, None))[:3]
        rows.append(("progress", escape(f"{done}/{total} {message or ''}".strip())))
    if task.group:
        rows.append(("group", escape(str(task.group))))
    rows.append(
        (
            "id",
            f"<code>{escape(task.id)}</code>"
            + (" (cached part of the store)" if task.cached else ""),
        )
    )
    return rows


def task_html(task: Any) -> str:
    """The task as a self-contained HTML card (``Task._repr_html_``)."""
    try:
        return _card(task)
    except Exception as exc:  # a damaged record: still something to see
        return (
            f'<div class="nbqueue-task"><code>{escape(task_line(task))}</code> '
            f"{escape(unreadable(exc))}</div>"
        )


def _card(task: Any) -> str:
    color = OK_COLOR if task.success else FAIL_COLOR
    status = "✓ succeeded" if task.success else "✗ failed"
    head = (
        f'<div style="margin-bottom:4px">{badge(status, color)} '
        f"<b>{escape(type(task).__name__)}</b> <b>{escape(repr(task.name))}</b></div>"
    )
    table = "".join(
        f'<tr><td style="text-align:left;padding:1px 10px 1px 0;vertical-align:top;{MUTED}">'
        f'{label}</td><td style="text-align:left;padding:1px 0">{value}</td></tr>'
        for label, value in _rows(task)
    )
    parts = [head, f'<table style="border-collapse:collapse;margin:0">{table}</table>']
    if not task.success and task.traceback:
        title = "traceback" if "Traceback" in task.traceback else "why it failed"
        parts.append(
            f'<details open><summary style="cursor:pointer">{title}</summary>'
            f"{traceback_html(task.traceback)}</details>"
        )
    if task.output:
        parts.append(output_html(task.output))
    return (
        f'<div class="nbqueue-task" style="font-size:13px;border-left:4px solid {color};'
        f'padding:4px 10px;margin:4px 0">' + "".join(parts) + "</div>"
    )
