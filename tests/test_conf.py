"""nbqueue.conf: defaults, configure(), NBQUEUE_* environment variables, reset()."""

from __future__ import annotations

import os

import pytest

from nbqueue import conf
from nbqueue.conf import OPTION_NAMES, Settings, configure, reset, settings
from nbqueue.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    """No NBQUEUE_* variable from the outer environment; no settings leak between tests."""
    for name in OPTION_NAMES:
        monkeypatch.delenv(f"NBQUEUE_{name.upper()}", raising=False)
    reset()
    yield
    reset()


def test_defaults():
    s = settings()
    assert s == Settings()
    assert s.directory == ".nbqueue"
    assert s.workers == 0
    assert s.worker_count == (os.cpu_count() or 1)
    assert s.timeout is None
    assert s.retry == 60.0
    assert s.max_attempts == 3
    assert s.ack_failures is True  # a task that raised is final (README: Failures)
    assert s.save_limit == 0
    assert s.sync is False
    assert s.cached is False
    assert s.bulk == 100
    assert s.label == "nbqueue"
    assert s.poll == 0.005
    assert settings() is s  # computed once until reset


def test_configure_sets_and_accumulates():
    s = configure(workers=4, timeout=10)
    assert s.workers == 4 and s.worker_count == 4
    assert s.timeout == 10
    s = configure(save_limit=5)
    assert (s.workers, s.timeout, s.save_limit) == (4, 10, 5)  # earlier calls still hold
    assert settings() == s


@pytest.mark.parametrize("option, value", [
    ("directory", ""),
    ("directory", 3),
    ("workers", -1),
    ("workers", 1.5),
    ("workers", True),
    ("workers", "4"),
    ("timeout", 0),
    ("timeout", -3),
    ("timeout", "10"),
    ("timeout", True),
    ("retry", 0),
    ("retry", -1),
    ("retry", None),
    ("max_attempts", -1),
    ("max_attempts", 2.0),
    ("max_attempts", True),
    ("ack_failures", "yes"),
    ("sync", 1),
    ("save_limit", -2),
    ("save_limit", 1.0),
    ("save_limit", False),
    ("cached", 0),
    ("cached", -5),
    ("cached", 2.5),
    ("cached", "yes"),
    ("bulk", 0),
    ("bulk", True),
    ("bulk", None),
    ("label", 7),
    ("poll", 0),
    ("poll", 6),
    ("poll", "0.1"),
])
def test_configure_refuses_a_bad_value_naming_the_option(option, value):
    before = configure(workers=2)
    with pytest.raises(ConfigurationError) as caught:
        configure(**{option: value})
    assert f"option {option!r}" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert settings() == before  # nothing changed


def test_retry_must_exceed_timeout():
    with pytest.raises(ConfigurationError) as caught:
        configure(timeout=60)  # default retry is 60
    message = str(caught.value)
    assert "'retry'" in message and "'timeout'" in message
    assert "timeout=60, retry=120" in message  # the fix, spelled out
    with pytest.raises(ConfigurationError, match="'retry'"):
        configure(timeout=10, retry=5)
    s = configure(timeout=10, retry=10.5)
    assert (s.timeout, s.retry) == (10, 10.5)
    with pytest.raises(ConfigurationError, match="'retry'"):
        configure(retry=10)  # the earlier timeout=10 still holds


def test_unknown_option_is_named():
    with pytest.raises(ConfigurationError) as caught:
        configure(wrokers=2, workers=2)
    message = str(caught.value)
    assert "'wrokers'" in message
    assert "workers" in message  # the valid names are listed
    assert settings() == Settings()


@pytest.mark.parametrize("options", [
    {"timeout": None},
    {"timeout": 0.5, "retry": 1},
    {"cached": True},
    {"cached": 30},
    {"save_limit": -1},
    {"max_attempts": 0},
    {"workers": 0},
    {"poll": 5},
    {"directory": "some/where"},
    {"sync": True, "ack_failures": True},
])
def test_configure_accepts_valid_edges(options):
    s = configure(**options)
    for name, value in options.items():
        assert getattr(s, name) == value


# -- environment ---------------------------------------------------------------------------


def test_environment_variables_are_parsed(monkeypatch, tmp_path):
    env = {
        "DIRECTORY": str(tmp_path / "envstore"), "WORKERS": "4", "TIMEOUT": "10",
        "RETRY": "20.5", "MAX_ATTEMPTS": "5", "ACK_FAILURES": "yes", "SAVE_LIMIT": "-1",
        "SYNC": "true", "CACHED": "30", "BULK": "50", "LABEL": "my label", "POLL": "0.1",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"NBQUEUE_{name}", value)
    reset()
    s = settings()
    assert s.directory == str(tmp_path / "envstore")
    assert s.workers == 4
    assert s.timeout == 10.0
    assert s.retry == 20.5
    assert s.max_attempts == 5
    assert s.ack_failures is True
    assert s.save_limit == -1
    assert s.sync is True
    assert s.cached == 30
    assert s.bulk == 50
    assert s.label == "my label"
    assert s.poll == 0.1


@pytest.mark.parametrize("name, text, expected", [
    ("TIMEOUT", "none", None),
    ("TIMEOUT", "", None),
    ("SYNC", "off", False),
    ("SYNC", "1", True),
    ("ACK_FAILURES", "No", False),
    ("CACHED", "true", True),
    ("CACHED", "0", False),
    ("CACHED", "", False),
    ("CACHED", " 15 ", 15),
    ("WORKERS", " 3 ", 3),
])
def test_environment_value_forms(monkeypatch, name, text, expected):
    monkeypatch.setenv(f"NBQUEUE_{name}", text)
    reset()
    assert getattr(settings(), name.lower()) == expected


def test_environment_is_read_again_only_after_reset(monkeypatch):
    assert settings().workers == 0
    monkeypatch.setenv("NBQUEUE_WORKERS", "6")
    assert settings().workers == 0
    reset()
    assert settings().workers == 6


@pytest.mark.parametrize("name, text", [
    ("WORKERS", "abc"),
    ("WORKERS", "2.5"),
    ("WORKERS", "-1"),
    ("TIMEOUT", "soon"),
    ("TIMEOUT", "-1"),
    ("RETRY", "0"),
    ("MAX_ATTEMPTS", "many"),
    ("SYNC", "maybe"),
    ("ACK_FAILURES", "2"),
    ("CACHED", "-5"),
    ("SAVE_LIMIT", "-2"),
    ("BULK", "0"),
    ("POLL", "fast"),
])
def test_bad_environment_value_names_the_variable(monkeypatch, name, text):
    monkeypatch.setenv(f"NBQUEUE_{name}", text)
    reset()
    with pytest.raises(ConfigurationError) as caught:
        settings()
    assert f"NBQUEUE_{name}" in str(caught.value)


def test_environment_timeout_over_default_retry_names_the_variable(monkeypatch):
    monkeypatch.setenv("NBQUEUE_TIMEOUT", "100")
    reset()
    with pytest.raises(ConfigurationError) as caught:
        settings()
    assert "NBQUEUE_TIMEOUT" in str(caught.value)
    assert "'retry'" in str(caught.value)


def test_configure_beats_environment(monkeypatch):
    monkeypatch.setenv("NBQUEUE_WORKERS", "4")
    monkeypatch.setenv("NBQUEUE_LABEL", "from-env")
    reset()
    assert settings().workers == 4
    s = configure(workers=2)
    assert s.workers == 2
    assert s.label == "from-env"  # what configure leaves alone still comes from the env
    reset()
    assert settings().workers == 4


def test_configure_completes_environment_settings(monkeypatch):
    """NBQUEUE_TIMEOUT=100 alone is invalid (retry 60), but configure(retry=200) fixes it."""
    monkeypatch.setenv("NBQUEUE_TIMEOUT", "100")
    reset()
    s = configure(retry=200)
    assert (s.timeout, s.retry) == (100.0, 200)


def test_configure_overrides_a_bad_environment_value(monkeypatch):
    monkeypatch.setenv("NBQUEUE_WORKERS", "lots")
    reset()
    assert configure(workers=2).workers == 2


def test_reset_forgets_configure():
    configure(workers=3, label="x")
    assert settings().workers == 3
    reset()
    assert settings() == Settings()
    configure(bulk=7)
    assert settings().workers == 0  # the earlier configure is gone for good


def test_merged_validates_and_skips_unset():
    base = configure(workers=2)
    s = conf.merged(base, workers=5, timeout=conf.UNSET)
    assert s.workers == 5
    assert s.timeout is None
    assert settings().workers == 2  # merged does not change the process settings
    with pytest.raises(ConfigurationError, match="'bulk'"):
        conf.merged(base, bulk=0)
