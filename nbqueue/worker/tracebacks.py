"""A task's exception, whole: the object with its chain, and a traceback with source lines.

Two problems, solved at the two ends of a task's trip:

- **Where code comes from.** cloudpickle ships the code of a notebook function as
  ``<dynamic-code>``, and a cell's file (such as ``/tmp/ipykernel_123/4567.py``) has
  lines only the kernel knows, in its ``linecache``: in a worker, a traceback through
  it shows neither. ``WithSources`` packs, with a task function, the file names of it
  and of the notebook functions it calls, and the lines of cells; ``with_sources``
  puts both back when the worker unpickles it.
- **The exception.** Pickling an exception keeps its arguments and ``__dict__`` but not
  its ``__cause__``/``__context__``, and some exceptions cannot be pickled or unpickled
  at all. ``pack_exception`` pickles each link of the chain on its own, checking that it
  loads again, and keeps the type's name and message to make a ``RemoteError`` of where
  it does not; ``unpack_exception`` links them back.

Workers import this module: it imports only the standard library and nbqueue's errors.
"""

from __future__ import annotations

import builtins
import linecache
import os
import pickle
import re
import traceback
import types
from typing import Any

from nbqueue import errors
from nbqueue.errors import RemoteError

MAX_CHAIN = 16  # links of a __cause__/__context__ chain kept
MAX_PICKLED = 1 << 20  # an exception pickled larger than this is kept as a RemoteError
_SUMMARY = re.compile(r"([A-Za-z_][\w.]*): ?(.*)")

Sources = dict[str, tuple[int, list[str]]]  # file name -> (first line number, lines)


# -- source lines of notebook code ----------------------------------------------------


def origins(func: Any) -> tuple[list[tuple[Any, str]], Sources]:
    """What a worker needs to show where ``func`` and the functions of its module that
    it reads as globals come from: each function with its file name (cloudpickle ships
    code as ``<dynamic-code>``), and, from this process's ``linecache``, the lines of
    those files that are not on disk (code typed into a notebook cell or a console)."""
    files: list[tuple[Any, str]] = []
    sources: Sources = {}
    seen: set[int] = set()
    todo = [func]
    while todo and len(seen) < 64:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        code = getattr(obj, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        files.append((obj, code.co_filename))
        _add_lines(sources, code)
        module_globals = getattr(obj, "__globals__", {})
        for name in _global_names(code):
            value = module_globals.get(name)
            if isinstance(value, types.FunctionType) and value.__module__ == obj.__module__:
                todo.append(value)
    return files, sources


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _add_lines(sources: Sources, code: types.CodeType) -> None:
    """Add the lines of ``code`` if its file is one only ``linecache`` holds."""
    filename = code.co_filename
    entry = linecache.cache.get(filename)
    if entry is None or len(entry) != 4 or entry[1] is not None or os.path.exists(filename):
        return  # not cached, or a real file (the worker reads it itself)
    lines = entry[2]
    numbers = [n for _, _, n in code.co_lines() if n is not None] or [code.co_firstlineno]
    first, last = min(code.co_firstlineno, min(numbers)), max(numbers)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max([last] + [n for _, _, n in const.co_lines() if n is not None])
    have = sources.get(filename)
    if have is not None:  # merge with what another function of that file brought
        first, last = min(first, have[0]), max(last, have[0] + len(have[1]) - 1)
    sources[filename] = (first, list(lines[first - 1 : last]))


class WithSources:
    """A task function that brings where its code comes from: unpickled, it is the
    function itself, its code has its file names back, and the lines of notebook cells
    are in ``linecache``."""

    __slots__ = ("func", "files", "sources")

    def __init__(self, func: Any) -> None:
        self.func = func
        self.files, self.sources = origins(func)

    def __reduce__(self) -> tuple:
        return with_sources, (self.func, self.files, self.sources)


def with_sources(func: Any, files: list[tuple[Any, str]], sources: Sources) -> Any:
    """Give the functions of ``files`` their file names back, put ``sources`` into this
    process's ``linecache`` (unless it has those files), and return ``func``."""
    for function, filename in files:
        try:
            function.__code__ = _renamed(function.__code__, filename)
        except (AttributeError, TypeError, ValueError):
            continue
    for filename, (first, lines) in sources.items():
        entry = linecache.cache.get(filename)
        if entry is not None and len(entry) == 4 and len(entry[2]) >= first + len(lines) - 1:
            continue
        full = ["\n"] * (first - 1) + [
            line if line.endswith("\n") else line + "\n" for line in lines
        ]
        linecache.cache[filename] = (sum(map(len, full)), None, full, filename)
    return func


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    if code.co_filename == filename:
        return code
    consts = tuple(
        _renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


# -- the exception and its traceback ------------------------------------------------


def describe(exc: BaseException, skip_file: str | None = None) -> tuple[str, str]:
    """(the failure's text, as ``result`` gives it; the full traceback, chain included)
    of an exception raised in a task; frames of ``skip_file`` (the worker) left out."""
    summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if type(exc).__module__ == "nbqueue.errors":  # named as the cluster's own verdicts are
        summary = summary[len("nbqueue.errors.") :]
    shown = traceback.TracebackException.from_exception(exc)
    if skip_file is not None:
        shown.stack = traceback.StackSummary.from_list(
            [frame for frame in shown.stack if frame.filename != skip_file]
        )
    text = "".join(shown.format())
    if not shown.stack and shown.__cause__ is None and shown.__context__ is None:
        return summary, text
    return summary + "\n\n" + text.rstrip("\n"), text


def _chain(exc: BaseException) -> list[tuple[BaseException, str | None]]:
    """The exception and those it was raised from: (link, how the next is tied to it)."""
    links: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(links) < MAX_CHAIN:
        seen.add(id(current))
        if current.__cause__ is not None:
            following, how = current.__cause__, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            following, how = current.__context__, "context"
        else:
            following, how = None, None
        links.append((current, how if following is not None else None))
        current = following
    return links


def _pickled(exc: BaseException) -> bytes | None:
    """``exc`` pickled (cloudpickle: it may be a class of the notebook), if it loads
    back as the same type here; None otherwise."""
    try:
        import cloudpickle

        data = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > MAX_PICKLED or type(pickle.loads(data)) is not type(exc):
            return None
        return data
    except Exception:
        return None


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def pack_exception(exc: BaseException) -> bytes:
    """The exception and its chain, for ``unpack_exception`` in any process."""
    links = [(type_name(link), str(link), _pickled(link), how) for link, how in _chain(exc)]
    return pickle.dumps(links, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_exception(data: bytes) -> BaseException:
    """The exception ``pack_exception`` packed, its chain linked again; a link that
    cannot be loaded here is a ``RemoteError`` with its type's name and message."""
    links = []
    for name, message, blob, how in pickle.loads(data):
        exc: BaseException | None = None
        if blob is not None:
            try:
                exc = pickle.loads(blob)
            except Exception:
                exc = None
        links.append((exc if exc is not None else RemoteError(name, message), how))
    for (exc, how), (following, _) in zip(links, links[1:], strict=False):
        if how == "cause":
            exc.__cause__ = following
        elif how == "context":
            exc.__context__ = following
    return links[0][0]


def exception_from_text(text: str) -> BaseException:
    """The exception a failure's text names on its first line (``"TaskTimeout: timed
    out after 1 s"``): nbqueue's own class when it is one, else a ``RemoteError``. For
    failures the cluster decided (timeouts, deaths) and stores of earlier versions."""
    first = str(text).split("\n", 1)[0]
    match = _SUMMARY.fullmatch(first)
    if match is None:
        return RemoteError("Exception", first)
    name, message = match.groups()
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.NbqueueError) and cls is not RemoteError:
        try:
            return cls(message)
        except Exception:
            pass
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        try:
            return builtin(message)
        except Exception:
            pass
    return RemoteError(name, message)
