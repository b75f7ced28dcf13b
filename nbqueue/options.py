"""The options of one ``async_task`` call (or ``async_iter``, ``map``) as one frozen value.

``TaskOptions.take`` takes them out of the call's keywords at the API edge, checks each
option given (with an error naming it) and fills in the settings' defaults; packing, the
call keys of ``reuse`` and the header then read its fields. A call given no option gets
a shared instance, and one given the very objects the last call was given (as the calls
of a loop are) gets that call's: on async_task's hot path, nothing is built again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbqueue import conf
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker
from nbqueue.errors import ConfigurationError

# the options of a call, by the names it takes them under (and ``q_options``'s keys)
OPTION_NAMES = (
    "hook",
    "group",
    "save",
    "timeout",
    "ack_failure",
    "sync",
    "cached",
    "broker",
    "task_name",
    "max_attempts",
    "reuse",
)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The checked options of a call, the settings' defaults filled in."""

    broker: Broker  # the store the task goes to
    sync: bool = False  # run here, not in a cluster
    cached: bool | int = False  # True or seconds: its outcome goes to the cached part
    reuse: bool = False  # give back the same call's task (see ``nbqueue.calls``)
    hook: Callable[..., Any] | str | None = None  # checked when packed, as the function
    group: str | None = None
    save: bool | None = None  # None: the cluster's ``save_limit`` decides
    timeout: float | None = None  # None: the cluster's
    ack_failure: bool | None = None  # None: the cluster's ``ack_failures``
    task_name: str | None = None  # None: a generated name
    max_attempts: int | None = None  # None: the cluster's
    iter: str | None = None  # the ``async_iter`` the task is part of (set by it, not a call)

    @classmethod
    def take(cls, kwargs: dict[str, Any], settings: conf.Settings) -> TaskOptions:
        """The options of a call, taken out of its keywords ``kwargs`` (what is left goes
        to the function); ``q_options``, when given, is the only source. Raises
        ConfigurationError naming a bad option or value."""
        if not kwargs:
            return _default(settings, get_broker())
        given = _given(kwargs)
        if not given:
            return _default(settings, get_broker())
        broker = given.get("broker") or get_broker()
        last = _last
        if last is not None and last[0] is settings and last[1] is broker and _same(last[2], given):
            return last[3]  # the very objects checked for the last call: a loop's calls
        for name, value in given.items():
            if value is not None:
                _CHECKS[name](name, value)
        get = given.get
        sync, cached, reuse = get("sync"), get("cached"), get("reuse")
        options = cls(
            broker,
            settings.sync if sync is None else sync,
            settings.cached if cached is None else cached,
            settings.reuse if reuse is None else reuse,
            get("hook"),
            get("group"),
            get("save"),
            get("timeout"),
            get("ack_failure"),
            get("task_name"),
            get("max_attempts"),
        )
        _remember(settings, broker, given, options)
        return options


def _given(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options of ``kwargs``, taken out of it (or out of its ``q_options``)."""
    if "q_options" not in kwargs:
        return {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}
    options = kwargs.pop("q_options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigurationError(
            f"q_options must be a dict of options, got {type(options).__name__}"
        )
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) in q_options: {', '.join(unknown)}; "
            f"the options are: {', '.join(OPTION_NAMES)}"
        )
    return dict(options)


# A call given no option shares one instance while the settings and the default broker
# stay the same; one given options gets the last call's instance when it was given the
# very same objects (checked then), as the calls of a loop are: settings, broker, and
# (for _last) the options given.
_defaults: tuple[conf.Settings, Broker, TaskOptions] | None = None
_last: tuple[conf.Settings, Broker, dict[str, Any], TaskOptions] | None = None
_MISSING = object()


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a`` and ``b`` hold the very same objects under the same names."""
    if len(a) != len(b):
        return False
    get = a.get
    for name, value in b.items():  # noqa: SIM110  (a plain loop: all() of a generator costs more)
        if get(name, _MISSING) is not value:
            return False
    return True


def _remember(
    settings: conf.Settings, broker: Broker, given: dict[str, Any], options: TaskOptions
) -> None:
    global _last
    _last = (settings, broker, given, options)


def _default(settings: conf.Settings, broker: Broker) -> TaskOptions:
    """The options of a call given none."""
    global _defaults
    last = _defaults
    if last is not None and last[0] is settings and last[1] is broker:
        return last[2]
    options = TaskOptions(broker, settings.sync, settings.cached, settings.reuse)
    _defaults = (settings, broker, options)
    return options


def _check_group(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"option 'group' must be a string, got {value!r}")


def _check_task_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"option 'task_name' must be a non-empty string, got {value!r}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"option {name!r} must be True, False or None, got {value!r}")


def _check_broker(name: str, value: Any) -> None:
    if not isinstance(value, Broker):
        raise ConfigurationError(
            f"option 'broker' must come from get_broker(), got {type(value).__name__}"
        )


def _check_hook(name: str, value: Any) -> None:
    """A hook is checked when the task is packed, as its function is."""


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "group": _check_group,
    "task_name": _check_task_name,
    "save": _check_flag,
    "ack_failure": _check_flag,
    "sync": _check_flag,
    "timeout": conf.check_timeout,
    "cached": conf.check_cached,
    "max_attempts": conf.check_max_attempts,
    "broker": _check_broker,
    "hook": _check_hook,
    "reuse": _check_flag,
}
