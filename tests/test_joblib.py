"""joblib's ``Parallel`` on a real cluster through ``nbqueue.joblib`` (the backend
``"nbqueue"``), scikit-learn's ``GridSearchCV`` included."""

from __future__ import annotations

import multiprocessing

import pytest

joblib = pytest.importorskip("joblib")

import nbqueue  # noqa: E402
import nbqueue.joblib  # noqa: E402,F401  (registers the backend)
from joblib import Parallel, delayed, parallel_config  # noqa: E402
from nbqueue.joblib import NbqueueBackend  # noqa: E402
from tests import tasks_fixtures as fx  # noqa: E402


def test_parallel_runs_its_calls_as_batches_of_one_group(cluster):
    with parallel_config(backend="nbqueue", group="squares"):
        out = Parallel(n_jobs=-1)(delayed(fx.add)(x, x) for x in range(500))
    assert out == [2 * x for x in range(500)]
    tasks = nbqueue.count_group("squares")
    assert 0 < tasks < 500  # joblib batched the calls: one task a batch


def test_n_jobs_minus_one_is_the_serving_clusters_workers(cluster):
    assert NbqueueBackend().effective_n_jobs(-1) == cluster.workers == 2
    assert NbqueueBackend().effective_n_jobs(-2) == 1 and NbqueueBackend().effective_n_jobs(3) == 3


def test_generators_ordered_and_unordered(cluster):
    with parallel_config(backend="nbqueue"):
        ordered = Parallel(n_jobs=2, return_as="generator")(
            delayed(fx.nap)(s, i) for i, s in enumerate([0.4, 0.0, 0.0]))
        assert list(ordered) == [0, 1, 2]
        unordered = Parallel(n_jobs=2, return_as="generator_unordered", batch_size=1)(
            delayed(fx.nap)(s, i) for i, s in enumerate([0.3, 0.0, 0.1, 0.0]))
        assert not isinstance(unordered, list)
        # as they finish: which first is the cluster's placing, not the backend's
        assert sorted(unordered) == [0, 1, 2, 3]


def test_a_failing_call_raises_its_own_exception(cluster):
    with parallel_config(backend="nbqueue"), pytest.raises(ValueError, match="no <good>"):
        Parallel(n_jobs=2)(delayed(fx.boom)("no <good>") if i == 3 else delayed(fx.add)(i)
                           for i in range(6))


def test_timeouts_and_options_apply(cluster):
    # joblib raises multiprocessing's TimeoutError, whatever its backend
    with parallel_config(backend="nbqueue"), pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, timeout=0.5)(delayed(fx.nap)(5) for _ in range(2))
    with pytest.raises(nbqueue.ConfigurationError, match="timeout"):
        NbqueueBackend(timeout=-1)
    # calls that need shared memory stay in this process (joblib picks its threads)
    with parallel_config(backend="nbqueue", group="shared", require="sharedmem"):
        assert Parallel(n_jobs=2)(delayed(fx.add)(i) for i in range(4)) == [0, 1, 2, 3]
    assert nbqueue.count_group("shared") == 0


def test_grid_search_fits_run_on_the_cluster(cluster):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    grid = {"max_depth": [1, 2, 3, None], "min_samples_leaf": [1, 5]}
    alone = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3).fit(X, y)
    with parallel_config(backend="nbqueue", group="grid"):
        search = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3, n_jobs=-1)
        search.fit(X, y)
    assert search.best_params_ == alone.best_params_
    assert search.best_score_ == pytest.approx(alone.best_score_)
    assert nbqueue.count_group("grid") > 0  # its 24 fits ran as tasks of the cluster
