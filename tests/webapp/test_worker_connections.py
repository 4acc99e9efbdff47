"""A worker keeps its database connection from one task to the next, and replaces one that is too old or broken."""
import time

import pytest
from django.db import connection

from webapp.celery import check_database_connections, keep_database_connections

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit, as in a worker between tasks


class Task:
    class request:
        is_eager = False


@pytest.fixture
def kept(settings, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", connection.settings_dict["CONN_MAX_AGE"])
    settings.NAS_WORKER_DB_CONN_MAX_AGE = 300
    keep_database_connections()
    connection.close()  # the next connection is made with the worker's age
    yield
    connection.close()


def test_a_workers_connection_outlives_a_task(kept):
    connection.ensure_connection()
    raw = connection.connection
    for _ in range(3):  # task after task
        check_database_connections(sender=Task)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    assert connection.connection is raw
    assert connection.settings_dict["CONN_MAX_AGE"] == 300


def test_a_connection_past_its_age_or_left_in_error_is_replaced_before_the_next_task(kept):
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1
    check_database_connections(sender=Task)
    assert connection.connection is None  # closed; the task connects afresh
    connection.ensure_connection()
    raw = connection.connection
    connection.errors_occurred = True
    connection.is_usable = lambda: False  # as a PostgreSQL connection whose server restarted answers
    try:
        check_database_connections(sender=Task)
    finally:
        del connection.is_usable
    assert connection.connection is None and raw is not None


def test_without_the_setting_every_task_connects_afresh(settings, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    settings.NAS_WORKER_DB_CONN_MAX_AGE = 0
    keep_database_connections()
    assert connection.settings_dict["CONN_MAX_AGE"] == 0
    connection.ensure_connection()
    check_database_connections(sender=Task)
    assert connection.connection is None


def test_a_task_run_eagerly_keeps_its_callers_connection(kept):
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1

    class Eager:
        class request:
            is_eager = True

    check_database_connections(sender=Eager)
    assert connection.connection is not None
