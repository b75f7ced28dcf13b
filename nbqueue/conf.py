"""Settings: named defaults in one place, validated once, each error naming its option.

Every option can be set with ``configure(**options)`` or an environment variable
``NBQUEUE_<OPTION>`` (``NBQUEUE_WORKERS=4``). Explicit ``configure`` calls win over
the environment, which wins over the defaults below.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, fields, replace
from typing import Any

from nbqueue.errors import ConfigurationError

UNSET: Any = object()  # an option left out (None may be a value of its own)


@dataclass(frozen=True)
class Settings:
    """Process-wide defaults; the meaning of each follows Django Q's cluster settings."""

    directory: str = ".nbqueue"
    workers: int = 0  # 0 = os.cpu_count()
    timeout: float | None = None  # seconds a task may run; None = no limit
    retry: float = 60.0  # seconds before an unacknowledged task is delivered again
    max_attempts: int = 3  # deliveries before a task is given up; 0 = unlimited
    ack_failures: bool = True  # a task that raised is final; False: delivered again
    save_limit: int = 0  # newest successes kept; 0 = all, -1 = none
    sync: bool = False
    cached: bool | int = False
    bulk: int = 100  # tasks leased from the queue in one transaction
    label: str = "nbqueue"
    poll: float = 0.005  # seconds between queue polls while idle
    max_rss: int | None = None  # kilobytes a worker may grow to before it is replaced
    reuse: bool = False  # async_task gives back the same call's task (see nbqueue.calls)
    allow_network_fs: bool = False  # write a store on NFS, Lustre, SMB ... (see filesystems)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(name: str, ok: bool, wanted: str, value: Any) -> None:
    if not ok:
        raise ConfigurationError(f"option {name!r} must be {wanted}, got {value!r}")


def check_timeout(name: str, value: Any) -> None:
    _check(
        name,
        value is None or (_is_number(value) and 0 < value < float("inf")),
        "a positive number of seconds or None",
        value,
    )


def check_cached(name: str, value: Any) -> None:
    _check(
        name,
        isinstance(value, bool) or (isinstance(value, int) and value > 0),
        "True, False or a positive whole number of seconds",
        value,
    )


def check_max_attempts(name: str, value: Any) -> None:
    _check(
        name,
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "a whole number >= 0 (0 = unlimited)",
        value,
    )


def validate(settings: Settings) -> Settings:
    """Raise ConfigurationError for the first bad value; return the settings unchanged."""
    s = settings
    _check(
        "directory",
        isinstance(s.directory, (str, os.PathLike)) and str(s.directory) != "",
        "a directory path",
        s.directory,
    )
    _check(
        "workers",
        isinstance(s.workers, int) and not isinstance(s.workers, bool) and s.workers >= 0,
        "a whole number >= 0 (0 = one per CPU)",
        s.workers,
    )
    check_timeout("timeout", s.timeout)
    _check("retry", _is_number(s.retry) and s.retry > 0, "a positive number of seconds", s.retry)
    if s.timeout is not None and s.retry <= s.timeout:
        raise ConfigurationError(
            f"option 'timeout' ({s.timeout:g} s) needs option 'retry' ({s.retry:g} s, the "
            "seconds before a lost task is delivered again) above it, as in Django Q: give "
            f"both, e.g. timeout={s.timeout:g}, retry={max(2 * s.timeout, 60):g} (or set "
            "retry with configure() or NBQUEUE_RETRY), or lower timeout"
        )
    check_max_attempts("max_attempts", s.max_attempts)
    for name in ("ack_failures", "sync", "reuse", "allow_network_fs"):
        _check(name, isinstance(getattr(s, name), bool), "True or False", getattr(s, name))
    _check(
        "save_limit",
        isinstance(s.save_limit, int) and not isinstance(s.save_limit, bool) and s.save_limit >= -1,
        "a whole number >= -1 (0 = keep all, -1 = keep none)",
        s.save_limit,
    )
    check_cached("cached", s.cached)
    _check(
        "bulk",
        isinstance(s.bulk, int) and not isinstance(s.bulk, bool) and s.bulk >= 1,
        "a whole number >= 1",
        s.bulk,
    )
    _check("label", isinstance(s.label, str), "a string", s.label)
    _check(
        "max_rss",
        s.max_rss is None
        or (isinstance(s.max_rss, int) and not isinstance(s.max_rss, bool) and s.max_rss > 0),
        "a positive number of kilobytes or None",
        s.max_rss,
    )
    _check("poll", _is_number(s.poll) and 0 < s.poll <= 5, "a number of seconds in (0, 5]", s.poll)
    return s


OPTION_NAMES = tuple(f.name for f in fields(Settings))


def _parse_env(name: str, text: str) -> Any:
    """Turn the text of NBQUEUE_<NAME> into the option's type."""
    lowered = text.strip().lower()
    if name in ("ack_failures", "sync", "reuse", "allow_network_fs"):
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    elif name == "cached":
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        if lowered.isdigit():
            return int(lowered)
    elif name in ("timeout", "max_rss") and lowered in ("", "none"):
        return None
    elif name in ("workers", "max_attempts", "save_limit", "bulk", "max_rss"):
        try:
            return int(lowered)
        except ValueError:
            pass
    elif name in ("timeout", "retry", "poll"):
        try:
            return float(lowered)
        except ValueError:
            pass
    else:
        return text
    raise ConfigurationError(
        f"environment variable NBQUEUE_{name.upper()}={text!r} is not a "
        f"valid value for option {name!r}; fix or unset it"
    )


def _env_values(skip: Any = ()) -> dict[str, Any]:
    """The options set by NBQUEUE_* variables, parsed; those in ``skip`` are not read."""
    return {
        name: _parse_env(name, os.environ[f"NBQUEUE_{name.upper()}"])
        for name in OPTION_NAMES
        if name not in skip and f"NBQUEUE_{name.upper()}" in os.environ
    }


def _build(overrides: dict[str, Any]) -> Settings:
    """Defaults, then the environment, then ``overrides``, validated as a whole.

    An option given to ``configure`` wins over its variable, which is then not even
    read; an error caused by a variable names that variable.
    """
    env = _env_values(skip=overrides)
    try:
        return validate(Settings(**{**env, **overrides}))
    except ConfigurationError as exc:
        culprits = [
            f"NBQUEUE_{name.upper()}={os.environ[f'NBQUEUE_{name.upper()}']!r}"
            for name in env
            if f"'{name}'" in str(exc)
        ]
        if not culprits:
            raise
        raise ConfigurationError(
            f"{exc} (set by environment variable {', '.join(culprits)}; fix or unset it)"
        ) from None


def _from_env() -> Settings:
    return _build({})


_lock = threading.Lock()
_overrides: dict[str, Any] = {}
_current: Settings | None = None


def settings() -> Settings:
    """The settings in force: defaults, then the environment, then ``configure``."""
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = _build(_overrides)
            current = _current
    return current


def configure(**options: Any) -> Settings:
    """Set process-wide defaults, e.g. ``configure(directory="runs/.nbqueue", workers=4)``.

    Raises ConfigurationError naming the option when a name or value is wrong;
    nothing changes then. Returns the settings now in force.
    """
    global _current
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; "
            f"the options are: {', '.join(OPTION_NAMES)}"
        )
    with _lock:
        merged = {**_overrides, **options}
        new = _build(merged)
        _overrides.clear()
        _overrides.update(merged)
        _current = new
    return new


def reload() -> None:
    """Read the environment again at the next ``settings()``; ``configure`` calls hold."""
    global _current
    with _lock:
        _current = None


def reset() -> None:
    """Forget every ``configure`` call (the environment is read again). Used by tests."""
    global _current
    with _lock:
        _overrides.clear()
        _current = None


def merged(base: Settings, **options: Any) -> Settings:
    """``base`` with the options that are not None replaced, validated."""
    given = {k: v for k, v in options.items() if v is not UNSET}
    return validate(replace(base, **given))
