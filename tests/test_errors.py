"""nbqueue.errors: every error is an NbqueueError and the standard error users catch."""

from __future__ import annotations

import pickle

import pytest

import nbqueue
from nbqueue import errors

EXPECTED = {
    errors.ConfigurationError: ValueError,
    errors.TaskFunctionError: ImportError,
    errors.PackingError: TypeError,
    errors.SignatureError: ValueError,
    errors.InsecureStoreError: PermissionError,
    errors.StoreError: OSError,
    errors.StoreGone: OSError,
    errors.StoreSwapped: PermissionError,
    errors.TaskTimeout: TimeoutError,
    errors.ClusterError: RuntimeError,
    errors.WorkerLost: RuntimeError,
}


def test_one_worker_lost_serves_the_user_and_the_executors():
    """The error a user meets for a dead worker is the one an executor ends a chunk with:
    its ``running`` tasks and ``reason`` survive a pickle (a chunk's Future, a failure's
    packed exception), and a plain message makes one as ``exception_from_text`` does."""
    from nbqueue.cluster import executors
    from nbqueue.cluster.executors import dask as dask_executor

    assert nbqueue.WorkerLost is errors.WorkerLost is executors.WorkerLost
    assert dask_executor.WorkerLost is errors.WorkerLost and errors.WorkerLost in executors.BROKEN
    lost = errors.WorkerLost("dask worker x was lost [KilledWorker: x]", ("t1",), "dask worker x")
    copy = pickle.loads(pickle.dumps(lost))
    assert (type(copy), str(copy), copy.running, copy.reason) == (
        errors.WorkerLost, "dask worker x was lost [KilledWorker: x]", ("t1",), "dask worker x")
    plain = errors.WorkerLost("the worker died")
    assert plain.running == () and plain.reason == str(plain) == "the worker died"
    assert "nbqueue.retry" in errors.WorkerLost.__doc__  # what to do about it


@pytest.mark.parametrize("error, standard", EXPECTED.items(), ids=lambda e: e.__name__)
def test_each_error_is_also_the_standard_error_users_catch(error, standard):
    assert issubclass(error, errors.NbqueueError) and issubclass(error, standard)
    assert error.__doc__, "every error says in one line what it means"
    with pytest.raises(standard):
        raise error("what went wrong, and what to do")


def test_the_errors_users_meet_are_exported_from_nbqueue():
    for name in ("NbqueueError", "ConfigurationError", "TaskFunctionError", "PackingError",
                 "SignatureError", "InsecureStoreError", "StoreError", "TaskTimeout",
                 "ClusterError", "NoClusterWarning", "WaitWarning"):
        assert getattr(nbqueue, name) is getattr(errors, name)
        assert name in nbqueue.__all__


def test_warnings_are_user_warnings():
    assert issubclass(errors.NoClusterWarning, UserWarning)
    assert issubclass(errors.WaitWarning, UserWarning)


def test_a_bad_option_names_itself_and_the_fix(store_dir):
    with pytest.raises(errors.ConfigurationError, match="'retry'.*timeout=120, retry=240"):
        nbqueue.configure(timeout=120)
    with pytest.raises(errors.ConfigurationError, match="did you mean 'workers'"):
        nbqueue.Cluster(wrkers=2)
