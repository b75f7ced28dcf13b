"""A throwaway Django settings module for the django-q2 peer of the benchmarks.

Only django_q is installed; the database is the SQLite file named by
NBQUEUE_BENCH_DJQ_DB (benchmarks/run.py migrates it into a temporary directory),
which is also django-q2's broker (the ORM broker). Two workers, and the queue is
polled every 5 ms, as nbqueue's clusters poll theirs.
"""

import os

SECRET_KEY = "nbqueue-benchmarks-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django_q"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("NBQUEUE_BENCH_DJQ_DB", "djq-bench.sqlite3"),
        "OPTIONS": {"timeout": 60},
    }
}
Q_CLUSTER = {
    "name": "nbqueue-bench",
    "orm": "default",
    "workers": 2,
    "poll": 0.005,
    "timeout": 60,
    "retry": 120,
    "save_limit": 0,  # keep every result (the default, 250, would drop most of a group)
    "ack_failures": True,
    "max_attempts": 1,
    "catch_up": False,
    "log_level": "WARNING",
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
