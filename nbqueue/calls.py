"""``reuse=True``: when two calls are the same call, and which earlier task stands for one.

**What counts as equal.** Two calls are the same call when their *call keys* are equal: a
BLAKE2b hash of

- the function. A dotted path, or a function importable by its module and name (one that
  cloudpickle ships by reference), is its path: ``"math.floor"`` and ``math.floor`` are the
  same function. A function shipped by value (defined in a notebook, a lambda, a nested
  function) is its name and code: bytecode, constants, names, argument names, and the same
  of the functions defined inside it; its defaults; the values of its closure cells; and
  the values of the globals its code uses (other notebook functions and classes compared
  the same way, modules by name, anything else by its pickled bytes). Not its file nor
  its line numbers, so running again the cell that defines it, in the same kernel or a new
  one, gives the same function; changing its code, a default, a closure value or a
  global it reads gives another. A class defined in a notebook is its name, bases and
  class body (methods compared as functions). Any other callable (a ``functools.partial``,
  a bound method, an object with ``__call__``) is its pickled bytes.
- the arguments: by their pickled bytes, the bytes the task is shipped with (with notebook
  functions and classes inside them compared as above). Equal bytes are equal arguments;
  values that compare equal may pickle differently and are then different calls:
  ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}``, ``1`` and ``1.0``, or a set of strings
  (its order changes from one process to the next).
- the options that change the outcome or where it is kept, as given: ``group, save,
  cached, timeout, ack_failure, max_attempts, task_name``, the hook's name, and whether it
  is an ``async_iter`` (whose items all count, in order). Not ``sync`` nor ``broker``: the
  keys live in the store, one per store.

**Which earlier task stands for a call** (``Reuse.earlier``): the store keeps, per key, the
id of the last task sent for it and when (``Part.call``), in the part its outcome goes to.
That task stands for the new call if it has a stored success; or if it has no outcome
yet and either is queued or leased (running, or waiting for another delivery) or was
sent less than ``SENDING`` seconds ago (its package may still be on its way to the queue
from its sender's outbox). A failure, or a task that is neither stored nor queued (lost,
not saved, expired, deleted), is sent again under a new id. An ``async_iter`` stands
when each of its tasks does. Looking the key up and recording a new task is one
transaction, so two processes that send the same call at once send it once.

**Cost** (README, Performance): the key hashes bytes the call makes anyway, except that a
function shipped by value, and arguments holding one, are pickled once more in their
canonical form. Then one read of the store for the key, one more for the outcome of the
task found (a large result is read too), and for a new call one short transaction that
records its key. Only a task with no outcome, sent over ``SENDING`` seconds ago, needs a
read of the whole queue, which then serves the calls of the next ``SENDING / 5`` seconds.
With ``reuse`` off none of this runs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import time
import types
from collections.abc import Iterable
from typing import Any

import cloudpickle

from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_store
from nbqueue.disk.records import Manifest, has_failed, manifest_tasks
from nbqueue.disk.store import Part
from nbqueue.options import TaskOptions

SENDING = 5.0  # seconds a task sent may take to reach the queue from its sender's outbox
KEYED_OPTIONS = ("group", "save", "cached", "timeout", "ack_failure", "max_attempts", "task_name")
_BY_VALUE = b"cloudpickle"  # in every pickle of something cloudpickle ships by value


# -- the key ------------------------------------------------------------------------


def call_key(
    func: Any,
    function: tuple[str, str | None, bytes | None],
    options: TaskOptions,
    hook_name: str | None,
    arguments: Iterable[tuple[tuple, dict, bytes]],
    of_iter: bool = False,
) -> str:
    """The key of a call: ``function`` is ``packing.function_of``'s answer for ``func``, and
    ``arguments`` the ``(args, kwargs, pickled)`` of each task (one, or an iter's items)."""
    digest = hashlib.blake2b(digest_size=20)

    def add(part: bytes) -> None:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)

    _, func_ref, func_bytes = function
    if func_ref is not None:
        add(b"path:" + func_ref.encode())
    else:
        assert func_bytes is not None
        add(func_bytes if _BY_VALUE not in func_bytes else _canonical(func, func_bytes))
    add(
        pickle.dumps(
            (tuple(getattr(options, name) for name in KEYED_OPTIONS), hook_name, of_iter),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    )
    for args, kwargs, pickled in arguments:
        add(pickled if _BY_VALUE not in pickled else _canonical((args, kwargs), pickled))
    return digest.hexdigest()


def _canonical(value: Any, shipped: bytes) -> bytes:
    """``value`` pickled with what cloudpickle ships by value in its canonical form; the
    bytes it is ``shipped`` with if that fails (the same call then matches only while
    those bytes do)."""
    out = io.BytesIO()
    try:
        _KeyPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except Exception:
        return shipped
    return out.getvalue()


def _form(*parts: Any) -> None:
    """Stands for a function or class in a key; keys are never unpickled."""
    raise TypeError("a call key is not meant to be unpickled")


class _KeyPickler(cloudpickle.Pickler):
    """cloudpickle, except that a function or class it would ship by value is written as
    its canonical form: what it does, not where or when it was defined."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            if cloudpickle.cloudpickle._should_pickle_by_reference(obj):
                return NotImplemented
            return _function_form(obj)
        reduced = super().reducer_override(obj)
        if (
            isinstance(obj, type)
            and reduced is not NotImplemented
            and reduced[0]
            in (
                cloudpickle.cloudpickle._make_skeleton_class,
                cloudpickle.cloudpickle._make_skeleton_enum,
            )
        ):
            return _class_form(obj)
        return reduced


def _function_form(func: types.FunctionType) -> tuple:
    # What may refer back to the function (its globals, closure, defaults) is the state,
    # pickled after the function is memoized: a recursive function is written once.
    code = func.__code__
    names = cloudpickle.cloudpickle._extract_code_globals(code)
    cells = []
    for cell in func.__closure__ or ():
        try:
            cells.append([cell.cell_contents])
        except ValueError:  # a cell not filled yet
            cells.append([])
    used = {name: func.__globals__[name] for name in sorted(names) if name in func.__globals__}
    state = (
        func.__defaults__,
        func.__kwdefaults__,
        dict(sorted(func.__dict__.items())),
        cells,
        used,
    )
    return _form, ("function", func.__module__, func.__qualname__, _code_form(code)), state


def _code_form(code: types.CodeType) -> tuple:
    """A code object without its file name and line numbers."""
    return (
        types.CodeType,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_code,
        tuple(_const_form(c) for c in code.co_consts),
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
    )


def _const_form(const: Any) -> Any:
    if isinstance(const, types.CodeType):
        return _code_form(const)
    if isinstance(const, frozenset):  # `x in {"a", "b"}`: ordered by hash, per process
        return (frozenset, tuple(sorted((_const_form(c) for c in const), key=repr)))
    if isinstance(const, tuple):
        return tuple(_const_form(c) for c in const)
    return const


def _class_form(cls: type) -> tuple:
    # made by Python, or where it was defined (3.13+), or caches (_abc_impl)
    skip = {"__dict__", "__weakref__", "__firstlineno__", "__annotate_func__", "_abc_impl"}
    slots = cls.__dict__.get("__slots__", ())
    skip.update((slots,) if isinstance(slots, str) else slots)
    state = {name: value for name, value in sorted(vars(cls).items()) if name not in skip}
    return _form, ("class", type(cls), cls.__module__, cls.__qualname__, cls.__bases__), state


# -- the earlier task ---------------------------------------------------------------


class Reuse:
    """The ``reuse=True`` side of one call with key ``key``, on the part of the store its
    outcome goes to: the earlier task that stands for it, or the claim of a new one."""

    def __init__(self, broker: Broker, cached: bool, key: str, of_iter: bool = False) -> None:
        self.broker = broker
        self.key = key
        self.of_iter = of_iter
        self.part = get_store(broker.directory).part(cached)
        self.row = self.part.call(key)

    def earlier(self) -> str | None:
        """The id of the task (or iter) last sent for this call if it stands for this one
        (see the module docstring), else None."""
        if self.row is not None and _stands(self.broker, self.part, self.row, self.of_iter):
            return self.row[0]
        return None

    def claim(self, task_id: str) -> str:
        """Record ``task_id`` as this call's task and return it; or, if another process
        sent the same call since the key was read, return that one's id: send nothing."""
        return self.part.claim_call(self.key, self.row, task_id)


def _stands(broker: Broker, part: Part, row: tuple[str, float], of_iter: bool) -> bool:
    task_id, sent = row
    recent = time.time() - sent < SENDING
    ids = [task_id]
    if of_iter:
        manifest = part.manifest(task_id)
        if manifest is None:  # written just after the key: on its way, or lost
            return recent
        ids = manifest_tasks(manifest)
    unfinished = _unfinished(part, ids)
    if unfinished is None:
        return False
    if not unfinished or recent:
        return True
    # A task sent over SENDING s ago had 4/5 of that to reach the queue before a snapshot
    # at most SENDING / 5 s old: one snapshot serves the many calls of a cell run again.
    held = broker.holds(unfinished, max_age=SENDING / 5)
    # an outcome is stored before its lease ends: one not held now has one, or never will
    return (
        len(held) == len(unfinished)
        or _unfinished(part, [i for i in unfinished if i not in held]) == []
    )


def _unfinished(part: Part, ids: list[str]) -> list[str] | None:
    """Those of ``ids`` with no outcome stored, or None if one of them failed."""
    records = part.records(ids)
    if any(r is not None and has_failed(r) for r in records):
        return None
    return [task_id for task_id, r in zip(ids, records, strict=False) if r is None]


def to_send_again(broker: Broker, part: Part, manifest: Manifest, sent: float) -> list[int]:
    """Which batches of an iter sent at ``sent`` to send again: those that failed (a
    failed item, or the whole batch), and those neither stored nor held in the queue
    (lost, expired or deleted). A batch still queued or leased stands: a lease of a
    dead cluster expires, and the batch is delivered again."""
    batch_ids = manifest_tasks(manifest)
    records = part.records(batch_ids)
    again = {k for k, r in enumerate(records) if r is not None and has_failed(r)}
    missing = [k for k, r in enumerate(records) if r is None]
    if missing and time.time() - sent >= SENDING:
        held = broker.holds([batch_ids[k] for k in missing], max_age=SENDING / 5)
        gone = [k for k in missing if batch_ids[k] not in held]
        if gone:  # an outcome is stored before its lease ends: read those again
            now = part.records([batch_ids[k] for k in gone])
            again.update(k for k, r in zip(gone, now, strict=False) if r is None or has_failed(r))
    return sorted(again)
